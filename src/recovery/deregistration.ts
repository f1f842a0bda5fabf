// Arbitrator deregistration (seed 001 embodiment 3; migration 0007_recovery_lifecycle). Arbitrators deregister
// (deregisterArbitrator): the record stays (ids are never reused, key history kept); a deregistered arbitrator is
// refused as a new policy member, cannot decide, sign an approver list or rotate, and no new escrow or request may
// depend on it. Its decisions recorded before stay valid. Requests in flight that it makes impossible to satisfy (an
// indispensable party, a group that can no longer reach k, the author of a list not yet signed) are ended, naming
// it; satisfied requests whose list is signed, and reproductions, go on. Deregistering an arbitrator without which
// an escrowed key can no longer be reproduced at all is refused (arbitrator_in_use) unless forced;
// arbitratorDependents lists the cards whose policies name it.
//
// unreachableWithout is the judgement all of this rests on — whether a policy can still be met without the
// arbitrators that are out — and filing a request (requests.ts) asks it too.

import { arbitratorViews, type ArbitratorView } from "./arbitrators.ts";
import { keyedRegistry } from "./keyed-registry.ts";
import { decodeCursor, encodeCursor, MAX_PAGE_SIZE, pageLimit, type Page, type PageOptions } from "./paging.ts";
import { evaluatePolicy, policyParties, type Decision, type ReproductionPolicy } from "./policy.ts";
import type { ServiceRequest } from "./target.ts";
import { auditRefusal, checkActor, checkId, isObject, MAX_REASON, type ServiceContext } from "./service-context.ts";
import { isRecoveryRefusal, RecoveryServiceError } from "./service-errors.ts";

/** What an arbitrator's deregistration did. */
export interface DeregistrationResult {
  arbitrator: ArbitratorView;
  /** Requests in flight it made impossible to satisfy: ended, naming it. */
  endedRequests: { requestId: string; cardId: string; message: string }[];
  /** Escrowed cards whose key can no longer be reproduced (forced deregistration), at most 100, and their count. */
  strandedCards: string[];
  strandedCount: number;
}

/** A card whose policy names an arbitrator (arbitratorDependents). */
export interface PolicyDependency {
  cardId: string;
  policyDigest: string;
  /** Set when the card's key is escrowed under this policy (then the policy is fixed). */
  escrowId?: string;
  /** How the policy names it: "author", "indispensable", "group:<name>". */
  as: string[];
  /** Whether the policy can still be met with this arbitrator — and every arbitrator already deregistered — out. */
  satisfiableWithout: boolean;
}

/**
 * Why a policy can no longer be met once the arbitrators `disabled` are out — those among them that have not
 * decided count as refusing; the author, while the approver list is unsigned, cannot sign it — or undefined when it
 * still can. `decisions` are those recorded (they stand, whoever made them).
 */
export function unreachableWithout(policy: ReproductionPolicy, disabled: readonly string[], decisions: readonly Decision[] = [], listSigned = false): string | undefined {
  const out = new Set(disabled);
  if (!listSigned && out.has(policy.author)) return `the policy's author ${policy.author} is deregistered: nobody can sign the list of approvers`;
  const decided = new Set(decisions.map((d) => d.arbitrator));
  const refusals = policyParties(policy)
    .filter((p) => out.has(p) && !decided.has(p))
    .map((p): Decision => ({ arbitrator: p, decision: "refuse", reason: "deregistered" }));
  if (!refusals.length) return undefined;
  const e = evaluatePolicy(policy, [...decisions, ...refusals]);
  return e.status === "failed" ? `${e.message} (deregistered: ${refusals.map((r) => r.arbitrator).join(", ")})` : undefined;
}

/** How a policy names an arbitrator: "author", "indispensable", "group:<name>". */
export function rolesIn(policy: ReproductionPolicy, id: string): string[] {
  const as: string[] = [];
  if (policy.author === id) as.push("author");
  if (policy.indispensable.includes(id)) as.push("indispensable");
  for (const g of policy.groups) if (g.members.includes(id)) as.push(`group:${g.name}`);
  return as;
}

/**
 * Cards whose policies name the arbitrator, by card id (a page): how they name it, whether the card's key is
 * escrowed under it, and whether the policy can still be met without it (and without every arbitrator already
 * deregistered).
 */
export async function arbitratorDependents(ctx: ServiceContext, id: string, page: PageOptions = {}): Promise<Page<PolicyDependency>> {
  checkId(id, "arbitrator id");
  const limit = pageLimit(page.limit, MAX_PAGE_SIZE);
  let after = page.after === undefined ? undefined : (decodeCursor(page.after, "dependents", ["string"])[0] as string);
  if (!(await ctx.repo.arbitrator(id))) throw new RecoveryServiceError("not_found", `no arbitrator ${id}`, { arbitrator: id });
  const disabled = [...new Set([...(await keyedRegistry(ctx.repo, [])).disabledIds(), id])];
  const items: PolicyDependency[] = [];
  const BATCH = 200;
  for (;;) {
    const batch = await ctx.repo.policiesMentioning(id, { after, limit: BATCH });
    for (const p of batch) {
      const policy = JSON.parse(p.escrowPolicy ?? p.policy) as ReproductionPolicy;
      const as = rolesIn(policy, id);
      if (!as.length) continue; // the id occurred as text elsewhere (e.g. a group name)
      if (items.length === limit) return { items, next: encodeCursor("dependents", [items[items.length - 1].cardId]) };
      const d: PolicyDependency = { cardId: p.cardId, policyDigest: p.policyDigest, as, satisfiableWithout: unreachableWithout(policy, disabled) === undefined };
      if (p.escrowId !== undefined) d.escrowId = p.escrowId;
      items.push(d);
    }
    if (batch.length < BATCH) return { items };
    after = batch[batch.length - 1].cardId;
  }
}

/**
 * Deregisters an arbitrator (an operator's act, audited): its record and key history stay, its id is never
 * reused. From now on it is refused as a new policy member, cannot decide on any request, sign an approver list,
 * or rotate its keys, and no new escrow or request may depend on it. What it decided before stands. Requests in
 * flight it makes impossible to satisfy — it was an undecided indispensable party, its group can no longer reach
 * k without it, or it is the author of a list not yet signed — are ended, naming it (the card may file again once
 * its escrow no longer depends on it); the others go on, satisfied requests with a signed list and reproductions
 * included. Refused (arbitrator_in_use) when an escrowed key could no longer be reproduced at all without it,
 * unless `force` (e.g. its keys are compromised): such keys stay unreproducible until their escrow is re-split.
 */
export async function deregisterArbitrator(ctx: ServiceContext, id: string, opts: { reason: string; force?: boolean }, actor: string): Promise<DeregistrationResult> {
  const reason = isObject(opts) ? opts.reason : undefined;
  const force = isObject(opts) && opts.force === true;
  try {
    checkActor(actor);
    checkId(id, "arbitrator id");
    if (typeof reason !== "string" || !reason.trim() || reason.length > MAX_REASON) throw new RecoveryServiceError("invalid_argument", "a deregistration states its reason");
    const at = ctx.at();
    return await ctx.store.transaction(async ({ repo, audit }) => {
      const rec = await repo.arbitrator(id);
      if (!rec) throw new RecoveryServiceError("not_found", `no arbitrator ${id}`, { arbitrator: id });
      if (rec.disabledAt !== undefined) throw new RecoveryServiceError("arbitrator_disabled", `arbitrator ${id} is deregistered already`, { arbitrator: id });
      const disabled = [...new Set([...(await keyedRegistry(repo, [])).disabledIds(), id])];
      // escrowed keys that no arbitrator set left could reproduce
      const stranded: string[] = [];
      for (let after: string | undefined; ;) {
        const batch = await repo.policiesMentioning(id, { after, limit: 500 });
        for (const p of batch) {
          if (p.escrowId === undefined) continue;
          const policy = JSON.parse(p.escrowPolicy ?? p.policy) as ReproductionPolicy;
          if (rolesIn(policy, id).length && unreachableWithout(policy, disabled) !== undefined) stranded.push(p.cardId);
        }
        if (batch.length < 500) break;
        after = batch[batch.length - 1].cardId;
      }
      if (stranded.length && !force)
        throw new RecoveryServiceError(
          "arbitrator_in_use",
          `without ${id}, the escrowed keys of ${stranded.length} card(s) (${stranded.slice(0, 5).join(", ")}${stranded.length > 5 ? ", …" : ""}) could no longer be reproduced; deregister with force to do it anyway`,
          { arbitrator: id, stranded: stranded.length, cards: stranded.slice(0, 20) },
        );
      if (!(await repo.disableArbitrator(id, at, actor, reason))) throw new RecoveryServiceError("arbitrator_disabled", `arbitrator ${id} is deregistered already`, { arbitrator: id });
      // requests in flight it makes impossible to satisfy end, naming it
      const ended: DeregistrationResult["endedRequests"] = [];
      for (let after: { filedAt: number; requestId: string } | undefined; ;) {
        const batch = await repo.requests({ statuses: ["open", "satisfied"], after, limit: 500 });
        for (const r of batch) {
          const policy = (JSON.parse(r.request) as ServiceRequest).policy;
          if (!rolesIn(policy, id).length) continue;
          const decisions = (await repo.approvals(r.requestId)).map((a): Decision => ({ arbitrator: a.arbitratorId, decision: a.decision }));
          const why = unreachableWithout(policy, disabled, decisions, r.approverList !== null);
          if (why === undefined) continue;
          const message = `arbitrator ${id} was deregistered: ${why}`;
          if (!(await repo.moveRequest(r.requestId, ["open", "satisfied"], "ended", at, { statusDetail: message }))) continue;
          await audit({
            actor,
            action: "recovery.request.end",
            subject: r.requestId,
            details: { cardId: r.cardId, condition: { kind: "arbitrator_deregistered", party: id }, message },
            at,
          });
          ended.push({ requestId: r.requestId, cardId: r.cardId, message });
        }
        if (batch.length < 500) break;
        after = { filedAt: batch[batch.length - 1].filedAt, requestId: batch[batch.length - 1].requestId };
      }
      await audit({
        actor,
        action: "recovery.arbitrator.deregister",
        subject: id,
        details: { reason, force, strandedCount: stranded.length, strandedCards: stranded.slice(0, 100), endedRequests: ended.map((e) => e.requestId) },
        at,
      });
      const view = (await arbitratorViews([{ ...rec, disabledAt: at, disabledBy: actor, disabledReason: reason }], repo))[0];
      return { arbitrator: view, endedRequests: ended, strandedCards: stranded.slice(0, 100), strandedCount: stranded.length };
    });
  } catch (e) {
    if (isRecoveryRefusal(e)) await auditRefusal(ctx, actor, "recovery.arbitrator.deregister.refuse", id, e, { force });
    throw e;
  }
}
