// Encodings shared by both custody implementations: ECDSA signatures (raw r||s as PKCS#11 returns them ->
// DER Ecdsa-Sig-Value, RFC 3279 §2.2.3), SubjectPublicKeyInfo from PKCS#11 public key attributes, and the PUT KEY
// data field (GP Card Spec §11.8.2.3, Amendment D §7.2).

import { createPublicKey } from "node:crypto";
import type { KeyPairAlg } from "./custody.ts";
import { CustodyError } from "./custody.ts";
import { toB64url as b64u } from "../util/bytes.ts";

export { toHex as hex } from "../util/bytes.ts";

function derLength(n: number): Uint8Array {
  if (n < 0x80) return Uint8Array.of(n);
  if (n < 0x100) return Uint8Array.of(0x81, n);
  return Uint8Array.of(0x82, n >> 8, n & 0xff);
}

function derInteger(unsigned: Uint8Array): Uint8Array {
  let i = 0;
  while (i < unsigned.length - 1 && unsigned[i] === 0) i++;
  const v = unsigned.subarray(i);
  const body = v[0] & 0x80 ? Buffer.concat([Uint8Array.of(0), v]) : Buffer.from(v);
  return Buffer.concat([Uint8Array.of(0x02), derLength(body.length), body]);
}

/** Raw r||s (each half the signature) -> DER SEQUENCE { INTEGER r, INTEGER s }. */
export function ecdsaRawToDer(raw: Uint8Array): Uint8Array {
  if (raw.length === 0 || raw.length % 2) throw new CustodyError("HSM_ERROR", "ECDSA signature of odd length");
  const h = raw.length / 2;
  const body = Buffer.concat([derInteger(raw.subarray(0, h)), derInteger(raw.subarray(h))]);
  return new Uint8Array(Buffer.concat([Uint8Array.of(0x30), derLength(body.length), body]));
}

export const EC_CURVES: Record<"P256" | "P384", { oid: string; jwk: string; size: number }> = {
  // DER of the namedCurve OIDs prime256v1 (1.2.840.10045.3.1.7) and secp384r1 (1.3.132.0.34)
  P256: { oid: "06082a8648ce3d030107", jwk: "P-256", size: 32 },
  P384: { oid: "06052b81040022", jwk: "P-384", size: 48 },
};

/** SPKI DER from CKA_EC_POINT (DER OCTET STRING of an uncompressed point, or the bare point). */
export function ecPointToSpki(alg: "P256" | "P384", ecPoint: Uint8Array): Uint8Array {
  const size = EC_CURVES[alg].size;
  let pt = ecPoint;
  if (pt.length !== 2 * size + 1 && pt[0] === 0x04) {
    // OCTET STRING wrapper: 04 len [81 len] point
    const off = pt[1] === 0x81 ? 3 : 2;
    pt = pt.subarray(off);
  }
  if (pt.length !== 2 * size + 1 || pt[0] !== 0x04) throw new CustodyError("HSM_ERROR", "EC public point is not an uncompressed point of the expected curve");
  const key = createPublicKey({ key: { kty: "EC", crv: EC_CURVES[alg].jwk, x: b64u(pt.subarray(1, 1 + size)), y: b64u(pt.subarray(1 + size)) }, format: "jwk" });
  return new Uint8Array(key.export({ format: "der", type: "spki" }));
}

/** SPKI DER from CKA_MODULUS and CKA_PUBLIC_EXPONENT. */
export function rsaToSpki(modulus: Uint8Array, exponent: Uint8Array): Uint8Array {
  const key = createPublicKey({ key: { kty: "RSA", n: b64u(modulus), e: b64u(exponent) }, format: "jwk" });
  return new Uint8Array(key.export({ format: "der", type: "spki" }));
}

export function rsaBits(alg: KeyPairAlg): number {
  return alg === "RSA3072" ? 3072 : 2048;
}

export function isEc(alg: KeyPairAlg): alg is "P256" | "P384" {
  return alg === "P256" || alg === "P384";
}

/** One key's PUT KEY entry, cryptogram computed inside custody. */
export interface PutKeyComponent {
  keyLength: number;
  cryptogram: Uint8Array;
  kcv: Uint8Array;
}

/** PUT KEY data field: new KVN || for ENC, MAC, DEK: 88 || Lc || key length || cryptogram || 03 || KCV. */
export function putKeyDataField(kvn: number, parts: [PutKeyComponent, PutKeyComponent, PutKeyComponent]): { data: Uint8Array; expectedResponse: Uint8Array } {
  const out: Uint8Array[] = [Uint8Array.of(kvn)];
  for (const p of parts) out.push(Uint8Array.of(0x88, p.cryptogram.length + 1, p.keyLength), p.cryptogram, Uint8Array.of(3), p.kcv);
  return {
    data: new Uint8Array(Buffer.concat(out)),
    expectedResponse: new Uint8Array(Buffer.concat([Uint8Array.of(kvn), ...parts.map((p) => p.kcv)])),
  };
}
