// Reproduction policies (S1) and escrows (S3) on the recovery routes (recovery-routes.ts lists the routes): set and
// read a card's policy document, and read its escrow record — the registered public key and certificate, and who
// holds which share (no share, no key).

import type { FastifyPluginAsyncTypebox } from "@fastify/type-provider-typebox";
import { toPem } from "../../ca/pem.ts";
import type { EscrowView, PolicyView, RecoveryService } from "../../recovery/service.ts";
import { EscrowJson, Policy, PolicyJson, RecoveryCardId } from "../../recovery/wire.ts";
import { Closed } from "../../util/wire.ts";
import { principalOf } from "../issuer-routes.ts";
import { ApiProblem } from "../problem.ts";
import { b64, NO_QUERY, problems } from "./schemas.ts";

export interface PolicyRoutesOptions {
  recovery: RecoveryService;
}

// ---- outputs -------------------------------------------------------------------------------------------------

const policyOut = (p: PolicyView): PolicyJson => ({ cardId: p.cardId, policy: p.policy, digest: p.digest, setBy: p.setBy, setAt: p.setAt.getTime() });

const escrowOut = (e: EscrowView): EscrowJson => ({
  escrowId: e.escrowId,
  cardId: e.cardId,
  applicantId: e.applicantId,
  policy: e.policy,
  policyDigest: e.policyDigest,
  alg: e.alg,
  slot: e.slot,
  publicKey: b64(e.publicKey),
  publicKeySha256: e.publicKeySha256,
  certificate: toPem(e.certificate, "CERTIFICATE"),
  serial: e.serial,
  shares: e.shares,
  deviceGeneration: e.deviceGeneration,
  createdAt: e.createdAt.getTime(),
});

// ---- the routes ----------------------------------------------------------------------------------------------

export const policyRoutes: FastifyPluginAsyncTypebox<PolicyRoutesOptions> = async (app, o) => {
  const { recovery } = o;

  // ---- policies (S1) and escrows (S3) -------------------------------------------------------------------------

  app.put(
    "/cards/:id/recovery-policy",
    {
      config: { roles: ["operator"] },
      schema: {
        summary: "Set a card's reproduction policy (S1), before its key is escrowed: indispensable parties, k-of-n groups, order conditions, the author of the approver list",
        tags: ["recovery"],
        params: Closed({ id: RecoveryCardId }),
        querystring: NO_QUERY,
        body: Policy,
        response: { 200: PolicyJson, ...problems },
      },
    },
    async (req) => policyOut(await recovery.setPolicy(req.params.id, req.body, principalOf(req).name)),
  );

  app.get(
    "/cards/:id/recovery-policy",
    {
      config: { roles: ["operator", "auditor"] },
      schema: { summary: "A card's reproduction policy", tags: ["recovery"], params: Closed({ id: RecoveryCardId }), querystring: NO_QUERY, response: { 200: PolicyJson, ...problems } },
    },
    async (req) => {
      const p = await recovery.policy(req.params.id);
      if (!p) throw new ApiProblem(404, "not-found", "Not found", `card ${req.params.id} has no reproduction policy`, { check: "not_found" });
      return policyOut(p);
    },
  );

  app.get(
    "/cards/:id/escrow",
    {
      config: { roles: ["operator", "auditor"] },
      schema: {
        summary: "A card's escrow: the registered public key and certificate, the policy it was split under, who holds which share (no share, no key)",
        tags: ["recovery"],
        params: Closed({ id: RecoveryCardId }),
        querystring: NO_QUERY,
        response: { 200: EscrowJson, ...problems },
      },
    },
    async (req) => {
      const e = await recovery.escrowOf(req.params.id);
      if (!e) throw new ApiProblem(404, "not-found", "Not found", `card ${req.params.id} has no escrowed key`, { check: "not_found" });
      return escrowOut(e);
    },
  );
};
