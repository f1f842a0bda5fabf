// The rotation routes (rotation-routes.ts) through app.inject on the server as its process wires it: propose,
// approve (four eyes: another operator than the proposer), issue the new card and personalise it through the relay
// (the test is the card issuing machine), the background bulk re-wrap with its status, and distribution per FIG. 15
// — then the new card's terminal fetches what was distributed, which completes the rotation, and the card signs with
// it. Embodiment 3 on every engine (PostgreSQL fails when unreachable); embodiment 4 (a new card holding Sk1 and
// Sk2: two SCP03 scripts in one relay session, no re-wrap, an approved addition) on SQLite.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes, verify, X509Certificate } from "node:crypto";
import { join } from "node:path";
import { createCard } from "../card/card.ts";
import { packageHeader } from "../protocol/package.ts";
import type { CardRuntime } from "../card/runtime.ts";
import { testEngines } from "../../test/support/store-testing.ts";
import { readCardInfo } from "../protocol/card-info.ts";
import { PivClient } from "../protocol/piv/client.ts";
import { api, authenticate, expect, issueAndPersonalise, issuerApiEnv, relay, type ApiEnv } from "../../test/api-env.ts";
import { createOperatorToken } from "./main.ts";
import { tempDir } from "../../test/helpers.ts";
import { TEST_KMC } from "../../test/kmc.ts";

type Status = { rotation: { id: string; status: string; done: number; total: number; cursor: number; toCardId: string | null }; rewrap: { state: string; error?: string }; left: number };

/** Polls the status until the background re-wrap is no longer running (no time limit: the test's own timeout). */
async function untilRewrapSettles(env: ApiEnv, id: string): Promise<Status> {
  const { get } = api(env);
  for (;;) {
    const s = expect(await get(`/v1/rotations/${id}`, env.tokens.auditor), 200) as unknown as Status;
    if (s.rewrap.state !== "running") return s;
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function auditActions(env: ApiEnv): Promise<string[]> {
  const { get } = api(env);
  const out: string[] = [];
  for (let after = 0; ;) {
    const page = expect(await get(`/v1/audit?after=${after}&limit=1000`, env.tokens.auditor), 200) as { entries: { seq: number; action: string }[]; next: number | null };
    out.push(...page.entries.map((e) => e.action));
    if (page.next === null) return out;
    after = page.next;
  }
}

/** The old card with credentials in `slots`, loaded into it. */
async function oldCardWith(env: ApiEnv, slots: string[]) {
  const { post } = api(env);
  const issued = await issueAndPersonalise(env, "Taro Suzuki");
  const piv = new PivClient((a) => issued.card.transmit(a));
  await piv.select();
  for (const slot of slots) expect(await post(`/v1/cards/${issued.cardId}/credentials`, env.tokens.operator, { slot, alg: "P256" }), 201);
  return issued;
}

async function newCardFor(env: ApiEnv, rotationId: string): Promise<{ cardId: string; card: CardRuntime }> {
  const { post, get } = api(env);
  const op = env.tokens.operator;
  const r = expect(await post(`/v1/rotations/${rotationId}/new-card`, op), 201) as { card: { id: string; status: string }; personalisation: { sessionId: string; apdus: string[] } };
  assert.equal(r.card.status, "issued");
  const card = createCard(join(tempDir("cardkms-rot-card-"), `${r.card.id}.card`), randomBytes(32), { kmc: TEST_KMC, cardId: Buffer.from(r.card.id, "hex") });
  expect(await relay(post, op, r.personalisation, card), 200);
  assert.equal(expect(await get(`/v1/cards/${r.card.id}`, env.tokens.auditor), 200).status, "active");
  // Idempotent: the same card again, nothing left to personalise.
  const again = expect(await post(`/v1/rotations/${rotationId}/new-card`, op), 200) as { card: { id: string }; personalisation: null };
  assert.equal(again.card.id, r.card.id);
  assert.equal(again.personalisation, null);
  return { cardId: r.card.id, card };
}

/** A second operator: the approver of what "olga" proposes. */
const approver = async (env: ApiEnv) => (await createOperatorToken(env.server.store, `otto-${Math.random().toString(36).slice(2, 8)}`, ["operator"])).token;

/** Loads the new card's packages as its terminal does (its own token: the fetch delivers them) and checks it signs with each against its certificate. */
async function loadAndSign(env: ApiEnv, cardId: string, card: CardRuntime, expectedSlots: string[]): Promise<void> {
  const { get, post } = api(env);
  const terminal = (expect(await authenticate(post, cardId, card), 200) as { token: string }).token;
  const piv = new PivClient((a) => card.transmit(a));
  await piv.select();
  const pkgs = (expect(await get(`/v1/cards/${cardId}/packages`, terminal), 200) as { packages: { body: string }[] }).packages;
  for (const p of pkgs) await piv.loadPackage(new Uint8Array(Buffer.from(p.body, "base64")));
  const info = expect(await get(`/v1/cards/${cardId}`, env.tokens.auditor), 200) as { keyPairs: { slot: string; status: string; certificates: { serial: string }[] }[] };
  assert.deepEqual(
    info.keyPairs
      .filter((k) => k.status === "active")
      .map((k) => k.slot)
      .sort(),
    [...expectedSlots].sort(),
  );
  for (const slot of expectedSlots) {
    const der = await piv.readCertificate(parseInt(slot, 16));
    assert.ok(der, `certificate in slot ${slot}`);
    await piv.verifyPin("123456");
    const msg = randomBytes(32);
    const { signature, hash } = await piv.sign(parseInt(slot, 16), "P256", msg);
    assert.ok(verify(hash, msg, { key: new X509Certificate(der).publicKey, dsaEncoding: "der" }, signature), `slot ${slot} signs under its certificate`);
  }
}

for (const engine of testEngines()) {
  test(`rotation routes, embodiment 3 end to end on ${engine.name}`, { timeout: 10 * 60_000 }, async () => {
    const env = await issuerApiEnv(engine, { logLevel: "silent" });
    const cards: CardRuntime[] = [];
    try {
      const { post, get } = api(env);
      const op = env.tokens.operator;
      const old = await oldCardWith(env, ["9a", "9c"]);
      cards.push(old.card);

      // Propose: closed body, known strategies, operators only, one open rotation per key set.
      expect(await post(`/v1/cards/${old.cardId}/rotations`, op, { strategy: "embodiment9" }), 400);
      expect(await post(`/v1/cards/${old.cardId}/rotations`, op, { strategy: "embodiment3", extra: 1 }), 400);
      expect(await post(`/v1/cards/${old.cardId}/rotations`, env.tokens.auditor, { strategy: "embodiment3" }), 403);
      expect(await post(`/v1/cards/00112233445566778899/rotations`, op, { strategy: "embodiment3" }), 404);
      const proposed = expect(await post(`/v1/cards/${old.cardId}/rotations`, op, { strategy: "embodiment3" }), 201) as { id: string; status: string };
      assert.equal(proposed.status, "proposed");
      expect(await post(`/v1/cards/${old.cardId}/rotations`, op, { strategy: "embodiment5" }), 409);
      const id = proposed.id;

      // Nothing runs before an operator approves (para 0062).
      expect(await post(`/v1/rotations/${id}/new-card`, op), 409);
      expect(await post(`/v1/rotations/${id}/rewrap`, op), 409);
      expect(await post(`/v1/rotations/${id}/distribute`, op), 409);
      expect(await post(`/v1/rotations/nope/rewrap`, op), 404);
      expect(await get(`/v1/rotations/nope`, op), 404);
      // Four eyes: not by its proposer; another operator approves it.
      assert.match(String(expect(await post(`/v1/rotations/${id}/approve`, op), 409).detail), /four eyes: olga proposed/);
      const approved = expect(await post(`/v1/rotations/${id}/approve`, await approver(env)), 200) as { status: string; proposedBy: string };
      assert.deepEqual([approved.status, approved.proposedBy], ["approved", "olga"]);

      const fresh = await newCardFor(env, id);
      cards.push(fresh.card);
      let s = expect(await get(`/v1/rotations/${id}`, op), 200) as unknown as Status;
      assert.equal(s.rotation.status, "running");
      assert.equal(s.rotation.toCardId, fresh.cardId);
      assert.deepEqual([s.rotation.total, s.rotation.done, s.left, s.rewrap.state], [2, 0, 2, "idle"]);

      // Distribution waits for the re-wrap; the re-wrap runs in the background and is idempotent.
      expect(await post(`/v1/rotations/${id}/distribute`, op), 409);
      expect(await post(`/v1/rotations/${id}/rewrap`, op, { x: 1 }), 400);
      expect(await post(`/v1/rotations/${id}/rewrap`, op), 202);
      s = await untilRewrapSettles(env, id);
      assert.equal(s.rewrap.state, "done", JSON.stringify(s));
      assert.deepEqual([s.rotation.done, s.rotation.total, s.left], [2, 2, 0]);
      assert.ok(s.rotation.cursor > 0);
      const again = expect(await post(`/v1/rotations/${id}/rewrap`, op), 200) as unknown as Status;
      assert.equal(again.rotation.done, 2);

      // FIG. 15 row 3: every pair crosses the network again, under Sk2 (KVN 2), for the new card only.
      expect(await post(`/v1/rotations/${id}/distribute`, op, { add: [{ slot: "82", alg: "P256" }] }), 409);
      type Dist = {
        rotation: { status: string; distribution: string };
        packages: { seq: number; slot: string; kvn: number; cardId: string }[];
        added: unknown[];
        distribution: { state: string; owed: string[]; items: { slot: string; state: string }[] };
      };
      const dist = expect(await post(`/v1/rotations/${id}/distribute`, op), 200) as Dist;
      assert.deepEqual([dist.rotation.status, dist.rotation.distribution], ["running", "distributed"]);
      assert.deepEqual(
        dist.packages.map((p) => [p.slot, p.kvn, p.cardId]),
        [
          ["9a", 2, fresh.cardId],
          ["9c", 2, fresh.cardId],
        ],
      );
      assert.deepEqual(dist.added, []);
      assert.deepEqual(dist.distribution.owed, ["9a", "9c"], "owed until the new card's terminal fetches them");
      // Once per rotation: a second call gets the same result, no second set of packages.
      const again2 = expect(await post(`/v1/rotations/${id}/distribute`, op), 200) as Dist;
      assert.deepEqual(
        again2.packages.map((p) => p.seq),
        dist.packages.map((p) => p.seq),
      );
      assert.equal(expect(await get(`/v1/cards/${old.cardId}`, env.tokens.auditor), 200).status, "retired");
      await loadAndSign(env, fresh.cardId, fresh.card, ["9a", "9c"]);
      const done = expect(await get(`/v1/rotations/${id}`, env.tokens.auditor), 200) as {
        rotation: { status: string };
        distribution: { owed: string[]; items: { slot: string; state: string }[] };
        approvals: { required: number; given: { operator: string }[] };
      };
      assert.equal(done.rotation.status, "completed");
      assert.deepEqual(done.distribution.owed, []);
      assert.deepEqual(
        done.distribution.items.map((i) => [i.slot, i.state]),
        [
          ["9a", "delivered"],
          ["9c", "delivered"],
        ],
      );
      assert.equal(done.approvals.given.length, 1);

      const metrics = await env.server.app.inject({ method: "GET", url: "/metrics", headers: { authorization: `Bearer ${env.tokens.auditor}` } });
      assert.match(metrics.body, /cardkms_rotations_total\{strategy="embodiment3"\} 1/);
      const actions = await auditActions(env);
      for (const a of [
        "rotation.proposed",
        "rotation.approved",
        "rotation.started",
        "card.issued",
        "card.personalised",
        "rotation.rewrap-started",
        "rotation.rewrapped",
        "rotation.redistributed",
        "rotation.distributed",
        "rotation.completed",
      ])
        assert.ok(actions.includes(a), `audit has ${a}: ${actions.join(", ")}`);
      assert.equal((expect(await get("/v1/audit/verify", env.tokens.auditor), 200) as { ok: boolean }).ok, true);
    } finally {
      for (const c of cards) c.close();
      await env.close();
    }
  });
}

test("rotation routes, embodiment 4: the new card holds Sk1 and Sk2, nothing is re-wrapped, only the added pair is sent", { timeout: 10 * 60_000 }, async () => {
  const env = await issuerApiEnv(testEngines()[0], { logLevel: "silent" });
  const cards: CardRuntime[] = [];
  try {
    const { post, get } = api(env);
    const op = env.tokens.operator;
    const old = await oldCardWith(env, ["9a"]);
    cards.push(old.card);
    expect(
      await post(`/v1/cards/${old.cardId}/rotations`, op, {
        strategy: "embodiment4",
        add: [
          { slot: "82", alg: "P256" },
          { slot: "82", alg: "P384" },
        ],
      }),
      400,
    );
    const id = (expect(await post(`/v1/cards/${old.cardId}/rotations`, op, { strategy: "embodiment4", add: [{ slot: "82", alg: "P256" }] }), 201) as { id: string }).id;
    expect(await post(`/v1/rotations/${id}/approve`, await approver(env)), 200);
    const fresh = await newCardFor(env, id);
    cards.push(fresh.card);
    // Both scripts ran through the one relay session: KVN 1 (Sk1, the old card's) and KVN 2 (Sk2).
    const info = await readCardInfo((a) => fresh.card.transmit(a));
    assert.ok("keySets" in info);
    assert.deepEqual(info.keySets.map((k) => k.kvn).sort(), [1, 2]);

    const r = expect(await post(`/v1/rotations/${id}/rewrap`, op), 200) as unknown as Status;
    assert.equal(r.rewrap.state, "not-needed");
    expect(
      await post(`/v1/rotations/${id}/distribute`, op, {
        add: [
          { slot: "82", alg: "P256" },
          { slot: "82", alg: "P384" },
        ],
      }),
      400,
    );
    // The approval covers the additions: another list is refused by name, nothing is generated.
    assert.match(String(expect(await post(`/v1/rotations/${id}/distribute`, op, { add: [{ slot: "83", alg: "P256" }] }), 409).detail), /approved to add 82 P256, not 83 P256/);
    const dist = expect(await post(`/v1/rotations/${id}/distribute`, op, { add: [{ slot: "82", alg: "P256" }] }), 200) as { packages: { slot: string; kvn: number }[]; added: { slot: string }[] };
    assert.deepEqual(
      dist.packages.map((p) => [p.slot, p.kvn]),
      [["82", 2]],
    );
    assert.deepEqual(
      dist.added.map((a) => a.slot),
      ["82"],
    );
    const pkgs = (expect(await get(`/v1/cards/${fresh.cardId}/packages`, op), 200) as { packages: { body: string }[] }).packages;
    assert.deepEqual(
      pkgs.map((p) => packageHeader(Buffer.from(p.body, "base64")).keyRef),
      ["82"],
    );
  } finally {
    for (const c of cards) c.close();
    await env.close();
  }
});
