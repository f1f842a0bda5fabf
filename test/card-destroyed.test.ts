// Issue 15 §5, seed 001 FIG. 11-12: a card reported destroyed, its key reproduced by the arbitrators into the
// replacement card — and the old card record stops at once, in the same transaction that records the reproduction:
// its live terminal token, its login, its packages and backups are refused; the new card works; the audit log has
// the old card marked destroyed between the device replacement and the reproduction, by the reproducing operator.
// On SQLite and PostgreSQL, the server as its process wires it (software custody: the storage is what differs).
import { test } from "node:test";
import assert from "node:assert/strict";
import { signApproval, signApproverList } from "../src/recovery/approvals.ts";
import { releaseSharesFor } from "../src/recovery/service.ts";
import { openShare } from "../src/recovery/shares.ts";
import { testEngines } from "./support/store-testing.ts";
import type { PendingJson, RequestJson } from "../src/terminal/recovery-client.ts";
import { api, apiEnvFor, authenticate, expect, issueAndPersonalise, keygenOverApi, liveRelay, registeredData, type ApiEnv } from "./api-env.ts";
import { arbitratorOverApi, cardSignsFor, issueCardFor } from "./recovery-fixture.ts";

type Res = Awaited<ReturnType<ApiEnv["server"]["app"]["inject"]>>;

function refused(r: Res, check: string, state: string): void {
  const p = expect(r, 409);
  assert.deepEqual([p.check, p.state], [check, state], r.body);
}

for (const engine of testEngines()) {
  test(`${engine.name}: after a card-destroyed reproduction into the replacement card, the destroyed card is refused everywhere`, { timeout: 10 * 60_000 }, async (t) => {
    const { env, cards } = await apiEnvFor(t, engine, { logLevel: "silent" });
    const { get, post, put } = api(env);
    const op = env.tokens.operator;
    const { keys, token: arbitrator } = await arbitratorOverApi(env, "alice");

    // S1-S4: Alice's card, its key escrowed; her terminal logged in with it
    const old = await issueAndPersonalise(env, "Alice Abe");
    cards.push(old.card);
    expect(await put(`/v1/cards/${old.cardId}/recovery-policy`, op, { version: 1, author: "alice", indispensable: ["alice"], groups: [], order: [] }), 200);
    const { certificateDer } = await keygenOverApi(env, old.cardId, old.card, { slot: "9c", alg: "P256", personalData: registeredData("Alice Abe"), escrow: true });
    const oldToken = (expect(await authenticate(post, old.cardId, old.card), 200) as { token: string }).token;
    expect(await get(`/v1/cards/${old.cardId}/backups`, oldToken), 200);

    // S5': the card is destroyed (the image lives on here: a thief's copy, or the card the holder thinks is gone);
    // a replacement card is issued and the reproduction is filed, approved and listed
    const renewed = await issueCardFor(env, String(old.user.id));
    cards.push(renewed.card);
    const filed = expect(
      await post("/v1/recovery/requests", op, { cardId: old.cardId, kind: "card-destroyed", requester: "alice", replacementCardId: renewed.cardId, reason: "dropped and crushed" }),
      201,
    ) as unknown as RequestJson;
    const rid = filed.requestId;
    const deviceKey = new Uint8Array(Buffer.from((expect(await get("/v1/recovery/device-key", op), 200) as { spki: string }).spki, "base64"));
    const item = (expect(await get("/v1/recovery/arbitrators/alice/pending", arbitrator), 200) as { pending: PendingJson[] }).pending.find((p) => p.request.requestId === rid) as Extract<
      PendingJson,
      { action: "decide" }
    >;
    const v = item.request;
    const approval = signApproval(v.request, v.chainHead, { arbitrator: "alice", decision: "approve" }, keys.get("alice")!.signing);
    const releases = releaseSharesFor(v.request, item.envelopes, (e) => openShare(e, keys.get("alice")!.encryption, { escrowId: v.escrowId, cardId: v.cardId }), deviceKey);
    expect(await post(`/v1/recovery/requests/${rid}/approvals`, arbitrator, { approval, releases }), 200);
    const satisfied = expect(await get(`/v1/recovery/requests/${rid}`, op), 200) as unknown as RequestJson;
    expect(await post(`/v1/recovery/requests/${rid}/approver-list`, arbitrator, { approverList: signApproverList(satisfied.request, satisfied.approvals, "alice", keys.get("alice")!.signing) }), 200);
    // until the reproduction, the old card still acts (nobody reported it destroyed)
    expect(await get(`/v1/cards/${old.cardId}/backups`, oldToken), 200);

    // S8-S11: the reproduction into the replacement card
    const done = expect(await liveRelay(post, op, await post(`/v1/recovery/requests/${rid}/reproduce`, op, {}), "/v1/recovery/sessions", renewed.card), 200) as {
      result: { targetCardId: string; deviceReplaced: boolean };
    };
    assert.deepEqual([done.result.targetCardId, done.result.deviceReplaced], [renewed.cardId, true]);
    assert.ok(await cardSignsFor((x) => renewed.card.transmit(x), "9c", "P256", certificateDer));

    // the old card record is destroyed: its live token, its login, what operators would do for it
    const record = expect(await get(`/v1/cards/${old.cardId}`, env.tokens.auditor), 200);
    assert.deepEqual([record.status, record.statusChangedBy], ["destroyed", "olga"]);
    assert.match(String(record.statusReason), new RegExp(`${rid}.*${renewed.cardId}`));
    refused(await get(`/v1/cards/${old.cardId}/backups`, oldToken), "card_state", "destroyed");
    refused(await get(`/v1/cards/${old.cardId}/packages`, oldToken), "card_state", "destroyed");
    refused(await put(`/v1/cards/${old.cardId}/backups/notes`, oldToken, { envelope: "AAAA" }), "card_state", "destroyed");
    expect(await post(`/v1/cards/${old.cardId}/auth`), 404);
    refused(await post(`/v1/cards/${old.cardId}/credentials`, op, { slot: "9a", alg: "P256" }), "card_state", "destroyed");
    refused(await post(`/v1/cards/${old.cardId}/resume`, op, { reason: "found it" }), "card_transition_not_allowed", "destroyed");
    // the new card works, and reaches what was backed up through the old one
    const newToken = (expect(await authenticate(post, renewed.cardId, renewed.card), 200) as { token: string }).token;
    expect(await get(`/v1/cards/${renewed.cardId}/backups`, newToken), 200);
    assert.equal(expect(await get(`/v1/cards/${renewed.cardId}`, env.tokens.auditor), 200).status, "active");

    // one transaction: the device replaced, the old card destroyed, the reproduction recorded — consecutive entries
    const entries = (
      expect(await get("/v1/audit?limit=1000", env.tokens.auditor), 200) as { entries: { seq: number; actor: string; action: string; subject: string; details: Record<string, unknown> }[] }
    ).entries;
    const at = entries.findIndex((e) => e.action === "recovery.device.replace" && e.subject === old.cardId);
    assert.deepEqual(
      entries.slice(at, at + 3).map((e) => [e.action, e.subject]),
      [
        ["recovery.device.replace", old.cardId],
        ["card.destroyed", old.cardId],
        ["recovery.reproduce", rid],
      ],
    );
    assert.deepEqual([entries[at + 1].actor, entries[at + 1].details.from, entries[at + 1].details.requestId, entries[at + 1].details.replacementCardId], ["olga", "active", rid, renewed.cardId]);
    assert.equal((expect(await get("/v1/audit/verify", env.tokens.auditor), 200) as { ok: boolean }).ok, true);
  });
}
