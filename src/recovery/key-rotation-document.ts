// The key rotation document (seed 001 embodiment 3): what an arbitrator signs to rotate its keys, and how it signs
// one (signKeyRotation, on the arbitrator's side: private keys stay with it). The service checks and records it
// (key-rotation.ts). Pure: the arbitrator's client uses it without loading a database.

import { createPublicKey, sign, type KeyObject } from "node:crypto";
import { canonicalJson } from "./encoding.ts";
import { sha256Hex } from "./checks.ts";

/**
 * A key rotation (rotateArbitratorKeys): the arbitrator's new keys, bound to the keys and version they replace.
 * Signed (`signature`) with the arbitrator's CURRENT signing key over keyRotationBytes(body) — ECDSA P-256 /
 * SHA-256, IEEE P1363, base64 — so whoever relays it (an operator, with an operator token) cannot make one; and,
 * when the signing key changes, also with the NEW signing key (`newKeySignature`): proof that the arbitrator holds
 * it. Naming the next version and the current key ids makes a document valid once: it cannot be replayed after
 * the rotation it made, nor raced by another.
 */
export interface KeyRotationBody {
  format: "cardkms.recovery.key-rotation/1";
  arbitrator: string;
  /** The version this rotation creates: the current version + 1. */
  keyVersion: number;
  /** SHA-256 (hex) of the SPKIs of the current keys, the ones replaced. */
  previousSigningKeyId: string;
  previousEncryptionKeyId: string;
  /** The new keys, base64 DER SPKI (one of them may be the current key, unchanged). */
  signingPublicKey: string;
  encryptionPublicKey: string;
  /** ISO 8601, informative. */
  issuedAt: string;
}

export interface KeyRotation extends KeyRotationBody {
  signature: string;
  newKeySignature?: string;
}

/** The bytes a KeyRotation's signatures cover. */
export function keyRotationBytes(b: KeyRotationBody): Buffer {
  return Buffer.from(
    `cardkms/recovery/key-rotation/v1\n${canonicalJson({
      format: b.format,
      arbitrator: b.arbitrator,
      keyVersion: b.keyVersion,
      previousSigningKeyId: b.previousSigningKeyId,
      previousEncryptionKeyId: b.previousEncryptionKeyId,
      signingPublicKey: b.signingPublicKey,
      encryptionPublicKey: b.encryptionPublicKey,
      issuedAt: b.issuedAt,
    })}`,
  );
}

export const spkiDer = (k: KeyObject): Uint8Array => new Uint8Array((k.type === "private" ? createPublicKey(k) : k).export({ format: "der", type: "spki" }));

/**
 * On the arbitrator's side: a rotation of its keys from `current` (its record as the service shows it: key version
 * and public keys) to a new signing key pair and/or a new encryption public key, signed with the current signing
 * private key (and with the new signing private key, when there is one). Private keys stay with the caller.
 */
export function signKeyRotation(
  current: { arbitrator: string; keyVersion: number; signingPublicKey: Uint8Array; encryptionPublicKey: Uint8Array },
  currentSigningKey: KeyObject,
  next: { signingKey?: KeyObject; encryptionPublicKey?: KeyObject | Uint8Array },
  issuedAt: Date = new Date(),
): KeyRotation {
  if (next.signingKey !== undefined && next.signingKey.type !== "private") throw new TypeError("the new signing key must be a private key (it signs the proof of possession)");
  const enc = next.encryptionPublicKey === undefined ? current.encryptionPublicKey : next.encryptionPublicKey instanceof Uint8Array ? next.encryptionPublicKey : spkiDer(next.encryptionPublicKey);
  const body: KeyRotationBody = {
    format: "cardkms.recovery.key-rotation/1",
    arbitrator: current.arbitrator,
    keyVersion: current.keyVersion + 1,
    previousSigningKeyId: sha256Hex(current.signingPublicKey),
    previousEncryptionKeyId: sha256Hex(current.encryptionPublicKey),
    signingPublicKey: Buffer.from(next.signingKey ? spkiDer(next.signingKey) : current.signingPublicKey).toString("base64"),
    encryptionPublicKey: Buffer.from(enc).toString("base64"),
    issuedAt: issuedAt.toISOString(),
  };
  const bytes = keyRotationBytes(body);
  const r: KeyRotation = { ...body, signature: sign("sha256", bytes, { key: currentSigningKey, dsaEncoding: "ieee-p1363" }).toString("base64") };
  if (next.signingKey) r.newKeySignature = sign("sha256", bytes, { key: next.signingKey, dsaEncoding: "ieee-p1363" }).toString("base64");
  return r;
}
