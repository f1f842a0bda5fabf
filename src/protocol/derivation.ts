// Key derivations shared by the card and key custody, chosen so that an HSM does them natively with PKCS#11 2.40
// CKM_AES_CBC_ENCRYPT_DATA (the derived key is the AES-CBC encryption, zero IV, of the derivation data under
// the base key; SoftHSM2 2.6 supports it) and software reproduces them byte for byte with Node's AES. This file
// is the software reference: pure functions, Node crypto only, so the card side can import the same code.
//
// 1. Card key diversification (issue 3 §3; the pattern of EMV CPS / GP card management systems: the card key is
//    the master key's encryption of card-unique data, so no per-card key is stored):
//      h      = SHA-256("cardkms card key v1" || 00 || len(cardId) || cardId)          (public: the card ID)
//      B_j    = h[0..12] || KVN || keyId (1 ENC, 2 MAC, 3 DEK) || bits/8 || j            j = 1 .. bits/128
//      K      = AES-CBC(master, IV 0, B_1 || ... )                                       (16 or 32 bytes)
//    12 bytes of card-ID hash keep B_j one block for any card ID up to 16 bytes; a collision between two card
//    IDs needs ~2^48 cards.
//
// 2. Keys under a card's DEK for cardkms' own uses (purpose >= 0x40, clear of the card keys' 1..3):
//      h'     = SHA-256("cardkms card purpose key v1" || 00 || len(cardId) || cardId)
//      B_j    = h'[0..12] || KVN || purpose || 20 || j,   j = 1, 2
//      K      = AES-CBC(DEK, IV 0, B_1 || B_2)                                           (AES-256)
//    purpose 0x41 / 0x42: the package key for package kind 1 (credential) / 2 (export) — a proposed v2 of
//    src/card/package.ts, whose HKDF-SHA256 no PKCS#11 2.40 HSM can compute over a key it will not export;
//    purpose 0x50: the key that wraps a private key for the card (Sk[PRk], AES key wrap with padding).
//    The DEK also encrypts key components for PUT KEY (AES-CBC, zero IV): a new key whose first block equalled a
//    B_1 would collide with a purpose key's first half. New keys are AES outputs (2^-128 per key), so this is
//    accepted rather than spending a separate card key on it.
//
// 3. Transport keys (issue 17 §3): the ISD keys (KVN 30) a blank card leaves the factory with, unique per card,
//    from the card manufacturer's master key KMC and the card's key diversification data KDD (the 10 bytes its
//    INITIALIZE UPDATE response starts with). The EMV CPS v1.1 §4.1 derivation (GlobalPlatformPro's "emv"
//    template), adapted to AES:
//      KEYDATA = KDD[4..9]                                                  (the 6 rightmost bytes)
//      K_i     = AES-ECB(KMC, KEYDATA || F0 || i || KEYDATA || 0F || i)     i = 01 ENC, 02 MAC, 03 DEK
//    What differs from EMV CPS: CPS encrypts this 16-byte block with 3DES-ECB under a double-length DES KMC (two
//    8-byte blocks, a DES key); here it is one AES block under an AES-128 or AES-256 KMC, giving an AES-128 key.
//    One block is what PKCS#11 CKM_AES_ECB_ENCRYPT_DATA derives (and CKM_AES_CBC_ENCRYPT_DATA with a zero IV, the
//    same function on one block), so the card's keys are derived inside the HSM and never reach this process.
//    GlobalPlatformPro runs its templates through Amendment D's SP 800-108 CMAC KDF for SCP03 cards, which no
//    PKCS#11 2.40 token derives (C_Sign would return the key). Public vector for the layout: with 3DES in place
//    of AES it gives GlobalPlatformPro's EMV vector (TestPlaintextKeys: KMC 40..4F, KDD 00010203040506070809 ->
//    KCVs C33013, 6F4CA6, BB8179), checked in derivation.test.ts with the AES values.
//    A card's KDD is its card ID right-aligned in 10 bytes (zero-padded on the left, or the ID's 10 rightmost
//    bytes), so KEYDATA is the ID's 6 rightmost bytes: 48 random bits for issuer-chosen IDs. Two cards that share
//    them share transport keys, which only the KMC's holders (the factory, the issuer's custody) can compute.

import { createCipheriv, createDecipheriv, createHash } from "node:crypto";
import { aesCbcEncrypt } from "./scp03/cmac.ts";

export const KEY_ID = { enc: 1, mac: 2, dek: 3 } as const;
export type CardKeyName = keyof typeof KEY_ID;

export const PURPOSE = {
  /** Package key for a package of kind `kind` (package.ts PACKAGE_KIND: 1 credential, 2 export). */
  package: (kind: number): number => 0x40 | kind,
  /** AES-256 key that wraps private keys for this card: Sk[PRk] = AES-KWP(this key, PKCS#8). */
  privateKeyWrap: 0x50,
} as const;

function cardIdBytes(cardId: string | Uint8Array): Buffer {
  const b = typeof cardId === "string" ? Buffer.from(cardId, "hex") : Buffer.from(cardId);
  if (b.length < 1 || b.length > 16 || (typeof cardId === "string" && b.length * 2 !== cardId.length)) throw new RangeError("card ID must be 1..16 bytes (hex)");
  return b;
}

function blocks(domain: string, cardId: string | Uint8Array, kvn: number, id: number, bits: number): Uint8Array {
  if (!Number.isInteger(kvn) || kvn < 0 || kvn > 0xff) throw new RangeError("KVN must be one byte");
  if (bits !== 128 && bits !== 256) throw new RangeError("derived keys are 128 or 256 bits");
  const id8 = cardIdBytes(cardId);
  const h = createHash("sha256").update(domain).update(Uint8Array.of(0, id8.length)).update(id8).digest();
  const n = bits / 128;
  const out = new Uint8Array(16 * n);
  for (let j = 1; j <= n; j++) {
    const o = (j - 1) * 16;
    out.set(h.subarray(0, 12), o);
    out[o + 12] = kvn;
    out[o + 13] = id;
    out[o + 14] = bits / 8;
    out[o + 15] = j;
  }
  return out;
}

/** Derivation data for card key `name` of key set `kvn` (the CKM_AES_CBC_ENCRYPT_DATA input, IV zero). */
export function cardKeyData(cardId: string | Uint8Array, kvn: number, name: CardKeyName, bits: 128 | 256 = 128): Uint8Array {
  return blocks("cardkms card key v1", cardId, kvn, KEY_ID[name], bits);
}

/** Derivation data for a purpose key under the card's DEK (always AES-256). */
export function purposeKeyData(cardId: string | Uint8Array, kvn: number, purpose: number): Uint8Array {
  if (!Number.isInteger(purpose) || purpose < 0x40 || purpose > 0xff) throw new RangeError("purpose must be 0x40..0xff");
  return blocks("cardkms card purpose key v1", cardId, kvn, purpose, 256);
}

/** A card's key diversification data (10 bytes), as its INITIALIZE UPDATE returns it: the card ID right-aligned. */
export function keyDiversificationData(cardId: string | Uint8Array): Uint8Array {
  const id = typeof cardId === "string" ? Buffer.from(cardId, "hex") : Buffer.from(cardId);
  const out = new Uint8Array(10);
  const tail = id.subarray(Math.max(0, id.length - 10));
  out.set(tail, 10 - tail.length);
  return out;
}

/** The EMV CPS derivation block of transport key `name` for diversification data `kdd` (10 bytes, or hex). */
export function transportKeyData(kdd: string | Uint8Array, name: CardKeyName): Uint8Array {
  const k = typeof kdd === "string" ? Buffer.from(kdd, "hex") : Buffer.from(kdd);
  if (k.length !== 10 || (typeof kdd === "string" && kdd.length !== 20)) throw new RangeError("key diversification data must be 10 bytes (hex)");
  const keyData = k.subarray(4, 10);
  const i = KEY_ID[name];
  return Uint8Array.from([...keyData, 0xf0, i, ...keyData, 0x0f, i]);
}

/** Software reference of the transport key diversification (section 3): a blank card's ENC, MAC and DEK. */
export function deriveTransportKeySet(kmc: Uint8Array, kdd: string | Uint8Array): { enc: Uint8Array; mac: Uint8Array; dek: Uint8Array } {
  if (kmc.length !== 16 && kmc.length !== 32) throw new RangeError("a KMC is an AES-128 or AES-256 key");
  return { enc: encryptData(kmc, transportKeyData(kdd, "enc")), mac: encryptData(kmc, transportKeyData(kdd, "mac")), dek: encryptData(kmc, transportKeyData(kdd, "dek")) };
}

/** What CKM_AES_CBC_ENCRYPT_DATA computes: AES-CBC, zero IV, of `data` (a whole number of blocks). */
export function encryptData(base: Uint8Array, data: Uint8Array): Uint8Array {
  return aesCbcEncrypt(base, new Uint8Array(16), data);
}

/** Software reference of the card key diversification: a card's ENC, MAC and DEK. */
export function deriveCardKeySet(master: Uint8Array, cardId: string | Uint8Array, kvn: number, bits: 128 | 256 = 128): { enc: Uint8Array; mac: Uint8Array; dek: Uint8Array } {
  return {
    enc: encryptData(master, cardKeyData(cardId, kvn, "enc", bits)),
    mac: encryptData(master, cardKeyData(cardId, kvn, "mac", bits)),
    dek: encryptData(master, cardKeyData(cardId, kvn, "dek", bits)),
  };
}

/** Software reference of a purpose key under a card's DEK (package key v2, private-key wrap key). */
export function derivePurposeKey(dek: Uint8Array, cardId: string | Uint8Array, kvn: number, purpose: number): Uint8Array {
  return encryptData(dek, purposeKeyData(cardId, kvn, purpose));
}

const KWP_IV = Buffer.from("a65959a6", "hex");

function kwpCipher(key: Uint8Array): string {
  if (key.length === 16) return "id-aes128-wrap-pad";
  if (key.length === 32) return "id-aes256-wrap-pad";
  throw new RangeError("AES key wrap keys are 128 or 256 bits here");
}

/** AES key wrap with padding (RFC 5649, CKM_AES_KEY_WRAP_PAD), default alternative IV. */
export function aesKeyWrapPad(kek: Uint8Array, plain: Uint8Array): Uint8Array {
  const c = createCipheriv(kwpCipher(kek), kek, KWP_IV);
  return new Uint8Array(Buffer.concat([c.update(plain), c.final()]));
}

/** Inverse of aesKeyWrapPad; throws when the integrity check fails (wrong key or altered blob). */
export function aesKeyUnwrapPad(kek: Uint8Array, wrapped: Uint8Array): Uint8Array {
  const d = createDecipheriv(kwpCipher(kek), kek, KWP_IV);
  return new Uint8Array(Buffer.concat([d.update(wrapped), d.final()]));
}
