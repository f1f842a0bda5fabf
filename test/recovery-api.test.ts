// Key reproduction by arbitrators through the HTTP API (issue 4 item 6; seed 001 embodiment 3), on SQLite and
// PostgreSQL, the server as its process wires it (issuerApiEnv, app.inject): operators register arbitrators and
// issue them tokens, set the FIG. 9 policy, file a request; each arbitrator — with its own token, its own keys,
// on its side — fetches its pending item, signs after the chain head and releases its shares to the reproduction
// device; refusals come back as problem+json naming the failed check; the policy's author signs the approver list;
// the key is reproduced into the card at the terminal through the live relay, one APDU per round trip, and the
// card signs again under its original certificate. The audit log names the approvers in order.
import { test } from "node:test";
import assert from "node:assert/strict";
import { generateKeyPairSync, type KeyObject } from "node:crypto";
import { fromPem } from "../src/ca/pem.ts";
import type { CardRuntime } from "../src/card/runtime.ts";
import { transmitFollowing } from "../src/protocol/apdu-client.ts";
import { signApproval, signApproverList } from "../src/recovery/approvals.ts";
import { openShare } from "../src/recovery/shares.ts";
import { releaseSharesFor } from "../src/recovery/service.ts";
import { testEngines } from "./support/store-testing.ts";
import type { PendingJson, RequestJson } from "../src/terminal/recovery-client.ts";
import { api, API_CUSTODIES, type ApiEnv, apiEnvFor, expect, issueAndPersonalise, issuerApiEnv, keygenOverApi, liveRelay, registeredData } from "./api-env.ts";
import { cardSignsFor, fig9Policy, FIG9_ARBITRATORS, issueCardFor, loseKey, makeArbitrators } from "./recovery-fixture.ts";

const IN_ORDER = ["user", "credit-co", "sp-b", "mgr-c", "mgr-d"];
const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
const unhex = (s: string) => new Uint8Array(Buffer.from(s, "hex"));
const pem = (k: KeyObject) => k.export({ format: "pem", type: "spki" }) as string;
const b64spki = (k: KeyObject) => (k.export({ format: "der", type: "spki" }) as Buffer).toString("base64");

type Res = Awaited<ReturnType<ApiEnv["server"]["app"]["inject"]>>;

/** A 4xx problem+json naming `check`. */
function refused(r: Res, status: number, check: string): Record<string, unknown> {
  const p = expect(r, status);
  assert.equal(p.check, check, r.body);
  return p;
}

for (const [engine, custody] of testEngines().flatMap((e) => API_CUSTODIES.map((c) => [e, c] as const))) {
  test(`${engine.name}, ${custody} custody: arbitrators, policy, requests, signed approvals and a reproduction through the live relay, all over HTTP`, { timeout: 10 * 60_000 }, async (t) => {
    const { env, cards } = await apiEnvFor(t, engine, { custody });
    const { get, post, put } = api(env);
    const op = env.tokens.operator;
    const { registry, keys: ARB } = makeArbitrators(FIG9_ARBITRATORS);
    const tokens = new Map<string, string>();

    // ---- arbitrators, tokens -----------------------------------------------------------------------------------------
    await t.test("operators register arbitrators (PEM or base64 SPKI) and issue each a token bound to it", async () => {
      for (const id of FIG9_ARBITRATORS) {
        const a = registry.require(id);
        const r = expect(
          await post("/v1/recovery/arbitrators", op, { id, roles: [id.replace(/-[a-e]$/, "")], signingPublicKey: pem(a.signingKey), encryptionPublicKey: b64spki(a.encryptionKey) }),
          201,
        );
        assert.equal(r.id, id);
        assert.equal(r.encryptionKeyId, a.encryptionKeyId);
        assert.equal(r.registeredBy, "olga");
      }
      const list = expect(await get("/v1/recovery/arbitrators", env.tokens.auditor), 200) as { arbitrators: { id: string }[] };
      assert.deepEqual(list.arbitrators.map((a) => a.id).sort(), [...FIG9_ARBITRATORS].sort());
      const a = registry.require("user");
      refused(await post("/v1/recovery/arbitrators", op, { id: "user", signingPublicKey: pem(a.signingKey), encryptionPublicKey: pem(a.encryptionKey) }), 409, "arbitrator_exists");
      // a private key is never taken for a public one, and never echoed
      const priv = ARB.get("sp-a")!.signing.export({ format: "pem", type: "pkcs8" }) as string;
      const p = refused(await post("/v1/recovery/arbitrators", op, { id: "leaky", signingPublicKey: priv, encryptionPublicKey: pem(a.encryptionKey) }), 400, "invalid_argument");
      assert.ok(!JSON.stringify(p).includes("PRIVATE"));
      const p384 = generateKeyPairSync("ec", { namedCurve: "P-384" }).publicKey;
      refused(await post("/v1/recovery/arbitrators", op, { id: "p384", signingPublicKey: pem(p384), encryptionPublicKey: pem(a.encryptionKey) }), 400, "invalid_argument");
      expect(await get("/v1/recovery/arbitrators/nobody", op), 404);

      for (const id of FIG9_ARBITRATORS) {
        const tok = expect(await post(`/v1/recovery/arbitrators/${id}/tokens`, op), 201) as { token: string; tokenId: string; arbitrator: string };
        assert.equal(tok.arbitrator, id);
        tokens.set(id, tok.token);
      }
      // bound: its own record and pending list, nobody else's; no operator route
      expect(await get("/v1/recovery/arbitrators/user", tokens.get("user")), 200);
      expect(await get("/v1/recovery/arbitrators/credit-co/pending", tokens.get("user")), 403);
      expect(await get("/v1/recovery/arbitrators/credit-co", tokens.get("user")), 403);
      expect(await get("/v1/recovery/arbitrators", tokens.get("user")), 403);
      expect(await post("/v1/recovery/requests", tokens.get("user"), { cardId: "x", kind: "key-lost", requester: "user" }), 403);
      // a revoked token no longer works (a spare one, so the flow keeps its own)
      const spare = expect(await post("/v1/recovery/arbitrators/sp-c/tokens", op), 201) as { token: string; tokenId: string };
      expect(await get("/v1/recovery/arbitrators/sp-c/pending", spare.token), 200);
      expect(await post(`/v1/recovery/arbitrators/sp-c/tokens/${spare.tokenId}/revoke`, op), 200);
      expect(await post(`/v1/recovery/arbitrators/sp-c/tokens/${spare.tokenId}/revoke`, op), 404);
    });

    // ---- S1-S3 ---------------------------------------------------------------------------------------------------------
    const issued = await issueAndPersonalise(env, "Hanako Yamada");
    cards.push(issued.card);
    const cardId = issued.cardId;
    const transmit = (a: Uint8Array) => issued.card.transmit(a);
    let certificate: Uint8Array = new Uint8Array();

    await t.test("S1: the policy is validated (400 naming each problem), set, shown; S3: the escrow shows no secret", async () => {
      const bad = { ...fig9Policy(), groups: [{ name: "managers", members: ["mgr-a", "mgr-b", "nobody"], threshold: 4 }] };
      const p = refused(await put(`/v1/cards/${cardId}/recovery-policy`, op, bad), 400, "policy_invalid") as { issues: { path: string; message: string }[] };
      assert.deepEqual(p.issues.map((i) => i.path).sort(), ["/groups/0/members/2", "/groups/0/threshold"]);
      expect(await put(`/v1/cards/${cardId}/recovery-policy`, op, { ...fig9Policy(), extra: 1 }), 400);
      expect(await get(`/v1/cards/${cardId}/recovery-policy`, op), 404);
      const set = expect(await put(`/v1/cards/${cardId}/recovery-policy`, op, fig9Policy()), 200);
      assert.deepEqual(set.policy, fig9Policy());
      assert.equal((expect(await get(`/v1/cards/${cardId}/recovery-policy`, env.tokens.auditor), 200) as { digest: string }).digest, set.digest);
      expect(await get(`/v1/cards/${cardId}/escrow`, op), 404);

      const r = await keygenOverApi(env, cardId, issued.card, { slot: "9c", alg: "P256", personalData: registeredData("Hanako Yamada"), escrow: true });
      certificate = r.certificateDer;
      assert.ok(await cardSignsFor(transmit, "9c", "P256", certificate));
      const escrow = expect(await get(`/v1/cards/${cardId}/escrow`, env.tokens.auditor), 200) as { escrowId: string; certificate: string; shares: unknown[]; deviceGeneration: number };
      assert.equal(escrow.escrowId, r.escrowId);
      assert.deepEqual(fromPem(escrow.certificate, "CERTIFICATE"), certificate);
      assert.equal(escrow.shares.length, 10);
      assert.equal(escrow.deviceGeneration, 1);
      refused(await put(`/v1/cards/${cardId}/recovery-policy`, op, fig9Policy()), 409, "escrow_exists");
    });

    // ---- the arbitrators' side, through the routes ------------------------------------------------------------------------
    const deviceKey = new Uint8Array(Buffer.from((expect(await get("/v1/recovery/device-key", tokens.get("user")), 200) as { spki: string }).spki, "base64"));
    const pendingOf = async (id: string, requestId: string) => {
      const items = (expect(await get(`/v1/recovery/arbitrators/${id}/pending`, tokens.get(id)), 200) as { pending: PendingJson[] }).pending;
      return items.find((p) => p.request.requestId === requestId);
    };
    /** Arbitrator `id` on its side: its pending item, its signature after the head, its shares opened and released. */
    const decide = async (id: string, requestId: string, decision: "approve" | "refuse" = "approve", reason?: string) => {
      const item = await pendingOf(id, requestId);
      assert.ok(item && item.action === "decide", `${id} has ${requestId} to decide`);
      const v = item.request;
      const approval = signApproval(v.request, v.chainHead, { arbitrator: id, decision, reason }, ARB.get(id)!.signing);
      if (decision === "refuse") return post(`/v1/recovery/requests/${requestId}/refusals`, tokens.get(id), { refusal: approval });
      const releases = releaseSharesFor(v.request, item.envelopes, (e) => openShare(e, ARB.get(id)!.encryption, { escrowId: v.escrowId, cardId: v.cardId }), deviceKey);
      return post(`/v1/recovery/requests/${requestId}/approvals`, tokens.get(id), { approval, releases });
    };
    let requestId = "";

    await t.test("S5-S7: a request filed, approvals in the policy's order; out of order, forged, misbound: refused by name", async () => {
      await loseKey(transmit, "9c");
      assert.equal(await cardSignsFor(transmit, "9c", "P256", certificate), false, "the key is gone");
      const filed = expect(await post("/v1/recovery/requests", op, { cardId, kind: "key-lost", requester: "user", reason: "battery died" }), 201) as unknown as RequestJson;
      requestId = filed.requestId;
      assert.equal(filed.status, "open");
      refused(await post("/v1/recovery/requests", op, { cardId, kind: "key-lost", requester: "user" }), 409, "request_unfinished");
      refused(await post("/v1/recovery/requests", op, { cardId: "no-such-card", kind: "key-lost", requester: "user" }), 409, "no_escrow");

      const waiting = await pendingOf("credit-co", requestId);
      assert.ok(waiting?.action === "decide");
      assert.equal(waiting.mayApproveNow, false);
      assert.deepEqual(waiting.waitingFor, ["user"]);
      assert.equal(waiting.envelopes.length, 1, "its sealed share envelope comes with the item");

      // the credit company before the user: refused, naming the order condition; nothing recorded
      refused(await decide("credit-co", requestId), 422, "out_of_order");
      // a forged signature: user's approval signed with sp-a's key
      const v = (await pendingOf("user", requestId))!.request;
      const forged = signApproval(v.request, v.chainHead, { arbitrator: "user", decision: "approve" }, ARB.get("sp-a")!.signing);
      refused(await post(`/v1/recovery/requests/${requestId}/approvals`, tokens.get("user"), { approval: forged, releases: [] }), 422, "forged_signature");
      // user's genuine approval posted with sp-a's token: the token is bound to sp-a
      const genuine = signApproval(v.request, v.chainHead, { arbitrator: "user", decision: "approve" }, ARB.get("user")!.signing);
      expect(await post(`/v1/recovery/requests/${requestId}/approvals`, tokens.get("sp-a"), { approval: genuine, releases: [] }), 403);
      // no share released with it
      refused(await post(`/v1/recovery/requests/${requestId}/approvals`, tokens.get("user"), { approval: genuine, releases: [] }), 422, "share_missing");
      // unknown fields and a malformed approval: schema 400s
      expect(await post(`/v1/recovery/requests/${requestId}/approvals`, tokens.get("user"), { approval: { ...genuine, x: 1 }, releases: [] }), 400);
      assert.deepEqual((expect(await get(`/v1/recovery/requests/${requestId}`, op), 200) as unknown as RequestJson).approvals, [], "nothing was recorded");

      let last: RequestJson | undefined;
      for (const id of IN_ORDER) {
        assert.notEqual(last?.status, "satisfied");
        last = expect(await decide(id, requestId), 200) as unknown as RequestJson;
      }
      assert.equal(last?.status, "satisfied");
      assert.deepEqual(last?.evaluation.approvers, IN_ORDER);
      assert.equal(last?.releasedShares.length, 5, "a share of each approver: user, credit-co (indispensable), sp-b, mgr-c, mgr-d (groups)");
      // a party of the policy may read the request; the list of who still decides is empty
      expect(await get(`/v1/recovery/requests/${requestId}`, tokens.get("sp-a")), 200);
      assert.equal(await pendingOf("sp-a", requestId), undefined);
      const listed = expect(await get(`/v1/recovery/requests?status=satisfied&cardId=${cardId}`, env.tokens.auditor), 200) as { requests: RequestJson[] };
      assert.deepEqual(
        listed.requests.map((r) => r.requestId),
        [requestId],
      );
    });

    await t.test("FIG. 9 condition 15: the approver list; S8-S9: a wrong card refused through the relay, the right one reproduced", async () => {
      refused(await post(`/v1/recovery/requests/${requestId}/reproduce`, op, {}), 409, "approver_list_missing");
      const item = await pendingOf("mgr-a", requestId);
      assert.ok(item?.action === "sign-approver-list");
      const forgedList = signApproverList(item.request.request, item.request.approvals, "mgr-a", ARB.get("mgr-b")!.signing);
      refused(await post(`/v1/recovery/requests/${requestId}/approver-list`, tokens.get("mgr-a"), { approverList: forgedList }), 422, "forged_signature");
      const list = signApproverList(item.request.request, item.request.approvals, "mgr-a", ARB.get("mgr-a")!.signing);
      const listed = expect(await post(`/v1/recovery/requests/${requestId}/approver-list`, tokens.get("mgr-a"), { approverList: list }), 200) as unknown as RequestJson;
      assert.deepEqual(listed.approverList?.approvers, IN_ORDER);

      /** The terminal's part: forward each APDU to the card, hand back its response, until a result or a refusal. */
      const relayInto = async (card: CardRuntime, start: Res, token = op): Promise<{ res: Res; rounds: number }> => {
        let r = start;
        let rounds = 0;
        const sessionId = (r.json() as { sessionId: string }).sessionId;
        while (r.statusCode === 200 || r.statusCode === 201) {
          const body = r.json() as { apdus?: string[]; result?: unknown };
          if (body.result) break;
          const responses = [];
          for (const a of body.apdus!) responses.push(hex(await transmitFollowing((x) => card.transmit(x), unhex(a))));
          r = await post(`/v1/recovery/sessions/${sessionId}`, token, { responses });
          rounds++;
          assert.ok(rounds < 200, "the reproduction finishes");
        }
        return { res: r, rounds };
      };

      // another card, personalised for another user's card record: not the card the request names (issue 9), refused
      // before anything is sent to a card
      const other = await issueAndPersonalise(env, "Someone Else");
      cards.push(other.card);
      const p = refused(await post(`/v1/recovery/requests/${requestId}/reproduce`, op, { cardId: other.cardId }), 422, "target_not_approved");
      assert.match(String(p.detail), new RegExp(`card ${other.cardId} is not the card the request names \\(${cardId}\\)`));
      assert.equal((expect(await get(`/v1/recovery/requests/${requestId}`, op), 200) as { status: string }).status, "satisfied", "usable again after a refused attempt");
      // a session whose card goes away: the relay fails, the request is usable again
      const start = await post(`/v1/recovery/requests/${requestId}/reproduce`, op, { cardId });
      assert.equal((expect(start, 201).apdus as string[]).length, 1, "one APDU per round");
      const startedId = (start.json() as { sessionId: string }).sessionId;
      let answer = await post(`/v1/recovery/sessions/${startedId}`, op, { responses: ["6a82"] });
      for (let rounds = 0; answer.statusCode === 200 && rounds < 4; rounds++) answer = await post(`/v1/recovery/sessions/${startedId}`, op, { responses: ["6a82"] });
      refused(answer, 422, "device_unreadable");
      expect(await post(`/v1/recovery/sessions/${startedId}`, op, { responses: ["9000"] }), 404);
      assert.equal((expect(await get(`/v1/recovery/requests/${requestId}`, op), 200) as { status: string }).status, "satisfied", "usable again after a refused attempt");

      // the card itself, at the terminal: the session belongs to who opened it
      const begin = await post(`/v1/recovery/requests/${requestId}/reproduce`, op, {});
      const sid = (expect(begin, 201) as { sessionId: string }).sessionId;
      expect(await post(`/v1/recovery/sessions/${sid}`, env.tokens.admin, { responses: ["9000"] }), 403);
      const done = await relayInto(issued.card, begin);
      const result = (expect(done.res, 200) as { result: { approvers: string[]; author: string; deviceReplaced: boolean; cardId: string; slot: string } }).result;
      assert.deepEqual(result.approvers, IN_ORDER);
      assert.equal(result.author, "mgr-a");
      assert.equal(result.deviceReplaced, false);
      assert.equal(result.slot, "9c");
      assert.ok(done.rounds > 4, `one APDU per round trip: ${done.rounds} rounds`);
      assert.ok(await cardSignsFor(transmit, "9c", "P256", certificate), "the card signs again, verified with its original certificate");
      const after = expect(await get(`/v1/recovery/requests/${requestId}`, env.tokens.auditor), 200) as { status: string; reproducedBy: string };
      assert.deepEqual([after.status, after.reproducedBy], ["reproduced", "olga"]);
      refused(await post(`/v1/recovery/requests/${requestId}/reproduce`, op, {}), 409, "request_closed");

      // the audit log: each decision by its arbitrator, in order; the reproduction with the approvers in order
      const entries = (expect(await get("/v1/audit?limit=1000", env.tokens.auditor), 200) as { entries: { action: string; actor: string; subject: string; details: Record<string, unknown> }[] })
        .entries;
      const decisions = entries.filter((e) => e.action === "recovery.decision.record" && e.subject === requestId);
      assert.deepEqual(
        decisions.map((e) => [e.actor, e.details.arbitrator, e.details.seq]),
        IN_ORDER.map((id, i) => [id, id, i]),
      );
      const reproduced = entries.filter((e) => e.action === "recovery.reproduce" && e.subject === requestId);
      assert.equal(reproduced.length, 1);
      assert.deepEqual(reproduced[0].details.approvers, IN_ORDER);
      assert.equal(reproduced[0].actor, "olga");
      const refusals = entries.filter((e) => e.action === "recovery.approval.refuse" && e.subject === requestId).map((e) => e.details.check);
      assert.deepEqual(refusals, ["out_of_order", "forged_signature", "share_missing"]);
      assert.ok(entries.some((e) => e.action === "recovery.reproduce.refuse" && e.details.check === "target_not_approved" && e.details.presentedCard === other.cardId));
      assert.equal((expect(await get("/v1/audit/verify", env.tokens.auditor), 200) as { ok: boolean }).ok, true);
    });

    await t.test("S9: a signed refusal by an indispensable party ends the request by name; a stale chain head is refused; withdraw", async () => {
      const filed = expect(await post("/v1/recovery/requests", op, { cardId, kind: "key-lost", requester: "user" }), 201) as unknown as RequestJson;
      const rid = filed.requestId;
      const head = filed.chainHead;
      expect(await decide("sp-a", rid), 200);
      // a refusal signed over the head before sp-a's approval: it does not follow the chain
      const stale = signApproval(filed.request, head, { arbitrator: "user", decision: "refuse", reason: "late" }, ARB.get("user")!.signing);
      refused(await post(`/v1/recovery/requests/${rid}/refusals`, tokens.get("user"), { refusal: stale }), 422, "broken_chain");
      const ended = expect(await decide("user", rid, "refuse", "I did not ask for this"), 200) as unknown as RequestJson;
      assert.equal(ended.status, "ended");
      assert.match(ended.statusDetail ?? "", /indispensable party user refused/);
      // the others are no longer asked, and a late approval is refused as request_ended
      assert.equal(await pendingOf("credit-co", rid), undefined);
      const v = expect(await get(`/v1/recovery/requests/${rid}`, op), 200) as unknown as RequestJson;
      const late = signApproval(v.request, v.chainHead, { arbitrator: "mgr-b", decision: "approve" }, ARB.get("mgr-b")!.signing);
      refused(await post(`/v1/recovery/requests/${rid}/approvals`, tokens.get("mgr-b"), { approval: late, releases: [] }), 409, "request_ended");
      refused(await post(`/v1/recovery/requests/${rid}/withdraw`, op, { reason: "too late" }), 409, "request_closed");

      const again = expect(await post("/v1/recovery/requests", op, { cardId, kind: "key-lost", requester: "user" }), 201) as unknown as RequestJson;
      const w = expect(await post(`/v1/recovery/requests/${again.requestId}/withdraw`, op, { reason: "found the card" }), 200) as unknown as RequestJson;
      assert.deepEqual([w.status, w.statusDetail], ["withdrawn", "found the card"]);
    });

    await t.test("nothing secret in the log: no arbitrator token, no private key", () => {
      const log = env.logs.join("");
      for (const tok of tokens.values()) assert.ok(!log.includes(tok));
      assert.ok(!log.includes("PRIVATE KEY"));
    });
  });
}

// Issue 9 item 1: an operator takes a request the arbitrators approved for Alice's destroyed card and reproduces
// Alice's key into Bob's card, or into a card it keeps — refused by name, audited, nothing written; the key goes into
// the replacement card the request named, which every approval signed over.
for (const [engine, custody] of testEngines().flatMap((e) => API_CUSTODIES.map((c) => [e, c] as const))) {
  test(`${engine.name}, ${custody} custody: a destroyed card's key goes only into the replacement card the arbitrators approved`, { timeout: 10 * 60_000 }, async (t) => {
    const { env, cards } = await apiEnvFor(t, engine, { custody });
    const { get, post, put } = api(env);
    const op = env.tokens.operator;
    const { registry, keys: ARB } = makeArbitrators(["alice", "mgr"]);
    const tokens = new Map<string, string>();
    for (const id of ["alice", "mgr"]) {
      const a = registry.require(id);
      expect(await post("/v1/recovery/arbitrators", op, { id, signingPublicKey: pem(a.signingKey), encryptionPublicKey: pem(a.encryptionKey) }), 201);
      tokens.set(id, (expect(await post(`/v1/recovery/arbitrators/${id}/tokens`, op), 201) as { token: string }).token);
    }
    // Alice's card, its key escrowed; her new card; Bob's card; a card issued to Alice that the operator keeps
    const alice = await issueAndPersonalise(env, "Alice Abe");
    const aliceUser = String(alice.user.id);
    const renewed = await issueCardFor(env, aliceUser);
    const bob = await issueAndPersonalise(env, "Bob Baba");
    const kept = await issueCardFor(env, aliceUser);
    cards.push(alice.card, renewed.card, bob.card, kept.card);
    expect(
      await put(`/v1/cards/${alice.cardId}/recovery-policy`, op, { version: 1, author: "alice", indispensable: ["alice"], groups: [{ name: "managers", members: ["mgr"], threshold: 1 }], order: [] }),
      200,
    );
    const { certificateDer } = await keygenOverApi(env, alice.cardId, alice.card, { slot: "9c", alg: "P256", personalData: registeredData("Alice Abe"), escrow: true });
    const deviceKey = new Uint8Array(Buffer.from((expect(await get("/v1/recovery/device-key", op), 200) as { spki: string }).spki, "base64"));

    // the card is destroyed; the request must name the card that receives the key, a card of Alice's that can
    const file = (body: Record<string, unknown>) => post("/v1/recovery/requests", op, { cardId: alice.cardId, kind: "card-destroyed", requester: "alice", ...body });
    refused(await file({}), 400, "invalid_argument");
    const other = refused(await file({ replacementCardId: bob.cardId }), 422, "target_other_user");
    assert.match(String(other.detail), /issued to another user/);
    refused(await file({ replacementCardId: alice.cardId }), 422, "target_unfit");
    refused(await file({ replacementCardId: "00000000000000ff" }), 422, "target_unfit");
    refused(await post("/v1/recovery/requests", op, { cardId: alice.cardId, kind: "key-lost", requester: "alice", replacementCardId: renewed.cardId }), 400, "invalid_argument");
    const filed = expect(await file({ replacementCardId: renewed.cardId, reason: "card broken" }), 201) as unknown as RequestJson;
    assert.deepEqual(filed.request.target, { cardId: renewed.cardId, userId: aliceUser }, "the replacement card is in what the arbitrators sign");
    const rid = filed.requestId;

    // each arbitrator sees the target in the request it signs; the author lists the approvers
    for (const id of ["alice", "mgr"]) {
      const item = (expect(await get(`/v1/recovery/arbitrators/${id}/pending`, tokens.get(id)), 200) as { pending: PendingJson[] }).pending.find((p) => p.request.requestId === rid);
      assert.ok(item && item.action === "decide");
      assert.equal(item.request.request.target?.cardId, renewed.cardId);
      const v = item.request;
      const approval = signApproval(v.request, v.chainHead, { arbitrator: id, decision: "approve" }, ARB.get(id)!.signing);
      const releases = releaseSharesFor(v.request, item.envelopes, (e) => openShare(e, ARB.get(id)!.encryption, { escrowId: v.escrowId, cardId: v.cardId }), deviceKey);
      expect(await post(`/v1/recovery/requests/${rid}/approvals`, tokens.get(id), { approval, releases }), 200);
    }
    const v = expect(await get(`/v1/recovery/requests/${rid}`, op), 200) as unknown as RequestJson;
    assert.equal(v.status, "satisfied");
    expect(await post(`/v1/recovery/requests/${rid}/approver-list`, tokens.get("alice"), { approverList: signApproverList(v.request, v.approvals, "alice", ARB.get("alice")!.signing) }), 200);

    // the attack: the approved request reproduced into Bob's card, the card the operator keeps, the destroyed card
    for (const cardId of [bob.cardId, kept.cardId, alice.cardId]) {
      const p = refused(await post(`/v1/recovery/requests/${rid}/reproduce`, op, { cardId }), 422, "target_not_approved");
      assert.match(String(p.detail), new RegExp(`card ${cardId} is not the card the request names`));
    }
    assert.equal((expect(await get(`/v1/recovery/requests/${rid}`, op), 200) as unknown as RequestJson).status, "satisfied", "nothing changed");
    assert.equal(await cardSignsFor((a) => bob.card.transmit(a), "9c", "P256", certificateDer), false, "nothing went into Bob's card");
    assert.equal(await cardSignsFor((a) => kept.card.transmit(a), "9c", "P256", certificateDer), false, "nor into the kept card");
    // the approved card relayed under another card's session: the keys of the approved card do not open it
    const misrelayed = await liveRelay(post, op, await post(`/v1/recovery/requests/${rid}/reproduce`, op, {}), "/v1/recovery/sessions", kept.card);
    refused(misrelayed, 422, "device_unreadable");
    assert.equal(await cardSignsFor((a) => kept.card.transmit(a), "9c", "P256", certificateDer), false);

    // the legitimate reproduction: into the approved card, named or by default
    const done = expect(await liveRelay(post, op, await post(`/v1/recovery/requests/${rid}/reproduce`, op, { cardId: renewed.cardId }), "/v1/recovery/sessions", renewed.card), 200) as {
      result: { targetCardId: string; deviceReplaced: boolean; deviceGeneration: number };
    };
    assert.deepEqual([done.result.targetCardId, done.result.deviceReplaced, done.result.deviceGeneration], [renewed.cardId, true, 2]);
    assert.ok(await cardSignsFor((a) => renewed.card.transmit(a), "9c", "P256", certificateDer), "the new card signs under the destroyed card's certificate");

    // the registered card is now the new one: a key-lost request names it
    const lost = expect(await post("/v1/recovery/requests", op, { cardId: alice.cardId, kind: "key-lost", requester: "alice" }), 201) as unknown as RequestJson;
    assert.deepEqual(lost.request.target, { cardId: renewed.cardId, userId: aliceUser });
    expect(await post(`/v1/recovery/requests/${lost.requestId}/withdraw`, op, { reason: "test over" }), 200);

    // audited, by name
    const entries = (expect(await get("/v1/audit?limit=1000", env.tokens.auditor), 200) as { entries: { action: string; subject: string; details: Record<string, unknown> }[] }).entries;
    assert.deepEqual(
      entries.filter((e) => e.action === "recovery.request.file.refuse").map((e) => e.details.check),
      ["invalid_argument", "target_other_user", "target_unfit", "target_unfit", "invalid_argument"],
    );
    assert.deepEqual(
      entries.filter((e) => e.action === "recovery.reproduce.refuse" && e.subject === rid).map((e) => [e.details.check, e.details.presentedCard]),
      [
        ["target_not_approved", bob.cardId],
        ["target_not_approved", kept.cardId],
        ["target_not_approved", alice.cardId],
        ["device_unreadable", null],
      ],
    );
    const reproduced = entries.find((e) => e.action === "recovery.reproduce" && e.subject === rid);
    assert.equal(reproduced?.details.targetCardId, renewed.cardId);
    assert.equal((expect(await get("/v1/audit/verify", env.tokens.auditor), 200) as { ok: boolean }).ok, true);
  });
}

test("a live relay session refuses a second response count, and closing the server ends a parked reproduction cleanly", { timeout: 10 * 60_000 }, async (t) => {
  const [engine] = testEngines();
  const env = await issuerApiEnv(engine, { logLevel: "silent" });
  let closed = false;
  t.after(async () => {
    if (!closed) await env.close();
  });
  const { get, post } = api(env);
  const put = (url: string, token: string, body: unknown) => env.server.app.inject({ method: "PUT", url, headers: { authorization: `Bearer ${token}` }, payload: body as object });
  const op = env.tokens.operator;
  const { registry, keys } = makeArbitrators(["user"]);
  const u = registry.require("user");
  expect(await post("/v1/recovery/arbitrators", op, { id: "user", signingPublicKey: pem(u.signingKey), encryptionPublicKey: pem(u.encryptionKey) }), 201);
  const token = (expect(await post("/v1/recovery/arbitrators/user/tokens", op), 201) as { token: string }).token;
  const issued = await issueAndPersonalise(env, "Taro Suzuki");
  t.after(() => issued.card.close());
  expect(await put(`/v1/cards/${issued.cardId}/recovery-policy`, op, { version: 1, author: "user", indispensable: ["user"], groups: [], order: [] }), 200);
  await keygenOverApi(env, issued.cardId, issued.card, { slot: "9c", alg: "P256", personalData: registeredData("Taro Suzuki"), escrow: true });
  const filed = expect(await post("/v1/recovery/requests", op, { cardId: issued.cardId, kind: "key-lost", requester: "user" }), 201) as unknown as RequestJson;
  const item = (expect(await get("/v1/recovery/arbitrators/user/pending", token), 200) as { pending: PendingJson[] }).pending[0] as Extract<PendingJson, { action: "decide" }>;
  const device = Buffer.from((expect(await get("/v1/recovery/device-key", token), 200) as { spki: string }).spki, "base64");
  const v = item.request;
  const approval = signApproval(v.request, v.chainHead, { arbitrator: "user", decision: "approve" }, keys.get("user")!.signing);
  const releases = releaseSharesFor(v.request, item.envelopes, (e) => openShare(e, keys.get("user")!.encryption, { escrowId: v.escrowId, cardId: v.cardId }), new Uint8Array(device));
  expect(await post(`/v1/recovery/requests/${filed.requestId}/approvals`, token, { approval, releases }), 200);
  const after = (expect(await get("/v1/recovery/arbitrators/user/pending", token), 200) as { pending: PendingJson[] }).pending[0];
  expect(
    await post(`/v1/recovery/requests/${filed.requestId}/approver-list`, token, { approverList: signApproverList(after.request.request, after.request.approvals, "user", keys.get("user")!.signing) }),
    200,
  );

  const start = expect(await post(`/v1/recovery/requests/${filed.requestId}/reproduce`, op, null), 201) as { sessionId: string; apdus: string[] };
  expect(await post(`/v1/recovery/sessions/${start.sessionId}`, op, { responses: ["9000", "9000"] }), 400);
  // the terminal goes away; the server closes: the parked APDU is refused, the request is usable again
  const status = () => env.server.recovery.status(filed.requestId);
  assert.equal((await status()).status, "reproducing");
  await env.server.app.close();
  const v2 = await status();
  assert.equal(v2.status, "satisfied");
  assert.match(v2.statusDetail ?? "", /device_unreadable/);
  closed = true;
  await env.close();
});
