// The PIV applet's asymmetric keys (seed 000 para 0032-0035, claim 14 "second area"; SP 800-73-4 Part 2 §3.2.4,
// §3.3.2): validation, generation, the public key template, and the private-key operations of GENERAL
// AUTHENTICATE. Keys persist only as PKCS#8 inside the card's encrypted image (state.keys); for speed they are
// parsed once into KeyObjects kept in card RAM (cleared on reset) and re-parsed only when the stored key changes.
// This module never returns a private key: only signatures, raw RSA results, ECDH secrets and public keys leave it.

import { createPrivateKey, createPublicKey, constants, diffieHellman, generateKeyPairSync, privateDecrypt, type KeyObject } from "node:crypto";
import type { CardRuntime } from "../runtime.ts";
import type { KeyAlg } from "../state.ts";
import { CardError, SW } from "../../protocol/sw.ts";
import { concat, tlv } from "../../protocol/tlv.ts";
import { bytesToBigInt, curveBytes, signDigest, type EcCurve } from "./ecdsa.ts";

const RSA_BITS: Partial<Record<KeyAlg, number>> = { RSA2048: 2048, RSA3072: 3072 };
const EC_NAMED: Partial<Record<KeyAlg, { openssl: string; jwk: string }>> = {
  P256: { openssl: "prime256v1", jwk: "P-256" },
  P384: { openssl: "secp384r1", jwk: "P-384" },
};

export const isRsa = (alg: KeyAlg): boolean => alg === "RSA2048" || alg === "RSA3072";

/** A key parsed for use, as it lives in card RAM. */
export interface LoadedKey {
  alg: KeyAlg;
  /** The stored PKCS#8 (hex) it was parsed from: the cache entry is valid while the state still holds it. */
  source: string;
  key: KeyObject;
  /** EC private scalar, for the digest signature (ecdsa.ts). */
  d?: bigint;
}

/**
 * Parses a PKCS#8 private key and checks it is a key of `alg` (RSA modulus size, or named curve).
 * Throws 6A80 for anything else, without saying what the key was.
 */
export function parsePrivateKey(alg: KeyAlg, der: Uint8Array): KeyObject {
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: Buffer.from(der), format: "der", type: "pkcs8" });
  } catch {
    throw new CardError(SW.WRONG_DATA, "not a PKCS#8 private key");
  }
  if (!keyMatches(key, alg)) throw new CardError(SW.WRONG_DATA, `key is not ${alg}`);
  return key;
}

function keyMatches(key: KeyObject, alg: KeyAlg): boolean {
  const details = key.asymmetricKeyDetails ?? {};
  const bits = RSA_BITS[alg];
  if (bits) return key.asymmetricKeyType === "rsa" && details.modulusLength === bits;
  return key.asymmetricKeyType === "ec" && details.namedCurve === EC_NAMED[alg]?.openssl;
}

/** Canonical PKCS#8 DER of a private key, as the card stores it. */
export function pkcs8Of(key: KeyObject): Buffer {
  return key.export({ format: "der", type: "pkcs8" });
}

/** GENERATE ASYMMETRIC KEY PAIR inside the card (seed 001 emb. 4: the private key is born in the card). */
export function generateKey(alg: KeyAlg): KeyObject {
  const bits = RSA_BITS[alg];
  if (bits) return generateKeyPairSync("rsa", { modulusLength: bits, publicExponent: 0x10001 }).privateKey;
  return generateKeyPairSync("ec", { namedCurve: EC_NAMED[alg]!.openssl }).privateKey;
}

/**
 * Public key data object (SP 800-73-4 Part 2 §3.3.2, Table 25): 7F49 { 81 modulus, 82 exponent } for RSA,
 * 7F49 { 86 uncompressed point 04 ‖ x ‖ y } for ECC.
 */
export function publicKeyTemplate(alg: KeyAlg, key: KeyObject): Uint8Array {
  const jwk = createPublicKey(key).export({ format: "jwk" });
  const b = (s: string | undefined): Buffer => Buffer.from(s ?? "", "base64url");
  if (isRsa(alg)) return tlv(0x7f49, tlv(0x81, b(jwk.n)), tlv(0x82, b(jwk.e)));
  const len = curveBytes(alg as EcCurve);
  const pad = (v: Buffer): Buffer => Buffer.concat([Buffer.alloc(len - v.length), v]);
  return tlv(0x7f49, tlv(0x86, concat(Uint8Array.of(0x04), pad(b(jwk.x)), pad(b(jwk.y)))));
}

const CACHE = "piv.keys";

/**
 * The key in slot `ref` (hex), parsed. 6A88 when the slot is empty. The RAM cache is checked against the
 * stored PKCS#8 on every use, so a key replaced, deleted or zeroized is never used from a stale cache.
 */
export function loadKey(card: CardRuntime, ref: string): LoadedKey {
  const stored = card.state.keys[ref];
  if (!stored) throw new CardError(SW.REFERENCE_NOT_FOUND, "no key in that slot");
  let cache = card.ram.get(CACHE) as Map<string, LoadedKey> | undefined;
  if (!cache) card.ram.set(CACHE, (cache = new Map()));
  const hit = cache.get(ref);
  if (hit && hit.source === stored.pkcs8 && hit.alg === stored.alg) return hit;
  const der = Buffer.from(stored.pkcs8, "hex");
  const key = parsePrivateKey(stored.alg, der);
  der.fill(0);
  const loaded: LoadedKey = { alg: stored.alg, source: stored.pkcs8, key };
  if (!isRsa(stored.alg)) {
    const d = Buffer.from(key.export({ format: "jwk" }).d ?? "", "base64url");
    loaded.d = bytesToBigInt(d);
    d.fill(0);
  }
  cache.set(ref, loaded);
  return loaded;
}

/** Drops every parsed key from card RAM (after a delete, so no copy outlives the stored key). */
export function forgetKeys(card: CardRuntime): void {
  card.ram.delete(CACHE);
}

/**
 * RSA private-key operation on a block the host already padded (PKCS#1 v1.5 or PSS for a signature, or a
 * ciphertext to decrypt): m^d mod n with OpenSSL's blinding. The block must be exactly the modulus length and
 * smaller than the modulus; otherwise 6A80.
 */
export function rsaPrivate(k: LoadedKey, block: Uint8Array): Uint8Array {
  const len = RSA_BITS[k.alg]! / 8;
  if (block.length !== len) throw new CardError(SW.WRONG_DATA, `RSA block must be ${len} bytes`);
  try {
    return new Uint8Array(privateDecrypt({ key: k.key, padding: constants.RSA_NO_PADDING }, block));
  } catch {
    throw new CardError(SW.WRONG_DATA, "RSA block out of range");
  }
}

/** ECDSA over a digest the host computed (truncated per FIPS 186-5 when longer than the field); DER signature. */
export function ecdsaSign(k: LoadedKey, digest: Uint8Array): Uint8Array {
  if (digest.length === 0 || digest.length > 64) throw new CardError(SW.WRONG_DATA, "digest must be 1 to 64 bytes");
  return signDigest(k.alg as EcCurve, k.d!, digest);
}

/**
 * ECDH (SP 800-56A C(0e, 1s) as PIV uses it, SP 800-73-4 Part 2 §3.2.4 "key establishment"): the x-coordinate
 * of d·Q for the peer's uncompressed point Q. A point of the wrong length or off the curve is refused with 6A80.
 */
export function ecdhSecret(k: LoadedKey, point: Uint8Array): Uint8Array {
  const len = curveBytes(k.alg as EcCurve);
  if (point.length !== 1 + 2 * len || point[0] !== 0x04) throw new CardError(SW.WRONG_DATA, "peer point must be uncompressed");
  let peer: KeyObject;
  try {
    const x = Buffer.from(point.subarray(1, 1 + len)).toString("base64url");
    const y = Buffer.from(point.subarray(1 + len)).toString("base64url");
    peer = createPublicKey({ key: { kty: "EC", crv: EC_NAMED[k.alg]!.jwk, x, y }, format: "jwk" });
    return new Uint8Array(diffieHellman({ privateKey: k.key, publicKey: peer }));
  } catch {
    throw new CardError(SW.WRONG_DATA, "peer point is not on the curve");
  }
}
