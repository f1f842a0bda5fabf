// The secret key reproduction necessary condition (seed 001, embodiment 3, FIG. 9; claims 37-39 and 44-46) as
// data, its validation and its evaluator. A policy combines
//   - indispensable parties: every one must approve (FIG. 9 condition 11: the user);
//   - threshold groups: k of the group's n members must approve (conditions 13, 14: any 1 of the service
//     providers, any 2 of the issuing-apparatus managers);
//   - order conditions: `after` may approve only once `before` has approved (condition 12: the credit company
//     approves only after the user);
//   - the author of the list of approvers (condition 15), who must be a registered arbitrator.
// The evaluator is a pure function of the ordered decisions; it knows nothing of signatures (approvals.ts) or
// shares (shares.ts). Order is not something shares can enforce — the seed says so ("it suffices to check the
// signature of the person who approved") — so the signed chain enforces it and the evaluator judges it.

import { type ArbitratorDirectory, ARBITRATOR_ID } from "./registry.ts";
import { type PolicyIssue, PolicyValidationError } from "./errors.ts";
import { canonicalJson, labelledDigest } from "./encoding.ts";

export interface ThresholdGroup {
  name: string;
  members: string[];
  /** k: how many of `members` must approve, 1 <= k <= members.length. */
  threshold: number;
}

export interface OrderCondition {
  /** This party must have approved ... */
  before: string;
  /** ... before this party's approval is accepted. */
  after: string;
}

export interface ReproductionPolicy {
  version: 1;
  /** The arbitrator who authored the list of approvers (FIG. 9 condition 15). */
  author: string;
  indispensable: string[];
  groups: ThresholdGroup[];
  order: OrderCondition[];
}

/** Shamir shares come from `shamir-secret-sharing`, whose x coordinates are bytes 1..255. */
export const MAX_GROUP_MEMBERS = 255;
export const MAX_GROUPS = 64;

const GROUP_NAME = /^[A-Za-z0-9][A-Za-z0-9 ._:-]{0,63}$/;

/** Every party the policy names (indispensable parties and group members), in first-mention order. */
export function policyParties(policy: ReproductionPolicy): string[] {
  return [...new Set([...policy.indispensable, ...policy.groups.flatMap((g) => g.members)])];
}

/** SHA-256 of the policy's canonical JSON, hex: what requests and escrows bind to. */
export function policyDigest(policy: ReproductionPolicy): string {
  return labelledDigest("cardkms/recovery/policy/v1", canonicalJson(policy)).toString("hex");
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

function checkKeys(o: Record<string, unknown>, allowed: string[], path: string, issues: PolicyIssue[]): void {
  for (const k of Object.keys(o)) if (!allowed.includes(k)) issues.push({ path: `${path}/${k}`, message: `unknown member; expected one of ${allowed.join(", ")}` });
}

/**
 * Validates a policy document (parsed JSON) against the registered arbitrators and returns it typed, or throws a
 * PolicyValidationError listing every problem with a JSON pointer to it.
 */
export function validatePolicy(doc: unknown, arbitrators: ArbitratorDirectory): ReproductionPolicy {
  const issues: PolicyIssue[] = [];
  const id = (v: unknown, path: string): v is string => {
    if (typeof v !== "string" || !ARBITRATOR_ID.test(v)) {
      issues.push({ path, message: "expected an arbitrator id (1-128 characters of [A-Za-z0-9._:@-])" });
      return false;
    }
    if (!arbitrators.isRegistered(v)) {
      issues.push({ path, message: `arbitrator ${v} is not registered` });
      return false;
    }
    return true;
  };
  if (!isObject(doc)) throw new PolicyValidationError([{ path: "", message: "expected a JSON object" }]);
  checkKeys(doc, ["version", "author", "indispensable", "groups", "order"], "", issues);
  if (doc.version !== 1) issues.push({ path: "/version", message: "expected 1" });
  id(doc.author, "/author");

  const parties = new Set<string>();
  if (!Array.isArray(doc.indispensable)) issues.push({ path: "/indispensable", message: "expected an array of arbitrator ids (may be empty)" });
  else {
    const seen = new Set<string>();
    doc.indispensable.forEach((m, i) => {
      if (!id(m, `/indispensable/${i}`)) return;
      if (seen.has(m)) issues.push({ path: `/indispensable/${i}`, message: `${m} is listed twice` });
      seen.add(m);
      parties.add(m);
    });
  }

  if (!Array.isArray(doc.groups)) issues.push({ path: "/groups", message: "expected an array of threshold groups (may be empty)" });
  else {
    if (doc.groups.length > MAX_GROUPS) issues.push({ path: "/groups", message: `at most ${MAX_GROUPS} groups` });
    const names = new Set<string>();
    doc.groups.forEach((g, gi) => {
      const p = `/groups/${gi}`;
      if (!isObject(g)) return void issues.push({ path: p, message: "expected { name, members, threshold }" });
      checkKeys(g, ["name", "members", "threshold"], p, issues);
      if (typeof g.name !== "string" || !GROUP_NAME.test(g.name)) issues.push({ path: `${p}/name`, message: "expected a name of 1-64 characters of [A-Za-z0-9 ._:-]" });
      else if (names.has(g.name)) issues.push({ path: `${p}/name`, message: `group name ${g.name} is used twice` });
      else names.add(g.name);
      let n = 0;
      if (!Array.isArray(g.members) || g.members.length === 0) issues.push({ path: `${p}/members`, message: "expected a non-empty array of arbitrator ids" });
      else {
        n = g.members.length;
        if (n > MAX_GROUP_MEMBERS) issues.push({ path: `${p}/members`, message: `at most ${MAX_GROUP_MEMBERS} members` });
        const seen = new Set<string>();
        g.members.forEach((m, mi) => {
          if (!id(m, `${p}/members/${mi}`)) return;
          // A member listed twice would count once but inflate n: k = n would then be unreachable.
          if (seen.has(m)) issues.push({ path: `${p}/members/${mi}`, message: `${m} is listed twice in the group, which would make its threshold count one approval twice` });
          seen.add(m);
          parties.add(m);
        });
        n = seen.size;
      }
      if (!Number.isSafeInteger(g.threshold) || (g.threshold as number) < 1) issues.push({ path: `${p}/threshold`, message: "expected an integer k >= 1" });
      else if (n > 0 && (g.threshold as number) > n) issues.push({ path: `${p}/threshold`, message: `k = ${g.threshold} exceeds the group's ${n} distinct members` });
    });
  }

  if (Array.isArray(doc.indispensable) && Array.isArray(doc.groups) && doc.indispensable.length === 0 && doc.groups.length === 0)
    issues.push({ path: "", message: "a policy needs at least one indispensable party or one threshold group" });

  if (!Array.isArray(doc.order)) issues.push({ path: "/order", message: "expected an array of { before, after } (may be empty)" });
  else {
    const edges = new Map<string, string[]>();
    const seen = new Set<string>();
    doc.order.forEach((c, ci) => {
      const p = `/order/${ci}`;
      if (!isObject(c)) return void issues.push({ path: p, message: "expected { before, after }" });
      checkKeys(c, ["before", "after"], p, issues);
      const okB = id(c.before, `${p}/before`);
      const okA = id(c.after, `${p}/after`);
      if (!okB || !okA) return;
      const before = c.before as string;
      const after = c.after as string;
      if (!parties.has(before)) issues.push({ path: `${p}/before`, message: `${before} is not a party of the policy (neither indispensable nor a group member)` });
      if (!parties.has(after)) issues.push({ path: `${p}/after`, message: `${after} is not a party of the policy (neither indispensable nor a group member)` });
      if (before === after) return void issues.push({ path: p, message: `${before} cannot approve before itself` });
      const key = `${before}\u0000${after}`;
      if (seen.has(key)) issues.push({ path: p, message: `order ${before} before ${after} is listed twice` });
      seen.add(key);
      edges.set(before, [...(edges.get(before) ?? []), after]);
    });
    const cycle = findCycle(edges);
    if (cycle) issues.push({ path: "/order", message: `order conditions form a cycle (${cycle.join(" -> ")}), so none of them could ever approve` });
  }

  if (issues.length) throw new PolicyValidationError(issues);
  const d = doc as unknown as ReproductionPolicy;
  // A fresh copy: later mutation of the caller's object cannot change a validated policy.
  return {
    version: 1,
    author: d.author,
    indispensable: [...d.indispensable],
    groups: d.groups.map((g) => ({ name: g.name, members: [...g.members], threshold: g.threshold })),
    order: d.order.map((o) => ({ before: o.before, after: o.after })),
  };
}

function findCycle(edges: Map<string, string[]>): string[] | undefined {
  const state = new Map<string, 1 | 2>(); // 1 on the stack, 2 done
  const stack: string[] = [];
  const visit = (v: string): string[] | undefined => {
    state.set(v, 1);
    stack.push(v);
    for (const w of edges.get(v) ?? []) {
      if (state.get(w) === 1) return [...stack.slice(stack.indexOf(w)), w];
      if (!state.has(w)) {
        const c = visit(w);
        if (c) return c;
      }
    }
    stack.pop();
    state.set(v, 2);
    return undefined;
  };
  for (const v of edges.keys()) {
    if (state.has(v)) continue;
    const c = visit(v);
    if (c) return c;
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------------------------
// Evaluation (step S7: "whether the necessary condition for secret key reproduction is satisfied or not is judged")

export interface Decision {
  arbitrator: string;
  decision: "approve" | "refuse";
  reason?: string;
}

export type FailedCondition =
  | { kind: "indispensable_refused"; party: string }
  /** An indispensable party can no longer approve: someone it must approve after refused (or is blocked in turn). */
  | { kind: "indispensable_blocked"; party: string; blockedBy: string }
  | { kind: "threshold_unreachable"; group: string; threshold: number; approved: number; stillPossible: number }
  | { kind: "order_violated"; before: string; after: string }
  | { kind: "duplicate_decision"; party: string }
  | { kind: "not_a_party"; party: string };

export interface PendingNeeds {
  /** Indispensable parties that have not approved yet. */
  indispensable: string[];
  /** Groups below their threshold: how many more approvals, from whom. */
  groups: { name: string; threshold: number; approved: number; more: number; candidates: string[] }[];
  /** Order conditions still open: `before` has not approved, so `after` must wait. */
  waiting: OrderCondition[];
}

export type Evaluation =
  | { status: "satisfied"; approvers: string[] }
  | { status: "pending"; approvers: string[]; needs: PendingNeeds }
  | { status: "failed"; approvers: string[]; condition: FailedCondition; message: string };

export function describeFailure(c: FailedCondition): string {
  switch (c.kind) {
    case "indispensable_refused":
      return `indispensable party ${c.party} refused`;
    case "indispensable_blocked":
      return `indispensable party ${c.party} can no longer approve: it must approve after ${c.blockedBy}, who refused`;
    case "threshold_unreachable":
      return `group ${c.group} can no longer reach ${c.threshold} approvals (${c.approved} approved, ${c.stillPossible} still possible)`;
    case "order_violated":
      return `${c.after} approved before ${c.before}, which the order condition forbids`;
    case "duplicate_decision":
      return `${c.party} decided twice`;
    case "not_a_party":
      return `${c.party} is not a party of the policy`;
  }
}

/**
 * Judges the ordered decisions so far against the policy. `failed` is final: once returned for a prefix of the
 * decisions, no continuation can satisfy the policy (a party decides once; a refusal, a blocked party or an
 * out-of-order approval cannot be undone). `pending` lists what is still needed.
 */
export function evaluatePolicy(policy: ReproductionPolicy, decisions: readonly Decision[]): Evaluation {
  const parties = new Set(policyParties(policy));
  const approvedAt = new Map<string, number>();
  const refused = new Set<string>();
  const approvers: string[] = [];
  const fail = (condition: FailedCondition): Evaluation => ({ status: "failed", approvers, condition, message: describeFailure(condition) });

  for (const [i, d] of decisions.entries()) {
    if (!parties.has(d.arbitrator)) return fail({ kind: "not_a_party", party: d.arbitrator });
    if (approvedAt.has(d.arbitrator) || refused.has(d.arbitrator)) return fail({ kind: "duplicate_decision", party: d.arbitrator });
    if (d.decision === "refuse") {
      refused.add(d.arbitrator);
      continue;
    }
    for (const o of policy.order) if (o.after === d.arbitrator && !approvedAt.has(o.before)) return fail({ kind: "order_violated", before: o.before, after: o.after });
    approvedAt.set(d.arbitrator, i);
    approvers.push(d.arbitrator);
  }

  for (const p of policy.indispensable) if (refused.has(p)) return fail({ kind: "indispensable_refused", party: p });

  // An undecided party is blocked when one it must approve after has refused or is blocked itself (the order
  // conditions are acyclic, so this fixpoint terminates). Everyone else undecided can still approve, in an order
  // that respects the conditions — so the best future is exactly "approved ∪ undecided-and-unblocked".
  const blockedBy = new Map<string, string>();
  for (let changed = true; changed;) {
    changed = false;
    for (const o of policy.order) {
      if (blockedBy.has(o.after) || approvedAt.has(o.after) || refused.has(o.after)) continue;
      if (refused.has(o.before)) blockedBy.set(o.after, o.before);
      else if (blockedBy.has(o.before)) blockedBy.set(o.after, blockedBy.get(o.before)!);
      else continue;
      changed = true;
    }
  }
  const possible = (p: string) => !approvedAt.has(p) && !refused.has(p) && !blockedBy.has(p);

  for (const p of policy.indispensable) if (blockedBy.has(p)) return fail({ kind: "indispensable_blocked", party: p, blockedBy: blockedBy.get(p)! });
  const groups: PendingNeeds["groups"] = [];
  for (const g of policy.groups) {
    const approved = g.members.filter((m) => approvedAt.has(m)).length;
    if (approved >= g.threshold) continue;
    const candidates = g.members.filter(possible);
    if (approved + candidates.length < g.threshold) return fail({ kind: "threshold_unreachable", group: g.name, threshold: g.threshold, approved, stillPossible: candidates.length });
    groups.push({ name: g.name, threshold: g.threshold, approved, more: g.threshold - approved, candidates });
  }
  const indispensable = policy.indispensable.filter((p) => !approvedAt.has(p));
  if (indispensable.length === 0 && groups.length === 0) return { status: "satisfied", approvers };
  const waiting = policy.order.filter((o) => !approvedAt.has(o.before) && possible(o.after));
  return { status: "pending", approvers, needs: { indispensable, groups, waiting } };
}
