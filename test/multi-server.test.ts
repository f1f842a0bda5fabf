// Issue 16 §1 through the API: two issuer servers on one database behave as one. Server B is a second app built on
// another connection to A's database and the same key custody (as two processes behind a load balancer share the
// database and the HSM); a terminal's next request lands on either:
//   - a personalisation opened on A takes its rounds on B and A, and the card is active; its script is built the same
//     on both servers (the recipe rebuilds it from the DB); another principal's round is refused (403);
//   - an online delivery's round replayed after it was taken (on the other server) is refused and the session ends;
//     the card-state gate applies on every round, whichever server takes it;
//   - a card login begun on A finishes on B, the token B issued works on A, a handshake is finished once, and the
//     per-card token bound (oldest retired) holds across the servers.
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { sql } from "kysely";
import { join } from "node:path";
import { createCard } from "../src/card/card.ts";
import type { CardRuntime } from "../src/card/runtime.ts";
import { transmitFollowing } from "../src/protocol/apdu-client.ts";
import { buildIssuerApp, createOperatorToken, type IssuerApp } from "../src/server/main.ts";
import { Store } from "../src/store/store.ts";
import { testEngines } from "./support/store-testing.ts";
import { api, apiEnvFor, expect, issueAndPersonalise, registeredData, type ApiEnv } from "./api-env.ts";
import { tempDir } from "./helpers.ts";
import { TEST_KMC } from "./kmc.ts";

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
const unhex = (s: string) => new Uint8Array(Buffer.from(s, "hex"));

/** Server B: another app on another connection to A's database, over the same custody and CA. */
async function serverB(t: TestContext, env: ApiEnv): Promise<{ env: ApiEnv; built: IssuerApp }> {
  const store = await Store.open(env.database);
  const built = await buildIssuerApp({ store, custody: env.server.custody, ca: env.server.issuer.ca, logger: false });
  await built.app.ready();
  t.after(async () => {
    await built.app.close();
    await store.close();
  });
  return { env: { ...env, server: { ...env.server, app: built.app } } as ApiEnv, built };
}

/** The card's answers to one round of APDUs (hex). */
async function answer(card: CardRuntime, apdus: string[]): Promise<string[]> {
  const out: string[] = [];
  for (const a of apdus) out.push(hex(await transmitFollowing((x) => card.transmit(x), unhex(a))));
  return out;
}

for (const engine of testEngines()) {
  test(`${engine.name}: a personalisation opened on server A completes on server B; online delivery rounds cross servers, a taken round is never taken again`, { timeout: 10 * 60_000 }, async (t) => {
    const { env, cards } = await apiEnvFor(t, engine, { logLevel: "silent" });
    const { env: envB, built: b } = await serverB(t, env);
    const A = api(env);
    const B = api(envB);
    const op = env.tokens.operator;
    const other = (await createOperatorToken(env.server.store, "otto", ["operator"])).token;

    const user = expect(await A.post("/v1/users", op, { personalData: registeredData("Mika Ito") }), 201);
    const cardId = (expect(await A.post("/v1/cards", op, { userId: user.id }), 201) as { card: { id: string } }).card.id;
    // the recipe builds the same script on both servers, and again on the same one (deterministic PUT KEY and KCVs)
    const scriptA = await env.server.issuer.personalisationScriptFor(cardId);
    assert.deepEqual((await b.issuer.personalisationScriptFor(cardId)).commands, scriptA.commands);
    assert.deepEqual((await env.server.issuer.personalisationScriptFor(cardId)).commands, scriptA.commands);
    const card = createCard(join(tempDir("cardkms-multi-"), `${cardId}.card`), randomBytes(32), { kmc: TEST_KMC, cardId: Buffer.from(cardId, "hex") });
    cards.push(card);

    const start = expect(await A.post(`/v1/cards/${cardId}/personalisation`, op), 201) as { sessionId: string; apdus: string[] };
    const round1 = await answer(card, start.apdus);
    expect(await B.post(`/v1/relay/${start.sessionId}`, other, { responses: round1 }), 403);
    const step2 = expect(await B.post(`/v1/relay/${start.sessionId}`, op, { responses: round1 }), 200) as { apdus: string[] };
    const round2 = await answer(card, step2.apdus);
    const done = expect(await A.post(`/v1/relay/${start.sessionId}`, op, { responses: round2 }), 200) as { done: boolean; results: { sw: number }[] };
    assert.equal(done.done, true);
    assert.ok(done.results.every((r) => r.sw === 0x9000));
    assert.equal(expect(await B.get(`/v1/cards/${cardId}`, env.tokens.auditor), 200).status, "active");
    expect(await B.post(`/v1/relay/${start.sessionId}`, op, { responses: round2 }), 404);

    // online delivery: the same script on both servers (Sk[PRk] is read from the DB)
    const cred = expect(await B.post(`/v1/cards/${cardId}/credentials`, op, { slot: "9a", alg: "P256" }), 201) as { keyPairId: string };
    assert.deepEqual((await b.issuer.onlineDeliveryScript(cardId, cred.keyPairId)).commands, (await env.server.issuer.onlineDeliveryScript(cardId, cred.keyPairId)).commands);
    const online = `/v1/cards/${cardId}/credentials/${cred.keyPairId}/online`;

    // a round taken on B, replayed on A: refused, and the session ends
    const s1 = expect(await A.post(online, op), 201) as { sessionId: string; apdus: string[] };
    const r1 = await answer(card, s1.apdus);
    expect(await B.post(`/v1/relay/${s1.sessionId}`, op, { responses: r1 }), 200);
    expect(await A.post(`/v1/relay/${s1.sessionId}`, op, { responses: r1 }), 422);
    expect(await B.post(`/v1/relay/${s1.sessionId}`, op, { responses: r1 }), 404);

    // the card-state gate on every round, on whichever server: a card suspended through B stops A's round
    const s2 = expect(await A.post(online, op), 201) as { sessionId: string; apdus: string[] };
    const r2 = await answer(card, s2.apdus);
    expect(await B.post(`/v1/cards/${cardId}/suspend`, op, { reason: "mislaid" }), 200);
    const refused = expect(await A.post(`/v1/relay/${s2.sessionId}`, op, { responses: r2 }), 409);
    assert.equal(refused.check, "card_state");
    expect(await A.post(`/v1/cards/${cardId}/resume`, op, { reason: "found" }), 200);

    // and an honest delivery: round 1 on A, round 2 on B
    const s3 = expect(await B.post(online, op), 201) as { sessionId: string; apdus: string[] };
    const n3 = expect(await A.post(`/v1/relay/${s3.sessionId}`, op, { responses: await answer(card, s3.apdus) }), 200) as { apdus: string[] };
    // what the DB holds between the rounds: no session key (custody derives them again from the challenges)
    const row = await sql<{ owner: string; recipe: string; state: string }>`select owner, recipe, state from relay_sessions where id = ${s3.sessionId}`.execute(env.server.store.db);
    const kept = JSON.stringify(row.rows[0]).toLowerCase();
    const host = (JSON.parse(row.rows[0].state) as { relay: { host: { hostChallenge: string; initUpdate: string } } }).relay.host;
    const keys = env.server.issuer.keysOf(await env.server.issuer.currentKeySet(await env.server.issuer.card(cardId)));
    assert.ok("custody" in keys);
    const m = await keys.custody.scp03Session(keys.ref, unhex(host.hostChallenge), unhex(host.initUpdate).subarray(13, 21));
    for (const k of [m.sEnc, m.sMac, m.sRmac]) assert.ok(!kept.includes(hex(k)), "no session key in the relay session's row");
    assert.deepEqual(JSON.parse(row.rows[0].recipe), { kind: "online-delivery", cardId, keyPairId: cred.keyPairId });
    const d3 = expect(await B.post(`/v1/relay/${s3.sessionId}`, op, { responses: await answer(card, n3.apdus) }), 200) as { done: boolean };
    assert.equal(d3.done, true);
    const audit = expect(await A.get("/v1/audit?limit=1000", env.tokens.auditor), 200) as { entries: { action: string; subject: string; details: { path?: string } }[] };
    assert.equal(audit.entries.filter((e) => e.action === "credential.delivered" && e.subject === cardId && e.details.path === "online").length, 1, "delivered once");
  });

  test(`${engine.name}: a card login begun on server A finishes on server B; B's token works on A; the per-card token bound holds across servers`, { timeout: 10 * 60_000 }, async (t) => {
    const { env, cards } = await apiEnvFor(t, engine, { logLevel: "silent" });
    const { env: envB } = await serverB(t, env);
    const A = api(env);
    const B = api(envB);
    const alice = await issueAndPersonalise(env, "Aiko Sato");
    cards.push(alice.card);
    const cardId = alice.cardId;

    const login = async (begin: typeof A, finish: typeof A) => {
      const start = expect(await begin.post(`/v1/cards/${cardId}/auth`), 201) as { sessionId: string; apdus: string[] };
      const responses = await answer(alice.card, start.apdus);
      const r = await finish.post(`/v1/cards/${cardId}/auth/${start.sessionId}`, undefined, { responses });
      const body = expect(r, 200) as { token: string; apdus: string[] };
      await answer(alice.card, body.apdus);
      return { token: body.token, start, responses };
    };
    const first = await login(A, B);
    expect(await A.get(`/v1/cards/${cardId}/packages`, first.token), 200);
    expect(await B.get(`/v1/cards/${cardId}/packages`, first.token), 200);
    // the handshake was finished once: not again, on either server
    expect(await A.post(`/v1/cards/${cardId}/auth/${first.start.sessionId}`, undefined, { responses: first.responses }), 404);

    // four tokens per card (default): the fifth login, on either server, retires the first everywhere
    const more = [await login(B, A), await login(A, A), await login(B, B), await login(A, B)];
    expect(await A.get(`/v1/cards/${cardId}/packages`, first.token), 401);
    expect(await B.get(`/v1/cards/${cardId}/packages`, first.token), 401);
    for (const m of more) expect(await (m === more[0] ? A : B).get(`/v1/cards/${cardId}/packages`, m.token), 200);
  });
}
