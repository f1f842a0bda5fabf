// The card's side of the credential package format (src/protocol/package.ts, seed 000 ST24-ST25, claim 16):
// opening a package sealed for this card (or its predecessor), applying it to the card's state, unwrapping a TLV 83
// Sk[PRk], and sealing the card's own exports. What a package is and how a host seals one: the protocol module.

import { createDecipheriv } from "node:crypto";
import { aesKeyUnwrapPad } from "../protocol/derivation.ts";
import type { CardState, ScpKeySet } from "./state.ts";
import { CardError, SW } from "../protocol/sw.ts";
import { findTlv, parseTlvs } from "../protocol/tlv.ts";
import { ALG_BY_ID, CERT_OBJECT, PACKAGE_KIND, packageHeader, packageKey, pivCertObject, predecessorSlot, seal, wrapKey, type OpenedPackage } from "../protocol/package.ts";

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

/** Applies an opened package to a state copy inside CardRuntime.commit: key, certificate and counter together. */
export function applyPackage(s: CardState, p: OpenedPackage): void {
  if (p.pkcs8) s.keys[p.keyRef] = { alg: p.alg, pkcs8: Buffer.from(p.pkcs8).toString("hex"), origin: "package" };
  const certTag = CERT_OBJECT[p.keyRef];
  if (p.cert && certTag) s.objects[certTag] = Buffer.from(pivCertObject(p.cert)).toString("hex");
  if (p.kind === "credential") s.packageSeq = p.seq;
  if (p.kind === "export" && p.cardId !== s.cardId) s.predecessorExportSeq = { ...s.predecessorExportSeq, [predecessorSlot(p.cardId, p.keyRef)]: p.seq };
}
