import { test } from "node:test";
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { ApprovalChain, approvalHash, signApproval, signApproverList, verifyApproverList, verifyChain } from "./approvals.ts";
import { RecoveryError, type RecoveryCheck } from "./errors.ts";
import { FIG9_ARBITRATORS, fig9Policy, makeArbitrators, makeRequest, signDecisions } from "../../test/support/recovery-testing.ts";

const { registry, keys } = makeArbitrators([...FIG9_ARBITRATORS, "outsider"]);
const request = makeRequest(fig9Policy());
const happy = [
  { arbitrator: "user", decision: "approve" },
  { arbitrator: "credit-co", decision: "approve" },
  { arbitrator: "sp-b", decision: "approve" },
  { arbitrator: "mgr-c", decision: "refuse", reason: "not on duty" },
  { arbitrator: "mgr-a", decision: "approve" },
  { arbitrator: "mgr-d", decision: "approve" },
] as const;

function refusedWith(approvals: Parameters<typeof verifyChain>[1], check: RecoveryCheck, index: number) {
  const v = verifyChain(request, approvals, registry);
  assert.equal(v.ok, false, `expected ${check}`);
  if (v.ok) return;
  assert.equal(v.check, check, v.message);
  assert.equal(v.index, index);
}

test("a valid chain verifies and satisfies FIG. 9, approvers in order", () => {
  const chain = signDecisions(request, happy, keys);
  const v = verifyChain(request, chain, registry);
  assert.ok(v.ok);
  if (!v.ok) return;
  assert.equal(v.evaluation.status, "satisfied");
  assert.deepEqual(v.approvers, ["user", "credit-co", "sp-b", "mgr-a", "mgr-d"]);
  assert.equal(v.head, approvalHash(chain[chain.length - 1]));
});

test("a forged signature is refused: wrong key, altered decision, altered reason", () => {
  const chain = signDecisions(request, happy, keys);
  const byWrongKey = signApproval(request, chain.slice(0, 2), { arbitrator: "sp-b", decision: "approve" }, keys.get("sp-a")!.signing);
  refusedWith([...chain.slice(0, 2), byWrongKey], "forged_signature", 2);
  refusedWith([...chain.slice(0, 3), { ...chain[3], decision: "approve" }], "forged_signature", 3);
  refusedWith([...chain.slice(0, 3), { ...chain[3], reason: "changed" }], "forged_signature", 3);
  refusedWith([{ ...chain[0], signature: "AAAA" }], "forged_signature", 0);
  const stranger = generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey;
  refusedWith([signApproval(request, [], { arbitrator: "user", decision: "approve" }, stranger)], "forged_signature", 0);
});

test("an approval out of order is refused: the credit company before the user", () => {
  const early = signDecisions(request, [{ arbitrator: "credit-co", decision: "approve" }], keys);
  refusedWith(early, "out_of_order", 0);
  // A refusal is not an approval: the credit company may refuse at any time.
  const v = verifyChain(request, signDecisions(request, [{ arbitrator: "credit-co", decision: "refuse" }], keys), registry);
  assert.ok(v.ok && v.evaluation.status === "failed");
});

test("a replayed approval from another request is refused", () => {
  const other = makeRequest(fig9Policy(), { requestId: "req-2" });
  const theirs = signDecisions(other, happy, keys);
  refusedWith([theirs[0]], "replayed_from_other_request", 0);
  // Same id, different content (another card): the digest differs.
  const sameId = makeRequest(fig9Policy(), { cardId: "card-2" });
  refusedWith(signDecisions(sameId, happy, keys).slice(0, 1), "replayed_from_other_request", 0);
  // Rewriting the request id in a replayed approval breaks its signature.
  refusedWith([{ ...theirs[0], requestId: request.requestId }], "replayed_from_other_request", 0);
  refusedWith([{ ...theirs[0], requestId: request.requestId, requestDigest: signDecisions(request, happy, keys)[0].requestDigest }], "forged_signature", 0);
});

test("a duplicate decision, a broken link, an unknown or outside arbitrator are refused", () => {
  const chain = signDecisions(request, happy, keys);
  refusedWith([...chain.slice(0, 3), chain[2]], "duplicate_decision", 3);
  const again = signApproval(request, chain.slice(0, 3), { arbitrator: "user", decision: "approve" }, keys.get("user")!.signing);
  refusedWith([...chain.slice(0, 3), again], "duplicate_decision", 3);
  refusedWith([chain[0], chain[2]], "broken_chain", 1);
  refusedWith([chain[1], chain[0]], "broken_chain", 0);
  refusedWith([{ ...chain[0], arbitrator: "ghost" }], "unknown_arbitrator", 0);
  refusedWith(signDecisions(request, [{ arbitrator: "outsider", decision: "approve" }], keys), "not_a_party", 0);
  refusedWith([{ ...chain[0], decision: "maybe" as "approve" }], "malformed_approval", 0);
});

test("a refusal by an indispensable party ends the request; later decisions are refused", () => {
  const c = new ApprovalChain(request, registry);
  const [r] = signDecisions(request, [{ arbitrator: "user", decision: "refuse", reason: "I did not ask" }], keys);
  const e = c.append(r);
  assert.equal(e.status, "failed");
  if (e.status === "failed") assert.deepEqual(e.condition, { kind: "indispensable_refused", party: "user" });
  const late = signApproval(request, c.approvals, { arbitrator: "sp-a", decision: "approve" }, keys.get("sp-a")!.signing);
  assert.throws(
    () => c.append(late),
    (err: RecoveryError) => err.check === "request_ended" && /indispensable party user refused/.test(err.message),
  );
  assert.equal(c.approvals.length, 1, "a refused approval is not appended");
});

test("a group that can no longer reach k ends the request", () => {
  const ds = ["sp-a", "sp-b", "sp-c"].map((a) => ({ arbitrator: a, decision: "refuse" as const }));
  const v = verifyChain(request, signDecisions(request, ds, keys), registry);
  assert.ok(v.ok && v.evaluation.status === "failed" && v.evaluation.condition.kind === "threshold_unreachable");
  const more = signDecisions(request, [...ds, { arbitrator: "user", decision: "approve" }], keys);
  refusedWith(more, "request_ended", 3);
});

test("the approver list is signed by the policy's author and matches the chain", () => {
  const chain = signDecisions(request, happy, keys);
  const v = verifyChain(request, chain, registry);
  assert.ok(v.ok);
  if (!v.ok) return;
  const list = signApproverList(request, chain, "mgr-a", keys.get("mgr-a")!.signing);
  verifyApproverList(list, request, v, registry);
  const check = (l: typeof list, c: RecoveryCheck) =>
    assert.throws(
      () => verifyApproverList(l, request, v, registry),
      (e: RecoveryError) => e.check === c,
    );
  check(signApproverList(request, chain, "mgr-b", keys.get("mgr-b")!.signing), "forged_signature");
  check({ ...list, approvers: ["user", "credit-co", "sp-b", "mgr-a"] }, "forged_signature");
  check(signApproverList(request, chain.slice(0, 5), "mgr-a", keys.get("mgr-a")!.signing), "broken_chain");
  check(signApproverList(makeRequest(fig9Policy(), { requestId: "req-9" }), chain, "mgr-a", keys.get("mgr-a")!.signing), "replayed_from_other_request");
});
