// The lifecycle routes of key reproduction (migration 0007) over HTTP, on SQLite and PostgreSQL and both custodies, the server as its
// process wires it (issuerApiEnv, app.inject): a request stuck "reproducing" — a live reproduction refuses a second
// one and a reset, a claim left by a process that is gone (its lease passed) is reset, or taken over by the next
// reproduction through the live relay; an arbitrator rotates its keys with a document signed by its current key (a
// forged or replayed one refused by name), its share sealed to the retired key shown and still released;
// deregistration (refused while it would strand an escrow, forced, its tokens revoked, the blocked request ended,
// the cards depending on it listed); requests, pending items, arbitrators and dependents a page at a time.
// Refusals are problem+json naming the check.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, createPublicKey, generateKeyPairSync, randomBytes, type KeyObject } from "node:crypto";
import { signApproval, signApproverList } from "../src/recovery/approvals.ts";
import type { ReproductionPolicy } from "../src/recovery/policy.ts";
import { openShare } from "../src/recovery/shares.ts";
import { releaseSharesFor, signKeyRotation, DEFAULT_REPRODUCTION_LEASE_MS } from "../src/recovery/service.ts";
import { newToken } from "../src/server/auth.ts";
import { arbitratorTokenName } from "../src/server/recovery-routes.ts";
import { SqlRecoveryRepository } from "../src/store/recovery-repository.ts";
import { testEngines } from "./support/store-testing.ts";
import type { ArbitratorJson, EscrowJson, PendingJson, RequestJson } from "../src/terminal/recovery-client.ts";
import { api, API_CUSTODIES, apiEnvFor, expect, issueAndPersonalise, keygenOverApi, liveRelay, registeredData } from "./api-env.ts";
import { cardSignsFor, loseKey } from "./recovery-fixture.ts";

const p256 = () => generateKeyPairSync("ec", { namedCurve: "P-256" });
const pem = (k: KeyObject) => (k.type === "private" ? createPublicKey(k) : k).export({ format: "pem", type: "spki" }) as string;
const keyId = (k: KeyObject) =>
  createHash("sha256")
    .update((k.type === "private" ? createPublicKey(k) : k).export({ format: "der", type: "spki" }))
    .digest("hex");
const IDS = ["user", "mgr-a", "mgr-b", "sp-x", "sp-y"];
/** Card A: the user, then 1 of the managers; the user draws up the list. */
const POLICY_A: ReproductionPolicy = { version: 1, author: "user", indispensable: ["user"], groups: [{ name: "managers", members: ["mgr-a", "mgr-b"], threshold: 1 }], order: [] };

for (const [engine, custody] of testEngines().flatMap((e) => API_CUSTODIES.map((c) => [e, c] as const))) {
  test(`${engine.name}, ${custody} custody: the reproduction lease, key rotation, deregistration and pagination over HTTP`, { timeout: 10 * 60_000 }, async (t) => {
    const { env, cards } = await apiEnvFor(t, engine, { custody });
    const { get, post, put } = api(env);
    const op = env.tokens.operator;
    const auditor = env.tokens.auditor;
    type Res = Awaited<ReturnType<typeof get>>;
    const refused = (r: Res, status: number, check: string) => {
      const p = expect(r, status);
      assert.equal(p.check, check, r.body);
      return p;
    };
    const keys = new Map<string, { signing: KeyObject; encryption: KeyObject; old: KeyObject[] }>();
    const tokens = new Map<string, { token: string; tokenId: string }>();

    await t.test("arbitrators registered and listed a page at a time; bad pages refused by name", async () => {
      for (const id of IDS) {
        const s = p256();
        const e = p256();
        keys.set(id, { signing: s.privateKey, encryption: e.privateKey, old: [] });
        expect(await post("/v1/recovery/arbitrators", op, { id, signingPublicKey: pem(s.publicKey), encryptionPublicKey: pem(e.publicKey) }), 201);
        tokens.set(id, expect(await post(`/v1/recovery/arbitrators/${id}/tokens`, op), 201) as { token: string; tokenId: string });
      }
      const seen: string[] = [];
      let url = "/v1/recovery/arbitrators?limit=2";
      for (let pages = 1; ; pages++) {
        const page = expect(await get(url, auditor), 200) as { arbitrators: ArbitratorJson[]; next?: string };
        assert.ok(page.arbitrators.length <= 2);
        seen.push(...page.arbitrators.map((a) => a.id));
        if (!page.next) {
          assert.equal(pages, 3);
          break;
        }
        url = `/v1/recovery/arbitrators?limit=2&after=${page.next}`;
      }
      assert.deepEqual(seen, [...IDS].sort());
      const one = expect(await get("/v1/recovery/arbitrators/user", op), 200) as unknown as ArbitratorJson;
      assert.deepEqual([one.keyVersion, one.status, one.keys.length, one.keys[0].signingKeyId], [1, "active", 1, keyId(keys.get("user")!.signing)]);
      refused(await get("/v1/recovery/arbitrators?limit=0", op), 400, "invalid_argument");
      refused(await get("/v1/recovery/arbitrators?limit=1001", op), 400, "invalid_argument");
      refused(await get("/v1/recovery/arbitrators?after=bm90LWEtY3Vyc29y", op), 400, "invalid_argument");
      expect(await get("/v1/recovery/arbitrators?after=not%20a%20cursor", op), 400);
      expect(await get("/v1/recovery/arbitrators?page=2", op), 400);
      expect(await get("/v1/recovery/arbitrators?limit=2", tokens.get("user")!.token), 403);
    });

    // ---- card A: issued with its key escrowed ------------------------------------------------------------------------
    const issued = await issueAndPersonalise(env, "Hanako Yamada");
    cards.push(issued.card);
    const cardId = issued.cardId;
    const transmit = (a: Uint8Array) => issued.card.transmit(a);
    expect(await put(`/v1/cards/${cardId}/recovery-policy`, op, POLICY_A), 200);
    const { certificateDer } = await keygenOverApi(env, cardId, issued.card, { slot: "9c", alg: "P256", personalData: registeredData("Hanako Yamada"), escrow: true });
    const signs = () => cardSignsFor(transmit, "9c", "P256", certificateDer);
    const deviceKey = new Uint8Array(Buffer.from((expect(await get("/v1/recovery/device-key", op), 200) as { spki: string }).spki, "base64"));

    /** Arbitrator `id` on its side, with its own token: its pending item, signed after the head, its shares released. */
    const approve = async (id: string, requestId: string) => {
      const items = (expect(await get(`/v1/recovery/arbitrators/${id}/pending`, tokens.get(id)!.token), 200) as { pending: PendingJson[] }).pending;
      const item = items.find((p) => p.action === "decide" && p.request.requestId === requestId) as Extract<PendingJson, { action: "decide" }>;
      assert.ok(item, `${id} has ${requestId} to decide`);
      const k = keys.get(id)!;
      const byId = new Map([k.encryption, ...k.old].map((x) => [keyId(x), x]));
      const v = item.request;
      const releases = releaseSharesFor(v.request, item.envelopes, (e) => openShare(e, byId.get(e.header.recipientKeyId)!, { escrowId: v.escrowId, cardId: v.cardId }), deviceKey);
      const approval = signApproval(v.request, v.chainHead, { arbitrator: id, decision: "approve" }, k.signing);
      return expect(await post(`/v1/recovery/requests/${requestId}/approvals`, tokens.get(id)!.token, { approval, releases }), 200) as unknown as RequestJson;
    };
    /** A key-lost request for card A, approved by the user and mgr-b, the list signed by the user. */
    const satisfied = async (): Promise<string> => {
      await loseKey(transmit, "9c");
      const rid = (expect(await post("/v1/recovery/requests", op, { cardId, kind: "key-lost", requester: "user" }), 201) as unknown as RequestJson).requestId;
      await approve("user", rid);
      const v = await approve("mgr-b", rid);
      assert.equal(v.status, "satisfied");
      const list = signApproverList(v.request, v.approvals, "user", keys.get("user")!.signing);
      expect(await post(`/v1/recovery/requests/${rid}/approver-list`, tokens.get("user")!.token, { approverList: list }), 200);
      return rid;
    };
    /** The terminal's part: each APDU to the card, its response back, until the result or a refusal. */
    const relay = (start: Res): Promise<Res> => liveRelay(post, op, start, "/v1/recovery/sessions", issued.card);

    await t.test("key rotation: signed with the current key by the arbitrator (or relayed); forged, replayed, misbound refused; the escrow shows the retired key", async () => {
      const before = expect(await get("/v1/recovery/arbitrators/mgr-b", op), 200) as unknown as ArbitratorJson;
      const current = {
        arbitrator: "mgr-b",
        keyVersion: 1,
        signingPublicKey: new Uint8Array(Buffer.from(before.signingPublicKey, "base64")),
        encryptionPublicKey: new Uint8Array(Buffer.from(before.encryptionPublicKey, "base64")),
      };
      const nextS = p256();
      const nextE = p256();
      const thief = p256();
      // a stolen operator token cannot swap the key: the document must be signed with mgr-b's current signing key
      refused(await post("/v1/recovery/arbitrators/mgr-b/key-rotation", op, { rotation: signKeyRotation(current, thief.privateKey, { signingKey: thief.privateKey }) }), 422, "forged_signature");
      const rotation = signKeyRotation(current, keys.get("mgr-b")!.signing, { signingKey: nextS.privateKey, encryptionPublicKey: nextE.publicKey });
      expect(await post("/v1/recovery/arbitrators/mgr-b/key-rotation", tokens.get("mgr-a")!.token, { rotation }), 403);
      expect(await post("/v1/recovery/arbitrators/mgr-b/key-rotation", auditor, { rotation }), 403);
      expect(await post("/v1/recovery/arbitrators/mgr-b/key-rotation", op, { rotation: { ...rotation, extra: 1 } }), 400);
      refused(await post("/v1/recovery/arbitrators/mgr-a/key-rotation", op, { rotation }), 400, "invalid_argument");
      const after = expect(await post("/v1/recovery/arbitrators/mgr-b/key-rotation", tokens.get("mgr-b")!.token, { rotation }), 200) as unknown as ArbitratorJson;
      assert.deepEqual([after.keyVersion, after.encryptionKeyId, after.keys.map((k) => k.version), after.keys[0].retiredAt !== undefined], [2, keyId(nextE.publicKey), [1, 2], true]);
      refused(await post("/v1/recovery/arbitrators/mgr-b/key-rotation", op, { rotation }), 409, "rotation_stale");
      keys.set("mgr-b", { signing: nextS.privateKey, encryption: nextE.privateKey, old: [keys.get("mgr-b")!.encryption] });
      const escrow = expect(await get(`/v1/cards/${cardId}/escrow`, auditor), 200) as unknown as EscrowJson;
      assert.deepEqual(
        escrow.shares.map((s) => [s.arbitrator, s.sealedToRetiredKey, s.holderDeregistered]),
        [
          ["user", false, false],
          ["mgr-a", false, false],
          ["mgr-b", true, false],
        ],
      );
      assert.equal(escrow.shares.find((s) => s.arbitrator === "mgr-b")?.recipientKeyId, before.encryptionKeyId);
    });

    await t.test("a live reproduction refuses a second one and a reset; the request shows who holds it until when", async () => {
      const rid = await satisfied(); // mgr-b approves with its new signing key and releases its share with its old encryption key
      const start = await post(`/v1/recovery/requests/${rid}/reproduce`, op, {});
      expect(start, 201);
      const held = expect(await get(`/v1/recovery/requests/${rid}`, auditor), 200) as unknown as RequestJson;
      assert.equal(held.status, "reproducing");
      assert.equal(held.reproduction?.claimedBy, "olga");
      assert.ok(held.reproduction!.leaseUntil! >= held.reproduction!.claimedAt + DEFAULT_REPRODUCTION_LEASE_MS);
      const again = refused(await post(`/v1/recovery/requests/${rid}/reproduce`, op, {}), 409, "request_closed");
      assert.match(String(again.detail), /being reproduced by olga; its lease runs until/);
      refused(await post(`/v1/recovery/requests/${rid}/reset-reproduction`, op, { reason: "stuck?" }), 409, "request_closed");
      expect(await post(`/v1/recovery/requests/${rid}/reset-reproduction`, auditor, { reason: "stuck?" }), 403);
      expect(await post(`/v1/recovery/requests/${rid}/reset-reproduction`, op, {}), 400);
      const done = expect(await relay(start), 200) as { result: { approvers: string[] } };
      assert.deepEqual(done.result.approvers, ["user", "mgr-b"]);
      assert.ok(await signs());
      refused(await post(`/v1/recovery/requests/${rid}/reset-reproduction`, op, { reason: "done" }), 409, "request_closed");
    });

    await t.test("a request left reproducing by a process that is gone: reset by an operator, or taken over by the next reproduction", async () => {
      const repo = new SqlRecoveryRepository(env.server.store.db);
      /** What a reproduction process that died leaves behind: its claim, whose lease passed a minute ago. */
      const crashed = async (rid: string) => {
        const at = Date.now() - DEFAULT_REPRODUCTION_LEASE_MS - 60_000;
        assert.equal(await repo.claimReproduction(rid, { claim: randomBytes(16).toString("hex"), by: "op-crashed", at, leaseUntil: at + DEFAULT_REPRODUCTION_LEASE_MS }), true);
      };
      const rid = await satisfied();
      await crashed(rid);
      const stuck = expect(await get(`/v1/recovery/requests/${rid}`, op), 200) as unknown as RequestJson;
      assert.deepEqual([stuck.status, stuck.reproduction?.claimedBy], ["reproducing", "op-crashed"]);
      const reset = expect(await post(`/v1/recovery/requests/${rid}/reset-reproduction`, op, { reason: "server crashed during the reproduction" }), 200) as unknown as RequestJson;
      assert.deepEqual([reset.status, reset.statusDetail, reset.reproduction], ["satisfied", "reproduction reset: server crashed during the reproduction", undefined]);
      // crashed again: the next reproduction takes it over and finishes through the relay
      await crashed(rid);
      const done = expect(await relay(await post(`/v1/recovery/requests/${rid}/reproduce`, op, {})), 200) as { result: { requestId: string } };
      assert.equal(done.result.requestId, rid);
      assert.ok(await signs());
      const entries = (expect(await get("/v1/audit?limit=1000", auditor), 200) as { entries: { action: string; actor: string; subject: string; details: Record<string, unknown> }[] }).entries;
      const mine = entries.filter((e) => e.subject === rid).map((e) => [e.action, e.actor, e.details.previousClaimedBy]);
      assert.deepEqual(
        mine.filter(([a]) => a === "recovery.reproduce.reset" || a === "recovery.reproduce.takeover"),
        [
          ["recovery.reproduce.reset", "olga", "op-crashed"],
          ["recovery.reproduce.takeover", "olga", "op-crashed"],
        ],
      );
      // the requests of card A, a page at a time, newest first
      const ids: string[] = [];
      for (let url = `/v1/recovery/requests?cardId=${cardId}&limit=1`; ;) {
        const page = expect(await get(url, auditor), 200) as { requests: RequestJson[]; next?: string };
        assert.equal(page.requests.length, 1);
        ids.push(page.requests[0].requestId);
        if (!page.next) break;
        url = `/v1/recovery/requests?cardId=${cardId}&limit=1&after=${page.next}`;
      }
      assert.equal(ids.length, 2);
      assert.equal(ids[0], rid);
      assert.ok((expect(await get(`/v1/recovery/requests?cardId=${cardId}`, auditor), 200) as { next?: string }).next === undefined);
      refused(await get(`/v1/recovery/requests?after=${Buffer.from('["pending",1,"x"]').toString("base64url")}`, auditor), 400, "invalid_argument");
    });

    await t.test("deregistration: refused while it strands an escrow, forced; its tokens revoked, the blocked request ended, its dependents listed", async () => {
      // cards X (sp-x indispensable) and Y (1 of sp-x, sp-y), escrowed by the key generation device's hook in the server
      const escrow = async (id: string, policy: ReproductionPolicy) => {
        expect(await put(`/v1/cards/${id}/recovery-policy`, op, policy), 200);
        const label = `keygen.api-${id}`;
        await env.server.custody.generateKeyPair(label, "P256", { extractable: "wrapped", ephemeral: true });
        await env.server.recovery.escrow(
          {
            cardId: id,
            applicantId: "user-1",
            keyLabel: label,
            alg: "P256",
            slot: "9c",
            spki: await env.server.custody.publicKey(label),
            certificate: new Uint8Array(randomBytes(64)),
            serial: "7f01",
            keySet: { kind: "derived", master: "card-master", cardId: randomBytes(8).toString("hex"), kvn: 1 },
            deviceSecretId: new Uint8Array(randomBytes(16)),
          },
          "keygen-device",
        );
      };
      await escrow("card-X", { version: 1, author: "user", indispensable: ["user", "sp-x"], groups: [], order: [] });
      await escrow("card-Y", { version: 1, author: "user", indispensable: ["user"], groups: [{ name: "sp", members: ["sp-x", "sp-y"], threshold: 1 }], order: [] });
      const ridX = (expect(await post("/v1/recovery/requests", op, { cardId: "card-X", kind: "key-lost", requester: "user" }), 201) as unknown as RequestJson).requestId;
      const ridY = (expect(await post("/v1/recovery/requests", op, { cardId: "card-Y", kind: "key-lost", requester: "user" }), 201) as unknown as RequestJson).requestId;

      // the user's pending items, a page at a time (with its own token)
      const userToken = tokens.get("user")!.token;
      const p1 = expect(await get("/v1/recovery/arbitrators/user/pending?limit=1", userToken), 200) as { pending: PendingJson[]; next?: string };
      assert.equal(p1.pending.length, 1);
      assert.equal(p1.pending[0].request.requestId, ridY, "newest first");
      const p2 = expect(await get(`/v1/recovery/arbitrators/user/pending?limit=1&after=${p1.next}`, userToken), 200) as { pending: PendingJson[]; next?: string };
      assert.deepEqual([p2.pending.map((p) => p.request.requestId), p2.next], [[ridX], undefined]);
      refused(await get("/v1/recovery/arbitrators/user/pending?limit=101", userToken), 400, "invalid_argument");

      // who depends on sp-x
      const deps = expect(await get("/v1/recovery/arbitrators/sp-x/dependents", auditor), 200) as { policies: { cardId: string; as: string[]; escrowId?: string; satisfiableWithout: boolean }[] };
      assert.deepEqual(
        deps.policies.map((d) => [d.cardId, d.as, d.escrowId !== undefined, d.satisfiableWithout]),
        [
          ["card-X", ["indispensable"], true, false],
          ["card-Y", ["group:sp"], true, true],
        ],
      );
      const d1 = expect(await get("/v1/recovery/arbitrators/sp-x/dependents?limit=1", auditor), 200) as { policies: unknown[]; next: string };
      assert.equal((expect(await get(`/v1/recovery/arbitrators/sp-x/dependents?limit=1&after=${d1.next}`, auditor), 200) as { policies: { cardId: string }[] }).policies[0].cardId, "card-Y");
      expect(await get("/v1/recovery/arbitrators/nobody/dependents", auditor), 404);

      const spx = tokens.get("sp-x")!.token;
      expect(await get("/v1/recovery/arbitrators/sp-x/pending", spx), 200);
      expect(await post("/v1/recovery/arbitrators/sp-x/deregister", auditor, { reason: "left" }), 403);
      expect(await post("/v1/recovery/arbitrators/sp-x/deregister", spx, { reason: "left" }), 403);
      const inUse = refused(await post("/v1/recovery/arbitrators/sp-x/deregister", op, { reason: "left the company" }), 409, "arbitrator_in_use");
      assert.match(String(inUse.detail), /card-X/);
      const d = expect(await post("/v1/recovery/arbitrators/sp-x/deregister", op, { reason: "key compromised", force: true }), 200) as {
        arbitrator: ArbitratorJson;
        endedRequests: { requestId: string; message: string }[];
        strandedCards: string[];
        strandedCount: number;
        tokensRevoked: string[];
      };
      assert.deepEqual([d.arbitrator.status, d.arbitrator.deregistered?.by, d.strandedCards, d.strandedCount, d.tokensRevoked], ["deregistered", "olga", ["card-X"], 1, [tokens.get("sp-x")!.tokenId]]);
      assert.deepEqual(
        d.endedRequests.map((e) => e.requestId),
        [ridX],
      );
      // revoked in the operators table (the server's token cache forgets it within its window, auth.ts cachedLookup)
      assert.equal(await env.server.store.getOperatorByName(arbitratorTokenName("sp-x", tokens.get("sp-x")!.tokenId)), undefined);
      assert.deepEqual((expect(await get("/v1/recovery/arbitrators/sp-x/pending", op), 200) as { pending: unknown[] }).pending, [], "nothing to decide any more");
      refused(await post("/v1/recovery/arbitrators/sp-x/deregister", op, { reason: "again" }), 409, "arbitrator_disabled");
      assert.equal((expect(await get(`/v1/recovery/requests/${ridX}`, op), 200) as unknown as RequestJson).status, "ended");
      assert.equal((expect(await get(`/v1/recovery/requests/${ridY}`, op), 200) as unknown as RequestJson).status, "open");
      refused(await post("/v1/recovery/requests", op, { cardId: "card-X", kind: "key-lost", requester: "user" }), 409, "arbitrator_disabled");
      const p = refused(await put("/v1/cards/card-Z/recovery-policy", op, { version: 1, author: "user", indispensable: ["sp-x"], groups: [], order: [] }), 400, "policy_invalid") as {
        issues: { path: string }[];
      };
      assert.deepEqual(
        p.issues.map((i) => i.path),
        ["/indispensable/0"],
      );
      const x = expect(await get("/v1/cards/card-X/escrow", auditor), 200) as unknown as EscrowJson;
      assert.deepEqual(
        x.shares.filter((s) => s.holderDeregistered).map((s) => s.arbitrator),
        ["sp-x"],
      );
      // the list marks it; the audit log has it all and verifies
      const all = (expect(await get("/v1/recovery/arbitrators", auditor), 200) as { arbitrators: ArbitratorJson[] }).arbitrators;
      assert.equal(all.find((a) => a.id === "sp-x")?.status, "deregistered");
      const entries = (expect(await get("/v1/audit?limit=1000", auditor), 200) as { entries: { action: string; subject: string; details: Record<string, unknown> }[] }).entries;
      assert.ok(entries.some((e) => e.action === "recovery.arbitrator.deregister" && e.subject === "sp-x" && e.details.force === true));
      assert.ok(entries.some((e) => e.action === "recovery.arbitrator.deregister.refuse" && e.details.check === "arbitrator_in_use"));
      assert.ok(entries.some((e) => e.action === "recovery.arbitrator.token.revoke" && e.subject === "sp-x"));
      assert.ok(entries.some((e) => e.action === "recovery.arbitrator.rotate" && e.subject === "mgr-b"));
      assert.equal((expect(await get("/v1/audit/verify", auditor), 200) as { ok: boolean }).ok, true);
    });

    await t.test("issue 9 item 5: a deregistered arbitrator gets no token, and no token bound to it reads anything; a live one is unaffected", async () => {
      // sp-x was deregistered above; its own token was revoked then, but the server caches token lookups for 2 s
      // (auth.ts cachedLookup): whether the cache still answers for it (403) or not (401), it reads nothing
      const spx = tokens.get("sp-x")!.token;
      for (const url of ["/v1/recovery/arbitrators/sp-x", "/v1/recovery/arbitrators/sp-x/pending"]) {
        const r = await get(url, spx);
        assert.ok(r.statusCode === 401 || r.statusCode === 403, `${url}: ${r.statusCode} ${r.body}`);
        if (r.statusCode === 403) assert.equal(r.json().check, "arbitrator_disabled");
      }
      // no new token
      const noToken = refused(await post("/v1/recovery/arbitrators/sp-x/tokens", op), 409, "arbitrator_disabled");
      assert.match(String(noToken.detail), /sp-x is deregistered/);
      // a token bound to it that escaped revocation (issued in a race, restored from a backup): refused on every
      // route, whatever the token cache says — the arbitrator's status is read on each request
      const escaped = newToken();
      await env.server.store.createOperator({ name: arbitratorTokenName("sp-x", "00112233aabbccdd"), tokenHash: escaped.hash, roles: ["arbitrator"] });
      const anyRequest = (expect(await get("/v1/recovery/requests?limit=1", op), 200) as { requests: RequestJson[] }).requests[0].requestId;
      for (const url of ["/v1/recovery/arbitrators/sp-x", "/v1/recovery/arbitrators/sp-x/pending", "/v1/recovery/device-key", `/v1/recovery/requests/${anyRequest}`])
        refused(await get(url, escaped.token), 403, "arbitrator_disabled");
      // a live arbitrator reads its record and its pending list as before
      const spy = tokens.get("sp-y")!.token;
      assert.equal((expect(await get("/v1/recovery/arbitrators/sp-y", spy), 200) as unknown as ArbitratorJson).status, "active");
      expect(await get("/v1/recovery/arbitrators/sp-y/pending", spy), 200);
      expect(await post("/v1/recovery/arbitrators/sp-y/tokens", op), 201);
      // audited
      const entries = (expect(await get("/v1/audit?limit=1000", auditor), 200) as { entries: { action: string; actor: string; subject: string; details: Record<string, unknown> }[] }).entries;
      assert.deepEqual(
        entries.filter((e) => e.action === "recovery.arbitrator.token.refuse").map((e) => [e.actor, e.subject, e.details.check]),
        [["olga", "sp-x", "arbitrator_disabled"]],
      );
      const access = entries.filter((e) => e.action === "recovery.arbitrator.access.refuse" && e.subject === "sp-x");
      assert.ok(access.length >= 4, `${access.length} refused reads audited`);
      assert.ok(access.every((e) => e.details.check === "arbitrator_disabled"));
    });

    await t.test("nothing secret in the log: no token, no private key", () => {
      const log = env.logs.join("");
      for (const { token } of tokens.values()) assert.ok(!log.includes(token));
      assert.ok(!log.includes("PRIVATE KEY"));
    });
  });
}
