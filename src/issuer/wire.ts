// The JSON shapes of the issuer's and the user terminal's routes (src/server/issuer-routes.ts, terminal-routes.ts)
// that the terminal's client (src/terminal/api-client.ts) and the CLI share: users, cards with their key sets and
// key pairs, the card lifecycle, credential requests, relay rounds and steps, revocation, a card authentication's
// answer, a card's delivery packages. One TypeBox schema each — the routes validate, serialise and publish them —
// and its static type. Requests are closed (an unknown member is a 400); answers are open (no
// additionalProperties: false), as the routes always declared them: the serialiser writes the members named here
// and nothing else. The rotation shapes are in wire-rotation.ts.
//
// Never here: a SQL driver, fastify, a key value or a custody reference — src/terminal/ imports this file's types.

import { Type, type Static } from "typebox";
import { RevokeRequestJson } from "../ca/wire.ts";
import type { JsonValue } from "../util/json.ts";
import { Bool, Closed, Enum, Int, NullableInt, NullableStr, Str, Written } from "../util/wire.ts";
import { CARD_KEY_ALGS, SLOTS } from "./issuer.ts";

const opt = Type.Optional;

// ---- identifiers and request pieces ----------------------------------------------------------------------------

/** A record ID in a path or body (users, key pairs, rotations). */
export const Id = Type.String({ minLength: 1, maxLength: 100, pattern: "^[A-Za-z0-9_.:-]+$" });
/** Card IDs as Issuer.issueCard makes them: 8 to 16 bytes, lowercase hex. */
export const CardId = Type.String({ pattern: "^([0-9a-f]{2}){8,16}$" });
/** A whole APDU (command or response with its status word), hex. Short or extended, so up to 64 KiB. */
export const ApduHex = Type.String({ minLength: 4, maxLength: 2 * 65_539, pattern: "^([0-9A-Fa-f]{2})+$" });

// ---- users (FIG. 4: user ID and registered data) ---------------------------------------------------------------

/** The personal data a user registers: they become the subject of the user's certificates. */
export const PersonalDataJson = Closed({
  commonName: Type.String({ minLength: 1, maxLength: 64 }),
  email: opt(Type.String({ minLength: 3, maxLength: 255 })),
  organization: opt(Type.String({ minLength: 1, maxLength: 64 })),
  organizationalUnit: opt(Type.String({ minLength: 1, maxLength: 64 })),
  country: opt(Type.String({ pattern: "^[A-Z]{2}$" })),
});

/** POST /users. */
export const RegisterUserRequest = Closed({ personalData: PersonalDataJson });
export type RegisterUserRequest = Static<typeof RegisterUserRequest>;

/** A registered user. */
export const UserJson = Type.Object({ id: Str, personalData: Type.Unsafe<Record<string, JsonValue>>({ type: "object", additionalProperties: true }), createdAt: Int });
export type UserJson = Static<typeof UserJson>;

// ---- cards (FIG. 5: card ID, validity VT, current key set) -------------------------------------------------------

const cardMembers = {
  id: Str,
  userId: Str,
  status: Str,
  validFrom: Int,
  validUntil: Int,
  currentKeySetId: NullableStr(),
  lastPackageSeq: Int,
  createdAt: Int,
  updatedAt: Int,
};

/** A card of the system DB, as published: no member required (a rotation's new card is written without some). */
export const CardJson = Type.Object({
  id: opt(Str),
  userId: opt(Str),
  status: opt(Str),
  validFrom: opt(Int),
  validUntil: opt(Int),
  currentKeySetId: opt(NullableStr()),
  lastPackageSeq: opt(Int),
  createdAt: opt(Int),
  updatedAt: opt(Int),
});
export type CardJson = Static<typeof CardJson>;

const cardRecordMembers = {
  ...cardMembers,
  statusChangedAt: NullableInt({ description: "the last status change (card lifecycle); every change is in the audit log" }),
  statusChangedBy: NullableStr(),
  statusReason: NullableStr(),
};

/** A card as the issuer's card routes and the lifecycle transitions answer it: with its last status change. */
export const CardRecordJson = Written(cardRecordMembers);
export type CardRecordJson = Static<typeof CardRecordJson>;

/** A card key set: references only, never key values. */
export const KeySetJson = Written({ id: Str, kvn: Int, version: Int, status: Str, validFrom: Int, validUntil: Int, current: Bool });
export type KeySetJson = Static<typeof KeySetJson>;

/** A certificate of a key pair, summarised. */
export const CertificateSummaryJson = Written({ serial: Str, notBefore: Int, notAfter: Int, revokedAt: NullableInt(), revocationReason: NullableStr() });
export type CertificateSummaryJson = Static<typeof CertificateSummaryJson>;

/** A key pair of a card: its public key (SubjectPublicKeyInfo, base64 DER) and certificates. */
export const KeyPairJson = Written({ id: Str, slot: NullableStr(), algorithm: Str, status: Str, publicKey: Str, createdAt: Int, certificates: Type.Array(CertificateSummaryJson) });
export type KeyPairJson = Static<typeof KeyPairJson>;

/** GET /cards/{id}: the card with its key sets and key pairs. */
export const CardDetailJson = Written({ ...cardRecordMembers, keySets: Type.Array(KeySetJson), keyPairs: Type.Array(KeyPairJson) });
export type CardDetailJson = Static<typeof CardDetailJson>;

/** POST /cards (ST11-ST12). */
export const IssueCardRequest = Closed({ userId: Id, cardId: opt(CardId) });
export type IssueCardRequest = Static<typeof IssueCardRequest>;

/** What issuing a card answers: the card and its key set's reference. */
export const IssuedCardJson = Type.Object({ card: CardRecordJson, keySet: Type.Object({ id: Str, kvn: Int, version: Int }) });
export type IssuedCardJson = Static<typeof IssuedCardJson>;

/** POST /cards/{id}/suspend | resume | retire | report-destroyed. */
export const CardTransitionRequest = Closed({ reason: Type.String({ minLength: 1, maxLength: 500, pattern: "\\S", description: "why (audited with the actor)" }) });
export type CardTransitionRequest = Static<typeof CardTransitionRequest>;

// ---- credentials (ST16-ST25) ------------------------------------------------------------------------------------

/** What a credential request names (ST16): the card slot, the algorithm, optionally a CA profile. */
export const credentialMembers = {
  slot: Enum(SLOTS),
  alg: Enum(CARD_KEY_ALGS),
  profile: opt(Type.String({ pattern: "^[A-Za-z][A-Za-z0-9_-]{0,63}$" })),
};

/** POST /cards/{id}/credentials: `replace` updates a slot's key (claim 4), else it is added (claim 7). */
export const CredentialRequest = Closed({ ...credentialMembers, replace: opt(Bool) });
export type CredentialRequest = Static<typeof CredentialRequest>;

/** A relay session the server drives (personalisation, online delivery, card authentication): its first APDUs, hex. */
export const RelayRoundJson = Type.Object({ sessionId: Str, apdus: Type.Array(Str) });
export type RelayRoundJson = Static<typeof RelayRoundJson>;

/** POST /relay/{sessionId}: the card's responses to the last round, hex. */
export const RelayRequest = Closed({ responses: Type.Array(ApduHex, { minItems: 1, maxItems: 512 }) });
export type RelayRequest = Static<typeof RelayRequest>;

/** A relay step's answer: the next round's APDUs, or {done, results} when the script ran. */
export const RelayStepJson = Type.Object({ apdus: opt(Type.Array(Str)), done: opt(Bool), results: opt(Type.Array(Type.Object({ sw: Int, data: Str }))) });
export type RelayStepJson = Static<typeof RelayStepJson>;

/** A new key pair and certificate (ST16-ST22): the certificate as PEM, the package that delivers it. */
export const IssuedCredentialJson = Type.Object({ keyPairId: Str, serial: Str, certificate: Str, packageSeq: Int });
export type IssuedCredentialJson = Static<typeof IssuedCredentialJson>;

/** A card authentication's answer: the card-bound token, and the EXTERNAL AUTHENTICATE (hex) to forward to the card. */
export const CardAuthenticationJson = Type.Object({ token: Str, expiresAt: Type.String({ format: "date-time" }), apdus: Type.Array(Str) });
export type CardAuthenticationJson = Static<typeof CardAuthenticationJson>;

/** A card's delivery packages (ST22), oldest first; `body` base64. */
export const PackagesJson = Type.Object({ packages: Type.Array(Type.Object({ seq: Int, status: Type.Optional(Str), createdAt: Type.Optional(Int), body: Str })) });
export type PackagesJson = Static<typeof PackagesJson>;

// ---- revocation ------------------------------------------------------------------------------------------------

/** POST /certificates/{serial}/revoke. */
export const RevokeCertificateRequest = Closed({ reason: RevokeRequestJson.properties.reason });
export type RevokeCertificateRequest = Static<typeof RevokeCertificateRequest>;

/** A revoked certificate: when, and why. */
export const RevokedCertificateJson = Written({ serial: Str, revokedAt: NullableInt(), reason: NullableStr() }, { required: ["serial", "revokedAt"] });
export type RevokedCertificateJson = Static<typeof RevokedCertificateJson>;
