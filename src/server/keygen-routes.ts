// HTTP routes of the key generation device (seed 001 embodiments 1-2, FIG. 4 steps 300-320, FIG. 6 steps 400-440;
// with an escrow, embodiment 3 steps S1-S3). Thin: the device is src/keygen/device.ts (KeyGenerationDevice); this
// file validates, authorises, audits the outcome and drives the device's card I/O through the terminal or card
// issuing machine with a live relay (live-relay.ts), one APDU per round trip, as key reproduction does.
//
//   POST /cards/{id}/keygen            (operator) {slot, alg, profile?, personalData, escrow?}
//                                      -> 201 {sessionId, apdus} | {sessionId, result}: relay each APDU to the card
//   POST /keygen/sessions/{sessionId}  (operator) {responses: [1 hex]} -> {apdus} | {result} | 4xx naming the check;
//                                      on another server than the one that opened it: forwarded there (issue 16 §3,
//                                      live-relay-forward.ts), or 410 relay-server-gone when that server stopped
//
// What runs in this process, per issue: a key pair generated in the server's custody (extractable only wrapped,
// never persisted); the registry of every public key the device generated (steps 414-415, SQL); a PKCS#10 request
// of the personal data entered at the device (`personalData`), signed by the new key in custody (417); the
// certification center (`center`: this site's CA behind the checks 422-424, comparing the personal data with the
// user record, which is the registration of step 420; or another site's CA over HTTP); the certificate verified
// against the anchor pinned at the first issue (433); with `escrow`, the card's secret ID read under SCP03 and the
// key escrowed under the card's reproduction policy (S3); key and certificate written into the card through the
// card's SCP03 channel, whose keys custody computes (434); the key destroyed in custody and its absence checked.
//
// The card is a card record of the issuer (its current SCP03 key set in custody); the applicant is its user.
// Refusals: a KeyGenerationRefusal is a 422 problem naming `check` and `refusedBy` ("device" or
// "certification-center"; problem.ts maps it like every DomainError, the card's state refusal that stopped it
// mid-session as that); each outcome, issued or refused, is appended to the audit log ("keygen.issued",
// "keygen.refused") with the card, slot, serial and public-key hash — never personal data values or key material.
// The APDUs between device and card carry the key only wrapped under the card's key set (the terminal sees no key).

import type { FastifyPluginAsyncTypebox } from "@fastify/type-provider-typebox";
import { Type } from "typebox";
import type { CaClient } from "../ca/client.ts";
import { toPem } from "../ca/pem.ts";
import { validateSubject } from "../ca/name.ts";
import { inCustody } from "../issuer/card-keys.ts";
import type { Issuer } from "../issuer/issuer.ts";
import { KeyGenerationDevice, type IssuedCard, type PivSlot } from "../keygen/device.ts";
import { KeygenIssueRequest, KeygenResultJson, KeygenStepJson } from "../keygen/wire.ts";
import { KeyGenerationRefusal } from "../keygen/errors.ts";
import type { IssuedKeyRegistry } from "../keygen/registry.ts";
import type { RecoveryService } from "../recovery/service.ts";
import { APDU_HEX, CARD_ID, fromHex, params, principalOf, SESSION_ID, toHex } from "./issuer-routes.ts";
import { checkCardState, requireCardState } from "../issuer/card-lifecycle.ts";
import { LiveRelaySessions, type LiveRelayOptions, type LiveStep } from "./live-relay.ts";
import type { LiveRelayForwarder } from "./live-relay-forward.ts";
import { ApiProblem } from "./problem.ts";
import { Closed } from "../util/wire.ts";

export interface KeygenRoutesOptions {
  issuer: Issuer;
  /** The certification center the device sends its signed requests to (it must run the checks 422-424). */
  center: CaClient;
  /** Steps 414-415: every public key the device generated (SqlIssuedKeyRegistry on the system DB). */
  registry: IssuedKeyRegistry;
  /** Escrow (S3) under the card's reproduction policy. */
  recovery: RecoveryService;
  /**
   * Root certificates the issued certificates must chain to (step 433). Default: the center's root as presented at
   * the first issue, pinned for the life of the process (trust on first use: right for this site's own CA).
   */
  trustAnchors?: readonly Uint8Array[];
  /** Bounds and store of the live relay sessions (default 5 min, 100 at once, in memory). */
  liveRelays?: LiveRelayOptions;
  /** Several servers on one database (issue 16 §3): a round for a session another server runs is forwarded to it. */
  forwarder?: LiveRelayForwarder;
}

/** The certificate profile a slot gets when the request names none (SP 800-73-4 key purposes). */
export const SLOT_PROFILES: Record<PivSlot, string> = { "9a": "authentication", "9c": "signature", "9d": "keyManagement", "9e": "authentication" };

const STR = { type: "string" } as const;
const closed = (properties: Record<string, unknown>, required: string[] = []) => ({ type: "object", additionalProperties: false, required, properties }) as const;

/** problem+json of these routes: RFC 9457 members, and for a refusal the check and who refused. */
const KEYGEN_PROBLEM = closed(
  {
    type: STR,
    title: STR,
    status: { type: "integer" },
    detail: STR,
    instance: STR,
    errors: { type: "array", items: closed({ pointer: STR, detail: STR }) },
    check: { type: "string", description: "the named check that refused, e.g. personal-data, duplicate-public-key, certificate-chain, escrow; card_state: the card is not active" },
    refusedBy: { type: "string", enum: ["device", "certification-center"] },
    cardId: STR,
    state: { type: "string", description: "with card_state: the card's lifecycle state" },
    allowed: { type: "array", items: STR },
    act: STR,
  },
  ["type", "title", "status"],
);
const problems = { "4xx": KEYGEN_PROBLEM, "5xx": { $ref: "Problem#" } } as const;

const resultOut = (cardId: string, r: IssuedCard): KeygenResultJson => ({
  cardId,
  slot: r.slot,
  alg: r.alg,
  serial: r.serial,
  certificate: toPem(r.certificate, "CERTIFICATE"),
  publicKeySha256: r.publicKeySha256,
  ...(r.escrowId !== undefined ? { escrowId: r.escrowId } : {}),
});
const stepOut = (s: LiveStep<KeygenResultJson>) => ("apdus" in s ? { apdus: s.apdus.map(toHex) } : { result: s.result });

export const keygenRoutes: FastifyPluginAsyncTypebox<KeygenRoutesOptions> = async (app, o) => {
  const { issuer, center, registry, recovery } = o;
  const lives = new LiveRelaySessions<KeygenResultJson>({ ...o.liveRelays, kind: "keygen" });
  app.addHook("onClose", async () => lives.close());
  let anchors: Promise<Uint8Array[]> | undefined = o.trustAnchors ? Promise.resolve(o.trustAnchors.map((a) => a.slice())) : undefined;
  /** Pins the center's root at the first issue (step 433's anchor); a failed fetch is retried next time. */
  const pinned = (): Promise<Uint8Array[]> =>
    (anchors ??= center.caCertificates().then(
      (chain) => {
        if (chain.length === 0) throw new ApiProblem(503, "ca-unavailable", "CA unavailable", "the certification center presents no CA certificate to pin");
        return [chain[chain.length - 1]];
      },
      (e: unknown) => {
        anchors = undefined;
        throw e;
      },
    ));

  app.post(
    "/cards/:id/keygen",
    {
      config: { roles: ["operator"] },
      schema: {
        summary:
          "The key generation device issues a key pair into the card at the terminal: generated in custody, certified by the center after its checks " +
          "(personal data against the card user's registration), with `escrow` split under the card's reproduction policy, written through SCP03 and destroyed. " +
          "Relay each APDU to the card and POST its response to /keygen/sessions/{sessionId}",
        tags: ["keygen"],
        params: params({ id: CARD_ID }),
        body: KeygenIssueRequest,
        response: { 201: KeygenStepJson, ...problems },
      },
    },
    async (req, reply) => {
      // the entry must be certifiable as it is (name.ts), before any lookup or key: a 422 naming the field
      validateSubject(req.body.personalData, "personalData");
      const actor = principalOf(req).name;
      const card = checkCardState(await issuer.card(req.params.id), "keygen");
      const keys = issuer.keysOf(await issuer.currentKeySet(card));
      if (!inCustody(keys)) throw new KeyGenerationRefusal("card-keys", "device", `card ${card.id}'s key set is not in custody`);
      const { slot, alg, personalData } = req.body;
      const profile = req.body.profile ?? SLOT_PROFILES[slot];
      const escrow = req.body.escrow === true;
      const device = await KeyGenerationDevice.create({ custody: issuer.custody, ca: center, registry, trustAnchors: await pinned(), escrow: escrow ? recovery.escrowHook(actor) : undefined });
      const audit = (action: string, details: Record<string, string | boolean>) => issuer.store.audit({ actor, action, subject: card.id, details: { slot, alg, profile, escrow, ...details } });
      const run = async (transmit: (apdu: Uint8Array) => Promise<Uint8Array>): Promise<KeygenResultJson> => {
        try {
          // the card's state, read before every APDU the device sends it: a card suspended mid-session gets nothing more
          const gated = async (apdu: Uint8Array) => {
            await requireCardState(issuer.store, card.id, "keygen");
            return transmit(apdu);
          };
          const issued = await device.issue({
            applicantId: card.userId,
            personalData,
            alg,
            profile,
            slot,
            card: { transmit: gated, keySet: keys.ref },
            ...(escrow ? { escrow: { cardId: card.id } } : {}),
          });
          await audit("keygen.issued", { serial: issued.serial, publicKeySha256: issued.publicKeySha256, ...(issued.escrowId ? { escrowId: issued.escrowId } : {}) });
          return resultOut(card.id, issued);
        } catch (e) {
          if (e instanceof KeyGenerationRefusal)
            await audit("keygen.refused", { check: e.check, refusedBy: e.by, ...(e.serial ? { serial: e.serial } : {}), ...(e.publicKeySha256 ? { publicKeySha256: e.publicKeySha256 } : {}) });
          throw e;
        }
      };
      const { sessionId, step } = await lives.open(actor, run);
      return reply.code(201).send({ sessionId, ...stepOut(step) });
    },
  );

  app.post(
    "/keygen/sessions/:sessionId",
    {
      config: { roles: ["operator"] },
      schema: {
        summary: "The card's response to the last APDU of a key generation; answers the next APDU, the result, or the refusal naming its check",
        tags: ["keygen"],
        params: params({ sessionId: SESSION_ID }),
        body: Closed({ responses: Type.Array(APDU_HEX, { minItems: 1, maxItems: 16 }) }),
        response: { 200: KeygenStepJson, ...problems },
      },
    },
    async (req, reply) => {
      const { sessionId } = req.params;
      const principal = principalOf(req).name;
      // issue 16 §3: the operation runs in the server that opened it; a round that landed here goes there
      if (o.forwarder && !lives.holds(sessionId)) return o.forwarder.forward(req, reply, lives as LiveRelaySessions<unknown>, sessionId, principal);
      return stepOut(await lives.next(sessionId, principal, req.body.responses.map(fromHex)));
    },
  );
};
