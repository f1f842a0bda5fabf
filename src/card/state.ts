// The card's persistent state: everything that survives a power cycle. It is only ever changed through
// CardRuntime.commit, which writes a whole new image atomically (see eeprom.ts).
// Byte strings are stored as hex so the image is plain JSON inside its encryption.

import type { KeyAlg, ScpKeySet } from "../protocol/types.ts";

export type { KeyAlg, ScpKeySet } from "../protocol/types.ts";

import type { Lifecycle } from "../protocol/isd.ts";

export type { Lifecycle } from "../protocol/isd.ts";

/** The KDF of PIN and PUK reference data (pin.ts) and its cost, kept in the image with each reference. */
export interface PinKdf {
  alg: "scrypt";
  /** scrypt's cost N = 2^logN. */
  logN: number;
  r: number;
  p: number;
}

export interface PinState {
  /**
   * scrypt(SHA-256(salt || value), salt) with `kdf`'s cost (pin.ts); the PIN itself is not kept. Without `kdf`
   * (images made before it): SHA-256(salt || value) alone, which CardRuntime.open stretches on load.
   */
  hash: string;
  salt: string;
  kdf?: PinKdf;
  tries: number;
  maxTries: number;
}

export interface StoredKey {
  alg: KeyAlg;
  /** PKCS#8 DER of the private key, hex. Lives only inside the encrypted image. */
  pkcs8: string;
  /** How the key got here: generated on card, imported via SCP03, or loaded from a sealed package. */
  origin: "generated" | "imported" | "package";
}

export interface CardState {
  format: 1;
  /** Public card ID (GP Card Image Number, tag 45). */
  cardId: string;
  /** Card-unique secret ID (seed 001 FIG. 14): readable only inside an SCP03 session with R-ENCRYPTION. */
  secretId: string;
  lifecycle: Lifecycle;
  /** Bytes of user data (keys, certificates, data objects) this card can hold. */
  capacity: number;
  keySets: ScpKeySet[];
  /** Consecutive failed secure-channel authentications; reaching scpFailureLimit zeroizes the card. */
  scpFailures: number;
  scpFailureLimit: number;
  /** Monotonic SCP03 sequence counter for pseudo-random card challenges. */
  scpCounter: number;
  pin: PinState;
  puk: PinState;
  /** Private keys by PIV key reference (hex, e.g. "9a"). */
  keys: Record<string, StoredKey>;
  /** Data objects by tag (hex, e.g. "5fc105"), value hex. The certificate area: writable only via SCP03 or a package. */
  objects: Record<string, string>;
  /** Highest sequence number of an offline package this card accepted (seed 000 ST22-ST25 replay guard). */
  packageSeq: number;
  /** Per key reference: counter of the latest wrapped export, so only the newest export can be loaded back. */
  exportSeq: Record<string, number>;
  /**
   * Per predecessor card and key reference ("<cardId>:<keyRef>"): the highest export sequence number of that
   * card's export packages this card loaded, so an older export of the predecessor cannot replace a newer one.
   * Absent in images made before predecessor key sets existed.
   */
  predecessorExportSeq?: Record<string, number>;
  /** Why the card was terminated, when it was. */
  terminatedReason?: string;
  /**
   * Monotonic: +1 in every commit, in the same atomic write as the change it counts (runtime.ts), and reported
   * MACed at login so the issuer notices an image that went back (state-counter.ts). Absent in images made before
   * it: CardRuntime.open adds it, starting from scpCounter.
   */
  stateCounter?: number;
}

/** Bytes of user data a state holds, counted against the card's capacity. */
export function usedBytes(s: CardState): number {
  let n = 0;
  for (const k of Object.values(s.keys)) n += k.pkcs8.length / 2;
  for (const v of Object.values(s.objects)) n += v.length / 2;
  return n;
}

export function cloneState(s: CardState): CardState {
  return structuredClone(s);
}
