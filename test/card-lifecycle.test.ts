// Issue 15 §5: the card lifecycle over the API, on SQLite and PostgreSQL, the server as its process wires it
// (issuerApiEnv, app.inject). A card moves issued -> active -> suspended -> active -> retired -> destroyed as the
// lifecycle allows (src/issuer/card-lifecycle.ts), by whom it allows, every change audited with actor and reason.
// The card's state is read from the DB on every call of every route that acts for the card: a suspension made
// through another connection to the database (as another server would make it) stops the card's live terminal
// token at once on every route; a resume lets the card log in again but does not bring the old token back; a
// retired or destroyed card never comes back. Transitions the lifecycle does not have are refused by name (409).
import { test } from "node:test";
import assert from "node:assert/strict";
import { changeCardState } from "../src/issuer/card-lifecycle.ts";
import { Store } from "../src/store/store.ts";
import { testEngines } from "./support/store-testing.ts";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { createCard } from "../src/card/card.ts";
import type { CardRuntime } from "../src/card/runtime.ts";
import { api, apiEnvFor, authenticate, expect, issueAndPersonalise, registeredData, relay, type ApiEnv } from "./api-env.ts";
import { tempDir } from "./helpers.ts";
import { TEST_KMC } from "./kmc.ts";
import { transmitFollowing } from "../src/protocol/apdu-client.ts";

type Res = Awaited<ReturnType<ApiEnv["server"]["app"]["inject"]>>;

/** A 409 (or `status`) problem+json naming `check`, and the card's state when given. */
function refused(r: Res, check: string, state?: string, status = 409): Record<string, unknown> {
  const p = expect(r, status);
  assert.equal(p.check, check, r.body);
  if (state !== undefined) assert.equal(p.state, state, r.body);
  return p;
}

/** Another connection pool on the server's database: what another server on the same database would use. */
async function otherServer(t: { after: (fn: () => Promise<void>) => void }, env: ApiEnv): Promise<Store> {
  const store = await Store.open(env.database);
  t.after(() => store.close());
  return store;
}

async function auditOf(env: ApiEnv, subject: string): Promise<{ seq: number; actor: string; action: string; details: Record<string, unknown> }[]> {
  const r = expect(await api(env).get("/v1/audit?limit=1000", env.tokens.auditor), 200) as {
    entries: { seq: number; actor: string; action: string; subject: string; details: Record<string, unknown> }[];
  };
  return r.entries.filter((e) => e.subject === subject);
}

for (const engine of testEngines()) {
  test(`${engine.name}: a suspended card's live token is refused at once on every card route; resume needs a new login; a retired card never comes back`, { timeout: 10 * 60_000 }, async (t) => {
    const { env, cards } = await apiEnvFor(t, engine, { logLevel: "silent" });
    const { get, post, put } = api(env);
    const op = env.tokens.operator;
    const alice = await issueAndPersonalise(env, "Aiko Sato");
    cards.push(alice.card);
    const cardId = alice.cardId;
    const cred = expect(await post(`/v1/cards/${cardId}/credentials`, op, { slot: "9a", alg: "P256" }), 201) as { keyPairId: string; packageSeq: number };
    const token = (expect(await authenticate(post, cardId, alice.card), 200) as { token: string }).token;

    /** Every route a terminal token acts on for its card, with what each answers while the card is active. */
    const terminalRoutes: [string, () => Promise<Res>, number][] = [
      ["GET packages", () => get(`/v1/cards/${cardId}/packages`, token), 200],
      ["POST ack", () => post(`/v1/cards/${cardId}/packages/${cred.packageSeq}/ack`, token), 204],
      ["GET backups", () => get(`/v1/cards/${cardId}/backups`, token), 200],
      ["GET backups latest", () => get(`/v1/cards/${cardId}/backups?latest=true`, token), 200],
      ["GET a backup", () => get(`/v1/cards/${cardId}/backups/notes`, token), 404],
      ["PUT a backup", () => put(`/v1/cards/${cardId}/backups/notes`, token, { envelope: "AAAA" }), 400],
      ["POST online delivery", () => post(`/v1/cards/${cardId}/credentials/${cred.keyPairId}/online`, token), 201],
    ];
    for (const [what, call, status] of terminalRoutes) assert.equal((await call()).statusCode, status, `${what} while active`);
    // an online delivery an operator opened before the suspension: its next relay round is refused too
    const online = expect(await post(`/v1/cards/${cardId}/credentials/${cred.keyPairId}/online`, op), 201) as { sessionId: string; apdus: string[] };

    // another server on the same database suspends the card
    const other = await otherServer(t, env);
    await changeCardState(other, { cardId, transition: "suspend", actor: "olga", by: "operator", reason: "reported lost by the holder" });

    for (const [what] of terminalRoutes) refused(await terminalRoutes.find((r) => r[0] === what)![1](), "card_state", "suspended");
    const responses = [];
    for (const a of online.apdus) responses.push(Buffer.from(await transmitFollowing((x) => alice.card.transmit(x), new Uint8Array(Buffer.from(a, "hex")))).toString("hex"));
    refused(await post(`/v1/relay/${online.sessionId}`, op, { responses }), "card_state", "suspended");
    // and what operators do for the card
    refused(await post(`/v1/cards/${cardId}/credentials`, op, { slot: "9c", alg: "P256" }), "card_state", "suspended");
    refused(await post(`/v1/cards/${cardId}/credentials/${cred.keyPairId}/online`, op), "card_state", "suspended");
    refused(await post(`/v1/cards/${cardId}/keygen`, op, { slot: "9d", alg: "P256", personalData: registeredData("Aiko Sato") }), "card_state", "suspended");
    refused(await put(`/v1/cards/${cardId}/backups/notes`, op, { envelope: "AAAA" }), "card_state", "suspended");
    // the card cannot log in (the public route answers as for an unknown card)
    expect(await post(`/v1/cards/${cardId}/auth`), 404);
    // operators and auditors still read what concerns it
    expect(await get(`/v1/cards/${cardId}/packages`, op), 200);
    expect(await get(`/v1/cards/${cardId}/backups`, env.tokens.auditor), 200);
    const shown = expect(await get(`/v1/cards/${cardId}`, env.tokens.auditor), 200);
    assert.deepEqual([shown.status, shown.statusChangedBy, shown.statusReason], ["suspended", "olga", "reported lost by the holder"]);

    // suspending twice is not a transition
    refused(await post(`/v1/cards/${cardId}/suspend`, op, { reason: "again" }), "card_transition_not_allowed", "suspended");

    // resume: the card logs in again; the token from before the suspension stays dead
    assert.equal(expect(await post(`/v1/cards/${cardId}/resume`, op, { reason: "found in the office" }), 200).status, "active");
    refused(await get(`/v1/cards/${cardId}/packages`, token), "card_state_changed", "active", 401);
    const fresh = (expect(await authenticate(post, cardId, alice.card), 200) as { token: string }).token;
    expect(await get(`/v1/cards/${cardId}/packages`, fresh), 200);
    expect(await get(`/v1/cards/${cardId}/backups`, fresh), 200);

    // retire: final, and the token of the active card stops at once
    assert.equal(expect(await post(`/v1/cards/${cardId}/retire`, op, { reason: "replaced by a new card" }), 200).status, "retired");
    refused(await get(`/v1/cards/${cardId}/packages`, fresh), "card_state", "retired");
    refused(await get(`/v1/cards/${cardId}/backups`, fresh), "card_state", "retired");
    expect(await post(`/v1/cards/${cardId}/auth`), 404);
    for (const path of ["resume", "suspend", "retire"]) refused(await post(`/v1/cards/${cardId}/${path}`, op, { reason: "bring it back" }), "card_transition_not_allowed", "retired");
    refused(await post(`/v1/cards/${cardId}/resume`, env.tokens.admin, { reason: "bring it back" }), "card_transition_not_allowed", "retired");
    // a retired card may still be reported destroyed, and nothing leaves destroyed
    assert.equal(expect(await post(`/v1/cards/${cardId}/report-destroyed`, op, { reason: "shredded" }), 200).status, "destroyed");
    for (const path of ["resume", "suspend", "retire", "report-destroyed"])
      refused(await post(`/v1/cards/${cardId}/${path}`, env.tokens.admin, { reason: "undo" }), "card_transition_not_allowed", "destroyed");
    expect(await post(`/v1/cards/${cardId}/resume`, op, { reason: " " }), 400);

    // every change audited: who, why, from, to
    const changes = (await auditOf(env, cardId)).filter((e) => ["card.suspended", "card.resumed", "card.retired", "card.destroyed"].includes(e.action));
    assert.deepEqual(
      changes.map((e) => [e.action, e.actor, e.details.from, e.details.to, e.details.reason]),
      [
        ["card.suspended", "olga", "active", "suspended", "reported lost by the holder"],
        ["card.resumed", "olga", "suspended", "active", "found in the office"],
        ["card.retired", "olga", "active", "retired", "replaced by a new card"],
        ["card.destroyed", "olga", "retired", "destroyed", "shredded"],
      ],
    );
    assert.equal((expect(await get("/v1/audit/verify", env.tokens.auditor), 200) as { ok: boolean }).ok, true);
  });

  test(`${engine.name}: who may move a card: operators, the card's own terminal only to suspend it, never an auditor or another card's terminal`, { timeout: 10 * 60_000 }, async (t) => {
    const { env, cards } = await apiEnvFor(t, engine, { logLevel: "silent" });
    const { get, post } = api(env);
    const alice = await issueAndPersonalise(env, "Aiko Sato");
    const bob = await issueAndPersonalise(env, "Bo Tanaka");
    cards.push(alice.card, bob.card);
    const aliceToken = (expect(await authenticate(post, alice.cardId, alice.card), 200) as { token: string }).token;
    const bobToken = (expect(await authenticate(post, bob.cardId, bob.card), 200) as { token: string }).token;
    const body = { reason: "test" };

    for (const path of ["suspend", "resume", "retire", "report-destroyed"]) {
      expect(await post(`/v1/cards/${alice.cardId}/${path}`, undefined, body), 401);
      expect(await post(`/v1/cards/${alice.cardId}/${path}`, env.tokens.auditor, body), 403);
      expect(await post(`/v1/cards/${alice.cardId}/${path}`, bobToken, body), 403);
    }
    for (const path of ["resume", "retire", "report-destroyed"]) expect(await post(`/v1/cards/${alice.cardId}/${path}`, aliceToken, body), 403);
    // auditors read the state
    assert.equal(expect(await get(`/v1/cards/${alice.cardId}`, env.tokens.auditor), 200).status, "active");

    // the card's own terminal suspends it (a holder who lost it); then that token is done too
    const suspended = expect(await post(`/v1/cards/${alice.cardId}/suspend`, aliceToken, { reason: "I lost my card" }), 200);
    assert.deepEqual([suspended.status, suspended.statusChangedBy], ["suspended", `terminal:${alice.cardId}`]);
    refused(await post(`/v1/cards/${alice.cardId}/resume`, aliceToken, body), "card_state", "suspended");
    // Bob's card is untouched
    expect(await get(`/v1/cards/${bob.cardId}/packages`, bobToken), 200);
    // an operator resumes it; an admin may do what an operator may
    expect(await post(`/v1/cards/${alice.cardId}/resume`, env.tokens.operator, { reason: "identity checked at the desk" }), 200);
    expect(await post(`/v1/cards/${alice.cardId}/suspend`, env.tokens.admin, { reason: "fraud alert" }), 200);
    const entries = (await auditOf(env, alice.cardId)).filter((e) => e.action.startsWith("card.") && e.details.transition);
    assert.deepEqual(
      entries.map((e) => [e.action, e.actor, e.details.by]),
      [
        ["card.personalised", "olga", "operator"],
        ["card.suspended", `terminal:${alice.cardId}`, "terminal"],
        ["card.resumed", "olga", "operator"],
        ["card.suspended", "ada", "operator"],
      ],
    );
  });

  test(`${engine.name}: concurrent transitions${engine.name === "postgres" ? " on two servers" : ""}: one of each wins, the others are refused by name`, { timeout: 10 * 60_000 }, async (t) => {
    const { env, cards } = await apiEnvFor(t, engine, { logLevel: "silent" });
    const alice = await issueAndPersonalise(env, "Aiko Sato");
    cards.push(alice.card);
    // PostgreSQL: two connection pools, as two servers. SQLite is one process's database: its one connection
    // serialises transactions (a second better-sqlite3 connection in this process would block the event loop
    // waiting for the first's lock, which is a test artefact, not a race).
    const stores = engine.name === "postgres" ? [env.server.store, await otherServer(t, env)] : [env.server.store];
    const outcomes = await Promise.allSettled(
      Array.from({ length: 12 }, (_, i) =>
        changeCardState(stores[i % stores.length], { cardId: alice.cardId, transition: i % 3 === 0 ? "retire" : "suspend", actor: `op${i}`, by: "operator", reason: `race ${i}` }),
      ),
    );
    const won = outcomes.filter((o) => o.status === "fulfilled");
    const lost = outcomes.filter((o): o is PromiseRejectedResult => o.status === "rejected");
    // at most one suspension (from active) and at most one retirement; every loser names the transition check
    for (const l of lost) assert.equal((l.reason as { check?: string }).check, "card_transition_not_allowed", String(l.reason));
    const changes = (await auditOf(env, alice.cardId)).filter((e) => e.action === "card.suspended" || e.action === "card.retired");
    assert.equal(changes.length, won.length);
    assert.ok(changes.filter((e) => e.action === "card.suspended").length <= 1);
    assert.equal(changes.filter((e) => e.action === "card.retired").length, 1, "retire leaves active and suspended: one wins");
    assert.equal((await env.server.store.getCard(alice.cardId))!.status, "retired");
    assert.equal((await env.server.store.getCard(alice.cardId))!.statusVersion, 1 + won.length, "personalised, then each change once");
  });
}

// Issue 15 §6: a personalisation whose SET STATUS came back 6985 without a MAC — here a relaying terminal answers it
// instead of the card — leaves the card record issued: the card, asked with GET STATUS under R-MAC, is not SECURED.
test("a card that answers SET STATUS with 6985 without being SECURED is not marked active", { timeout: 10 * 60_000 }, async (t) => {
  const { env, cards } = await apiEnvFor(t, testEngines()[0], { logLevel: "silent" });
  const { get, post } = api(env);
  const op = env.tokens.operator;
  const user = expect(await post("/v1/users", op, { personalData: registeredData("Ren Ito") }), 201);
  const cardId = String((expect(await post("/v1/cards", op, { userId: user.id }), 201) as { card: { id: string } }).card.id);
  const card = createCard(join(tempDir("cardkms-setstatus-"), `${cardId}.card`), randomBytes(32), { kmc: TEST_KMC, cardId: Buffer.from(cardId, "hex") });
  cards.push(card);
  const setStatus = (a: Uint8Array) => (a[0] & 0x80) !== 0 && a[1] === 0xf0 && a[2] === 0x80 && a[3] === 0x0f;
  const terminal = { transmit: (a: Uint8Array) => (setStatus(a) ? Uint8Array.of(0x69, 0x85) : card.transmit(a)) } as CardRuntime;
  const start = expect(await post(`/v1/cards/${cardId}/personalisation`, op), 201) as { sessionId: string; apdus: string[] };
  const p = expect(await relay(post, op, start, terminal), 422);
  assert.match(String(p.detail), /GET STATUS/);
  assert.equal(card.state.lifecycle, "OP_READY");
  assert.equal(expect(await get(`/v1/cards/${cardId}`, env.tokens.auditor), 200).status, "issued", "not marked active");
  expect(await post(`/v1/cards/${cardId}/auth`), 404);
});
