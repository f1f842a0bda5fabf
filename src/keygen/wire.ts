// The JSON shapes of the key generation device's routes (src/server/keygen-routes.ts) that the card issuing
// machine's client (src/terminal/keygen-client.ts) shares: what an issue asks for, and the step and result of its
// live relay. One TypeBox schema each — the routes validate, serialise and publish them — and its static type.
//
// Never here: a SQL driver, fastify, key material — src/terminal/ imports this file.

import { Type, type Static } from "typebox";
import { subjectSchema } from "../ca/wire.ts";
import { KEY_PAIR_ALGS, type KeyPairAlg } from "../custody/custody.ts";
import { Closed, Enum, Str, Strings } from "../util/wire.ts";
import type { PivSlot } from "./card-io.ts";

export const PIV_SLOTS = ["9a", "9c", "9d", "9e"] as const satisfies readonly PivSlot[];
export { KEY_PAIR_ALGS } from "../custody/custody.ts";

/** The personal data entered at the device (step 410): subject fields (name.ts checks lengths and characters). */
export const PersonalData = subjectSchema({ maxLength: 64, maxItems: 16 });

/** POST /cards/{id}/keygen. */
export const KeygenIssueRequest = Closed({
  slot: Enum(PIV_SLOTS),
  alg: Enum(KEY_PAIR_ALGS),
  /** The center's certificate profile; default by slot (9a authentication, 9c signature, 9d keyManagement, 9e authentication). */
  profile: Type.Optional(Type.String({ minLength: 1, maxLength: 64, pattern: "^[A-Za-z0-9_-]+$" })),
  /** The personal data entered at the device (step 410); the center compares it with the user's registration. */
  personalData: PersonalData,
  /** Escrow the key under the card's reproduction policy (seed 001 S3). */
  escrow: Type.Optional(Type.Boolean({ description: "escrow the key for reproduction by arbitrators (the card needs a reproduction policy)" })),
});
export type KeygenIssueRequest = Static<typeof KeygenIssueRequest>;

/** What an issue returns: the certificate as PEM. */
export const KeygenResultJson = Closed({
  cardId: Str,
  slot: Type.Unsafe<PivSlot>(Str),
  alg: Type.Unsafe<KeyPairAlg>(Str),
  serial: Str,
  certificate: Str,
  publicKeySha256: Str,
  escrowId: Type.Optional(Str),
});
export type KeygenResultJson = Static<typeof KeygenResultJson>;

/** A step of an issue's live relay: the session, the next APDUs (hex), or the result. */
export const KeygenStepJson = Closed({ sessionId: Type.Optional(Str), apdus: Type.Optional(Strings(16)), result: Type.Optional(KeygenResultJson) });
