// Key reproduction (issue 4, "Performance"): split under the 10-arbitrator FIG. 9 policy, then — approvals being
// in — the approvers open their shares, the chain and approver list are verified, the key is rebuilt and checked
// against the user's public key (FIG. 10 unit 22). Median ms per split + rebuild-and-verify, for a P-256 and an
// RSA-2048 key; human time (arbitrators signing their decisions) excluded. Target: median <= 20 ms.
// Then approvals verified per second through the chain verifier (signature, link, order, policy). Target >= 1,000/s.

import { generateKeyPairSync } from "node:crypto";
import { keyPairCheck, reproduce, signApproverList, splitSecret, verifyChain } from "../src/recovery/index.ts";
import { FIG9_ARBITRATORS, fig9Policy, makeArbitrators, makeRequest, releaseShares, signDecisions } from "../test/support/recovery-testing.ts";

type Result = { name: string; value: number; unit: string; [k: string]: unknown };

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

export async function benchRecovery(iterations = 60, chainRounds = 300): Promise<Result[]> {
  const { registry, keys } = makeArbitrators(FIG9_ARBITRATORS);
  const policy = fig9Policy();
  const ids = { escrowId: "esc-bench", cardId: "card-bench" };
  const request = makeRequest(policy, ids);
  const approvers = ["user", "credit-co", "sp-b", "mgr-a", "mgr-d"];
  const approvals = signDecisions(
    request,
    approvers.map((a) => ({ arbitrator: a, decision: "approve" as const })),
    keys,
  );
  const approverList = signApproverList(request, approvals, policy.author, keys.get(policy.author)!.signing);
  const out: Result[] = [];

  for (const [label, pair] of [
    ["p256", generateKeyPairSync("ec", { namedCurve: "P-256" })],
    ["rsa2048", generateKeyPairSync("rsa", { modulusLength: 2048 })],
  ] as const) {
    const secret = new Uint8Array(pair.privateKey.export({ format: "der", type: "pkcs8" }));
    const verify = keyPairCheck(pair.publicKey);
    const times: number[] = [];
    for (let i = 0; i < iterations + 5; i++) {
      const t0 = performance.now();
      const { escrow, envelopes } = await splitSecret({ ...ids, secret, policy, registry });
      const shares = releaseShares(envelopes, approvers, keys, ids);
      const r = await reproduce({ escrow, request, approvals, approverList, registry, shares, verify });
      const dt = performance.now() - t0;
      if (!Buffer.from(r.secret).equals(secret)) throw new Error(`${label}: reproduced key differs`);
      r.secret.fill(0);
      if (i >= 5) times.push(dt);
    }
    out.push({
      name: `recovery_split_rebuild_verify_${label}`,
      value: Math.round(median(times) * 100) / 100,
      unit: "ms",
      target: 20,
      arbitrators: FIG9_ARBITRATORS.length,
      shares: 10,
      approvers: approvers.length,
      p90: Math.round([...times].sort((a, b) => a - b)[Math.floor(times.length * 0.9)] * 100) / 100,
      iterations,
    });
  }

  // All ten decide, the user first so that the credit company's order condition holds.
  const all = signDecisions(
    request,
    FIG9_ARBITRATORS.map((a) => ({ arbitrator: a, decision: "approve" as const })),
    keys,
  );
  for (let i = 0; i < 20; i++) verifyChain(request, all, registry);
  const t0 = performance.now();
  for (let i = 0; i < chainRounds; i++) {
    const v = verifyChain(request, all, registry);
    if (!v.ok || v.evaluation.status !== "satisfied") throw new Error("bench chain does not verify");
  }
  const rate = ((chainRounds * all.length) / (performance.now() - t0)) * 1000;
  out.push({ name: "recovery_approvals_verified", value: Math.round(rate), unit: "approvals/s", target: 1000, chainLength: all.length });
  return out;
}

if (process.argv[1]?.endsWith("recovery.ts")) for (const r of await benchRecovery()) console.log(JSON.stringify({ ...r, date: new Date().toISOString() }));
