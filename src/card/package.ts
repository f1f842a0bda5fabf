// Self-protecting credential packages (seed 000 ST22-ST25, claims 13 and 16).
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

import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import { aesKeyUnwrapPad, aesKeyWrapPad, derivePurposeKey, PURPOSE } from "./derivation.ts";
import type { CardState, KeyAlg, ScpKeySet } from "./state.ts";
import { CardError, SW } from "./sw.ts";
import { concat, findTlv, parseTlvs, tlv } from "./tlv.ts";

const MAGIC = Buffer.from("CKP2");

export const PACKAGE_KIND = { credential: 0x01, export: 0x02 } as const;
export type PackageKind = keyof typeof PACKAGE_KIND;

/** PIV algorithm identifiers (SP 800-78-4/5) for the key algorithms a card holds. */
export const ALG_ID: Record<KeyAlg, number> = { RSA2048: 0x07, RSA3072: 0x05, P256: 0x11, P384: 0x14 };
const ALG_BY_ID = new Map(Object.entries(ALG_ID).map(([k, v]) => [v, k as KeyAlg]));

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

function packageKey(keySet: ScpKeySet, cardId: string, kind: number): Buffer {
  return Buffer.from(derivePurposeKey(Buffer.from(keySet.dek, "hex"), cardId, keySet.kvn, PURPOSE.package(kind)));
}

/** The card's private-key wrap key for key set `keySet` (purpose 0x50 under its DEK). */
function wrapKey(keySet: ScpKeySet, cardId: string): Buffer {
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

/** The card ID a key set's purpose keys are derived with: its predecessor's, or this card's own. */
export function keySetCardId(state: Readonly<CardState>, keySet: ScpKeySet): string {
  return keySet.origin ?? state.cardId;
}

/**
 * Card side: opens a TLV 83 Sk[PRk] with the named key set's wrap key (derived with the key set's card ID: a
 * predecessor key set opens the predecessor's Sk1[PRk]); 6982 when it is not wrapped for a key set this card holds.
 */
export function unwrapForCard(state: Readonly<CardState>, skPrk: Uint8Array): Uint8Array {
  if (skPrk.length < 2) throw new CardError(SW.WRONG_DATA, "wrapped key too short");
  const keySet = state.keySets.find((k) => k.kvn === skPrk[0]);
  if (!keySet) throw new CardError(SW.SECURITY_STATUS_NOT_SATISFIED, "wrapped under a key set this card does not hold");
  const k = wrapKey(keySet, keySetCardId(state, keySet));
  try {
    return aesKeyUnwrapPad(k, skPrk.subarray(1));
  } catch {
    throw new CardError(SW.SECURITY_STATUS_NOT_SATISFIED, "wrapped key fails its integrity check");
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

function seal(keySet: ScpKeySet, kind: number, c: PackageContent): Uint8Array {
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

/** Card side: wraps a key held in the card for output (claim 16). The caller commits exportSeq[keyRef] = seq. */
export function exportPackage(state: Readonly<CardState>, keyRef: string, cert?: Uint8Array): { bytes: Uint8Array; exportSeq: number } {
  const key = state.keys[keyRef];
  if (!key) throw new CardError(SW.REFERENCE_NOT_FOUND, "no key in that slot");
  const keySet = currentKeySet(state);
  const seq = (state.exportSeq[keyRef] ?? 0) + 1;
  const pkcs8 = Buffer.from(key.pkcs8, "hex");
  const bytes = seal(keySet, PACKAGE_KIND.export, { cardId: state.cardId, keyRef, seq, alg: key.alg, pkcs8, cert });
  pkcs8.fill(0);
  return { bytes, exportSeq: seq };
}

/**
 * The key set exports are sealed under: the newest (highest KVN) of the card's OWN key sets — never a
 * predecessor's, whose keys are derived for another card ID (embodiment 5: Sk2, not Sk1).
 */
export function currentKeySet(state: Readonly<CardState>): ScpKeySet {
  const ks = state.keySets.filter((k) => k.origin === undefined).sort((a, b) => b.kvn - a.kvn)[0];
  if (!ks) throw new CardError(SW.CONDITIONS_NOT_SATISFIED, "card has no key set of its own");
  return ks;
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

/**
 * Card side (seed 000 ST24-ST25): checks and opens a package. Throws 6A80 when malformed, 6982 when it is for
 * another card (neither this card nor a predecessor bound to the named key set), was altered, or is a credential
 * package for a predecessor; 6985 when it is not newer than what the card accepted. Changes no state: the caller
 * commits the result with applyPackage in one atomic commit.
 */
export function openPackage(state: Readonly<CardState>, bytes: Uint8Array): OpenedPackage {
  const h = packageHeader(bytes);
  const keySet = state.keySets.find((k) => k.kvn === h.kvn);
  // The header's card ID must be the one the named key set is diversified for: this card for its own key sets,
  // the predecessor for a predecessor key set (and never the other way round).
  if (!keySet || keySetCardId(state, keySet) !== h.cardId) {
    const known = h.cardId === state.cardId || state.keySets.some((k) => k.origin === h.cardId);
    throw new CardError(SW.SECURITY_STATUS_NOT_SATISFIED, known ? "package sealed under a key set this card does not hold for that card" : "package is for another card");
  }
  const fromPredecessor = keySet.origin !== undefined;
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const nonce = b.subarray(h.headerLength, h.headerLength + 12);
  const body = b.subarray(h.headerLength + 12, b.length - 16);
  const tag = b.subarray(b.length - 16);
  let plain: Buffer;
  try {
    const d = createDecipheriv("aes-256-gcm", packageKey(keySet, h.cardId, PACKAGE_KIND[h.kind]), nonce);
    d.setAAD(b.subarray(0, h.headerLength));
    d.setAuthTag(tag);
    plain = Buffer.concat([d.update(body), d.final()]);
  } catch {
    throw new CardError(SW.SECURITY_STATUS_NOT_SATISFIED, "package authentication failed");
  }
  if (fromPredecessor) {
    // Checked after the tag, so a forged header cannot probe the card's counters.
    if (h.kind === "credential") throw new CardError(SW.SECURITY_STATUS_NOT_SATISFIED, "a credential package for the predecessor card belongs to that card");
    if (h.seq < (state.predecessorExportSeq?.[predecessorSlot(h.cardId, h.keyRef)] ?? 0))
      throw new CardError(SW.CONDITIONS_NOT_SATISFIED, "an older export of the predecessor than one already loaded");
  } else {
    if (h.kind === "credential" && h.seq <= state.packageSeq) throw new CardError(SW.CONDITIONS_NOT_SATISFIED, "package is not newer than the last one accepted");
    if (h.kind === "export" && h.seq !== (state.exportSeq[h.keyRef] ?? -1)) throw new CardError(SW.CONDITIONS_NOT_SATISFIED, "only the newest export of a slot can be loaded back");
  }
  const tlvs = parseTlvs(plain);
  const algId = findTlv(tlvs, 0x80);
  const alg = algId?.length === 1 ? ALG_BY_ID.get(algId[0]) : undefined;
  if (!alg) throw new CardError(SW.WRONG_DATA, "package names no known algorithm");
  const skPrk = findTlv(tlvs, 0x83);
  const cert = findTlv(tlvs, 0x82);
  const pkcs8 = skPrk && unwrapForCard(state, skPrk);
  return { kind: h.kind, cardId: h.cardId, keyRef: h.keyRef, seq: h.seq, alg, pkcs8, cert: cert && Uint8Array.from(cert) };
}

/** PIV certificate object tag (hex) for a key reference. */
export const CERT_OBJECT: Record<string, string> = { "9a": "5fc105", "9c": "5fc10a", "9d": "5fc10b", "9e": "5fc101" };

/** Encodes a certificate as the PIV certificate object value (SP 800-73-4: 53 { 70 cert, 71 00, FE 00 }). */
export function pivCertObject(cert: Uint8Array): Uint8Array {
  return tlv(0x53, tlv(0x70, cert), tlv(0x71, Uint8Array.of(0)), tlv(0xfe));
}

/** Applies an opened package to a state copy inside CardRuntime.commit: key, certificate and counter together. */
export function applyPackage(s: CardState, p: OpenedPackage): void {
  if (p.pkcs8) s.keys[p.keyRef] = { alg: p.alg, pkcs8: Buffer.from(p.pkcs8).toString("hex"), origin: "package" };
  const certTag = CERT_OBJECT[p.keyRef];
  if (p.cert && certTag) s.objects[certTag] = Buffer.from(pivCertObject(p.cert)).toString("hex");
  if (p.kind === "credential") s.packageSeq = p.seq;
  if (p.kind === "export" && p.cardId !== s.cardId) s.predecessorExportSeq = { ...s.predecessorExportSeq, [predecessorSlot(p.cardId, p.keyRef)]: p.seq };
}
