// Step S1 (seed 001 embodiment 3, FIG. 9): the reproduction policy of a card, as validated data (policy.ts), set
// before its key is escrowed. A deregistered arbitrator is refused as a new member; once the card's key is escrowed
// its policy is fixed (the shares were split under it).

import { canonicalJson } from "./encoding.ts";
import { PolicyValidationError } from "./errors.ts";
import { keyedRegistry } from "./keyed-registry.ts";
import { policyDigest, validatePolicy, type ReproductionPolicy } from "./policy.ts";
import { checkActor, checkId, type ServiceContext } from "./service-context.ts";
import { RecoveryServiceError } from "./service-errors.ts";

export interface PolicyView {
  cardId: string;
  policy: ReproductionPolicy;
  digest: string;
  setBy: string;
  setAt: Date;
}

/**
 * Step S1: sets the reproduction policy of a card, before its key is escrowed. `doc` is the policy as parsed
 * JSON or as JSON text; an invalid one is refused with a PolicyValidationError listing every problem with a
 * JSON pointer. Once the card's key is escrowed its policy is fixed (the shares were split under it).
 */
export async function setPolicy(ctx: ServiceContext, cardId: string, doc: unknown, actor: string): Promise<PolicyView> {
  checkActor(actor);
  checkId(cardId, "card id");
  let parsed = doc;
  if (typeof doc === "string") {
    try {
      parsed = JSON.parse(doc);
    } catch (e) {
      throw new PolicyValidationError([{ path: "", message: `not JSON (${(e as Error).message})` }]);
    }
  }
  const registry = await keyedRegistry(ctx.repo, []);
  const policy = validatePolicy(parsed, registry);
  // a deregistered arbitrator is refused as a new member, each place it is named pointed at
  const out = new Set(registry.disabledIds());
  if (out.size) {
    const issues = [
      ...(out.has(policy.author) ? [{ path: "/author", id: policy.author }] : []),
      ...policy.indispensable.flatMap((id, i) => (out.has(id) ? [{ path: `/indispensable/${i}`, id }] : [])),
      ...policy.groups.flatMap((g, gi) => g.members.flatMap((id, mi) => (out.has(id) ? [{ path: `/groups/${gi}/members/${mi}`, id }] : []))),
    ];
    if (issues.length) throw new PolicyValidationError(issues.map((x) => ({ path: x.path, message: `arbitrator ${x.id} is deregistered` })));
  }
  const digest = policyDigest(policy);
  const at = ctx.at();
  await ctx.store.transaction(async ({ repo, audit }) => {
    const escrow = await repo.escrowByCard(cardId);
    if (escrow)
      throw new RecoveryServiceError("escrow_exists", `card ${cardId}'s key is escrowed under policy ${escrow.policyDigest}; its policy can no longer change`, { cardId, escrowId: escrow.escrowId });
    await repo.putPolicy({ cardId, policy: canonicalJson(policy), policyDigest: digest, setBy: actor, setAt: at });
    await audit({
      actor,
      action: "recovery.policy.set",
      subject: cardId,
      details: {
        policyDigest: digest,
        author: policy.author,
        indispensable: policy.indispensable,
        groups: policy.groups.map((g) => ({ name: g.name, members: g.members, threshold: g.threshold })),
        order: policy.order.map((o) => ({ before: o.before, after: o.after })),
      },
      at,
    });
  });
  return { cardId, policy, digest, setBy: actor, setAt: new Date(at) };
}

export async function policy(ctx: ServiceContext, cardId: string): Promise<PolicyView | undefined> {
  const p = await ctx.repo.policy(cardId);
  return p && { cardId: p.cardId, policy: JSON.parse(p.policy) as ReproductionPolicy, digest: p.policyDigest, setBy: p.setBy, setAt: new Date(p.setAt) };
}
