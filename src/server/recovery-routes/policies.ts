// Reproduction policies (S1) and escrows (S3) on the recovery routes (recovery-routes.ts lists the routes): set and
// read a card's policy document, and read its escrow record — the registered public key and certificate, and who
// holds which share (no share, no key).

import type { FastifyPluginAsync } from "fastify";
import { toPem } from "../../ca/pem.ts";
import type { EscrowView, PolicyView, RecoveryService } from "../../recovery/service.ts";
import { params, principalOf } from "../issuer-routes.ts";
import { ApiProblem } from "../problem.ts";
import { b64, BOOL, closed, INT, NO_QUERY, POLICY, problems, RCARD_ID, SHARE_SLOT, STR } from "./schemas.ts";

export interface PolicyRoutesOptions {
  recovery: RecoveryService;
}

// ---- schema pieces ------------------------------------------------------------------------------------------------

const POLICY_VIEW = closed({ cardId: STR, policy: POLICY, digest: STR, setBy: STR, setAt: INT }, ["cardId", "policy", "digest", "setBy", "setAt"]);

const ESCROW_VIEW = closed(
  {
    escrowId: STR,
    cardId: STR,
    applicantId: STR,
    policy: POLICY,
    policyDigest: STR,
    alg: STR,
    slot: STR,
    publicKey: { type: "string", description: "the registered public key (FIG. 10 unit 23), SubjectPublicKeyInfo base64 DER" },
    publicKeySha256: STR,
    certificate: { type: "string", description: "PEM" },
    serial: STR,
    shares: {
      type: "array",
      items: closed(
        {
          shareId: STR,
          arbitrator: STR,
          slot: SHARE_SLOT,
          recipientKeyId: { type: "string", description: "SHA-256 of the encryption key the share is sealed to" },
          sealedToRetiredKey: { type: "boolean", description: "the holder rotated that key since: it opens the share with its old key until a re-split" },
          holderDeregistered: BOOL,
        },
        ["shareId", "arbitrator", "slot", "recipientKeyId", "sealedToRetiredKey", "holderDeregistered"],
      ),
    },
    deviceGeneration: INT,
    createdAt: INT,
  },
  ["escrowId", "cardId", "policy", "policyDigest", "alg", "slot", "publicKey", "publicKeySha256", "certificate", "serial", "shares", "deviceGeneration", "createdAt"],
);

// ---- outputs -------------------------------------------------------------------------------------------------

const policyOut = (p: PolicyView) => ({ cardId: p.cardId, policy: p.policy, digest: p.digest, setBy: p.setBy, setAt: p.setAt.getTime() });

const escrowOut = (e: EscrowView) => ({
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

export const policyRoutes: FastifyPluginAsync<PolicyRoutesOptions> = async (app, o) => {
  const { recovery } = o;

  // ---- policies (S1) and escrows (S3) -------------------------------------------------------------------------

  app.put<{ Params: { id: string }; Body: unknown }>(
    "/cards/:id/recovery-policy",
    {
      config: { roles: ["operator"] },
      schema: {
        summary: "Set a card's reproduction policy (S1), before its key is escrowed: indispensable parties, k-of-n groups, order conditions, the author of the approver list",
        tags: ["recovery"],
        params: params({ id: RCARD_ID }),
        querystring: NO_QUERY,
        body: POLICY,
        response: { 200: POLICY_VIEW, ...problems },
      },
    },
    async (req) => policyOut(await recovery.setPolicy(req.params.id, req.body, principalOf(req).name)),
  );

  app.get<{ Params: { id: string } }>(
    "/cards/:id/recovery-policy",
    {
      config: { roles: ["operator", "auditor"] },
      schema: { summary: "A card's reproduction policy", tags: ["recovery"], params: params({ id: RCARD_ID }), querystring: NO_QUERY, response: { 200: POLICY_VIEW, ...problems } },
    },
    async (req) => {
      const p = await recovery.policy(req.params.id);
      if (!p) throw new ApiProblem(404, "not-found", "Not found", `card ${req.params.id} has no reproduction policy`, { check: "not_found" });
      return policyOut(p);
    },
  );

  app.get<{ Params: { id: string } }>(
    "/cards/:id/escrow",
    {
      config: { roles: ["operator", "auditor"] },
      schema: {
        summary: "A card's escrow: the registered public key and certificate, the policy it was split under, who holds which share (no share, no key)",
        tags: ["recovery"],
        params: params({ id: RCARD_ID }),
        querystring: NO_QUERY,
        response: { 200: ESCROW_VIEW, ...problems },
      },
    },
    async (req) => {
      const e = await recovery.escrowOf(req.params.id);
      if (!e) throw new ApiProblem(404, "not-found", "Not found", `card ${req.params.id} has no escrowed key`, { check: "not_found" });
      return escrowOut(e);
    },
  );
};
