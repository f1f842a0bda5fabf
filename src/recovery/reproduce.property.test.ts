// Property tests (issue 4, "Properties to test"): for random policies and random sets and orders of decisions,
// reproduction succeeds if and only if the policy is satisfied — judged by an oracle written independently of
// policy.ts — and the shares' algebra alone cannot be talked into the secret by an unsatisfying set of shares.

import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { combine } from "shamir-secret-sharing";
import type { ReproductionPolicy } from "./policy.ts";
import { type ReleasedShare, rebuildSecret, splitSecret, unsealEscrow } from "./shares.ts";
import { reproduce } from "./reproduce.ts";
import { signApproverList } from "./approvals.ts";
import { RecoveryError } from "./errors.ts";
import { makeArbitrators, makeRequest, releaseShares, signDecisions } from "../../test/support/recovery-testing.ts";

const POOL = ["p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7"];
const { registry, keys } = makeArbitrators(POOL);
const CARD = { escrowId: "esc-prop", cardId: "card-prop" };

const policyArb: fc.Arbitrary<ReproductionPolicy> = fc
  .record({
    author: fc.constantFrom(...POOL),
    indispensable: fc.subarray(POOL, { maxLength: 3 }),
    groups: fc.array(
      fc.shuffledSubarray(POOL, { minLength: 1, maxLength: 5 }).chain((members) => fc.record({ members: fc.constant(members), threshold: fc.integer({ min: 1, max: members.length }) })),
      { maxLength: 3 },
    ),
    rank: fc.shuffledSubarray(POOL, { minLength: POOL.length, maxLength: POOL.length }),
    edges: fc.array(fc.tuple(fc.nat(), fc.nat()), { maxLength: 4 }),
  })
  .filter((r) => r.indispensable.length + r.groups.length > 0)
  .map((r) => {
    const parties = [...new Set([...r.indispensable, ...r.groups.flatMap((g) => g.members)])];
    // Edges go from earlier to later in a random ranking: acyclic by construction.
    const ranked = r.rank.filter((p) => parties.includes(p));
    const order = new Map<string, { before: string; after: string }>();
    if (ranked.length > 1)
      for (const [x, y] of r.edges) {
        const i = x % ranked.length;
        const j = y % ranked.length;
        if (i === j) continue;
        const [b, a] = i < j ? [ranked[i], ranked[j]] : [ranked[j], ranked[i]];
        order.set(`${b}>${a}`, { before: b, after: a });
      }
    return { version: 1 as const, author: r.author, indispensable: r.indispensable, groups: r.groups.map((g, i) => ({ name: `g${i}`, ...g })), order: [...order.values()] };
  });

type D = { arbitrator: string; decision: "approve" | "refuse" };

/** The parties sorted so that every order condition's `before` comes first (Kahn's algorithm). */
function topological(policy: ReproductionPolicy, parties: string[]): string[] {
  const out: string[] = [];
  const left = new Set(parties);
  while (left.size) {
    const next = [...left].find((p) => !policy.order.some((o) => o.after === p && left.has(o.before)))!;
    out.push(next);
    left.delete(next);
  }
  return out;
}

const caseArb = policyArb.chain((policy) => {
  const parties = [...new Set([...policy.indispensable, ...policy.groups.flatMap((g) => g.members)])];
  return fc
    .record({
      policy: fc.constant(policy),
      // Half the cases take most parties in an order that respects the conditions, so that both sides of the
      // equivalence are well exercised; the other half take any subset in any order.
      respectful: fc.oneof({ arbitrary: fc.constant(true), weight: 2 }, { arbitrary: fc.constant(false), weight: 1 }),
      who: fc.shuffledSubarray(parties),
      most: fc.shuffledSubarray(parties, { minLength: Math.max(0, parties.length - 2) }),
      refuse: fc.array(fc.integer({ min: 0, max: 9 }), { minLength: parties.length, maxLength: parties.length }),
      duplicate: fc.oneof({ arbitrary: fc.constant(null), weight: 5 }, { arbitrary: fc.tuple(fc.nat(), fc.nat(), fc.boolean()), weight: 1 }),
    })
    .map(({ policy, respectful, who, most, refuse, duplicate }) => {
      const picked = respectful ? topological(policy, parties).filter((p) => most.includes(p)) : who;
      const decisions: D[] = picked.map((a, i) => ({ arbitrator: a, decision: refuse[i] === 0 ? "refuse" : "approve" }));
      if (duplicate && decisions.length) {
        const [from, at, yes] = duplicate;
        decisions.splice(at % (decisions.length + 1), 0, { arbitrator: decisions[from % decisions.length].arbitrator, decision: yes ? "approve" : "refuse" });
      }
      return { policy, decisions };
    });
});

/** The policy's meaning, written from the seed's words rather than from policy.ts. */
function oracle(policy: ReproductionPolicy, decisions: readonly D[]): boolean {
  const names = decisions.map((d) => d.arbitrator);
  if (new Set(names).size !== names.length) return false; // each arbitrator judges once
  const approvedAt = (p: string) => decisions.findIndex((d) => d.arbitrator === p && d.decision === "approve");
  if (!policy.indispensable.every((p) => approvedAt(p) >= 0)) return false;
  if (!policy.groups.every((g) => g.members.filter((m) => approvedAt(m) >= 0).length >= g.threshold)) return false;
  return policy.order.every((o) => approvedAt(o.after) < 0 || (approvedAt(o.before) >= 0 && approvedAt(o.before) < approvedAt(o.after)));
}

test("reproduction succeeds if and only if the policy is satisfied (random policies, decisions and orders)", async (t) => {
  let satisfied = 0;
  let runs = 0;
  await fc.assert(
    fc.asyncProperty(caseArb, async ({ policy, decisions }) => {
      runs++;
      const secret = crypto.getRandomValues(new Uint8Array(48));
      const { escrow, envelopes } = await splitSecret({ ...CARD, secret, policy, registry });
      const request = makeRequest(policy, CARD);
      const approvals = signDecisions(request, decisions, keys);
      const approverList = signApproverList(request, approvals, policy.author, keys.get(policy.author)!.signing);
      const approvers = new Set(decisions.filter((d) => d.decision === "approve").map((d) => d.arbitrator));
      const shares = releaseShares(envelopes, approvers, keys, CARD);
      const expected = oracle(policy, decisions);
      let got: Uint8Array | undefined;
      try {
        got = (await reproduce({ escrow, request, approvals, approverList, registry, shares })).secret;
      } catch (e) {
        if (!(e instanceof RecoveryError)) throw e;
      }
      assert.equal(got !== undefined, expected, `policy ${JSON.stringify(policy)} decisions ${JSON.stringify(decisions)}`);
      if (got) {
        satisfied++;
        assert.deepEqual(got, secret);
      }
    }),
    { numRuns: 250 },
  );
  t.diagnostic(`satisfied in ${satisfied} of ${runs} runs`);
  // The generator must exercise both sides of the equivalence.
  assert.ok(satisfied >= runs / 20 && satisfied <= runs - runs / 20, `satisfied ${satisfied} of ${runs}`);
});

test("the shares alone: an unsatisfying set of shares cannot be combined into the secret, a satisfying one can", async () => {
  await fc.assert(
    fc.asyncProperty(policyArb, fc.subarray(POOL), async (policy, holders) => {
      const secret = crypto.getRandomValues(new Uint8Array(32));
      const { escrow, envelopes } = await splitSecret({ ...CARD, secret, policy, registry });
      const shares = releaseShares(envelopes, holders, keys, CARD);
      const has = new Set(holders);
      const meets = policy.indispensable.every((p) => has.has(p)) && policy.groups.every((g) => g.members.filter((m) => has.has(m)).length >= g.threshold);
      let rebuilt: Uint8Array | undefined;
      try {
        rebuilt = await rebuildSecret(escrow, policy, shares);
      } catch (e) {
        assert.ok(e instanceof RecoveryError && ["share_missing", "threshold_not_met"].includes(e.check), String(e));
      }
      assert.equal(rebuilt !== undefined, meets);
      if (rebuilt) assert.deepEqual(rebuilt, secret);
      if (meets) return;
      // An attacker holding these shares, bypassing every count: its best candidate K must not open the escrow.
      const byId = new Map<string, ReleasedShare>(shares.map((s) => [s.shareId, s]));
      const k = new Uint8Array(32);
      const xor = (v: Uint8Array) => v.subarray(0, 32).forEach((b, i) => (k[i] ^= b));
      for (const p of policy.indispensable) xor(byId.get(`ind/${p}`)?.value ?? crypto.getRandomValues(new Uint8Array(32)));
      for (const [gi, g] of policy.groups.entries()) {
        const have = g.members.flatMap((m) => byId.get(`group/${gi}/${m}`)?.value ?? []) as Uint8Array[];
        if (g.threshold === 1 || have.length === 1) xor(have[0] ?? crypto.getRandomValues(new Uint8Array(32)));
        else if (have.length >= 2) xor(await combine(have.map((v) => new Uint8Array(v))));
        else xor(crypto.getRandomValues(new Uint8Array(32)));
      }
      assert.equal(unsealEscrow(escrow, k), undefined);
    }),
    { numRuns: 150 },
  );
});
