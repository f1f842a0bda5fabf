import { test } from "node:test";
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { type EscrowRecord, type ReleasedShare, openShare, rebuildSecret, shareCommitment, splitSecret } from "./shares.ts";
import { sealTo } from "./ecies.ts";
import { reproduce } from "./reproduce.ts";
import { signApproverList } from "./approvals.ts";
import { keyPairCheck } from "./key-check.ts";
import { RecoveryError, type RecoveryCheck } from "./errors.ts";
import { canonicalJson } from "./encoding.ts";
import { FIG9_ARBITRATORS, fig9Policy, makeArbitrators, makeRequest, releaseShares, signDecisions } from "../../test/support/recovery-testing.ts";

const { registry, keys } = makeArbitrators(FIG9_ARBITRATORS);
const policy = fig9Policy();
const CARD = { escrowId: "esc-1", cardId: "card-1" };
const approvers = ["user", "credit-co", "sp-b", "mgr-a", "mgr-d"];

const p256 = generateKeyPairSync("ec", { namedCurve: "P-256" });
const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 });
const pkcs8 = (k: typeof p256) => new Uint8Array(k.privateKey.export({ format: "der", type: "pkcs8" }));

async function refused(p: Promise<unknown> | (() => unknown), check: RecoveryCheck): Promise<RecoveryError> {
  try {
    await (typeof p === "function" ? p() : p);
  } catch (e) {
    assert.ok(e instanceof RecoveryError, String(e));
    assert.equal(e.check, check, e.message);
    return e;
  }
  assert.fail(`expected a refusal: ${check}`);
}

function fullReproduction(escrow: EscrowRecord, shares: ReleasedShare[], verify = keyPairCheck(p256.publicKey)) {
  const request = makeRequest(policy, CARD);
  const decisions = approvers.map((a) => ({ arbitrator: a, decision: "approve" as const }));
  const approvals = signDecisions(request, decisions, keys);
  const approverList = signApproverList(request, approvals, policy.author, keys.get(policy.author)!.signing);
  return reproduce({ escrow, request, approvals, approverList, registry, shares, verify });
}

test("FIG. 9: split a P-256 PKCS#8, reproduce it from the approvers' shares and check it against the public key", async () => {
  const secret = pkcs8(p256);
  const { escrow, envelopes } = await splitSecret({ ...CARD, secret, policy, registry });
  // 2 indispensable + 3 service providers + 5 managers
  assert.equal(envelopes.length, 10);
  assert.ok(!JSON.stringify({ escrow, envelopes }).includes(Buffer.from(secret).toString("base64")));
  const r = await fullReproduction(escrow, releaseShares(envelopes, approvers, keys, CARD));
  assert.deepEqual(r.secret, secret);
  assert.deepEqual(r.approvers, approvers);
  assert.equal(r.author, "mgr-a");
});

test("RSA-2048 PKCS#8 and a 32-byte seed round-trip; a party in two places receives two shares", async () => {
  const secret = new Uint8Array(rsa.privateKey.export({ format: "der", type: "pkcs8" }));
  const { escrow, envelopes } = await splitSecret({ ...CARD, secret, policy, registry });
  const got = await rebuildSecret(escrow, policy, releaseShares(envelopes, approvers, keys, CARD), { verify: keyPairCheck(rsa.publicKey, 3) });
  assert.deepEqual(got, secret);

  const seed = crypto.getRandomValues(new Uint8Array(32));
  const twice = { ...policy, indispensable: ["user", "credit-co", "mgr-a"] };
  const s = await splitSecret({ ...CARD, secret: seed, policy: twice, registry });
  assert.equal(s.envelopes.filter((e) => e.header.arbitrator === "mgr-a").length, 2);
  assert.deepEqual(await rebuildSecret(s.escrow, twice, releaseShares(s.envelopes, approvers, keys, CARD)), seed);
});

test("a share from another card is refused, at the arbitrator and at the reproduction device", async () => {
  const secret = pkcs8(p256);
  const mine = await splitSecret({ ...CARD, secret, policy, registry });
  const other = await splitSecret({ escrowId: "esc-2", cardId: "card-2", secret, policy, registry });
  const foreign = other.envelopes.find((e) => e.header.arbitrator === "mgr-d")!;
  await refused(() => openShare(foreign, keys.get("mgr-d")!.encryption, CARD), "share_other_escrow");
  // Its header rewritten to claim this card: the header is the envelope's additional data, so it no longer opens.
  const relabelled = { ...foreign, header: { ...foreign.header, ...CARD } };
  await refused(() => openShare(relabelled, keys.get("mgr-d")!.encryption, CARD), "share_decrypt_failed");
  // Released for card 2 and handed to card 1's reproduction.
  const released = openShare(foreign, keys.get("mgr-d")!.encryption, { escrowId: "esc-2", cardId: "card-2" });
  const shares = releaseShares(mine.envelopes, approvers, keys, CARD).filter((s) => s.arbitrator !== "mgr-d");
  await refused(fullReproduction(mine.escrow, [...shares, released]), "share_other_escrow");
  // Relabelled as card 1's after release: the commitment binds escrow, card and share.
  await refused(fullReproduction(mine.escrow, [...shares, { ...released, ...CARD }]), "share_commitment_mismatch");
  // Same escrow id, other card.
  await refused(fullReproduction(mine.escrow, [...shares, { ...released, escrowId: "esc-1" }]), "share_other_card");
});

test("a wrong or forged share is detected, naming whose share it was", async () => {
  const { escrow, envelopes } = await splitSecret({ ...CARD, secret: pkcs8(p256), policy, registry });
  const good = releaseShares(envelopes, approvers, keys, CARD);
  const flip = (s: ReleasedShare): ReleasedShare => ({ ...s, value: s.value.map((b, i) => (i === 0 ? b ^ 1 : b)) });
  for (const who of ["user", "sp-b", "mgr-d"]) {
    const e = await refused(
      rebuildSecret(
        escrow,
        policy,
        good.map((s) => (s.arbitrator === who ? flip(s) : s)),
      ),
      "share_commitment_mismatch",
    );
    assert.equal(e.details.arbitrator, who);
  }
  // Forged by someone who has only the arbitrator's public key: a well-formed envelope with a value of their choosing.
  const target = envelopes.find((e) => e.header.arbitrator === "mgr-a")!;
  const forgedEnvelope = { header: target.header, box: sealTo(registry.require("mgr-a").encryptionPoint, crypto.getRandomValues(new Uint8Array(33)), Buffer.from(canonicalJson(target.header))) };
  const forged = openShare(forgedEnvelope, keys.get("mgr-a")!.encryption, CARD);
  await refused(
    rebuildSecret(
      escrow,
      policy,
      good.map((s) => (s.arbitrator === "mgr-a" ? forged : s)),
    ),
    "share_commitment_mismatch",
  );
  // A tampered envelope does not open.
  const tampered = { ...target, box: { ...target.box, ciphertext: Buffer.from(Buffer.from(target.box.ciphertext, "base64").map((b, i) => (i === 3 ? b ^ 0x80 : b))).toString("base64") } };
  await refused(() => openShare(tampered, keys.get("mgr-a")!.encryption, CARD), "share_decrypt_failed");
  // The wrong arbitrator's key does not open it either.
  await refused(() => openShare(target, keys.get("mgr-b")!.encryption, CARD), "share_decrypt_failed");
  // Commitment and share forged together: the share passes, K comes out wrong, the sealed secret does not open
  // (and its tag covers the commitments, so the altered record would not open even with the right K).
  const salt = Buffer.from(escrow.salt, "base64");
  const forgedCommit = {
    ...escrow,
    shares: escrow.shares.map((d) => (d.shareId === forged.shareId ? { ...d, commitment: shareCommitment(escrow, salt, d.shareId, d.arbitrator, forged.value) } : d)),
  };
  await refused(rebuildSecret(forgedCommit, policy, good.filter((s) => s.arbitrator !== "mgr-a").concat(forged)), "final_check_failed");
  // Only the commitment of a share nobody released altered: every share used checks and K is right, yet it fails.
  const altered = { ...escrow, shares: escrow.shares.map((d) => (d.arbitrator === "sp-a" ? { ...d, commitment: "00".repeat(32) } : d)) };
  await refused(rebuildSecret(altered, policy, good), "final_check_failed");
});

test("the final checks: a record altered with consistent commitments fails to open; a key not matching the public key is refused", async () => {
  const secret = pkcs8(p256);
  const { escrow, envelopes } = await splitSecret({ ...CARD, secret, policy, registry });
  const good = releaseShares(envelopes, approvers, keys, CARD);
  // Another escrow's sealed secret grafted onto this record: every share checks, K is right, the tag is not.
  const other = await splitSecret({ ...CARD, secret: crypto.getRandomValues(new Uint8Array(32)), policy, registry });
  await refused(rebuildSecret({ ...escrow, sealed: other.escrow.sealed }, policy, good), "final_check_failed");
  // The escrow was made for another key pair (or the registered public key is wrong).
  const e = await refused(rebuildSecret(escrow, policy, good, { verify: keyPairCheck(generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey) }), "key_check_failed");
  assert.ok(!e.message.includes(Buffer.from(secret).toString("hex").slice(0, 16)));
  await refused(rebuildSecret(escrow, policy, good, { verify: keyPairCheck(rsa.publicKey) }), "key_check_failed");
});

test("shares of non-approvers, missing shares and too few group shares are refused", async () => {
  const { escrow, envelopes } = await splitSecret({ ...CARD, secret: pkcs8(p256), policy, registry });
  const all = releaseShares(envelopes, FIG9_ARBITRATORS, keys, CARD);
  await refused(fullReproduction(escrow, all), "share_from_non_approver");
  const good = releaseShares(envelopes, approvers, keys, CARD);
  await refused(
    rebuildSecret(
      escrow,
      policy,
      good.filter((s) => s.arbitrator !== "credit-co"),
    ),
    "share_missing",
  );
  await refused(
    rebuildSecret(
      escrow,
      policy,
      good.filter((s) => s.arbitrator !== "mgr-d"),
    ),
    "threshold_not_met",
  );
  await refused(rebuildSecret(escrow, policy, [...good, good[0]]), "share_duplicate");
  await refused(rebuildSecret(escrow, { ...policy, author: "mgr-b" }, good), "policy_mismatch");
  await refused(rebuildSecret(escrow, policy, [{ ...good[0], arbitrator: "mgr-e" }]), "share_wrong_arbitrator");
});

test("reproduction refuses a request that is not satisfied or is for another escrow", async () => {
  const { escrow, envelopes } = await splitSecret({ ...CARD, secret: pkcs8(p256), policy, registry });
  const request = makeRequest(policy, CARD);
  const few = signDecisions(
    request,
    [
      { arbitrator: "user", decision: "approve" },
      { arbitrator: "credit-co", decision: "approve" },
      { arbitrator: "sp-a", decision: "approve" },
      { arbitrator: "mgr-b", decision: "approve" },
    ],
    keys,
  );
  const list = signApproverList(request, few, "mgr-a", keys.get("mgr-a")!.signing);
  const shares = releaseShares(envelopes, ["user", "credit-co", "sp-a", "mgr-b"], keys, CARD);
  const e = await refused(reproduce({ escrow, request, approvals: few, approverList: list, registry, shares }), "policy_not_satisfied");
  assert.deepEqual(
    (e.details.needs as { groups: { name: string }[] }).groups.map((g) => g.name),
    ["issuing-apparatus-managers"],
  );
  const elsewhere = makeRequest(policy, { escrowId: "esc-9", cardId: "card-9" });
  const ds = approvers.map((a) => ({ arbitrator: a, decision: "approve" as const }));
  const approvals = signDecisions(elsewhere, ds, keys);
  await refused(
    reproduce({
      escrow,
      request: elsewhere,
      approvals,
      approverList: signApproverList(elsewhere, approvals, "mgr-a", keys.get("mgr-a")!.signing),
      registry,
      shares: releaseShares(envelopes, approvers, keys, CARD),
    }),
    "request_other_escrow",
  );
});
