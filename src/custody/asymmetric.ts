// Public-value helpers for unwrapPrivateKey and decipher (seed 001 embodiment 3, FIG. 10 key check), shared by both
// custody implementations: parsing the caller's SubjectPublicKeyInfo (an expected public key, an ECDH peer),
// recovering an EC public point from its X coordinate (PKCS#11 keeps no public point on an unwrapped EC private
// key), and EME-OAEP decoding (RFC 8017 §7.1.2) for tokens whose CKM_RSA_PKCS_OAEP takes SHA-1 only (SoftHSM2
// 2.6): the RSA private operation stays in the token (CKM_RSA_X_509), only the encoded message is decoded here.
//
// No private key passes through this module.

import { createECDH, createHash, createPublicKey, ECDH, type KeyObject } from "node:crypto";
import { CustodyError } from "./custody.ts";
import { EC_CURVES } from "./encoding.ts";

/** Node/OpenSSL curve names of the EC key pair algorithms. */
export const NODE_CURVE = { P256: "prime256v1", P384: "secp384r1" } as const;

/** Parses an SPKI (DER) the caller gave; INVALID_ARGUMENT when it does not parse. */
export function parseSpki(spki: Uint8Array, what: string): KeyObject {
  if (!(spki instanceof Uint8Array) || spki.length === 0) throw new CustodyError("INVALID_ARGUMENT", `${what} must be a SubjectPublicKeyInfo (DER)`);
  try {
    return createPublicKey({ key: Buffer.from(spki), format: "der", type: "spki" });
  } catch {
    throw new CustodyError("INVALID_ARGUMENT", `${what} is not a SubjectPublicKeyInfo (DER) of a public key`);
  }
}

/** The SPKI as cardkms encodes it (named curve, uncompressed point), for comparing public keys by value. */
export function canonicalSpki(spki: Uint8Array, what: string): Buffer {
  return parseSpki(spki, what).export({ format: "der", type: "spki" });
}

/**
 * An ECDH peer key for a key pair on `alg`'s curve: the parsed key and its uncompressed point. INVALID_ARGUMENT for
 * an input that is not an EC SPKI on that curve (OpenSSL also refuses a point that is not on the curve).
 */
export function ecPeer(alg: "P256" | "P384", spki: Uint8Array): { key: KeyObject; point: Buffer } {
  const key = parseSpki(spki, "the ECDH peer key");
  if (key.asymmetricKeyType !== "ec") throw new CustodyError("INVALID_ARGUMENT", `the ECDH peer key is ${key.asymmetricKeyType}, not an EC key`);
  const curve = key.asymmetricKeyDetails?.namedCurve;
  if (curve !== NODE_CURVE[alg]) throw new CustodyError("INVALID_ARGUMENT", `the ECDH peer key is on ${curve ?? "an unnamed curve"}, not on ${alg}'s curve`);
  const jwk = key.export({ format: "jwk" });
  const size = EC_CURVES[alg].size;
  const x = Buffer.from(jwk.x as string, "base64url"),
    y = Buffer.from(jwk.y as string, "base64url");
  const point = Buffer.alloc(1 + 2 * size);
  point[0] = 4;
  x.copy(point, 1 + size - x.length);
  y.copy(point, 1 + 2 * size - y.length);
  return { key, point };
}

const generators = new Map<string, Buffer>();

/** The curve's base point G, uncompressed: the public key of the private scalar 1. */
export function ecGenerator(alg: "P256" | "P384"): Buffer {
  let g = generators.get(alg);
  if (!g) {
    const e = createECDH(NODE_CURVE[alg]);
    e.setPrivateKey(Buffer.of(1));
    g = e.getPublicKey();
    generators.set(alg, g);
  }
  return Buffer.from(g);
}

/** The two points with X coordinate `x` (±Y), uncompressed; throws when x is not on the curve. */
export function ecPointsWithX(alg: "P256" | "P384", x: Uint8Array): [Buffer, Buffer] {
  if (x.length !== EC_CURVES[alg].size) throw new CustodyError("HSM_ERROR", "an EC X coordinate of the wrong length");
  const one = (prefix: number): Buffer => {
    try {
      return ECDH.convertKey(Buffer.concat([Buffer.of(prefix), x]), NODE_CURVE[alg], undefined, undefined, "uncompressed") as Buffer;
    } catch {
      throw new CustodyError("HSM_ERROR", "the token returned an X coordinate that is not on the curve");
    }
  };
  return [one(2), one(3)];
}

const SHA256_LEN = 32;
const EMPTY_LABEL_HASH = createHash("sha256").digest();

function mgf1Sha256(seed: Uint8Array, len: number): Buffer {
  const out = Buffer.alloc(Math.ceil(len / SHA256_LEN) * SHA256_LEN);
  const c = Buffer.alloc(4);
  for (let i = 0; i * SHA256_LEN < len; i++) {
    c.writeUInt32BE(i);
    createHash("sha256")
      .update(seed)
      .update(c)
      .digest()
      .copy(out, i * SHA256_LEN);
  }
  return out.subarray(0, len);
}

/**
 * EME-OAEP decoding (RFC 8017 §7.1.2 step 3) with SHA-256, MGF1-SHA-256 and the empty label, of the encoded message
 * `em` (k bytes: the raw RSA decryption of the ciphertext, left-padded to the modulus length). Undefined for a
 * decoding error; the checks run over the whole message without early exit, and every failure is the same one.
 */
export function oaepSha256Decode(em: Uint8Array, k: number): Buffer | undefined {
  if (k < 2 * SHA256_LEN + 2 || em.length !== k) return undefined;
  const maskedSeed = em.subarray(1, 1 + SHA256_LEN);
  const maskedDb = em.subarray(1 + SHA256_LEN);
  const seedMask = mgf1Sha256(maskedDb, SHA256_LEN);
  for (let i = 0; i < SHA256_LEN; i++) seedMask[i] ^= maskedSeed[i];
  const db = mgf1Sha256(seedMask, k - SHA256_LEN - 1);
  for (let i = 0; i < db.length; i++) db[i] ^= maskedDb[i];
  seedMask.fill(0);
  let bad = em[0];
  for (let i = 0; i < SHA256_LEN; i++) bad |= db[i] ^ EMPTY_LABEL_HASH[i];
  // PS (zeros) then 01: the first non-zero byte after lHash' must be 01; its index is found without branching on data.
  let looking = 1;
  let index = 0;
  for (let i = SHA256_LEN; i < db.length; i++) {
    const isZero = ((db[i] - 1) >>> 31) & 1;
    const isOne = (((db[i] ^ 1) - 1) >>> 31) & 1;
    index |= -(looking & isOne) & i;
    bad |= looking & (isZero ^ 1) & (isOne ^ 1);
    looking &= isOne ^ 1;
  }
  bad |= looking;
  const out = bad === 0 ? Buffer.from(db.subarray(index + 1)) : undefined;
  db.fill(0);
  return out;
}
