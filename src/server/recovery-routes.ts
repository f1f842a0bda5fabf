// HTTP routes of key reproduction by arbitrators (issue 4 item 6; seed 001 embodiment 3, FIG. 7-12, steps S1-S12).
// Thin: the domain is src/recovery/service.ts (RecoveryService); this file validates (closed schemas everywhere),
// authorises, maps the service's named refusals to problem+json and drives the reproduction through the user's
// terminal with a live relay (live-relay.ts).
//
//   Operators (role operator; admin always; read routes also auditor)
//     POST /recovery/arbitrators                      register {id, roles?, displayName?, signingPublicKey, encryptionPublicKey}
//     GET  /recovery/arbitrators?after=&limit=, /recovery/arbitrators/{id}  (status, key version and key history)
//     POST /recovery/arbitrators/{id}/tokens          an API token bound to the arbitrator (shown once); none for a
//                                                     deregistered arbitrator (409 arbitrator_disabled)
//     POST /recovery/arbitrators/{id}/tokens/{tokenId}/revoke
//     POST /recovery/arbitrators/{id}/deregister      {reason, force?}: disabled for good; its tokens revoked
//     GET  /recovery/arbitrators/{id}/dependents?after=&limit=   the cards whose policies name it
//     PUT  /cards/{id}/recovery-policy                the policy document (S1); GET it back
//     GET  /cards/{id}/escrow                         the escrow record: public key, certificate, who holds which share
//     POST /recovery/requests                         file {cardId, kind, requester, reason?, replacementCardId?} (S5);
//                                                     card-destroyed names the replacement card: it is signed over
//     GET  /recovery/requests?status=&cardId=&after=&limit=, /recovery/requests/{id}
//     POST /recovery/requests/{id}/withdraw           {reason}
//     POST /recovery/requests/{id}/reset-reproduction {reason}: a request stuck "reproducing" whose lease passed
//     POST /recovery/requests/{id}/reproduce          {cardId?} -> {sessionId, apdus}: the terminal relays (S8-S9) into
//                                                     the card the request names (cardId, when given, must be it)
//     POST /recovery/sessions/{sessionId}             {responses} -> {apdus} | {result} | 4xx naming the refusal
//     GET  /recovery/device-key                       the reproduction device's public key (arbitrators too)
//   Arbitrators (role arbitrator, bound to one arbitrator id; admin always)
//     GET  /recovery/arbitrators/{id}/pending?after=&limit=  what it has to decide or sign, with its sealed share envelopes
//     POST /recovery/arbitrators/{id}/key-rotation    {rotation}: new keys, signed with its current signing key (operators
//                                                     may relay it: the signature is what counts)
//     POST /recovery/requests/{id}/approvals          {approval, releases}: a signed approval and its released shares
//     POST /recovery/requests/{id}/refusals           {refusal}: a signed refusal with its reason
//     POST /recovery/requests/{id}/approver-list      {approverList}: signed by the policy's author
//
// How an arbitrator authenticates. An operator issues it an API token (POST /recovery/arbitrators/{id}/tokens):
// a row of the operators table holding the token's hash, role "arbitrator", and the name
// "arbitrator:<id>:<tokenId>" that binds it to the arbitrator. Such a token reads only that arbitrator's pending
// items (and the requests it is a party of) and posts only documents signed as that arbitrator. The token
// authenticates the channel; the credential that counts is the signature: the service verifies every approval,
// refusal and approver list against the arbitrator's registered key, and the hash chain (each approval names the
// head before it, a party decides once) makes a replayed document fail by name. So an operator who holds an
// arbitrator's token still cannot decide for it: the private keys never leave the arbitrator's process.
// A deregistered arbitrator gets no new token, and every token bound to it is refused on every route (403, check
// arbitrator_disabled, audited) — its status is read on each request, so a token still in the server's token cache
// (auth.ts cachedLookup) or one that escaped revocation opens nothing.
//
// Who receives a reproduced key: the card record the request names (target.ts) — for card-destroyed the
// replacement card named at filing, which every approval signs over — and no other; an operator cannot redirect it.
//
// Lists page: `limit` (default 100; at most 1000, pending items 100) and `after` (the `next` of the previous page,
// an opaque cursor); a response carries `next` when more follow.
//
// Refusals: RecoveryServiceError, RecoveryError and PolicyValidationError are DomainErrors whose check decides
// their kind (src/recovery/errors.ts, service-errors.ts); problem.ts answers them with 4xx problems carrying the
// failed check in the `check` member (PolicyValidationError also lists `issues` with JSON pointers). Never in a response
// or an error: a share value, a private key, a device secret ID; shares travel sealed (to the arbitrator, or to
// the reproduction device). The one secret returned is an arbitrator token, once, at its creation.
//
// Where: one route plugin per concept in recovery-routes/, each with the schemas only it uses —
//   arbitrators.ts    the registry: register, read, tokens, key rotation, deregistration, dependents
//   policies.ts       policies (S1) and escrows (S3)
//   requests.ts       filing, reading, withdrawing and resetting requests (S5)
//   decisions.ts      the arbitrators' side (S6-S7): pending items, approvals with share releases, refusals,
//                     approver lists
//   reproduction.ts   the reproduction device's key and the reproduction through the terminal (S8-S9)
// and what they share: schemas.ts (schema pieces, the request view, problems, pages), access.ts (arbitrator
// tokens, who may act). This file registers them behind the one check that
// refuses every token of a deregistered arbitrator.

import type { FastifyPluginAsync } from "fastify";
import type { Issuer } from "../issuer/issuer.ts";
import type { RecoveryService } from "../recovery/service.ts";
import type { Store } from "../store/store.ts";
import { ApiProblem } from "./problem.ts";
import type { LiveRelayOptions } from "./live-relay.ts";
import type { LiveRelayForwarder } from "./live-relay-forward.ts";
import { boundArbitrator } from "./recovery-routes/access.ts";
import { arbitratorRoutes } from "./recovery-routes/arbitrators.ts";
import { decisionRoutes } from "./recovery-routes/decisions.ts";
import { policyRoutes } from "./recovery-routes/policies.ts";
import { reproductionRoutes } from "./recovery-routes/reproduction.ts";
import { requestRoutes } from "./recovery-routes/requests.ts";

export { arbitratorTokenName, boundArbitrator } from "./recovery-routes/access.ts";

export interface RecoveryRoutesOptions {
  recovery: RecoveryService;
  /** The issuer: card records whose current key set a reproduction targets, the operators table for tokens. */
  issuer: Issuer<Store>;
  /** Bounds and store of the live relay sessions of reproductions (default 5 min, 100 at once, in memory). */
  liveRelays?: LiveRelayOptions;
  /** Several servers on one database (issue 16 §3): rounds of reproductions another server runs go there. */
  forwarder?: LiveRelayForwarder;
}

export const recoveryRoutes: FastifyPluginAsync<RecoveryRoutesOptions> = async (app, o) => {
  const { recovery, issuer } = o;

  // A token bound to an arbitrator works only while the arbitrator is registered: its status is read on every
  // request (not from the token cache), so a deregistered arbitrator reads and posts nothing with any token it holds.
  app.addHook("preHandler", async (req) => {
    const p = req.principal;
    const bound = p && !p.roles.includes("admin") ? boundArbitrator(p) : undefined;
    if (bound === undefined) return;
    const refusal = await recovery.arbitratorAccessRefusal(bound, { method: req.method, route: req.routeOptions.url ?? "" });
    if (refusal === undefined) return;
    throw new ApiProblem(403, "forbidden", "Forbidden: arbitrator_disabled", refusal, { check: "arbitrator_disabled" });
  });

  // The OpenAPI document lists the routes in this order. Options are named one by one: `o` carries this plugin's
  // own `prefix`, which the children inherit and must not add again.
  await app.register(arbitratorRoutes, { recovery, issuer });
  await app.register(policyRoutes, { recovery });
  await app.register(requestRoutes, { recovery });
  await app.register(decisionRoutes, { recovery });
  await app.register(reproductionRoutes, { recovery, liveRelays: o.liveRelays, forwarder: o.forwarder });
};
