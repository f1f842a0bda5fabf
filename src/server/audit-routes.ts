// Signed checkpoints of the audit log over HTTP (issue 15 §3; the domain: src/issuer/audit-checkpoints.ts). The
// entries themselves are GET /audit and the chain check GET /audit/verify (issuer-routes.ts).
//
//   GET  /audit/checkpoint-key      (auditor, operator)  {origin, verifierKey}: what an auditor pins
//   POST /audit/checkpoints         (auditor, operator)  201 a checkpoint of the log as it is now, signed in custody |
//                                                         409 check log-broken / not-extended: the log was cut short
//                                                         or rewritten under the newest checkpoint, nothing signed
//   GET  /audit/checkpoints/latest  (auditor)            the newest checkpoint on record | 404
//   GET  /audit/consistency?from=&to=  (auditor)         the RFC 9162 consistency proof between two tree sizes
//
// Refusals are AuditCheckpointErrors (DomainErrors): problem.ts answers them (400 invalid, 409 audit-not-extended).

import type { FastifyPluginAsyncTypebox } from "@fastify/type-provider-typebox";
import type { AuditCheckpoints, StoredCheckpoint } from "../issuer/audit-checkpoints.ts";
import { CheckpointJson, CheckpointKeyJson, ConsistencyJson } from "../issuer/wire-audit.ts";
import { Closed } from "../util/wire.ts";
import { digits, EMPTY_BODY, principalOf, problems } from "./issuer-routes.ts";
import { ApiProblem } from "./problem.ts";

export interface AuditRoutesOptions {
  checkpoints: AuditCheckpoints;
}

const out = (origin: string, c: StoredCheckpoint): CheckpointJson => ({ origin, size: c.size, rootHash: Buffer.from(c.rootHash, "hex").toString("base64"), note: c.note, createdAt: c.createdAt });

export const auditRoutes: FastifyPluginAsyncTypebox<AuditRoutesOptions> = async (app, o) => {
  const cp = o.checkpoints;

  app.get(
    "/audit/checkpoint-key",
    {
      config: { roles: ["auditor", "operator"] },
      schema: {
        summary: "The key checkpoints are signed with (in custody): pin it to verify checkpoints kept outside the server",
        response: { 200: CheckpointKeyJson, ...problems },
      },
    },
    async (): Promise<CheckpointKeyJson> => ({ origin: cp.origin, verifierKey: cp.verifierKey }),
  );

  app.post(
    "/audit/checkpoints",
    {
      config: { roles: ["auditor", "operator"] },
      schema: {
        summary: "Sign a checkpoint of the audit log as it is now (only over a log that verifies and extends the newest checkpoint)",
        body: EMPTY_BODY,
        response: { 201: CheckpointJson, ...problems },
      },
    },
    async (req, reply) => {
      const { checkpoint } = await cp.make({ actor: principalOf(req).name });
      return reply.code(201).send(out(cp.origin, checkpoint));
    },
  );

  app.get(
    "/audit/checkpoints/latest",
    {
      config: { roles: ["auditor"] },
      schema: { summary: "The newest checkpoint on record", response: { 200: CheckpointJson, ...problems } },
    },
    async () => {
      const c = await cp.latest();
      if (!c) throw new ApiProblem(404, "not-found", "No checkpoint yet", "no checkpoint of the audit log was made yet: POST /v1/audit/checkpoints");
      return out(cp.origin, c);
    },
  );

  app.get(
    "/audit/consistency",
    {
      config: { roles: ["auditor"] },
      schema: {
        summary: "RFC 9162 consistency proof: the tree of the first `to` entries extends the tree of the first `from`",
        querystring: Closed({ from: digits(15), to: digits(15) }),
        response: { 200: ConsistencyJson, ...problems },
      },
    },
    async (req): Promise<ConsistencyJson> => {
      const from = Number(req.query.from),
        to = Number(req.query.to);
      return { from, to, proof: (await cp.consistency(from, to)).map((h) => Buffer.from(h).toString("base64")) };
    },
  );
};
