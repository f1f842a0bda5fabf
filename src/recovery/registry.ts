// Registered arbitrators (seed 001, embodiment 3, step S3: "designated arbitrators who judge the appropriateness
// of the secret key reproduction"; claim 35 (a)). Each arbitrator registers two P-256 public keys: one to verify
// the approvals it signs (ECDSA), one to which its shares are encrypted (ECDH). Two keys rather than one keep
// signing and key agreement apart, so that neither use can be turned into an oracle for the other.
// This module holds public keys only; the arbitrators' private keys never reach it.

import { type KeyObject, createHash, createPublicKey } from "node:crypto";
import { RecoveryError } from "./errors.ts";

export type PublicKeyInput = KeyObject | string | Uint8Array;

export interface ArbitratorRegistration {
  id: string;
  /** e.g. "user", "credit company", "service provider", "issuing-apparatus manager" (FIG. 9) — informative. */
  role?: string;
  displayName?: string;
  /** ECDSA P-256 key that verifies this arbitrator's approvals (SPKI DER, PEM or KeyObject). */
  signingPublicKey: PublicKeyInput;
  /** ECDH P-256 key to which this arbitrator's shares are encrypted (SPKI DER, PEM or KeyObject). */
  encryptionPublicKey: PublicKeyInput;
}

export interface Arbitrator {
  readonly id: string;
  readonly role?: string;
  readonly displayName?: string;
  readonly signingKey: KeyObject;
  readonly encryptionKey: KeyObject;
  /** SHA-256 of the encryption key's SPKI, hex: names the key a share envelope was sealed to. */
  readonly encryptionKeyId: string;
  /** The encryption key as an uncompressed point (0x04 || X || Y), the form ECDH and HKDF take. */
  readonly encryptionPoint: Uint8Array;
}

/** What policy validation needs to know about arbitrators. */
export interface ArbitratorDirectory {
  isRegistered(id: string): boolean;
}

export const ARBITRATOR_ID = /^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$/;

function p256Public(input: PublicKeyInput, what: string, id: string): KeyObject {
  let key: KeyObject;
  try {
    key =
      typeof input === "string"
        ? createPublicKey(input)
        : input instanceof Uint8Array
          ? createPublicKey({ key: Buffer.from(input), format: "der", type: "spki" })
          : input.type === "private"
            ? createPublicKey(input)
            : input;
  } catch {
    throw new RecoveryError("unknown_arbitrator", `arbitrator ${id}: ${what} is not a public key`, { arbitrator: id });
  }
  if (key.type !== "public" || key.asymmetricKeyType !== "ec" || key.asymmetricKeyDetails?.namedCurve !== "prime256v1")
    throw new RecoveryError("unknown_arbitrator", `arbitrator ${id}: ${what} must be a P-256 public key`, { arbitrator: id });
  return key;
}

export function uncompressedPoint(key: KeyObject): Uint8Array {
  const jwk = key.export({ format: "jwk" });
  return new Uint8Array(Buffer.concat([Uint8Array.of(4), Buffer.from(jwk.x!, "base64url"), Buffer.from(jwk.y!, "base64url")]));
}

export class ArbitratorRegistry implements ArbitratorDirectory {
  readonly #byId = new Map<string, Arbitrator>();

  register(reg: ArbitratorRegistration): Arbitrator {
    if (typeof reg.id !== "string" || !ARBITRATOR_ID.test(reg.id)) throw new RecoveryError("unknown_arbitrator", "arbitrator id must be 1-128 characters of [A-Za-z0-9._:@-]");
    if (this.#byId.has(reg.id)) throw new RecoveryError("unknown_arbitrator", `arbitrator ${reg.id} is already registered`, { arbitrator: reg.id });
    const signingKey = p256Public(reg.signingPublicKey, "signing key", reg.id);
    const encryptionKey = p256Public(reg.encryptionPublicKey, "encryption key", reg.id);
    const spki = encryptionKey.export({ format: "der", type: "spki" });
    const a: Arbitrator = Object.freeze({
      id: reg.id,
      role: reg.role,
      displayName: reg.displayName,
      signingKey,
      encryptionKey,
      encryptionKeyId: createHash("sha256").update(spki).digest("hex"),
      encryptionPoint: uncompressedPoint(encryptionKey),
    });
    this.#byId.set(reg.id, a);
    return a;
  }

  isRegistered(id: string): boolean {
    return this.#byId.has(id);
  }

  get(id: string): Arbitrator | undefined {
    return this.#byId.get(id);
  }

  /** The arbitrator, or a refusal naming `unknown_arbitrator`. */
  require(id: string): Arbitrator {
    const a = this.#byId.get(id);
    if (!a) throw new RecoveryError("unknown_arbitrator", `arbitrator ${id} is not registered`, { arbitrator: id });
    return a;
  }

  ids(): string[] {
    return [...this.#byId.keys()];
  }
}
