// Key custody (issue 3 §3): the one interface behind which every server-side secret lives — card master keys,
// the CA key, the storage key that protects private keys at rest. Two implementations: software.ts (an
// encrypted keystore file, the default) and pkcs11.ts (an HSM through pkcs11js, tested with SoftHSM2).
//
// The shape follows what an HSM can do, so that callers never hold a long-term secret in clear:
//   * card key sets (Sk, seed 000 para 0032) are not stored per card: they are diversified on demand from a
//     master key and the card ID (derivation.ts), inside the HSM on PKCS#11;
//   * PUT KEY cryptograms, KCVs, SCP03 session keys, package sealing and private-key wrapping are custody
//     operations; only ephemeral session keys and ciphertext leave custody as bytes;
//   * private keys are generated inside custody and leave it only wrapped (Sk[PRk], or under a storage key).
//
// This module must never log or put a key value in an error message.

import type { KeyAlg } from "../protocol/types.ts";
import type { CustodySelfTest } from "./self-test.ts";

export type { CustodySelfTest, SelfTestPath } from "./self-test.ts";

/** Key pair algorithms custody generates: the ones a card holds (the one definition: protocol/types.ts KeyAlg). */
export type KeyPairAlg = KeyAlg;
export type HashAlg = "SHA-256" | "SHA-384" | "SHA-512";

/** What a secret key may be used for. Enforced by both implementations (CKA_DERIVE / WRAP / ENCRYPT / SIGN). */
export type SecretKeyUsage = "derive" | "wrap" | "encrypt" | "mac";

/**
 * "never": the key cannot leave custody at all (card masters, the CA key, storage keys).
 * "wrapped": it may leave only encrypted under another custody key (card keys for PUT KEY, card credentials).
 */
export type Extractability = "never" | "wrapped";

export interface SecretKeySpec {
  type: "aes";
  bits: 128 | 256;
  /** Default ["derive"]: a card master key. A storage key wants ["wrap", "encrypt"]. */
  usage?: SecretKeyUsage[];
  /** Default "never". */
  extractable?: Extractability;
}

/**
 * What a key pair's private half may do: "sign", and "decipher" (decipher(): ECDH for an EC key, RSA-OAEP decryption
 * for an RSA key). Enforced by both implementations (PKCS#11: CKA_SIGN, CKA_DERIVE / CKA_DECRYPT).
 */
export type PairUsage = "sign" | "decipher";

export interface KeyPairOptions {
  /** Default "never" (a CA key). A credential key for a card is generated with "wrapped". */
  extractable?: Extractability;
  /**
   * generateKeyPair's least usage: default ["sign"] (a CA key, a credential key); the reproduction device's key is
   * ["decipher"] only. unwrapPrivateKey's keys always sign and decipher (the FIG. 10 key check of a reproduced key
   * needs both, and PKCS#11 finds an unwrapped EC key's public point by ECDH); it refuses any other usage.
   */
  usage?: PairUsage[];
  /**
   * Kept only for the life of this custody instance (a PKCS#11 session object), never persisted: a credential
   * key that is wrapped for its card (Sk[PRk]) and then destroyed. Default false.
   */
  ephemeral?: boolean;
}

export interface KeyInfo {
  label: string;
  kind: "secret" | "keyPair";
  /** "aes" for a secret key, the algorithm for a key pair. */
  type: "aes" | KeyPairAlg;
  /** AES key length in bits (secret keys only). */
  bits?: number;
  usage?: SecretKeyUsage[];
  extractable: Extractability;
}

/**
 * A card's SCP03 key set diversified from a master key in custody (derivation.ts): ENC, MAC and DEK of `bits`
 * (default 128) for the card `cardId` (hex, the GP Card Image Number) and key version `kvn` (1..127).
 */
export interface DerivedKeySetRef {
  kind: "derived";
  master: string;
  cardId: string;
  kvn: number;
  bits?: 128 | 256;
}

/**
 * A key set stored as three custody keys by label — for key sets not derived from a master, such as the
 * transport key blank cards ship with (importKeySet).
 */
export interface StoredKeySetRef {
  kind: "stored";
  kvn: number;
  enc: string;
  mac: string;
  dek: string;
  /** The card this key set belongs to: needed for keys derived from its DEK (sealForCard, wrapping). */
  cardId?: string;
}

/**
 * A blank card's transport key set, diversified inside custody from the card manufacturer's master key (KMC, label
 * `kmc`, imported in a key ceremony: `cardkms custody import-kmc`) and the card's key diversification data `kdd`
 * (10 bytes, hex, as its INITIALIZE UPDATE returns it): the EMV CPS derivation of derivation.ts, AES-128 keys.
 */
export interface KmcKeySetRef {
  kind: "kmc";
  kmc: string;
  kdd: string;
  /** The transport key version (card.ts TRANSPORT_KVN, 0x30). */
  kvn: number;
  /** The card this key set belongs to: needed only for keys derived from its DEK (sealForCard, wrapping). */
  cardId?: string;
}

export type KeySetRef = DerivedKeySetRef | StoredKeySetRef | KmcKeySetRef;

/** Key check values (GP Amendment D §7.2: AES(key, 16 × 01), 3 bytes), hex. */
export interface KeySetKcvs {
  kvn: number;
  enc: string;
  mac: string;
  dek: string;
}

/** PUT KEY (GP Card Spec §11.8, Amendment D §7.2) for a full key set, computed inside custody. */
export interface PutKeyData {
  /** The command data field: new KVN || 3 × (88 Lc keyLen DEK-cryptogram 03 KCV). */
  data: Uint8Array;
  /** What the card must answer: new KVN || KCV ENC || KCV MAC || KCV DEK. */
  expectedResponse: Uint8Array;
  kcvs: KeySetKcvs;
}

/** SCP03 session material (Amendment D §6.2). The session keys are ephemeral and may leave custody. */
export interface Scp03SessionMaterial {
  sEnc: Uint8Array;
  sMac: Uint8Array;
  sRmac: Uint8Array;
  /** The cryptogram the card must have sent (compare in constant time). */
  cardCryptogram: Uint8Array;
  /** The host cryptogram for EXTERNAL AUTHENTICATE. */
  hostCryptogram: Uint8Array;
}

/** Where a private key is wrapped to: a card's key set (Sk[PRk]) or a storage key in custody, by label. */
export type WrapTarget = { card: KeySetRef } | { key: string };

/** AES-256-GCM under a key derived from a card's DEK (derivation.ts packageKeyData): nonce and ciphertext||tag. */
export interface SealedForCard {
  nonce: Uint8Array;
  ciphertext: Uint8Array;
}

/** The shape the CA signs with (structurally a src/ca/signer.ts CaSigner): a key in custody that never leaves it. */
export interface Signer {
  readonly label: string;
  readonly alg: KeyPairAlg;
  /** The digest the signer uses (defaultHash): SHA-384 for P-384 and RSA-3072, SHA-256 otherwise. */
  readonly hash: HashAlg;
  /** SubjectPublicKeyInfo, DER. */
  readonly spki: Uint8Array;
  /** ECDSA: DER Ecdsa-Sig-Value; RSA: PKCS#1 v1.5. */
  sign(data: Uint8Array): Promise<Uint8Array>;
}

export interface KeyCustody {
  /** "software" or "pkcs11". */
  readonly kind: string;

  // --- keys by label ---------------------------------------------------------------------------------------
  createSecretKey(label: string, spec: SecretKeySpec): Promise<KeyInfo>;
  /** Key ceremony only (migrating a master, the card manufacturer's KMC): the value is taken in once. */
  importSecretKey(label: string, spec: SecretKeySpec, value: Uint8Array): Promise<KeyInfo>;
  /** Imports ENC/MAC/DEK as `${prefix}.enc|mac|dek` with the usages a key set needs. */
  importKeySet(prefix: string, keys: { kvn: number; enc: Uint8Array; mac: Uint8Array; dek: Uint8Array }, extractable?: Extractability): Promise<StoredKeySetRef>;
  hasKey(label: string): Promise<boolean>;
  keyInfo(label: string): Promise<KeyInfo | undefined>;
  /** Destroys a secret key or a key pair; false when there was none. */
  deleteKey(label: string): Promise<boolean>;
  listKeys(): Promise<KeyInfo[]>;

  // --- card key sets ---------------------------------------------------------------------------------------
  keySetKcvs(ref: KeySetRef): Promise<KeySetKcvs>;
  /** PUT KEY data replacing/adding `next` on a card whose session runs on `current` (encrypted under its DEK). */
  putKeyData(current: KeySetRef, next: KeySetRef): Promise<PutKeyData>;
  /** Session keys and both cryptograms for hostChallenge || cardChallenge (8 bytes each), S8 mode. */
  scp03Session(ref: KeySetRef, hostChallenge: Uint8Array, cardChallenge: Uint8Array): Promise<Scp03SessionMaterial>;
  /** AES-256-GCM of `plaintext` with `aad` under the card's package key for `purpose` (derivation.ts). */
  sealForCard(ref: KeySetRef, purpose: number, aad: Uint8Array, plaintext: Uint8Array): Promise<SealedForCard>;

  // --- key pairs -------------------------------------------------------------------------------------------
  generateKeyPair(label: string, alg: KeyPairAlg, opts?: KeyPairOptions): Promise<KeyInfo>;
  /** SubjectPublicKeyInfo, DER. */
  publicKey(label: string): Promise<Uint8Array>;
  /** Hash defaults to defaultHash(alg): SHA-384 for P-384 and RSA-3072, SHA-256 otherwise. */
  sign(label: string, data: Uint8Array, opts?: { hash?: HashAlg }): Promise<Uint8Array>;
  /** AES key wrap with padding (RFC 5649) of the PKCS#8 private key; needs extractable "wrapped". */
  wrapPrivateKey(label: string, to: WrapTarget): Promise<Uint8Array>;
  /** Card key rotation (Sk1[PRk] -> Sk2[PRk]): the private key is unwrapped only inside custody. */
  rewrapPrivateKey(wrapped: Uint8Array, alg: KeyPairAlg, from: WrapTarget, to: WrapTarget): Promise<Uint8Array>;
  /**
   * The bulk form of rewrapPrivateKey for a card-key rotation (embodiments 3 and 5): the wrap keys of `from` and
   * `to` are derived once for the whole batch. Results in input order; all or nothing — WRONG_KEY (naming the
   * item's index) when one does not unwrap under `from`.
   */
  rewrapPrivateKeys(items: readonly { wrapped: Uint8Array; alg: KeyPairAlg }[], from: WrapTarget, to: WrapTarget): Promise<Uint8Array[]>;
  /**
   * Seed 001 S8-S9: takes a private key wrapped under `from` (as wrapPrivateKey made it) into custody as a key pair
   * under `label`; it is unwrapped only inside custody (PKCS#11: C_UnwrapKey with CKM_AES_KEY_WRAP_PAD, or the
   * implementation's existing unwrap path). `opts` as for generateKeyPair (extractable, ephemeral). When
   * `expectSpki` is given and the key's public half differs: WRONG_KEY and nothing is created. A blob that does
   * not unwrap under `from`: WRONG_KEY. A label already taken: the existing error code for that.
   *
   * Both implementations also refuse with WRONG_KEY, creating nothing, a blob that unwraps but is not an `alg`
   * key, and a key whose private half does not sign for its public half (a pairwise check: custody signs, the
   * public key verifies). The key pair made here may sign and decipher.
   */
  unwrapPrivateKey(label: string, wrapped: Uint8Array, alg: KeyPairAlg, from: WrapTarget, opts?: KeyPairOptions & { expectSpki?: Uint8Array }): Promise<KeyInfo>;
  /**
   * The private half's decryption primitive, for the FIG. 10 key check ("encrypt a random value, decrypt it"):
   * RSA keys: RSA-OAEP (SHA-256, MGF1-SHA-256, empty label) decryption of `input`;
   * EC keys: ECDH with the peer public key `input` (SubjectPublicKeyInfo DER, same curve), returning the shared
   * secret (the X coordinate, field-size bytes). Refuses (a CustodyError) a wrong curve or a malformed input.
   *
   * Codes: INVALID_ARGUMENT for a malformed input (an RSA input not of the modulus length, an SPKI that does not
   * parse, is not EC, or is on another curve); WRONG_KEY for an RSA input that does not decrypt under this key
   * (not encrypted for it, or altered); NOT_PERMITTED (PKCS#11) for a key pair without CKA_DECRYPT / CKA_DERIVE —
   * generateKeyPair's keys there sign only; unwrapPrivateKey's keys decipher.
   */
  decipher(label: string, input: Uint8Array): Promise<Uint8Array>;
  signer(label: string): Promise<Signer>;

  /**
   * Tries, with the credentials this custody runs with, the paths by which its holder could take a key out
   * (PKCS#11: pkcs11-selftest.ts), and reports which the implementation refused. Changes no stored key.
   */
  selfTest(): Promise<CustodySelfTest>;

  close(): Promise<void>;
}

export type CustodyErrorCode = "NOT_FOUND" | "EXISTS" | "INVALID_ARGUMENT" | "NOT_PERMITTED" | "WRONG_KEY" | "LOGIN_FAILED" | "CORRUPT" | "UNAVAILABLE" | "HSM_ERROR";

/** Every custody failure. Messages name labels and reasons, never key values. */
export class CustodyError extends Error {
  constructor(
    readonly code: CustodyErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "CustodyError";
  }
}

export const KEY_PAIR_ALGS = ["P256", "P384", "RSA2048", "RSA3072"] as const satisfies readonly KeyPairAlg[];

/**
 * The digest a key pair signs with by default, as src/ca/signer.ts pairs them: SHA-384 for P-384 (RFC 5758) and
 * RSA-3072 (CNSA), SHA-256 for P-256 and RSA-2048.
 */
export function defaultHash(alg: KeyPairAlg): HashAlg {
  return alg === "P384" || alg === "RSA3072" ? "SHA-384" : "SHA-256";
}

const LABEL = /^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$/;

/** Labels are printable identifiers, 1..128 characters: they appear in logs and in PKCS#11 CKA_LABEL. */
export function checkLabel(label: string): void {
  if (typeof label !== "string" || !LABEL.test(label))
    throw new CustodyError("INVALID_ARGUMENT", `bad key label ${JSON.stringify(String(label).slice(0, 40))}: 1-128 of A-Z a-z 0-9 . _ : @ / - , starting with a letter or digit`);
}

export function checkSecretSpec(spec: SecretKeySpec): Required<SecretKeySpec> {
  if (!spec || spec.type !== "aes") throw new CustodyError("INVALID_ARGUMENT", 'secret keys are AES keys (type "aes")');
  if (spec.bits !== 128 && spec.bits !== 256) throw new CustodyError("INVALID_ARGUMENT", `AES key length must be 128 or 256 bits, not ${spec.bits}`);
  const usage = spec.usage ?? ["derive"];
  for (const u of usage) if (!["derive", "wrap", "encrypt", "mac"].includes(u)) throw new CustodyError("INVALID_ARGUMENT", `unknown key usage ${JSON.stringify(u)}`);
  if (usage.length === 0) throw new CustodyError("INVALID_ARGUMENT", "a secret key needs at least one usage");
  const extractable = spec.extractable ?? "never";
  if (extractable !== "never" && extractable !== "wrapped") throw new CustodyError("INVALID_ARGUMENT", 'extractable must be "never" or "wrapped"');
  return { type: "aes", bits: spec.bits, usage: [...new Set(usage)].sort(), extractable };
}

export function checkKeyPairAlg(alg: KeyPairAlg): void {
  if (!KEY_PAIR_ALGS.includes(alg)) throw new CustodyError("INVALID_ARGUMENT", `key pair algorithm must be one of ${KEY_PAIR_ALGS.join(", ")}`);
}

/** A key pair's usage (KeyPairOptions.usage): "sign" and/or "decipher", at least one; `dflt` when not given. Sorted. */
export function checkPairUsage(usage: readonly PairUsage[] | undefined, dflt: PairUsage[]): PairUsage[] {
  const u = usage ?? dflt;
  if (!Array.isArray(u) || u.length === 0 || u.some((x) => x !== "sign" && x !== "decipher"))
    throw new CustodyError("INVALID_ARGUMENT", 'key pair usage must be a non-empty list of "sign" and "decipher"');
  return [...new Set(u)].sort();
}

/** unwrapPrivateKey's usage: always both (KeyPairOptions.usage); anything else given is refused. */
export function checkUnwrapUsage(usage: readonly PairUsage[] | undefined): PairUsage[] {
  const u = checkPairUsage(usage, ["sign", "decipher"]);
  if (u.length !== 2) throw new CustodyError("INVALID_ARGUMENT", 'an unwrapped key pair\'s usage is ["sign", "decipher"]: the key check needs both');
  return u;
}

export function checkHash(hash: HashAlg): void {
  if (!["SHA-256", "SHA-384", "SHA-512"].includes(hash)) throw new CustodyError("INVALID_ARGUMENT", `hash must be SHA-256, SHA-384 or SHA-512`);
}

/** Validates a key set reference. */
export function checkKeySetRef(ref: KeySetRef): void {
  if (!ref || (ref.kind !== "derived" && ref.kind !== "stored" && ref.kind !== "kmc"))
    throw new CustodyError("INVALID_ARGUMENT", 'key set reference must be {kind: "derived" | "stored" | "kmc", ...}');
  if (!Number.isInteger(ref.kvn) || ref.kvn < 1 || ref.kvn > 0x7f) throw new CustodyError("INVALID_ARGUMENT", `KVN must be 1..127, not ${ref.kvn}`);
  if (ref.kind === "derived") {
    checkLabel(ref.master);
    if (typeof ref.cardId !== "string" || !/^([0-9a-fA-F]{2}){1,16}$/.test(ref.cardId)) throw new CustodyError("INVALID_ARGUMENT", "card ID must be 1..16 bytes of hex");
    if (ref.bits !== undefined && ref.bits !== 128 && ref.bits !== 256) throw new CustodyError("INVALID_ARGUMENT", "derived card keys are 128 or 256 bits");
  } else if (ref.kind === "kmc") {
    checkLabel(ref.kmc);
    if (typeof ref.kdd !== "string" || !/^[0-9a-fA-F]{20}$/.test(ref.kdd)) throw new CustodyError("INVALID_ARGUMENT", "key diversification data must be 10 bytes of hex");
  } else {
    checkLabel(ref.enc);
    checkLabel(ref.mac);
    checkLabel(ref.dek);
  }
  if (ref.kind !== "derived" && ref.cardId !== undefined && (typeof ref.cardId !== "string" || !/^([0-9a-fA-F]{2}){1,16}$/.test(ref.cardId)))
    throw new CustodyError("INVALID_ARGUMENT", "card ID must be 1..16 bytes of hex");
}

export function checkChallenge(b: Uint8Array, what: string): void {
  if (!(b instanceof Uint8Array) || b.length !== 8) throw new CustodyError("INVALID_ARGUMENT", `${what} must be 8 bytes`);
}

/** Usages of the three keys of a stored key set. */
export const KEY_SET_USAGE = {
  enc: ["encrypt", "mac"] as SecretKeyUsage[],
  mac: ["encrypt", "mac"] as SecretKeyUsage[],
  dek: ["derive", "encrypt", "wrap"] as SecretKeyUsage[],
};

/**
 * Imports a key set's ENC, MAC and DEK as `<prefix>.enc|mac|dek` through one custody's `importSecretKey`, each with
 * its usage (KEY_SET_USAGE): what importKeySet does in every custody.
 */
export async function importKeySetWith(
  importSecretKey: (label: string, spec: SecretKeySpec, value: Uint8Array) => Promise<KeyInfo>,
  prefix: string,
  keys: { kvn: number; enc: Uint8Array; mac: Uint8Array; dek: Uint8Array },
  extractable: Extractability,
): Promise<StoredKeySetRef> {
  const ref: StoredKeySetRef = { kind: "stored", kvn: keys.kvn, enc: `${prefix}.enc`, mac: `${prefix}.mac`, dek: `${prefix}.dek` };
  checkKeySetRef(ref);
  for (const name of ["enc", "mac", "dek"] as const) {
    const v = keys[name];
    await importSecretKey(ref[name], { type: "aes", bits: (v.length * 8) as 128 | 256, usage: KEY_SET_USAGE[name], extractable }, v);
  }
  return ref;
}
