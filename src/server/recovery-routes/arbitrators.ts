// The arbitrators' registry on the recovery routes (claim 35 (a); recovery-routes.ts lists the routes): register an
// arbitrator with its two public keys, read it and the list, issue and revoke the API tokens bound to it, relay its
// signed key rotations, deregister it (its tokens go with it) and list the cards whose policies name it.

import { createPublicKey, type KeyObject } from "node:crypto";
import type { FastifyPluginAsyncTypebox } from "@fastify/type-provider-typebox";
import { Type } from "typebox";
import type { Issuer } from "../../issuer/issuer.ts";
import { issueArbitratorToken, revokeArbitratorToken, revokeArbitratorTokens } from "../../issuer/operators.ts";
import type { ArbitratorView, RecoveryService } from "../../recovery/service.ts";
import {
  ArbitratorId,
  ArbitratorJson,
  ArbitratorTokenJson,
  DeregisterBody,
  DeregistrationJson,
  KeyRotationBody,
  PolicyDependencyJson,
  RegisterArbitratorBody,
  RevokedTokenJson,
} from "../../recovery/wire.ts";
import { Closed, Cursor, Str } from "../../util/wire.ts";
import type { Store } from "../../store/store.ts";
import { EMPTY_BODY, principalOf } from "../issuer-routes.ts";
import { ApiProblem } from "../problem.ts";
import { admit } from "./access.ts";
import { b64, NO_QUERY, nextOf, PAGE, pageOf, problems } from "./schemas.ts";

export interface ArbitratorRoutesOptions {
  recovery: RecoveryService;
  /** The issuer: its store holds the operators table, where the arbitrators' tokens are. */
  issuer: Issuer<Store>;
}

// ---- schema pieces ------------------------------------------------------------------------------------------------

const TOKEN_ID = Type.String({ pattern: "^[0-9a-f]{16}$" });

// ---- outputs -------------------------------------------------------------------------------------------------

const arbitratorOut = (a: ArbitratorView): ArbitratorJson => ({
  id: a.id,
  roles: a.roles,
  ...(a.displayName !== undefined ? { displayName: a.displayName } : {}),
  signingPublicKey: b64(a.signingPublicKey),
  encryptionPublicKey: b64(a.encryptionPublicKey),
  encryptionKeyId: a.encryptionKeyId,
  registeredBy: a.registeredBy,
  registeredAt: a.registeredAt.getTime(),
  keyVersion: a.keyVersion,
  status: a.status,
  ...(a.deregistered ? { deregistered: { at: a.deregistered.at.getTime(), by: a.deregistered.by, reason: a.deregistered.reason } } : {}),
  keys: a.keys.map((k) => ({
    version: k.version,
    signingKeyId: k.signingKeyId,
    encryptionKeyId: k.encryptionKeyId,
    validFrom: k.validFrom.getTime(),
    ...(k.retiredAt ? { retiredAt: k.retiredAt.getTime() } : {}),
  })),
});

/**
 * A public key given as PEM (BEGIN PUBLIC KEY) or base64 DER SubjectPublicKeyInfo, as SPKI DER. Anything else —
 * a private key included — is refused without echoing it.
 */
function spkiOf(value: string, what: string): Uint8Array {
  const s = value.trim();
  let key: KeyObject | undefined;
  try {
    if (/^-----BEGIN PUBLIC KEY-----\s[A-Za-z0-9+/=\s]+-----END PUBLIC KEY-----$/.test(s)) key = createPublicKey({ key: s, format: "pem" });
    else if (/^[A-Za-z0-9+/]+={0,2}$/.test(s)) key = createPublicKey({ key: Buffer.from(s, "base64"), format: "der", type: "spki" });
  } catch {
    key = undefined;
  }
  if (!key)
    throw new ApiProblem(400, "recovery-invalid", "Invalid: invalid_argument", `${what}: expected a public key as PEM (BEGIN PUBLIC KEY) or base64 DER SubjectPublicKeyInfo`, {
      check: "invalid_argument",
    });
  return new Uint8Array(key.export({ format: "der", type: "spki" }));
}

// ---- the routes ----------------------------------------------------------------------------------------------

export const arbitratorRoutes: FastifyPluginAsyncTypebox<ArbitratorRoutesOptions> = async (app, o) => {
  const { recovery, issuer } = o;
  const store = issuer.store;

  const mustArbitrator = async (id: string) => {
    const a = await recovery.arbitrator(id);
    if (!a) throw new ApiProblem(404, "not-found", "Not found", `no arbitrator ${id}`, { check: "not_found" });
    return a;
  };

  // ---- arbitrators (claim 35 (a)) ------------------------------------------------------------------------------

  app.post(
    "/recovery/arbitrators",
    {
      config: { roles: ["operator"] },
      schema: {
        summary: "Register an arbitrator with its two P-256 public keys: ECDSA (verifies its approvals) and ECDH (its shares are sealed to it)",
        tags: ["recovery"],
        querystring: NO_QUERY,
        body: RegisterArbitratorBody,
        response: { 201: ArbitratorJson, ...problems },
      },
    },
    async (req, reply) => {
      const b = req.body;
      const a = await recovery.registerArbitrator(
        {
          id: b.id,
          roles: b.roles,
          displayName: b.displayName,
          signingPublicKey: spkiOf(b.signingPublicKey, "signingPublicKey"),
          encryptionPublicKey: spkiOf(b.encryptionPublicKey, "encryptionPublicKey"),
        },
        principalOf(req).name,
      );
      return reply.code(201).send(arbitratorOut(a));
    },
  );

  app.get(
    "/recovery/arbitrators",
    {
      config: { roles: ["operator", "auditor"] },
      schema: {
        summary: "The registered arbitrators by id (public keys only; deregistered ones with their status), a page at a time",
        tags: ["recovery"],
        querystring: Closed(PAGE),
        response: { 200: Closed({ arbitrators: Type.Array(ArbitratorJson), next: Type.Optional(Cursor) }), ...problems },
      },
    },
    async (req) => {
      const page = await recovery.arbitratorsPage(pageOf(req.query));
      return { arbitrators: page.items.map(arbitratorOut), ...nextOf(page) };
    },
  );

  app.get(
    "/recovery/arbitrators/:id",
    {
      config: { roles: ["operator", "auditor", "arbitrator"] },
      schema: {
        summary: "One arbitrator (an arbitrator token: its own record)",
        tags: ["recovery"],
        params: Closed({ id: ArbitratorId }),
        querystring: NO_QUERY,
        response: { 200: ArbitratorJson, ...problems },
      },
    },
    async (req) => {
      admit(req, ["operator", "auditor"], (a) => a === req.params.id);
      return arbitratorOut(await mustArbitrator(req.params.id));
    },
  );

  app.post(
    "/recovery/arbitrators/:id/tokens",
    {
      config: { roles: ["operator"] },
      schema: {
        summary: "Issue an API token bound to the arbitrator (role arbitrator): shown once, only its hash is stored; refused for a deregistered arbitrator",
        tags: ["recovery"],
        params: Closed({ id: ArbitratorId }),
        querystring: NO_QUERY,
        body: EMPTY_BODY,
        response: { 201: ArbitratorTokenJson, ...problems },
      },
    },
    async (req, reply) => {
      const issued = await issueArbitratorToken(store, await mustArbitrator(req.params.id), principalOf(req).name);
      return reply.code(201).send(issued);
    },
  );

  app.post(
    "/recovery/arbitrators/:id/tokens/:tokenId/revoke",
    {
      config: { roles: ["operator"] },
      schema: {
        summary: "Revoke an arbitrator token",
        tags: ["recovery"],
        params: Closed({ id: ArbitratorId, tokenId: TOKEN_ID }),
        querystring: NO_QUERY,
        body: EMPTY_BODY,
        response: { 200: RevokedTokenJson, ...problems },
      },
    },
    async (req) => {
      const { id, tokenId } = req.params;
      await revokeArbitratorToken(store, id, tokenId, principalOf(req).name);
      return { arbitrator: id, tokenId, revoked: true };
    },
  );

  app.post(
    "/recovery/arbitrators/:id/key-rotation",
    {
      config: { roles: ["operator", "arbitrator"] },
      schema: {
        summary:
          "Rotate an arbitrator's keys: a rotation document naming its current keys and the next version, signed with its CURRENT signing key (and with the new signing key, if it changes). " +
          "An operator may relay it (an arbitrator token: its own); the signature is what counts. Earlier versions are kept: recorded approvals still verify",
        tags: ["recovery"],
        params: Closed({ id: ArbitratorId }),
        querystring: NO_QUERY,
        body: KeyRotationBody,
        response: { 200: ArbitratorJson, ...problems },
      },
    },
    async (req) => {
      const actor = admit(req, ["operator"], (a) => a === req.params.id);
      return arbitratorOut(await recovery.rotateArbitratorKeys(req.params.id, req.body.rotation, actor));
    },
  );

  app.post(
    "/recovery/arbitrators/:id/deregister",
    {
      config: { roles: ["operator"] },
      schema: {
        summary:
          "Deregister an arbitrator: it can no longer decide, sign or be named by a new policy, its tokens are revoked, requests it makes impossible to satisfy end. " +
          "Refused (arbitrator_in_use) when an escrowed key could then no longer be reproduced, unless force",
        tags: ["recovery"],
        params: Closed({ id: ArbitratorId }),
        querystring: NO_QUERY,
        body: DeregisterBody,
        response: { 200: DeregistrationJson, ...problems },
      },
    },
    async (req) => {
      const actor = principalOf(req).name;
      const r = await recovery.deregisterArbitrator(req.params.id, { reason: req.body.reason, force: req.body.force === true }, actor);
      // its tokens go with it (the service refuses its signatures anyway)
      const revoked = await revokeArbitratorTokens(store, r.arbitrator.id, "deregistered", actor);
      return { arbitrator: arbitratorOut(r.arbitrator), endedRequests: r.endedRequests, strandedCards: r.strandedCards, strandedCount: r.strandedCount, tokensRevoked: revoked };
    },
  );

  app.get(
    "/recovery/arbitrators/:id/dependents",
    {
      config: { roles: ["operator", "auditor"] },
      schema: {
        summary: "The cards whose reproduction policies name the arbitrator, by card id: how, whether escrowed, whether the policy can be met without it",
        tags: ["recovery"],
        params: Closed({ id: ArbitratorId }),
        querystring: Closed(PAGE),
        response: { 200: Closed({ arbitrator: Str, policies: Type.Array(PolicyDependencyJson), next: Type.Optional(Cursor) }), ...problems },
      },
    },
    async (req) => {
      const page = await recovery.arbitratorDependents(req.params.id, pageOf(req.query));
      return { arbitrator: req.params.id, policies: page.items, ...nextOf(page) };
    },
  );
};
