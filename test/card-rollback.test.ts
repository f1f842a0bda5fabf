// Issue 17 §6 over HTTP, on SQLite and PostgreSQL: the issuer notices a card image that went back. A card logs in
// (its terminal's card-bound token), a copy of its image is taken, the holder's card blocks its PIN (6983) and
// logs in again; the copy is restored — its PIN shows 63C3 again — and its login is refused: 409 problem+json,
// check card_rollback, audited, notified, the card flagged. The flagged card's logins are refused before any APDU
// reaches it, until an operator clears the flag. A terminal that raises the counter in the report breaks its MAC
// (401); a card that does not report is a 422; two logins of one card crossing each other are refused unflagged.
import { test } from "node:test";
import assert from "node:assert/strict";
import { copyFileSync } from "node:fs";
import { join } from "node:path";
import { openCard } from "../src/card/card.ts";
import type { CardRuntime } from "../src/card/runtime.ts";
import { transmitFollowing } from "../src/protocol/apdu-client.ts";
import { testEngines } from "./support/store-testing.ts";
import { readCardInfo } from "../src/protocol/card-info.ts";
import { PivClient } from "../src/protocol/piv/client.ts";
import { api, apiEnvFor, authenticate, expect, issueAndPersonalise } from "./api-env.ts";
import { tempDir } from "./helpers.ts";

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
const unhex = (s: string) => new Uint8Array(Buffer.from(s, "hex"));

async function pinTriesLeft(card: CardRuntime): Promise<number> {
  const info = await readCardInfo((a) => card.transmit(a));
  assert.ok("pinTriesLeft" in info);
  return info.pinTriesLeft;
}

for (const engine of testEngines()) {
  test(`a card image that went back is refused at login and flagged, until an operator clears it, on ${engine.name}`, { timeout: 10 * 60_000 }, async (t) => {
    const { env, cards } = await apiEnvFor(t, engine);
    const { get, post } = api(env);
    const { operator: op, auditor: aud } = env.tokens;
    const { cardId, card, imageKey } = await issueAndPersonalise(env, "Hanako Yamada");
    cards.push(card);
    const counterOf = async () => expect(await get(`/v1/cards/${cardId}/state-counter`, aud), 200) as { counter: number | null; rollback: { at: number; reported: number } | null };

    // The first login remembers the counter the card reports.
    expect(await authenticate(post, cardId, card), 200);
    const first = await counterOf();
    // the counter the card reported after INITIALIZE UPDATE; EXTERNAL AUTHENTICATE then committed once more
    assert.equal(first.counter, card.state.stateCounter! - 1, "the counter of the card's report, remembered");
    assert.equal(first.rollback, null);

    // A copy of the image; then the holder's card blocks its PIN and logs in again.
    const copy = join(tempDir("cardkms-rollback-"), "copy.card");
    copyFileSync(card.path, copy);
    const piv = new PivClient((a) => card.transmit(a));
    await piv.select();
    await assert.rejects(piv.verifyPin("000000"));
    await assert.rejects(piv.verifyPin("000000"));
    await assert.rejects(piv.verifyPin("000000"));
    assert.equal(await pinTriesLeft(card), 0, "6983: blocked");
    expect(await authenticate(post, cardId, card), 200);
    const second = (await counterOf()).counter!;
    assert.ok(second > first.counter!);

    // The copy, restored, has its PIN tries back — and its login is refused.
    const restored = openCard(copy, imageKey);
    cards.push(restored);
    assert.equal(await pinTriesLeft(restored), 3, "63C3 again: the rollback a software card cannot stop");
    const refused = await authenticate(post, cardId, restored);
    const problem = expect(refused, 409);
    assert.equal(problem.check, "card_rollback");
    assert.match(String(problem.type), /card-rollback$/);
    assert.match(String(problem.detail), new RegExp(`not above ${second}`));
    assert.equal(refused.json().token, undefined);

    // Flagged, audited, notified; operators and auditors see it.
    const flagged = await counterOf();
    assert.equal(flagged.counter, second, "the remembered counter stays");
    assert.ok(flagged.rollback && flagged.rollback.reported <= second);
    assert.deepEqual(
      (expect(await get("/v1/rollbacks", op), 200).cards as { cardId: string }[]).map((c) => c.cardId),
      [cardId],
    );
    const audit = expect(await get("/v1/audit?limit=1000", aud), 200) as { entries: { action: string; subject: string; details: Record<string, unknown> }[] };
    const entry = audit.entries.find((e) => e.action === "card.rollback" && e.subject === cardId);
    assert.ok(entry, "audited");
    assert.equal(entry.details.remembered, second);
    assert.equal(entry.details.reported, flagged.rollback.reported);
    const events = expect(await get("/v1/events?type=card.rollback", op), 200) as { events: { subject: string }[] };
    assert.deepEqual(
      events.events.map((e) => e.subject),
      [cardId],
    );

    // Every login of the card is refused now — the holder's too — before any APDU reaches the card.
    card.close();
    const holder = openCard(card.path, imageKey);
    cards.push(holder);
    const before = holder.state.stateCounter;
    const atStart = expect(await post(`/v1/cards/${cardId}/auth`), 409);
    assert.equal(atStart.check, "card_rollback");
    assert.match(String(atStart.detail), /an operator must clear the flag/i);
    assert.equal(holder.state.stateCounter, before, "no INITIALIZE UPDATE was sent");

    // An operator's decision: an auditor may not, a reason is required; clearing is audited.
    expect(await post(`/v1/cards/${cardId}/state-counter/clear`, aud, { reason: "checked with the holder" }), 403);
    expect(await post(`/v1/cards/${cardId}/state-counter/clear`, op, {}), 400);
    const cleared = expect(await post(`/v1/cards/${cardId}/state-counter/clear`, op, { reason: "the copy was destroyed; the holder keeps the card" }), 200);
    assert.deepEqual((cleared.cleared as { rollback: unknown }).rollback, flagged.rollback);
    expect(await post(`/v1/cards/${cardId}/state-counter/clear`, op, { reason: "again" }), 409);
    expect(await post(`/v1/cards/${"ab".repeat(8)}/state-counter/clear`, op, { reason: "no such card" }), 404);
    const after = expect(await get("/v1/audit?limit=1000", aud), 200) as { entries: { action: string; subject: string; actor: string }[] };
    assert.ok(after.entries.some((e) => e.action === "card.rollback-cleared" && e.subject === cardId && e.actor === "olga"));

    // The holder's card logs in again; its counter is the new baseline.
    expect(await authenticate(post, cardId, holder), 200);
    assert.equal((await counterOf()).counter, holder.state.stateCounter! - 1);
    assert.deepEqual(expect(await get("/v1/rollbacks", aud), 200).cards, []);
  });

  test(`the state counter report cannot be forged by the terminal, and a card must give one, on ${engine.name}`, { timeout: 10 * 60_000 }, async (t) => {
    const { env, cards } = await apiEnvFor(t, engine);
    const { get, post } = api(env);
    const { cardId, card } = await issueAndPersonalise(env, "Taro Suzuki");
    cards.push(card);
    expect(await authenticate(post, cardId, card), 200);
    const remembered = (expect(await get(`/v1/cards/${cardId}/state-counter`, env.tokens.operator), 200) as { counter: number }).counter;

    // A terminal relaying a copy that went back raises the counter in the report: the MAC breaks (401, audited).
    const forged = expect(
      await authenticate(post, cardId, card, (r) => {
        r[2].set(Buffer.from((BigInt(remembered) + 1000n).toString(16).padStart(16, "0"), "hex"), 5); // DF23 14 80 08 <counter>
      }),
      401,
    );
    assert.match(String(forged.detail), /state counter report does not verify/);
    // A card that answers no report (a card without the counter): not a login.
    const silent = expect(await authenticate(post, cardId, card, (r) => (r[2] = unhex("6a88"))), 422);
    assert.match(String(silent.detail), /6A88/);
    expect(await authenticate(post, cardId, card, (r) => (r[2] = unhex("df2300" + "9000"))), 422);
    const audit = expect(await get("/v1/audit?limit=1000", env.tokens.auditor), 200) as { entries: { action: string; details: { reason?: string } }[] };
    assert.ok(audit.entries.some((e) => e.action === "terminal.refused" && e.details.reason === "state counter report does not verify"));
    assert.equal((expect(await get(`/v1/cards/${cardId}/state-counter`, env.tokens.operator), 200) as { rollback: unknown }).rollback, null, "none of it flags the card");

    // Two logins of one card crossing each other: the second INITIALIZE UPDATE has the higher counter and
    // finishes first; the first is refused (start again), not flagged.
    const startA = expect(await post(`/v1/cards/${cardId}/auth`), 201) as { sessionId: string; apdus: string[] };
    const startB = expect(await post(`/v1/cards/${cardId}/auth`), 201) as { sessionId: string; apdus: string[] };
    const run = async (apdus: string[]) => {
      const out: string[] = [];
      for (const a of apdus) out.push(hex(await transmitFollowing((x) => card.transmit(x), unhex(a))));
      return out;
    };
    const answersA = await run(startA.apdus);
    const answersB = await run(startB.apdus);
    const b = expect(await post(`/v1/cards/${cardId}/auth/${startB.sessionId}`, undefined, { responses: answersB }), 200);
    for (const a of b.apdus as string[]) await transmitFollowing((x) => card.transmit(x), unhex(a));
    const a = expect(await post(`/v1/cards/${cardId}/auth/${startA.sessionId}`, undefined, { responses: answersA }), 409);
    assert.equal(a.check, undefined);
    assert.match(String(a.detail), /start again/);
    assert.equal((expect(await get(`/v1/cards/${cardId}/state-counter`, env.tokens.operator), 200) as { rollback: unknown }).rollback, null);
    expect(await authenticate(post, cardId, card), 200);

    // The old two-answer round is refused by the schema, not half-processed.
    const old = expect(await post(`/v1/cards/${cardId}/auth`), 201) as { sessionId: string; apdus: string[] };
    expect(await post(`/v1/cards/${cardId}/auth/${old.sessionId}`, undefined, { responses: (await run(old.apdus)).slice(0, 2) }), 400);
  });
}
