// Several issuer servers on one database (issue 16 §1-6), on SQLite and PostgreSQL: two real listening servers
// (startIssuerServer on 127.0.0.1, port 0) share one DB and one keystore. A key generation opened on server A runs
// there as a live relay; its rounds go alternately to B and A — B forwards them to A — and the key lands in the card.
// B refuses another principal's round itself, and A refuses it too when it comes forwarded; a forwarded round is
// never forwarded again. A server whose heartbeat is stale is gone without being asked; a server that crashed (its
// heartbeat stopped, its listener closed, nothing deregistered) is gone when B cannot reach it: the round gets
// 410 relay_server_gone, the session's row is deleted, and the key generation started again on B completes.
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { randomBytes, type KeyObject } from "node:crypto";
import { sql } from "kysely";
import { join } from "node:path";
import type { CardRuntime } from "../src/card/runtime.ts";
import { transmitFollowing } from "../src/protocol/apdu-client.ts";
import { DEFAULT_CONFIG, type IssuerConfig } from "../src/server/config.ts";
import { newInstanceId } from "../src/server/instance.ts";
import { FORWARDED_HEADER } from "../src/server/live-relay-forward.ts";
import { createOperatorToken, startIssuerServer, type IssuerServer } from "../src/server/main.ts";
import { SqlLiveRelaySessions, SqlServerInstances } from "../src/store/server-instances.ts";
import { testEngines, type TestEngine } from "./support/store-testing.ts";
import { api, type ApiEnv, expect, issueAndPersonalise, keygenOverApi, registeredData } from "./api-env.ts";
import { tempDir } from "./helpers.ts";
import { importTestKmc } from "./kmc.ts";
import { cardSignsFor, loseKey, makeArbitrators } from "./recovery-fixture.ts";
import { signApproval, signApproverList } from "../src/recovery/approvals.ts";
import { releaseSharesFor } from "../src/recovery/service.ts";
import { openShare } from "../src/recovery/shares.ts";
import type { PendingJson, RequestJson } from "../src/terminal/recovery-client.ts";

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
const unhex = (s: string) => new Uint8Array(Buffer.from(s, "hex"));

interface Answer {
  status: number;
  type: string;
  body: Record<string, unknown>;
}

/** A POST over the network to a listening server, as a terminal (or a load balancer in front of it) sends it. */
async function post(server: IssuerServer, path: string, token: string, body: unknown, headers: Record<string, string> = {}): Promise<Answer> {
  const r = await fetch(server.url + path, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
  });
  return { status: r.status, type: r.headers.get("content-type") ?? "", body: (await r.json()) as Record<string, unknown> };
}

function expectStatus(a: Answer, status: number): Record<string, unknown> {
  assert.equal(a.status, status, JSON.stringify(a.body));
  if (status >= 400) assert.match(a.type, /^application\/problem\+json/);
  return a.body;
}

/** The card's answers to the APDUs of one step. */
async function answer(card: CardRuntime, apdus: string[]): Promise<string[]> {
  const out: string[] = [];
  for (const a of apdus) out.push(hex(await transmitFollowing((x) => card.transmit(x), unhex(a))));
  return out;
}

/** What a crash leaves: the heartbeat stops and the listener is gone, nothing deregistered, the row stays fresh. */
async function crash(server: IssuerServer): Promise<void> {
  await server.presence!.halt();
  await new Promise<void>((resolve) => {
    server.app.server.close(() => resolve());
    server.app.server.closeAllConnections();
  });
}

/**
 * Two listening servers on one fresh DB and keystore, closed when the test ends: A, where a card was issued and
 * personalised for Hanako Yamada, and B, started after (the software keystore is read at start, so B sees the card's
 * keys). Operators olga and oscar, auditor arno.
 */
async function twoServers(t: TestContext, engine: TestEngine) {
  const dir = tempDir("cardkms-live-servers-");
  const tdb = await engine.create();
  const env: NodeJS.ProcessEnv = { CARDKMS_KEYSTORE_KEY: randomBytes(32).toString("hex"), CARDKMS_WEBHOOK_SECRET: randomBytes(32).toString("hex") };
  const config: IssuerConfig = {
    ...DEFAULT_CONFIG,
    listen: { host: "127.0.0.1", port: 0 },
    database: tdb.url,
    custody: { kind: "software", keystore: join(dir, "keystore.json") },
    ca: { mode: "local", subject: "CN=cardkms test CA, O=cardkms, C=JP" },
    crlUrl: "http://127.0.0.1:8443/v1/crl",
    logLevel: "warn",
  };
  const started: IssuerServer[] = [];
  const cards: CardRuntime[] = [];
  t.after(async () => {
    for (const c of cards) c.close();
    for (const s of started.reverse()) await s.close();
    await tdb.drop();
  });
  const start = async () => {
    const s = await startIssuerServer(config, { env, handleSignals: false, instanceId: newInstanceId() });
    started.push(s);
    return s;
  };
  const A = await start();
  await importTestKmc(A.custody);
  const olga = (await createOperatorToken(A.store, "olga", ["operator"])).token;
  const oscar = (await createOperatorToken(A.store, "oscar", ["operator"])).token;
  const arno = (await createOperatorToken(A.store, "arno", ["auditor"])).token;
  const envA: ApiEnv = { server: A, database: tdb.url, tokens: { admin: "", operator: olga, auditor: arno }, logs: [], close: async () => {}, startAnother: async () => start() };
  const { cardId, card } = await issueAndPersonalise(envA, "Hanako Yamada");
  cards.push(card);
  const B = await start();
  return { A, B, envA, olga, oscar, arno, cardId, card, servers: new SqlServerInstances(A.store.db), rows: new SqlLiveRelaySessions(A.store.db) };
}

for (const engine of testEngines()) {
  test(
    `${engine.name}: two servers on one database — live relay rounds on either server, another principal refused, a crashed owner's session gone and started again`,
    { timeout: 10 * 60_000 },
    async (t) => {
      const { A, B, olga, oscar, cardId, card, servers, rows } = await twoServers(t, engine);
      const keygen = { slot: "9a", alg: "P256", personalData: registeredData("Hanako Yamada") };
      const round = (server: IssuerServer, sessionId: string, responses: string[], token = olga, headers: Record<string, string> = {}) =>
        post(server, `/v1/keygen/sessions/${sessionId}`, token, { responses }, headers);

      await t.test("each server registered itself with the URL it listens at, under its own instance id", async () => {
        assert.notEqual(A.instanceId, B.instanceId);
        assert.equal((await servers.get(A.instanceId))?.advertiseUrl, A.url);
        assert.equal((await servers.get(B.instanceId))?.advertiseUrl, B.url);
      });

      await t.test("opened on A, rounds alternately through B and A: the key is issued into the card", async () => {
        const opened = expectStatus(await post(A, `/v1/cards/${cardId}/keygen`, olga, keygen), 201) as { sessionId: string; apdus: string[] };
        const { sessionId } = opened;
        const row = await rows.get(sessionId);
        assert.equal(row?.instanceId, A.instanceId, "the session's row names the server running it");
        assert.equal(row?.owner, "olga");
        assert.equal(row?.kind, "keygen");
        const responses = await answer(card, opened.apdus);

        // before the card's answer goes anywhere: what must be refused
        const other = expectStatus(await round(B, sessionId, responses, oscar), 403);
        assert.match(String(other.detail), /another principal/);
        expectStatus(await round(A, sessionId, responses, oscar, { [FORWARDED_HEADER]: "1" }), 403); // the owner checks the principal itself
        expectStatus(await round(B, sessionId, responses, olga, { [FORWARDED_HEADER]: "1" }), 404); // never forwarded twice
        expectStatus(await post(B, `/v1/recovery/sessions/${sessionId}`, olga, { responses }), 404); // only to the same kind of session

        let step: { apdus?: string[]; result?: Record<string, unknown> } = expectStatus(await round(B, sessionId, responses), 200);
        let rounds = 1;
        while (step.apdus) {
          const via = rounds % 2 === 0 ? B : A;
          step = expectStatus(await round(via, sessionId, await answer(card, step.apdus)), 200);
          rounds++;
        }
        assert.ok(rounds >= 2, `${rounds} rounds: through both servers`);
        const result = step.result as { cardId: string; slot: string; certificate: string };
        assert.equal(result.cardId, cardId);
        assert.equal(result.slot, "9a");
        const der = new Uint8Array(Buffer.from(result.certificate.replace(/-----[^-]+-----|\s/g, ""), "base64"));
        assert.ok(await cardSignsFor((x) => card.transmit(x), "9a", "P256", der), "the card signs under the issued certificate");
        assert.equal(await rows.get(sessionId), undefined, "the finished session's row is gone");
        expectStatus(await round(B, sessionId, ["9000"]), 404);
      });

      await t.test("a server whose heartbeat is stale is gone: 410 relay_server_gone without asking it, its session's row deleted", async () => {
        const opened = expectStatus(await post(A, `/v1/cards/${cardId}/keygen`, olga, keygen), 201) as { sessionId: string; apdus: string[] };
        await A.presence!.halt();
        await servers.heartbeat(A.instanceId, Date.now() - 10 * 60_000);
        const gone = expectStatus(await round(B, opened.sessionId, await answer(card, opened.apdus)), 410);
        assert.equal(gone.check, "relay_server_gone");
        assert.match(String(gone.detail), /stopped .*start the operation again/);
        assert.equal(await rows.get(opened.sessionId), undefined);
        await A.presence!.start(); // A heartbeats again (its session still runs there, unreachable through B)
        assert.ok((await servers.get(A.instanceId))!.heartbeatAt > Date.now() - 60_000);
      });

      await t.test("A crashes mid-session: B cannot reach it and answers 410 relay_server_gone; started again on B, the key is issued", async () => {
        const opened = expectStatus(await post(A, `/v1/cards/${cardId}/keygen`, olga, keygen), 201) as { sessionId: string; apdus: string[] };
        await crash(A);
        assert.ok(await servers.get(A.instanceId), "nothing deregistered A");
        const gone = expectStatus(await round(B, opened.sessionId, await answer(card, opened.apdus)), 410);
        assert.equal(gone.check, "relay_server_gone");
        assert.equal(await rows.get(opened.sessionId), undefined, "the lost session's row is deleted");
        expectStatus(await round(B, opened.sessionId, ["9000"]), 404);

        const again = expectStatus(await post(B, `/v1/cards/${cardId}/keygen`, olga, { ...keygen, slot: "9c" }), 201) as { sessionId: string; apdus?: string[] };
        assert.equal((await rows.get(again.sessionId))?.instanceId, B.instanceId);
        let step: { apdus?: string[]; result?: Record<string, unknown> } = again;
        while (step.apdus) step = expectStatus(await round(B, again.sessionId, await answer(card, step.apdus)), 200);
        const result = step.result as { slot: string; certificate: string };
        assert.equal(result.slot, "9c");
        const der = new Uint8Array(Buffer.from(result.certificate.replace(/-----[^-]+-----|\s/g, ""), "base64"));
        assert.ok(await cardSignsFor((x) => card.transmit(x), "9c", "P256", der));
      });

      await t.test("a server that closes deregisters: its row and its sessions' rows are gone", async () => {
        await B.close();
        assert.equal(await servers.get(B.instanceId), undefined);
      });
    },
  );

  test(
    `${engine.name}: a reproduction whose server crashed — 410 on B; a new one refused while the claim's lease runs, then takes the request over; the gone one writes nothing`,
    { timeout: 10 * 60_000 },
    async (t) => {
      const { A, B, envA, olga, cardId, card, rows } = await twoServers(t, engine);
      const { get, post: inject, put } = api(envA);
      // the key, escrowed under a one-arbitrator policy, then lost from the card; the request approved (seed 001 S5-S7)
      const { registry, keys } = makeArbitrators(["user"]);
      const u = registry.require("user");
      const pem = (k: KeyObject) => k.export({ format: "pem", type: "spki" }) as string;
      expect(await inject("/v1/recovery/arbitrators", olga, { id: "user", signingPublicKey: pem(u.signingKey), encryptionPublicKey: pem(u.encryptionKey) }), 201);
      const token = (expect(await inject("/v1/recovery/arbitrators/user/tokens", olga), 201) as { token: string }).token;
      expect(await put(`/v1/cards/${cardId}/recovery-policy`, olga, { version: 1, author: "user", indispensable: ["user"], groups: [], order: [] }), 200);
      const { certificateDer } = await keygenOverApi(envA, cardId, card, { slot: "9c", alg: "P256", personalData: registeredData("Hanako Yamada"), escrow: true });
      const transmit = (a: Uint8Array) => card.transmit(a);
      await loseKey(transmit, "9c");
      assert.equal(await cardSignsFor(transmit, "9c", "P256", certificateDer), false);
      const rid = (expect(await inject("/v1/recovery/requests", olga, { cardId, kind: "key-lost", requester: "user" }), 201) as unknown as RequestJson).requestId;
      const item = (expect(await get("/v1/recovery/arbitrators/user/pending", token), 200) as { pending: PendingJson[] }).pending[0] as Extract<PendingJson, { action: "decide" }>;
      const device = Buffer.from((expect(await get("/v1/recovery/device-key", token), 200) as { spki: string }).spki, "base64");
      const v = item.request;
      const approval = signApproval(v.request, v.chainHead, { arbitrator: "user", decision: "approve" }, keys.get("user")!.signing);
      const releases = releaseSharesFor(v.request, item.envelopes, (e) => openShare(e, keys.get("user")!.encryption, { escrowId: v.escrowId, cardId: v.cardId }), new Uint8Array(device));
      expect(await inject(`/v1/recovery/requests/${rid}/approvals`, token, { approval, releases }), 200);
      const listed = (expect(await get("/v1/recovery/arbitrators/user/pending", token), 200) as { pending: PendingJson[] }).pending[0];
      const approverList = signApproverList(listed.request.request, listed.request.approvals, "user", keys.get("user")!.signing);
      expect(await inject(`/v1/recovery/requests/${rid}/approver-list`, token, { approverList }), 200);
      const status = async () => (await B.recovery.status(rid)).status;

      // reproduction opened on A, which crashes while the card's first answer is on its way through B
      const opened = expectStatus(await post(A, `/v1/recovery/requests/${rid}/reproduce`, olga, {}), 201) as { sessionId: string; apdus: string[] };
      assert.equal((await rows.get(opened.sessionId))?.kind, "reproduction");
      await crash(A);
      const round = (sessionId: string, responses: string[]) => post(B, `/v1/recovery/sessions/${sessionId}`, olga, { responses });
      assert.equal(expectStatus(await round(opened.sessionId, await answer(card, opened.apdus)), 410).check, "relay_server_gone");
      assert.equal(await rows.get(opened.sessionId), undefined);

      // one writer: the gone reproduction's claim holds the request until its lease passes
      assert.equal(await status(), "reproducing");
      const held = expectStatus(await post(B, `/v1/recovery/requests/${rid}/reproduce`, olga, {}), 409);
      assert.equal(held.check, "request_closed");
      assert.match(String(held.detail), /being reproduced by olga; its lease runs until/);
      // the lease passes (what 10 minutes would do): B's reproduction takes the request over, audited, and completes
      await sql`update recovery_requests set reproduction_lease_until = ${Date.now() - 1000} where request_id = ${rid}`.execute(B.store.db);
      const again = expectStatus(await post(B, `/v1/recovery/requests/${rid}/reproduce`, olga, {}), 201) as { sessionId: string; apdus?: string[] };
      let step: { apdus?: string[]; result?: Record<string, unknown> } = again;
      while (step.apdus) step = expectStatus(await round(again.sessionId, await answer(card, step.apdus)), 200);
      assert.deepEqual((step.result as { approvers: string[] }).approvers, ["user"]);
      assert.ok(await cardSignsFor(transmit, "9c", "P256", certificateDer), "the key is back in the card");
      assert.equal(await status(), "reproduced");
      const takeovers = await B.store.db.selectFrom("audit_log").select(["action", "actor"]).where("action", "=", "recovery.reproduce.takeover").execute();
      assert.equal(takeovers.length, 1);

      // A's process ends its reproduction at last (its parked APDU refused): its claim is gone, it changes nothing
      await A.close();
      assert.equal(await status(), "reproduced");
    },
  );
}
