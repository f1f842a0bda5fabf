// SubjectPublicKeyInfo (RFC 5280 §4.1.2.7; RFC 3279 §2.3.1 RSA, RFC 5480 §2 EC) — the gate every key passes before
// the CA certifies it, and the key's identity.
//
// Keys arrive from whoever reaches the CA: a bare SPKI at /ca/certify (the issuing service, for keys in its own
// custody — see src/server/ca-routes.ts for who may send one), PKCS#10 requests from key generation devices and from
// anyone with openssl, and the CA's own key. None is assumed to be well formed; every key on every path is checked
// here by its values, not by how it is written:
//   encoding  strict DER (der.assertDer: definite minimal lengths, minimal INTEGERs, …) and the algorithm's exact
//             parameters; then node:crypto (OpenSSL) builds the key again from the values read and encodes it, and
//             the given bytes must equal that encoding — so a key has exactly one accepted encoding, and its
//             identity (`sha256`, for "never certified before") is the hash of it ("public-key-encoding");
//   EC        P-256 or P-384, an uncompressed point whose coordinates are below p, that is not (0,0) and that lies
//             on the curve (y² = x³ − 3x + b mod p; both curves have cofactor 1, so such a point is in the
//             prime-order group) — and OpenSSL refuses a point off the curve again when it reads it ("public-key");
//   RSA       a modulus of exactly 2048, 3072 or 4096 bits, odd, without prime factors below 752 and not a perfect
//             power; a public exponent that is odd and 2^16+1 ≤ e ≤ KeyPolicy.rsaMaxExponent (at most 2^256−1):
//             CA/Browser Forum Baseline Requirements §6.1.6, as Let's Encrypt's boulder (goodkey) checks them
//             ("public-key"). With e = 1 a PKCS#1 v1.5 "signature" is the padded digest itself and verifies under any
//             modulus: the exponent bound is what makes a CSR's self-signature a proof of possession.
// `publicKeySha256` gives the same identity for any encoding node:crypto reads (the key generation device's
// registry uses it, src/keygen/registry.ts).

import { createHash, createPublicKey, ECDH, type JsonWebKey, type KeyObject } from "node:crypto";
import { DomainError } from "../util/errors.ts";
import { toB64url as b64u } from "../util/bytes.ts";
import * as der from "./der.ts";

export type SubjectKeyType = "P256" | "P384" | "RSA2048" | "RSA3072" | "RSA4096";

export interface SubjectPublicKey {
  type: SubjectKeyType;
  /** True for EC keys (key management then means keyAgreement, not keyEncipherment). */
  ec: boolean;
  /** The DER SubjectPublicKeyInfo: node:crypto's canonical encoding, which the given bytes had to equal. */
  spki: Uint8Array;
  /** RFC 5280 §4.2.1.2 method (1): SHA-1 of the subjectPublicKey BIT STRING value. */
  keyIdentifier: Uint8Array;
  /** SHA-256 of the canonical SPKI, hex: the key's identity for the "never certified before" rule. */
  sha256: string;
  /** The key as node:crypto imported it (e.g. to verify a request's signature). */
  key: KeyObject;
}

/** What the CA accepts beyond the fixed rules above. */
export interface KeyPolicy {
  /** Largest RSA public exponent certified: RSA_MIN_EXPONENT … RSA_MAX_EXPONENT. Default RSA_MAX_EXPONENT. */
  rsaMaxExponent: bigint;
}

/** 2^16 + 1: the smallest RSA public exponent certified (BR §6.1.6). */
export const RSA_MIN_EXPONENT = 65537n;
/** 2^256 − 1: the largest RSA public exponent the Baseline Requirements allow (BR §6.1.6). */
export const RSA_MAX_EXPONENT = 2n ** 256n - 1n;
export const DEFAULT_KEY_POLICY: Readonly<KeyPolicy> = Object.freeze({ rsaMaxExponent: RSA_MAX_EXPONENT });

/** A complete KeyPolicy from options; throws RangeError when a bound is outside what the requirements allow. */
export function keyPolicy(o: Partial<KeyPolicy> = {}): KeyPolicy {
  const max = o.rsaMaxExponent ?? RSA_MAX_EXPONENT;
  if (typeof max !== "bigint" || max < RSA_MIN_EXPONENT || max > RSA_MAX_EXPONENT) throw new RangeError("rsaMaxExponent must be a bigint between 2^16+1 and 2^256-1");
  return { rsaMaxExponent: max };
}

const ID_EC_PUBLIC_KEY = der.oid("1.2.840.10045.2.1");
const RSA_ENCRYPTION = der.oid("1.2.840.113549.1.1.1");
const RSA_SIZES: Record<number, SubjectKeyType> = { 2048: "RSA2048", 3072: "RSA3072", 4096: "RSA4096" };

interface Curve {
  oid: Uint8Array;
  type: SubjectKeyType;
  /** OpenSSL's name of the curve. */
  openssl: string;
  /** DER of SubjectPublicKeyInfo up to the point: SEQUENCE { SEQUENCE { id-ecPublicKey, curve }, BIT STRING 00 … }. */
  spkiPrefix: Uint8Array;
  /** Field size in bytes. */
  size: number;
  p: bigint;
  b: bigint;
}
// FIPS 186-4 §D.1.2.3 and §D.1.2.4 (a = −3 on both).
const CURVES: readonly Curve[] = [
  {
    oid: der.oid("1.2.840.10045.3.1.7"),
    type: "P256",
    openssl: "prime256v1",
    spkiPrefix: Buffer.from("3059301306072a8648ce3d020106082a8648ce3d030107034200", "hex"),
    size: 32,
    p: 2n ** 256n - 2n ** 224n + 2n ** 192n + 2n ** 96n - 1n,
    b: 0x5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604bn,
  },
  {
    oid: der.oid("1.3.132.0.34"),
    type: "P384",
    openssl: "secp384r1",
    spkiPrefix: Buffer.from("3076301006072a8648ce3d020106052b81040022036200", "hex"),
    size: 48,
    p: 2n ** 384n - 2n ** 128n - 2n ** 96n + 2n ** 32n - 1n,
    b: 0xb3312fa7e23ee7e4988e056be3f82d19181d9c6efe8141120314088f5013875ac656398d8a2ed19d2a85c8edd3ec2aefn,
  },
];

/** The check a refusal names: the key's encoding, or the key itself. */
export type PublicKeyCheck = "public-key-encoding" | "public-key";

/** A public key the CA does not certify (a DomainError refused, naming the check). */
export class InvalidPublicKeyError extends DomainError {
  constructor(
    override readonly check: PublicKeyCheck,
    message: string,
  ) {
    super("refused", check, message);
    this.name = "InvalidPublicKeyError";
  }
}

const encoding = (message: string) => new InvalidPublicKeyError("public-key-encoding", message);
const value = (message: string) => new InvalidPublicKeyError("public-key", message);

/**
 * Parses and checks a DER SubjectPublicKeyInfo by the rules at the top of this file; throws InvalidPublicKeyError
 * naming the check and saying what was expected.
 */
export function parseSubjectPublicKeyInfo(spki: Uint8Array, policy: Readonly<KeyPolicy> = DEFAULT_KEY_POLICY): SubjectPublicKey {
  try {
    return parse(spki, policy);
  } catch (e) {
    if (e instanceof InvalidPublicKeyError) throw e;
    throw encoding(`public key is not a DER SubjectPublicKeyInfo: ${(e as Error).message}`);
  }
}

/** The key re-encoded by node:crypto (OpenSSL): its one canonical DER SPKI. Throws what node:crypto throws. */
export function canonicalSpki(spki: Uint8Array): Uint8Array {
  const key = createPublicKey({ key: Buffer.from(spki.buffer, spki.byteOffset, spki.byteLength), format: "der", type: "spki" });
  return new Uint8Array(key.export({ type: "spki", format: "der" }));
}

/** A key's identity, hex: SHA-256 of its canonical re-encoding, so every encoding of one key has the same one. */
export function publicKeySha256(spki: Uint8Array): string {
  return createHash("sha256").update(canonicalSpki(spki)).digest("hex");
}

function parse(spki: Uint8Array, policy: Readonly<KeyPolicy>): SubjectPublicKey {
  der.assertDer(spki, 8);
  const top = der.readOnly(spki, der.TAG.SEQUENCE, "SubjectPublicKeyInfo");
  const [algTlv, keyTlv, ...extra] = der.children(spki, top);
  if (!algTlv || !keyTlv || extra.length || algTlv.tag !== der.TAG.SEQUENCE || keyTlv.tag !== der.TAG.BIT_STRING) {
    throw encoding("SubjectPublicKeyInfo must be SEQUENCE { AlgorithmIdentifier, BIT STRING }");
  }
  const [algOid, params, ...more] = der.children(spki, algTlv);
  if (!algOid || algOid.tag !== der.TAG.OID || more.length) throw encoding("malformed AlgorithmIdentifier");
  const bits = der.bytesOf(spki, keyTlv);
  if (bits.length < 2 || bits[0] !== 0) throw encoding("subjectPublicKey must have no unused bits");
  const key = bits.subarray(1);
  const algEnc = der.encodingOf(spki, algOid);
  if (der.equalBytes(algEnc, ID_EC_PUBLIC_KEY)) {
    const curve = params && params.tag === der.TAG.OID ? CURVES.find((c) => der.equalBytes(c.oid, der.encodingOf(spki, params))) : undefined;
    if (!curve) throw value("EC key must name curve P-256 or P-384");
    if (key.length !== 1 + 2 * curve.size || key[0] !== 0x04) throw value(`${curve.type} key must be an uncompressed point of ${1 + 2 * curve.size} bytes`);
    checkPoint(curve, key);
    return ecKey(curve, key, spki);
  }
  if (!der.equalBytes(algEnc, RSA_ENCRYPTION)) throw value("public key algorithm must be id-ecPublicKey or rsaEncryption");
  if (!params || params.tag !== der.TAG.NULL) throw encoding("rsaEncryption parameters must be NULL (RFC 3279 §2.3.1)");
  const rsa = checkRsa(key, policy);
  const type = rsa.type;
  const jwk: JsonWebKey = { kty: "RSA", n: b64u(rsa.n), e: b64u(rsa.e) };
  // RSA: node:crypto (OpenSSL) builds the key again from the values read above and encodes it: that encoding is the
  // only one accepted, so one key has one identity. (From the values, not the DER: OpenSSL 3's DER decoder costs
  // several times the rest of issuing a certificate.) EC keys: ecKey.
  let keyObject: KeyObject;
  let canonical: Uint8Array;
  try {
    keyObject = createPublicKey({ key: jwk, format: "jwk" });
    canonical = new Uint8Array(keyObject.export({ type: "spki", format: "der" }));
  } catch (e) {
    throw value(`node:crypto refuses the ${type} key: ${(e as Error).message}`);
  }
  if (!der.equalBytes(canonical, spki)) throw encoding("the SubjectPublicKeyInfo is not the DER encoding of its key");
  return {
    type,
    ec: false,
    spki: canonical,
    keyIdentifier: new Uint8Array(createHash("sha1").update(key).digest()),
    sha256: createHash("sha256").update(canonical).digest("hex"),
    key: keyObject,
  };
}

/**
 * An EC key, checked by checkPoint: OpenSSL reads the point again (EC_POINT_oct2point refuses a point off the curve)
 * and the one accepted encoding is the fixed DER of {id-ecPublicKey, the curve} followed by the point — what
 * node:crypto's SPKI export writes, byte for byte (spki.test.ts). The KeyObject is made when it is first asked for
 * (verifying a request's signature): importing it costs OpenSSL 3 several times the rest of this check, and a bare
 * SPKI sent for certification never needs it.
 */
function ecKey(curve: Curve, point: Uint8Array, spki: Uint8Array): SubjectPublicKey {
  try {
    ECDH.convertKey(point, curve.openssl, undefined, undefined, "uncompressed");
  } catch (e) {
    throw value(`node:crypto refuses the ${curve.type} key: ${(e as Error).message}`);
  }
  const canonical = new Uint8Array(curve.spkiPrefix.length + point.length);
  canonical.set(curve.spkiPrefix);
  canonical.set(point, curve.spkiPrefix.length);
  if (!der.equalBytes(canonical, spki)) throw encoding("the SubjectPublicKeyInfo is not the DER encoding of its key");
  const jwk: JsonWebKey = { kty: "EC", crv: curve.type === "P256" ? "P-256" : "P-384", x: b64u(point.subarray(1, 1 + curve.size)), y: b64u(point.subarray(1 + curve.size)) };
  let keyObject: KeyObject | undefined;
  return {
    type: curve.type,
    ec: true,
    spki: canonical,
    keyIdentifier: new Uint8Array(createHash("sha1").update(point).digest()),
    sha256: createHash("sha256").update(canonical).digest("hex"),
    get key(): KeyObject {
      return (keyObject ??= createPublicKey({ key: jwk, format: "jwk" }));
    },
  };
}

const toBigInt = (b: Uint8Array): bigint => (b.length ? BigInt("0x" + der.toHex(b)) : 0n);

/** SP 800-56A §5.6.2.3.3 partial validation: coordinates in [0, p−1], not (0,0), on the curve. */
function checkPoint(curve: Curve, point: Uint8Array): void {
  const x = toBigInt(point.subarray(1, 1 + curve.size));
  const y = toBigInt(point.subarray(1 + curve.size));
  const { p, b } = curve;
  if (x === 0n && y === 0n) throw value(`${curve.type} key is the point (0,0), which is no point of the curve`);
  if (x >= p || y >= p) throw value(`${curve.type} key has a coordinate not below the field prime p`);
  if ((y * y - (x * x * x - 3n * x + b)) % p !== 0n) throw value(`${curve.type} key is a point that is not on the curve`);
}

/** The RSAPublicKey inside the BIT STRING, checked; returns the key type (by modulus size) and the magnitudes. */
function checkRsa(key: Uint8Array, policy: Readonly<KeyPolicy>): { type: SubjectKeyType; n: Uint8Array; e: Uint8Array } {
  try {
    der.assertDer(key, 2);
  } catch (e) {
    throw encoding(`RSAPublicKey is not DER: ${(e as Error).message}`);
  }
  const rsa = der.readOnly(key, der.TAG.SEQUENCE, "RSAPublicKey");
  const [nT, eT, ...rest] = der.children(key, rsa);
  if (!nT || !eT || rest.length || nT.tag !== der.TAG.INTEGER || eT.tag !== der.TAG.INTEGER) throw encoding("RSAPublicKey must be SEQUENCE { modulus INTEGER, publicExponent INTEGER }");
  let mod = der.integerContent(key, nT);
  let exp = der.integerContent(key, eT);
  if (mod[0] & 0x80) throw value("RSA modulus is negative");
  if (exp[0] & 0x80) throw value("RSA public exponent is negative");
  if (mod[0] === 0) mod = mod.subarray(1);
  if (exp[0] === 0) exp = exp.subarray(1);
  const bitLen = mod.length ? (mod.length - 1) * 8 + (32 - Math.clz32(mod[0])) : 0;
  const type = RSA_SIZES[bitLen];
  if (!type) throw value(`RSA modulus of ${bitLen} bits; expected 2048, 3072 or 4096`);
  const n = toBigInt(mod);
  // the exponent is bounded before it becomes a number: at most 2^256 − 1 is ever accepted
  const e = exp.length > 32 ? RSA_MAX_EXPONENT + 1n : toBigInt(exp);
  if (!(e & 1n) || e < RSA_MIN_EXPONENT || e > policy.rsaMaxExponent) {
    throw value(`RSA public exponent must be odd and between 2^16+1 and ${policy.rsaMaxExponent === RSA_MAX_EXPONENT ? "2^256-1" : policy.rsaMaxExponent.toString()}`);
  }
  if (!(n & 1n)) throw value("RSA modulus is even");
  const factor = smallPrimeFactor(n);
  if (factor) throw value(`RSA modulus has the small prime factor ${factor} (BR §6.1.6: no factors smaller than 752)`);
  if (isPerfectPower(n, 757)) throw value("RSA modulus is a perfect power (BR §6.1.6: not the power of a prime)");
  return { type, n: mod, e: exp };
}

/** The primes below 752 (BR §6.1.6; boulder's goodkey uses the same list). */
export const SMALL_PRIMES: readonly number[] = (() => {
  const out: number[] = [];
  for (let c = 2; c < 752; c++) if (out.every((q) => c % q !== 0)) out.push(c);
  return out;
})();
const SMALL_PRIMES_PRODUCT = SMALL_PRIMES.reduce((a, q) => a * BigInt(q), 1n);

/** The smallest prime below 752 that divides n, or 0. */
export function smallPrimeFactor(n: bigint): number {
  const r = n % SMALL_PRIMES_PRODUCT; // one long division; the rest is on a number of ~1,000 bits
  for (const q of SMALL_PRIMES) if (r % BigInt(q) === 0n) return q;
  return 0;
}

const bitLength = (n: bigint): number => n.toString(2).length;

/** ⌊n^(1/k)⌋ for n ≥ 1, k ≥ 2: Newton's method from an over-estimate taken from a floating-point logarithm. */
export function integerRoot(n: bigint, k: number, bits = bitLength(n)): bigint {
  const K = BigInt(k);
  const shift = Math.max(0, bits - 53);
  const e = (Math.log2(Number(n >> BigInt(shift))) + shift) / k + 1e-9; // log₂ of the root, rounded up a little
  let x = e < 50 ? BigInt(Math.ceil(2 ** e)) + 1n : (BigInt(Math.ceil(2 ** (e - Math.floor(e)) * 2 ** 50)) + 1n) << BigInt(Math.floor(e) - 50);
  while (x ** K < n) x <<= 1n; // never below the root, whatever the rounding did
  for (;;) {
    const y = ((K - 1n) * x + n / x ** (K - 1n)) / K;
    if (y >= x) return x;
    x = y;
  }
}

const isPrime = (k: number): boolean => {
  if (k < 2) return false;
  for (let q = 2; q * q <= k; q++) if (k % q === 0) return false;
  return true;
};

/**
 * True when n = m^k for integers m ≥ `minBase` and k ≥ 2. Only prime k need trying, and k ≤ log₂n / log₂minBase:
 * for a modulus without prime factors below 752 (checked first) every m is at least 757.
 */
export function isPerfectPower(n: bigint, minBase = 2): boolean {
  if (n < 4n || minBase < 2) return false;
  const bits = bitLength(n);
  const maxK = Math.floor(bits / Math.log2(minBase));
  for (let k = 2; k <= maxK; k++) {
    if (!isPrime(k)) continue;
    const r = integerRoot(n, k, bits);
    if (r ** BigInt(k) === n) return true;
  }
  return false;
}
