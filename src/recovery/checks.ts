// The recovery service's boundary checks of ids and actors and its public-key helpers: pure functions, with no
// storage, so that the arbitrator's and the device's clients (src/terminal/) use them without loading a database.

import { createPublicKey, type KeyObject } from "node:crypto";
export { sha256Hex } from "../util/bytes.ts";
import { RecoveryServiceError } from "./service-errors.ts";

// ---------------------------------------------------------------------------------------------------------------
// Boundary checks

const ID = /^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$/;
export const MAX_REASON = 1024;

export const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

export function checkId(v: unknown, what: string): asserts v is string {
  if (typeof v !== "string" || !ID.test(v)) throw new RecoveryServiceError("invalid_argument", `${what} must be 1-128 characters of [A-Za-z0-9._:@/-]`);
}

export function checkActor(actor: unknown): asserts actor is string {
  if (typeof actor !== "string" || actor.length === 0 || actor.length > 128) throw new RecoveryServiceError("invalid_argument", "actor must name who acts (1-128 characters)");
}

// ---------------------------------------------------------------------------------------------------------------
// Public keys

export function p256FromSpki(spki: Uint8Array, what: string): KeyObject {
  let k: KeyObject;
  try {
    k = createPublicKey({ key: Buffer.from(spki), format: "der", type: "spki" });
  } catch {
    throw new RecoveryServiceError("invalid_argument", `${what} is not a public key`);
  }
  if (k.asymmetricKeyType !== "ec" || k.asymmetricKeyDetails?.namedCurve !== "prime256v1") throw new RecoveryServiceError("invalid_argument", `${what} must be a P-256 public key`);
  return k;
}
