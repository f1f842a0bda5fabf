// Who may act on the recovery routes: the arbitrator tokens (an operators-table row named
// "arbitrator:<id>:<tokenId>", role arbitrator, bound to one arbitrator: issued and revoked by src/issuer/operators.ts;
// recovery-routes.ts explains how an arbitrator authenticates) and the check that admits staff roles or a token bound to the right arbitrator.

import type { FastifyRequest } from "fastify";
import { ARBITRATOR_TOKEN_NAME } from "../../issuer/operators.ts";
import type { Principal } from "../auth.ts";
import { principalOf } from "../issuer-routes.ts";
import { ApiProblem } from "../problem.ts";

export { arbitratorTokenName } from "../../issuer/operators.ts";

/** The arbitrator a principal's token is bound to, if it is an arbitrator token. */
export function boundArbitrator(p: Principal): string | undefined {
  if (!p.roles.includes("arbitrator")) return undefined;
  return ARBITRATOR_TOKEN_NAME.exec(p.name)?.[1];
}

const forbidden = (detail: string) => new ApiProblem(403, "forbidden", "Forbidden", detail);

/**
 * Admits admins, the staff roles named (operator / auditor), and an arbitrator token bound to one of `arbitrators`.
 * Returns the actor the audit log names: the principal, or the arbitrator for an arbitrator token.
 */
export function admit(req: FastifyRequest, staff: ("operator" | "auditor")[], arbitrators: (id: string) => boolean): string {
  const p = principalOf(req);
  if (p.roles.includes("admin") || staff.some((r) => p.roles.includes(r))) return p.name;
  const bound = boundArbitrator(p);
  if (bound !== undefined && arbitrators(bound)) return bound;
  throw forbidden(bound === undefined ? "this needs an operator token or an arbitrator token bound to an arbitrator" : `this arbitrator token is bound to ${bound}`);
}
