// Self-protecting credential packages (seed 000 ST22-ST25, claims 13 and 16): the format, and how a host seals one.
// The card's side (opening, applying, exporting) is src/card/package.ts.
//
// The issuer delivers {Sk[PRk], Ct} to a card through an untrusted user terminal. The private key travels as
// Sk[PRk]: AES key wrap with padding (RFC 5649) under the card's private-key wrap key, itself derived from the
// DEK of the card's key set Sk (derivation.ts, purpose 0x50). The package around it is sealed with AES-256-GCM
// under the card's package key (derivation.ts, purpose 0x40 | kind), so only that card can open it; the header —
// card ID, key version, key slot, sequence number — is bound in as associated data, so the terminal can neither
// read, alter, redirect nor replay it undetected. Both derivations are AES-CBC "encrypt data" steps an HSM does
// natively (CKM_AES_CBC_ENCRYPT_DATA), so an issuer whose card keys live in PKCS#11 custody seals packages
// without any key leaving the HSM (KeyCustody.wrapPrivateKey + sealForCard).
//   * another card: the card ID differs and the key is another card's (6982);
//   * altered: the GCM tag fails (6982);
//   * replayed or older: seq must be greater than the last package the card accepted (6985).
// The same format, with its own derived key, carries a key the card exports (claim 16: PRk leaves only as
// Sk[PRk]); such an export can be loaded back only into the same card and only while it is that slot's newest.
//
// Predecessor key sets (seed 000 embodiments 4 and 5, para 0081-0089): a new card 30x* that holds the old card's
// Sk1 keeps it as a key set bound to the old card's ID (ScpKeySet.origin, set by the ISD's STORE DATA). Its
// purpose keys are derived with that card ID, so the new card opens what the old card sealed under Sk1:
//   * the old card's export packages (header: the old card's ID and Sk1's KVN) load, each (card, slot) only at
//     or above the highest export seq already loaded (predecessorExportSeq): a newer export of the old card
//     still loads, an older one after a newer does not (6985);
//   * Sk1[PRk] blobs (TLV 83, KVN byte first) wrapped for the old card unwrap (IMPORT KEY, package plaintext);
//   * credential packages addressed to the old card are refused (6982): they were made for the old card, whose
//     package sequence this card does not track, so it could not tell a replay;
// and it seals its own exports only under its newest OWN key set and its own card ID (embodiment 5: the store's
// Sk1[PRk] become the new card's Sk2[PRk]).
//
// Wire format:  "CKP2" | kind(1) | kvn(1) | idLen(1) | cardId | keyRef(1) | seq(8, BE) | nonce(12) | ct | tag(16)
// Plaintext:    TLV 80 alg | 83 Sk[PRk] = kvn(1) || AES-KWP(wrap key of key set kvn, PKCS#8) (optional)
//                          | 82 certificate DER (optional)

import { createCipheriv, randomBytes } from "node:crypto";
import { aesKeyWrapPad, derivePurposeKey, PURPOSE } from "./derivation.ts";
import type { KeyAlg, ScpKeySet } from "./types.ts";
import { CardError, SW } from "./sw.ts";
import { concat, tlv } from "./tlv.ts";

const MAGIC = Buffer.from("CKP2");

export const PACKAGE_KIND = { credential: 0x01, export: 0x02 } as const;
export type PackageKind = keyof typeof PACKAGE_KIND;

/** PIV algorithm identifiers (SP 800-78-4/5) for the key algorithms a card holds. */
export const ALG_ID: Record<KeyAlg, number> = { RSA2048: 0x07, RSA3072: 0x05, P256: 0x11, P384: 0x14 };
export const ALG_BY_ID: ReadonlyMap<number, KeyAlg> = new Map(Object.entries(ALG_ID).map(([k, v]) => [v, k as KeyAlg]));

export interface PackageContent {
  cardId: string;
  /** PIV key reference, hex ("9a", "9c", ...). */
  keyRef: string;
  seq: number;
  alg: KeyAlg;
  pkcs8?: Uint8Array;
  cert?: Uint8Array;
}

export interface OpenedPackage extends PackageContent {
  kind: PackageKind;
}

export function packageKey(keySet: ScpKeySet, cardId: string, kind: number): Buffer {
  return Buffer.from(derivePurposeKey(Buffer.from(keySet.dek, "hex"), cardId, keySet.kvn, PURPOSE.package(kind)));
}

/** The card's private-key wrap key for key set `keySet` (purpose 0x50 under its DEK). */
export function wrapKey(keySet: ScpKeySet, cardId: string): Buffer {
  return Buffer.from(derivePurposeKey(Buffer.from(keySet.dek, "hex"), cardId, keySet.kvn, PURPOSE.privateKeyWrap));
}

/** Sk[PRk] as TLV 83 carries it: the key set's KVN, then AES-KWP of the PKCS#8 under the card's wrap key. */
export function wrapForCard(keySet: ScpKeySet, cardId: string, pkcs8: Uint8Array): Uint8Array {
  const k = wrapKey(keySet, cardId);
  try {
    return new Uint8Array(Buffer.concat([Buffer.from([keySet.kvn]), aesKeyWrapPad(k, pkcs8)]));
  } finally {
    k.fill(0);
  }
}

/** The clear header of a package (also its associated data), for an issuer that seals in key custody. */
export function packageHeaderBytes(kind: PackageKind, kvn: number, cardId: string, keyRef: string, seq: number): Uint8Array {
  if (!Number.isSafeInteger(seq) || seq < 1) throw new RangeError("package sequence number must be a positive integer");
  return new Uint8Array(header(PACKAGE_KIND[kind], kvn, cardId, keyRef, seq));
}

/** The plaintext of a package: TLV 80 alg, 83 Sk[PRk] (optional), 82 certificate (optional). */
export function packagePlaintext(alg: KeyAlg, skPrk?: Uint8Array, cert?: Uint8Array): Uint8Array {
  const parts = [tlv(0x80, Uint8Array.of(ALG_ID[alg]))];
  if (skPrk) parts.push(tlv(0x83, skPrk));
  if (cert) parts.push(tlv(0x82, cert));
  return concat(...parts);
}

/** Header || nonce || ciphertext-with-tag: the package bytes. */
export function assemblePackage(headerBytes: Uint8Array, nonce: Uint8Array, ciphertext: Uint8Array): Uint8Array {
  return new Uint8Array(Buffer.concat([headerBytes, nonce, ciphertext]));
}

function header(kind: number, kvn: number, cardId: string, keyRef: string, seq: number): Buffer {
  const id = Buffer.from(cardId, "hex");
  const h = Buffer.alloc(4 + 3 + id.length + 1 + 8);
  MAGIC.copy(h, 0);
  h[4] = kind;
  h[5] = kvn;
  h[6] = id.length;
  id.copy(h, 7);
  h[7 + id.length] = parseInt(keyRef, 16);
  h.writeBigUInt64BE(BigInt(seq), 8 + id.length);
  return h;
}

/** Seals a package of either kind under `keySet` (the card seals its exports with this too). */
export function seal(keySet: ScpKeySet, kind: number, c: PackageContent): Uint8Array {
  if (!Number.isSafeInteger(c.seq) || c.seq < 1) throw new RangeError("package sequence number must be a positive integer");
  const plain = packagePlaintext(c.alg, c.pkcs8 && wrapForCard(keySet, c.cardId, c.pkcs8), c.cert);
  const h = header(kind, keySet.kvn, c.cardId, c.keyRef, c.seq);
  const nonce = randomBytes(12);
  const cipher = createCipheriv("aes-256-gcm", packageKey(keySet, c.cardId, kind), nonce);
  cipher.setAAD(h);
  const ct = Buffer.concat([cipher.update(plain), cipher.final(), cipher.getAuthTag()]);
  plain.fill(0);
  return new Uint8Array(Buffer.concat([h, nonce, ct]));
}

/**
 * Seals a key and/or certificate for one card with its key set in hand (software issuers, tests, the demo). An
 * issuer whose card keys are in key custody builds the same bytes with wrapPrivateKey + sealForCard.
 */
export function sealPackage(keySet: ScpKeySet, c: PackageContent): Uint8Array {
  return seal(keySet, PACKAGE_KIND.credential, c);
}

/** Key of CardState.predecessorExportSeq for a predecessor card's slot. */
export function predecessorSlot(cardId: string, keyRef: string): string {
  return `${cardId}:${keyRef}`;
}

/** Parses the clear header of a package; the terminal may use this to route it (it reveals no secret). */
export function packageHeader(bytes: Uint8Array): { kind: PackageKind; kvn: number; cardId: string; keyRef: string; seq: number; headerLength: number } {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (b.length < 7 || !b.subarray(0, 4).equals(MAGIC)) throw new CardError(SW.WRONG_DATA, "not a cardkms package");
  const idLen = b[6];
  const headerLength = 7 + idLen + 9;
  if (idLen === 0 || idLen > 16 || b.length < headerLength + 12 + 16) throw new CardError(SW.WRONG_DATA, "truncated package");
  const kind = b[4] === PACKAGE_KIND.credential ? "credential" : b[4] === PACKAGE_KIND.export ? "export" : undefined;
  if (!kind) throw new CardError(SW.WRONG_DATA, "unknown package kind");
  return {
    kind,
    kvn: b[5],
    cardId: b.subarray(7, 7 + idLen).toString("hex"),
    keyRef: b[7 + idLen].toString(16).padStart(2, "0"),
    seq: Number(b.readBigUInt64BE(8 + idLen)),
    headerLength,
  };
}

/** PIV certificate object tag (hex) for a key reference. */
export const CERT_OBJECT: Record<string, string> = { "9a": "5fc105", "9c": "5fc10a", "9d": "5fc10b", "9e": "5fc101" };

/** Encodes a certificate as the PIV certificate object value (SP 800-73-4: 53 { 70 cert, 71 00, FE 00 }). */
export function pivCertObject(cert: Uint8Array): Uint8Array {
  return tlv(0x53, tlv(0x70, cert), tlv(0x71, Uint8Array.of(0)), tlv(0xfe));
}
