// Issue 16 §6 "Prove it": the product's flows on three `cardkms issuer serve` processes on one PostgreSQL (test/
// cluster-env.ts, the keystore kept in the store: custody.keystoreBackend "store"), each consecutive HTTP step sent
// to the next server round-robin — what a load balancer without affinity does. The card side is a virtual card in
// this process; test/api-env.ts's helpers (issueAndPersonalise, relay, authenticate, liveRelay, keygenOverApi) drive
// it through an ApiEnv whose every request goes to the next server.
//
//   a. issuance: user, card, the personalisation relay opened on one server and its rounds on the other two;
//   b. card login begun on one server and finished on another, the token used on the third; packages fetched and
//      acknowledged; an online delivery relay across servers; a small card that overflows to the terminal's store
//      and brings a key back (the user terminal over a round-robin client);
//   c. a card-key rotation with re-wrap for each FIG. 15 strategy, each step on another server, and GET
//      /rotations/{id} the same on every server;
//   d. a backup through the card's token, and a key reproduction with the arbitrator's approval whose live relay
//      rounds alternate servers (forwarded to the owner).
// Then SIGKILL: (i) the server that answered round 1 of a personalisation: round 2 on another server completes;
// (ii) the server holding a re-wrap job's lease, the job held mid-way (a row this test inserts, uncommitted, under
// the new key set makes the job's third page wait for it): another server takes the lease over and every key is
// re-wrapped exactly once. Last: `cardkms audit verify` passes and the audit seq is 1..n.
// CARDKMS_CLUSTER_LOGS=1 prints the servers' logs when the file ends.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes, type KeyObject } from "node:crypto";
import { join } from "node:path";
import { createCard } from "../src/card/card.ts";
import type { CardRuntime } from "../src/card/runtime.ts";
import { transmitFollowing } from "../src/protocol/apdu-client.ts";
import { decipherWithCard, encipherForCard, recipientOf } from "../src/protocol/enciphered.ts";
import { PivClient, SLOT } from "../src/protocol/piv/client.ts";
import { FIG15, type RotationStrategy } from "../src/issuer/rotation.ts";
import { signApproval, signApproverList } from "../src/recovery/approvals.ts";
import { releaseSharesFor } from "../src/recovery/service.ts";
import { openShare } from "../src/recovery/shares.ts";
import type { IssuerServer } from "../src/server/main.ts";
import { SqlCustodyBindings } from "../src/store/custody-keystore.ts";
import { SqlServerInstances } from "../src/store/server-instances.ts";
import { IssuerApiClient } from "../src/terminal/api-client.ts";
import { OverflowStore } from "../src/terminal/overflow.ts";
import type { PendingJson, RequestJson } from "../src/terminal/recovery-client.ts";
import { UserTerminal } from "../src/terminal/terminal.ts";
import { InProcessTransport } from "../src/transport/transport.ts";
import { api, authenticate, expect, issueAndPersonalise, keygenOverApi, liveRelay, registeredData, relay, type ApiEnv } from "./api-env.ts";
import { startCluster, storeKeystore, type Cluster } from "./cluster-env.ts";
import { cliJson, runCli, tempDir } from "./helpers.ts";
import { TEST_KMC } from "./kmc.ts";
import { cardSignsFor, loseKey, makeArbitrators } from "./recovery-fixture.ts";
import { testEngines } from "./support/store-testing.ts";

const dir = tempDir("cardkms-cluster-flows-");
const PG_OFF = !testEngines().some((e) => e.name === "postgres") && "CARDKMS_TEST_PG=off: a cluster runs on PostgreSQL";
const HANG = { timeout: 10 * 60_000, skip: PG_OFF };
/** Hang detector for one HTTP call, never a speed check. */
const CALL_HANG_MS = 5 * 60_000;
/** The job lease (short, so a takeover after a SIGKILL comes soon) and the re-wrap page (small, so a job has pages). */
const LEASE_MS = 2_000;
const PAGE = 2;

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
const unhex = (s: string) => new Uint8Array(Buffer.from(s, "hex"));

let c: Cluster;
const cards: CardRuntime[] = [];
before(async () => {
  if (PG_OFF) return;
  c = await startCluster({
    custody: storeKeystore,
    settings: { rotations: { approvals: 1, rewrapPageSize: PAGE }, jobs: { pollMs: 100, leaseMs: LEASE_MS } },
  });
});
after(async () => {
  for (const card of cards) card.close();
  if (process.env.CARDKMS_CLUSTER_LOGS) for (const i of c?.urls.keys() ?? []) process.stderr.write(`---- server ${i}\n${c.logs(i)}\n`);
  await c?.stop();
});

// ---- every request to the next server ------------------------------------------------------------------------------

/** Servers this file killed and has not brought back: the round-robin passes them by. */
const down = new Set<number>();
/** Which server took each request, in order (the round-robin checked, not assumed). */
const calls: { server: number; method: string; url: string; status: number; rr: boolean }[] = [];
let turn = 0;

interface InjectLike {
  method: string;
  url: string;
  headers?: Record<string, string>;
  payload?: unknown;
}

async function callOn(i: number, o: InjectLike, rr = false) {
  const headers: Record<string, string> = { ...o.headers };
  if (o.payload !== undefined) headers["content-type"] = "application/json";
  const r = await fetch(c.urls[i] + o.url, { method: o.method, headers, body: o.payload === undefined ? undefined : JSON.stringify(o.payload), signal: AbortSignal.timeout(CALL_HANG_MS) });
  const text = await r.text();
  calls.push({ server: i, method: o.method, url: o.url, status: r.status, rr });
  return { statusCode: r.status, headers: Object.fromEntries(r.headers), body: text, json: () => JSON.parse(text) as Record<string, unknown> };
}

function nextServer(): number {
  for (let k = 0; k < c.urls.length; k++) {
    const i = turn++ % c.urls.length;
    if (!down.has(i)) return i;
  }
  throw new Error("every server is down");
}

/** An ApiEnv (test/api-env.ts) whose app.inject sends each request to the next live server over HTTP. */
function roundRobin(): ApiEnv {
  const inject = (o: InjectLike) => callOn(nextServer(), o, true);
  return {
    server: { app: { inject } } as unknown as IssuerServer,
    database: c.database,
    tokens: { admin: c.tokens.admin, operator: c.tokens.operator, auditor: c.tokens.auditor },
    logs: [],
    startAnother: () => Promise.reject(new Error("not here")),
    close: async () => {},
  };
}

/** Server `i` alone, for the steps a test places on purpose. */
function on(i: number) {
  const inject = (o: InjectLike) => callOn(i, o);
  return api({ server: { app: { inject } } } as unknown as ApiEnv);
}

/** An IssuerApiClient (for the user terminal) whose every call goes to the next live server; withToken keeps that. */
function roundRobinClient(token?: string): IssuerApiClient {
  const clients = c.urls.map((server) => new IssuerApiClient({ server, token }));
  const spread = (cl: IssuerApiClient[]): IssuerApiClient =>
    new Proxy(cl[0], {
      get(_t, k) {
        if (k === "withToken") return (tok: string | undefined) => spread(cl.map((x) => x.withToken(tok)));
        const i = nextServer();
        const target = cl[i];
        const v = Reflect.get(target, k, target) as unknown;
        if (typeof v !== "function") return v;
        calls.push({ server: i, method: String(k), url: "terminal", status: 0, rr: false });
        return (v as (...a: unknown[]) => unknown).bind(target);
      },
    });
  return spread(clients);
}

/** The round-robin calls since `from` went to a different server each time, and reached every live server. */
function assertSpread(from: number, what: string): void {
  const servers = calls
    .slice(from)
    .filter((x) => x.rr)
    .map((x) => x.server);
  assert.ok(servers.length >= 2, `${what}: ${servers.length} calls`);
  for (let k = 1; k < servers.length; k++) assert.notEqual(servers[k], servers[k - 1], `${what}: consecutive calls on one server: ${servers.join(",")}`);
  assert.equal(new Set(servers).size, Math.min(3 - down.size, servers.length), `${what}: every live server took a step (${servers.join(",")})`);
}

const answer = async (card: CardRuntime, apdus: string[]) => {
  const out: string[] = [];
  for (const a of apdus) out.push(hex(await transmitFollowing((x) => card.transmit(x), unhex(a))));
  return out;
};

function virtualCard(cardId: string, capacity?: number): CardRuntime {
  const card = createCard(join(dir, `${cardId}.card`), randomBytes(32), { kmc: TEST_KMC, cardId: Buffer.from(cardId, "hex"), ...(capacity ? { capacity } : {}) });
  cards.push(card);
  return card;
}

/** The terminal's part of ST22-ST25 with the card's token: fetch, load each, acknowledge; the seqs loaded. */
async function syncPackages(env: ApiEnv, cardId: string, card: CardRuntime, token: string): Promise<number[]> {
  const { get, post } = api(env);
  const r = expect(await get(`/v1/cards/${cardId}/packages`, token), 200) as { packages: { seq: number; body: string }[] };
  const piv = new PivClient((a) => card.transmit(a));
  await piv.select();
  for (const p of r.packages) {
    await piv.loadPackage(new Uint8Array(Buffer.from(p.body, "base64")));
    expect(await post(`/v1/cards/${cardId}/packages/${p.seq}/ack`, token), 204);
  }
  return r.packages.map((p) => p.seq);
}

const derOf = (pem: string) => new Uint8Array(Buffer.from(pem.replace(/-----[^-]+-----|\s/g, ""), "base64"));

type RotationStatus = {
  rotation: { id: string; status: string; done: number; total: number; fromKeySetId: string; toKeySetId: string | null };
  rewrap: { state: string; job?: { id: string; state: string; leaseOwner: string | null; attempts: number } };
};

/** GET /rotations/{id} on every live server: the same answer (from the database), returned. */
async function sameOnEveryServer(id: string): Promise<RotationStatus> {
  const live = c.urls.map((_, i) => i).filter((i) => !down.has(i));
  const seen = [];
  for (const i of live) seen.push(expect(await on(i).get(`/v1/rotations/${id}`, c.tokens.auditor), 200) as unknown as RotationStatus);
  for (const [k, s] of seen.entries()) assert.deepEqual(s, seen[0], `server ${live[k]} reports the rotation as server ${live[0]} does`);
  return seen[0];
}

/** Polls GET /rotations/{id} round-robin until the re-wrap is no longer running (hang detector: the test's timeout). */
async function rewrapSettled(id: string): Promise<RotationStatus> {
  const { get } = api(roundRobin());
  for (;;) {
    const s = expect(await get(`/v1/rotations/${id}`, c.tokens.auditor), 200) as unknown as RotationStatus;
    if (s.rewrap.state !== "running") return s;
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function wrappedCount(keySetId: string): Promise<number> {
  const r = await c.tdb.db
    .selectFrom("wrapped_keys")
    .select((eb) => eb.fn.countAll().as("n"))
    .where("key_set_id", "=", keySetId)
    .executeTakeFirstOrThrow();
  return Number(r.n);
}

async function duplicates(keySetId: string) {
  return c.tdb.db
    .selectFrom("wrapped_keys")
    .select("key_pair_id")
    .where("key_set_id", "=", keySetId)
    .groupBy("key_pair_id")
    .having((eb) => eb.fn.countAll(), ">", 1)
    .execute();
}

// ---- a, b ------------------------------------------------------------------------------------------------------------

test("a, b: issuance, card login, packages, online delivery and overflow, every step on the next server", HANG, async (t) => {
  const rr = roundRobin();
  const { get, post } = api(rr);
  const op = c.tokens.operator;

  await t.test("a: user and card; the personalisation relay opened on one server, its rounds on the other two", async () => {
    const from = calls.length;
    const aiko = await issueAndPersonalise(rr, "Aiko Cluster");
    cards.push(aiko.card);
    assertSpread(from, "issuance");
    const relayCalls = calls.slice(from).filter((x) => /\/personalisation$|\/v1\/relay\//.test(x.url));
    assert.ok(relayCalls.length >= 3, `open and two rounds at least: ${JSON.stringify(relayCalls)}`);
    assert.equal(new Set(relayCalls.slice(0, 3).map((x) => x.server)).size, 3, "open and rounds on three different servers");

    // b: login begun on one server, finished on the next, the token used on the third: fetch, load, acknowledge
    const cred = expect(await post(`/v1/cards/${aiko.cardId}/credentials`, op, { slot: "9a", alg: "P256" }), 201) as { packageSeq: number; certificate: string };
    const loginFrom = calls.length;
    const token = (expect(await authenticate(post, aiko.cardId, aiko.card), 200) as { token: string }).token;
    const seqs = await syncPackages(rr, aiko.cardId, aiko.card, token);
    assert.deepEqual(seqs, [cred.packageSeq]);
    const login = calls.slice(loginFrom, loginFrom + 3).map((x) => x.server);
    assert.equal(new Set(login).size, 3, `auth begin, auth finish and the token's first use on three servers: ${login}`);
    assertSpread(loginFrom, "login and packages");
    assert.ok(await cardSignsFor((a) => aiko.card.transmit(a), "9a", "P256", derOf(cred.certificate)), "the card signs with the key delivered");
    const listed = expect(await get(`/v1/cards/${aiko.cardId}/packages`, token), 200) as { packages: { seq: number; status?: string }[] };
    assert.deepEqual(
      listed.packages.map((p) => [p.seq, p.status]),
      [[cred.packageSeq, "acknowledged"]],
    );
    // the token is this card's: another card's packages are refused on every server
    const other = expect(await post("/v1/cards", op, { userId: aiko.user.id }), 201) as { card: { id: string } };
    for (let k = 0; k < 3; k++) expect(await get(`/v1/cards/${other.card.id}/packages`, token), 403);

    // online delivery: opened on one server, its rounds on the others
    const online = expect(await post(`/v1/cards/${aiko.cardId}/credentials`, op, { slot: "9c", alg: "P256" }), 201) as { keyPairId: string; certificate: string };
    const onlineFrom = calls.length;
    const start = expect(await post(`/v1/cards/${aiko.cardId}/credentials/${online.keyPairId}/online`, op), 201) as { sessionId: string; apdus: string[] };
    const done = expect(await relay(post, op, start, aiko.card), 200) as { done: boolean };
    assert.equal(done.done, true);
    assertSpread(onlineFrom, "online delivery");
    assert.ok(await cardSignsFor((a) => aiko.card.transmit(a), "9c", "P256", derOf(online.certificate)), "the card signs with the key delivered online");
  });

  await t.test("b: a small card overflows to the terminal's store and brings a key back, the terminal's calls spread over the servers", async () => {
    const user = expect(await post("/v1/users", op, { personalData: registeredData("Oda Overflow") }), 201) as { id: string };
    const cardId = (expect(await post("/v1/cards", op, { userId: user.id }), 201) as { card: { id: string } }).card.id;
    const vc = virtualCard(cardId, 2600);
    const startP = expect(await post(`/v1/cards/${cardId}/personalisation`, op), 201) as { sessionId: string; apdus: string[] };
    expect(await relay(post, op, startP, vc), 200);
    const from = calls.length;
    const terminal = await UserTerminal.open({
      api: roundRobinClient(),
      transport: new InProcessTransport(vc),
      stateFile: join(dir, `terminal-${cardId}.json`),
      overflow: new OverflowStore(join(dir, `overflow-${cardId}`)),
      pin: "123456",
    });
    const movedOut: string[] = [];
    for (const slot of ["9a", "9c", "9d", "9e", "82", "83", "84"]) {
      const cr = expect(await post(`/v1/cards/${cardId}/credentials`, op, { slot, alg: "P256" }), 201) as { packageSeq: number };
      const r = await terminal.sync();
      assert.deepEqual(
        r.packages.map((p) => [p.seq, p.slot, p.status]),
        [[cr.packageSeq, slot, "loaded"]],
      );
      terminal.touch(slot);
      movedOut.push(...r.movedOut);
      if (r.movedOut.length) break;
    }
    assert.deepEqual(movedOut, ["9a"], "the least recently used slot went out");
    terminal.touch("9d");
    terminal.touch("9e");
    assert.deepEqual(await terminal.bringBack("9a"), { slot: "9a", movedOut: ["9c"] });
    assert.deepEqual((await terminal.sync()).packages, [], "every package acknowledged, whichever server took it");
    const terminalCalls = calls.slice(from).filter((x) => x.url === "terminal");
    assert.equal(new Set(terminalCalls.map((x) => x.server)).size, 3, `the terminal's calls reached every server: ${JSON.stringify(terminalCalls)}`);
    const listed = expect(await get(`/v1/cards/${cardId}/packages`, op), 200) as { packages: { status?: string }[] };
    assert.ok(
      listed.packages.every((p) => p.status === "acknowledged"),
      JSON.stringify(listed),
    );
  });
});

// ---- c ---------------------------------------------------------------------------------------------------------------

const STRATEGIES: RotationStrategy[] = ["embodiment3", "embodiment4", "embodiment5"];

for (const strategy of STRATEGIES) {
  test(`c: rotation ${strategy} (FIG. 15) with re-wrap, every step on the next server, the same status on every server`, HANG, async () => {
    const rr = roundRobin();
    const { post } = api(rr);
    const op = c.tokens.operator;
    const old = await issueAndPersonalise(rr, `Rota ${strategy}`);
    cards.push(old.card);
    const slots = ["9a", "9c", "9d", "9e"];
    for (const slot of slots) expect(await post(`/v1/cards/${old.cardId}/credentials`, op, { slot, alg: "P256" }), 201);
    const add = FIG15[strategy].add ? [{ slot: "82", alg: "P256" }] : [];

    const from = calls.length;
    const id = (expect(await post(`/v1/cards/${old.cardId}/rotations`, op, { strategy, ...(add.length ? { add } : {}) }), 201) as { id: string }).id;
    expect(await post(`/v1/rotations/${id}/approve`, c.tokens.operator2), 200);
    const fresh = expect(await post(`/v1/rotations/${id}/new-card`, op), 201) as { card: { id: string }; personalisation: { sessionId: string; apdus: string[] } };
    const newCard = virtualCard(fresh.card.id);
    expect(await relay(post, op, fresh.personalisation, newCard), 200);
    const rewrap = await post(`/v1/rotations/${id}/rewrap`, op);
    const all = FIG15[strategy].systemDb === "all";
    assert.equal(rewrap.statusCode, all ? 202 : 200, rewrap.body);
    const settled = await rewrapSettled(id);
    const s = await sameOnEveryServer(id);
    assert.equal(s.rewrap.state, settled.rewrap.state);
    if (all) {
      assert.deepEqual([s.rewrap.state, s.rewrap.job?.state, s.rotation.done, s.rotation.total], ["done", "done", slots.length, slots.length], JSON.stringify(s));
      assert.equal(await wrappedCount(s.rotation.toKeySetId!), slots.length);
      assert.deepEqual(await duplicates(s.rotation.toKeySetId!), []);
    } else assert.equal(s.rewrap.job, undefined, "no re-wrap job where FIG. 15 keeps the system DB");
    const dist = expect(await post(`/v1/rotations/${id}/distribute`, op, add.length ? { add } : {}), 200) as { packages: { slot: string; cardId: string }[] };
    assert.deepEqual(dist.packages.map((p) => p.slot).sort(), (strategy === "embodiment3" ? slots : add.map((a) => a.slot)).sort(), "FIG. 15 'Network'");
    assert.ok(dist.packages.every((p) => p.cardId === fresh.card.id));

    // the new card's terminal: login across two servers, packages with its token on the next ones
    const token = (expect(await authenticate(post, fresh.card.id, newCard), 200) as { token: string }).token;
    const loaded = await syncPackages(rr, fresh.card.id, newCard, token);
    assert.equal(loaded.length, dist.packages.length);
    assertSpread(from, `rotation ${strategy}`);
    const end = await sameOnEveryServer(id);
    assert.equal(end.rotation.status, "completed", JSON.stringify(end));
    assert.equal(expect(await api(rr).get(`/v1/cards/${old.cardId}`, c.tokens.auditor), 200).status, "retired");
  });
}

// ---- d ---------------------------------------------------------------------------------------------------------------

test("d: a backup with the card's token and a key reproduction approved by the arbitrator, live relay rounds alternating servers", HANG, async (t) => {
  const rr = roundRobin();
  const { get, post, put } = api(rr);
  const op = c.tokens.operator;
  const hana = await issueAndPersonalise(rr, "Hana Backup");
  cards.push(hana.card);
  const cardId = hana.cardId;

  await t.test("backup: the card's 9D key as a package, the user's data enciphered to it, put and read back across servers", async () => {
    expect(await post(`/v1/cards/${cardId}/credentials`, op, { slot: "9d", alg: "P256" }), 201);
    const token = (expect(await authenticate(post, cardId, hana.card), 200) as { token: string }).token;
    assert.equal((await syncPackages(rr, cardId, hana.card, token)).length, 1);
    const piv = new PivClient((a) => hana.card.transmit(a));
    await piv.select();
    const recipient = recipientOf((await piv.readCertificate(SLOT.keyManagement))!);
    const secret = new Uint8Array(Buffer.from(`bank A: 4711 — ${randomBytes(6).toString("hex")}`));
    const envelope = encipherForCard(recipient, secret, new Uint8Array(Buffer.from("bank-pins")));
    const url = `/v1/cards/${cardId}/backups/bank-pins`;
    const from = calls.length;
    assert.equal((expect(await put(url, token, { envelope: Buffer.from(envelope).toString("base64") }), 201) as { backup: { version: number } }).backup.version, 1);
    assert.equal(
      (expect(await put(url, token, { envelope: Buffer.from(envelope).toString("base64") }), 200) as { created: boolean }).created,
      false,
      "the same envelope again, on another server: unchanged",
    );
    for (let k = 0; k < 3; k++) {
      const got = expect(await get(`${url}?version=1`, token), 200) as { envelope: string };
      await piv.verifyPin("123456");
      assert.deepEqual(await decipherWithCard(piv, SLOT.keyManagement, new Uint8Array(Buffer.from(got.envelope, "base64")), { aad: new Uint8Array(Buffer.from("bank-pins")) }), secret);
    }
    assertSpread(from, "backup");
  });

  await t.test("reproduction: escrowed key generation, key lost, the arbitrator approves, the reproduction's rounds alternate servers", async () => {
    const { registry, keys } = makeArbitrators(["user"]);
    const u = registry.require("user");
    const pem = (k: KeyObject) => k.export({ format: "pem", type: "spki" }) as string;
    expect(await post("/v1/recovery/arbitrators", op, { id: "user", signingPublicKey: pem(u.signingKey), encryptionPublicKey: pem(u.encryptionKey) }), 201);
    const token = (expect(await post("/v1/recovery/arbitrators/user/tokens", op), 201) as { token: string }).token;
    expect(await put(`/v1/cards/${cardId}/recovery-policy`, op, { version: 1, author: "user", indispensable: ["user"], groups: [], order: [] }), 200);
    const keygenFrom = calls.length;
    const { certificateDer } = await keygenOverApi(rr, cardId, hana.card, { slot: "9c", alg: "P256", personalData: registeredData("Hana Backup"), escrow: true });
    assertSpread(keygenFrom, "key generation (live relay)");
    const transmit = (a: Uint8Array) => hana.card.transmit(a);
    assert.ok(await cardSignsFor(transmit, "9c", "P256", certificateDer));
    await loseKey(transmit, "9c");
    assert.equal(await cardSignsFor(transmit, "9c", "P256", certificateDer), false);

    const rid = (expect(await post("/v1/recovery/requests", op, { cardId, kind: "key-lost", requester: "user" }), 201) as unknown as RequestJson).requestId;
    const item = (expect(await get("/v1/recovery/arbitrators/user/pending", token), 200) as { pending: PendingJson[] }).pending[0] as Extract<PendingJson, { action: "decide" }>;
    const device = Buffer.from((expect(await get("/v1/recovery/device-key", token), 200) as { spki: string }).spki, "base64");
    const v = item.request;
    const approval = signApproval(v.request, v.chainHead, { arbitrator: "user", decision: "approve" }, keys.get("user")!.signing);
    const releases = releaseSharesFor(v.request, item.envelopes, (e) => openShare(e, keys.get("user")!.encryption, { escrowId: v.escrowId, cardId: v.cardId }), new Uint8Array(device));
    expect(await post(`/v1/recovery/requests/${rid}/approvals`, token, { approval, releases }), 200);
    const listed = (expect(await get("/v1/recovery/arbitrators/user/pending", token), 200) as { pending: PendingJson[] }).pending[0];
    const approverList = signApproverList(listed.request.request, listed.request.approvals, "user", keys.get("user")!.signing);
    expect(await post(`/v1/recovery/requests/${rid}/approver-list`, token, { approverList }), 200);

    const from = calls.length;
    const r = await liveRelay(post, op, await post(`/v1/recovery/requests/${rid}/reproduce`, op), "/v1/recovery/sessions", hana.card);
    const result = (expect(r, 200) as { result: { approvers: string[] } }).result;
    assert.deepEqual(result.approvers, ["user"]);
    assertSpread(from, "reproduction (live relay)");
    assert.ok(await cardSignsFor(transmit, "9c", "P256", certificateDer), "the key is back in the card");
    for (let k = 0; k < 3; k++) assert.equal((expect(await get(`/v1/recovery/requests/${rid}`, op), 200) as unknown as RequestJson).status, "reproduced");
  });
});

// ---- SIGKILL ---------------------------------------------------------------------------------------------------------

test("SIGKILL (i): the server that answered round 1 of a personalisation dies; round 2 on another server completes", HANG, async () => {
  const rr = roundRobin();
  const { post } = api(rr);
  const op = c.tokens.operator;
  const user = expect(await post("/v1/users", op, { personalData: registeredData("Kiri Kill") }), 201) as { id: string };
  const cardId = (expect(await post("/v1/cards", op, { userId: user.id }), 201) as { card: { id: string } }).card.id;
  const card = virtualCard(cardId);
  const start = expect(await on(0).post(`/v1/cards/${cardId}/personalisation`, op), 201) as { sessionId: string; apdus: string[] };
  const step2 = expect(await on(1).post(`/v1/relay/${start.sessionId}`, op, { responses: await answer(card, start.apdus) }), 200) as { apdus: string[]; done?: boolean };
  assert.ok(!step2.done && step2.apdus.length > 0, "a second round to go");
  await c.kill(1);
  down.add(1);
  const done = expect(await on(2).post(`/v1/relay/${start.sessionId}`, op, { responses: await answer(card, step2.apdus) }), 200) as { done: boolean; results: { sw: number }[] };
  assert.equal(done.done, true);
  assert.ok(done.results.every((r) => r.sw === 0x9000));
  assert.equal(expect(await on(0).get(`/v1/cards/${cardId}`, c.tokens.auditor), 200).status, "active");
  // the session is over on every server
  expect(await on(0).post(`/v1/relay/${start.sessionId}`, op, { responses: ["9000"] }), 404);
});

test("SIGKILL (ii): the server holding a re-wrap job's lease dies mid-way; another server takes it over; every key re-wrapped once", HANG, async (t) => {
  // server 1 (killed above) comes back meanwhile: three servers again, one of which will lose the lease
  const back = down.has(1) ? c.restart(1).then(() => down.delete(1)) : Promise.resolve(true);
  const rr = roundRobin();
  const { post } = api(rr);
  const op = c.tokens.operator;
  const old = await issueAndPersonalise(rr, "Lease Holder");
  cards.push(old.card);
  const slots = ["9a", "9c", "9d", "9e", "82", "83", "84", "85"];
  for (const slot of slots) expect(await post(`/v1/cards/${old.cardId}/credentials`, op, { slot, alg: "P256" }), 201);
  const id = (expect(await post(`/v1/cards/${old.cardId}/rotations`, op, { strategy: "embodiment3" }), 201) as { id: string }).id;
  expect(await post(`/v1/rotations/${id}/approve`, c.tokens.operator2), 200);
  const fresh = expect(await post(`/v1/rotations/${id}/new-card`, op), 201) as { card: { id: string }; personalisation: { sessionId: string; apdus: string[] } };
  expect(await relay(post, op, fresh.personalisation, virtualCard(fresh.card.id)), 200);
  await back;
  assert.equal(down.size, 0);
  const before = expect(await api(rr).get(`/v1/rotations/${id}`, c.tokens.auditor), 200) as unknown as RotationStatus;
  const { fromKeySetId, toKeySetId } = before.rotation;
  assert.ok(toKeySetId);

  // The job's third page waits: this test holds, uncommitted, a row under the new key set for the key pair that page
  // re-wraps first (wrapped_keys' unique (key pair, key set)); the job's insert waits for this transaction.
  const source = await c.tdb.db.selectFrom("wrapped_keys").select(["id", "key_pair_id"]).where("key_set_id", "=", fromKeySetId).orderBy("id").execute();
  assert.equal(source.length, slots.length);
  const held = source[2 * PAGE].key_pair_id;
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  let holding!: () => void;
  const isHolding = new Promise<void>((r) => (holding = r));
  const ROLLBACK = new Error("rollback");
  const blocker = c.tdb.db
    .transaction()
    .execute(async (trx) => {
      await trx
        .insertInto("wrapped_keys")
        .values({ key_pair_id: held, key_set_id: toKeySetId, wrapped: new Uint8Array([0]), created_at: Date.now() })
        .execute();
      holding();
      await released;
      throw ROLLBACK;
    })
    .catch((e: unknown) => {
      if (e !== ROLLBACK) throw e;
    });
  t.after(async () => {
    release();
    await blocker;
  });
  await isHolding;

  expect(await post(`/v1/rotations/${id}/rewrap`, op), 202);
  // mid-way: two pages committed, the third waiting; its lease holder named
  let mid: RotationStatus;
  for (;;) {
    mid = expect(await api(roundRobin()).get(`/v1/rotations/${id}`, c.tokens.auditor), 200) as unknown as RotationStatus;
    if (mid.rotation.done >= 2 * PAGE && mid.rewrap.job?.leaseOwner) break;
    assert.equal(mid.rewrap.state, "running", JSON.stringify(mid));
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.deepEqual([mid.rotation.done, mid.rotation.total], [2 * PAGE, slots.length], "held mid-way");
  const owner = mid.rewrap.job!.leaseOwner!;
  const row = await new SqlServerInstances(c.tdb.db).get(owner);
  assert.ok(row, `the lease holder ${owner} is a registered server`);
  const victim = c.urls.findIndex((u) => new URL(u).port === new URL(row.advertiseUrl).port);
  assert.ok(victim >= 0, `the lease holder ${owner} (${row.advertiseUrl}) is one of ours: ${c.urls.join(" ")}`);
  await c.kill(victim);
  down.add(victim);
  release();
  await blocker;

  const end = await rewrapSettled(id);
  assert.deepEqual([end.rewrap.state, end.rewrap.job?.state], ["done", "done"], JSON.stringify(end));
  assert.notEqual(end.rewrap.job?.leaseOwner, owner, "finished by another server");
  assert.ok(end.rewrap.job!.attempts >= 2, "claimed again after the lease ran out");
  assert.deepEqual([end.rotation.done, end.rotation.total], [slots.length, slots.length]);
  assert.deepEqual(await sameOnEveryServer(id), end);
  assert.equal(await wrappedCount(toKeySetId), await wrappedCount(fromKeySetId), "as many Sk2[PRk] as Sk1[PRk]");
  assert.equal(await wrappedCount(toKeySetId), slots.length);
  assert.deepEqual(await duplicates(toKeySetId), [], "no key pair re-wrapped twice");
  const mine = await c.tdb.db.selectFrom("wrapped_keys").select("wrapped").where("key_set_id", "=", toKeySetId).where("key_pair_id", "=", held).executeTakeFirstOrThrow();
  assert.notDeepEqual(new Uint8Array(mine.wrapped), new Uint8Array([0]), "the held row was rolled back: the job's own is there");
  const audit = await c.tdb.db.selectFrom("audit_log").select(["action", "details"]).where("subject", "=", id).where("action", "like", "rotation.rewrap%").orderBy("seq").execute();
  const actions = audit.map((a) => a.action);
  // the start, the takeover's start (a second takeover only if a runner stalled past its lease), one end
  assert.deepEqual([actions[0], actions.at(-1), actions.filter((a) => a === "rotation.rewrapped").length], ["rotation.rewrap-started", "rotation.rewrapped", 1], actions.join(","));
  const takeovers = audit.map((a) => (JSON.parse(String(a.details)) as { takeover?: { from: string } }).takeover?.from).filter(Boolean);
  assert.ok(takeovers.includes(owner), `a start names the takeover from the killed lease holder ${owner}: ${JSON.stringify(takeovers)}`);
});

// ---- the log ---------------------------------------------------------------------------------------------------------

test("after it all: one audit log, seq 1..n, `cardkms audit verify` passes on the database and through the live servers", HANG, async () => {
  const rows = (await c.tdb.db.selectFrom("audit_log").select("seq").orderBy("seq").execute()).map((r) => Number(r.seq));
  assert.deepEqual(
    rows,
    rows.map((_, i) => i + 1),
    "no gap, no duplicate",
  );
  assert.equal((await new SqlCustodyBindings(c.tdb.db).get())?.kind, "store", "the cluster's keys were in the store keystore all along");
  const live = c.urls.map((_, i) => i).filter((i) => !down.has(i));
  const [offline, ...online] = await Promise.all([
    runCli(["audit", "verify", "--database", c.database, "--json"]),
    ...live.map((i) => runCli(["audit", "verify", "--server", c.urls[i], "--token", c.tokens.auditor, "--json"])),
  ]);
  const v = cliJson(offline, "audit verify --database");
  assert.deepEqual({ ok: v.ok, entries: v.entries, head: v.head?.seq }, { ok: true, entries: rows.length, head: rows.length });
  online.forEach((r, k) => {
    const s = cliJson(r, `audit verify through server ${live[k]}`);
    assert.deepEqual({ ok: s.ok, entries: s.entries }, { ok: true, entries: rows.length }, `server ${live[k]} verifies the same log`);
  });
});
