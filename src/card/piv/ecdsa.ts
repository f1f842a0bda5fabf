// ECDSA signature of a precomputed digest (FIPS 186-5 §6.4.1, SEC 1 v2 §4.1.3) for P-256 and P-384.
//
// Why this exists: PIV GENERAL AUTHENTICATE hands the card the hash, never the message, and Node 20's crypto
// has no "sign this digest" entry point (crypto.sign(null, ...) on an EC key hashes with SHA-256 first).
// @noble/curves can sign a digest but runs at ~5% of Node's native rate, far below what the card must reach.
// So the expensive step — the scalar multiplication R = k·G — runs natively in OpenSSL through
// ECDH.setPrivateKey (constant-time fixed-base multiplication), and only the cheap modular arithmetic
// s = k⁻¹(e + r·d) mod n is done here with BigInt.
//
// The one modular inversion per signature is amortised over a batch of nonces (Montgomery's trick), which
// brings the rate above Node's own crypto.sign (see sign-rate.bench.ts).
//
// Side channels: BigInt arithmetic is not constant-time. No nonce is ever inverted on its own: the batch
// inversion works on (Πk)·b for a fresh random blinding factor b, so its timing depends only on a uniformly
// random value; the remaining products have operand sizes that are fixed or public (r), up to a 2^-64 chance
// of a short k⁻¹. This module owns no key: callers pass d and must not log it.

import { createECDH, randomBytes, type ECDH } from "node:crypto";

export type EcCurve = "P256" | "P384";

interface CurveParams {
  /** OpenSSL curve name. */
  name: string;
  /** Group order n. */
  n: bigint;
  /** Byte length of n (and of field elements). */
  bytes: number;
}

const CURVES: Record<EcCurve, CurveParams> = {
  P256: { name: "prime256v1", n: 0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551n, bytes: 32 },
  P384: {
    name: "secp384r1",
    n: 0xffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973n,
    bytes: 48,
  },
};

// One ECDH context per curve, used only for the synchronous k·G computation (no await in between).
const multipliers = new Map<EcCurve, ECDH>();
function multiplier(curve: EcCurve): ECDH {
  let m = multipliers.get(curve);
  if (!m) multipliers.set(curve, (m = createECDH(CURVES[curve].name)));
  return m;
}

export function curveBytes(curve: EcCurve): number {
  return CURVES[curve].bytes;
}

/** Big-endian bytes to integer. */
export function bytesToBigInt(b: Uint8Array): bigint {
  return b.length === 0 ? 0n : BigInt("0x" + Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("hex"));
}

/** Integer to exactly `len` big-endian bytes. */
export function bigIntToBytes(v: bigint, len: number): Buffer {
  return Buffer.from(v.toString(16).padStart(len * 2, "0"), "hex");
}

/**
 * Modular inverse a⁻¹ mod m (m odd prime, 0 < a < m) by Lehmer's extended Euclid (Knuth TAOCP vol. 2, §4.5.2,
 * Algorithm L): quotients are found on ~48-bit leading digits in doubles, and the big numbers are updated once
 * per batch of quotients, which makes it several times faster than the plain BigInt extended Euclid.
 */
export function invMod(a: bigint, m: bigint): bigint {
  let x = m;
  let y = a % m;
  if (y < 0n) y += m;
  if (y === 0n) throw new RangeError("zero has no inverse");
  // Invariant: x ≡ ux·a, y ≡ uy·a (mod m).
  let ux = 0n;
  let uy = 1n;
  while (y !== 0n) {
    const hexLen = x.toString(16).length;
    const shift = hexLen > 12 ? BigInt(hexLen * 4 - 48) : 0n;
    let xh = Number(x >> shift);
    let yh = Number(y >> shift);
    let A = 1,
      B = 0,
      C = 0,
      D = 1;
    for (;;) {
      if (yh + C === 0 || yh + D === 0) break;
      const q = Math.floor((xh + A) / (yh + C));
      if (q !== Math.floor((xh + B) / (yh + D))) break;
      let t = A - q * C;
      A = C;
      C = t;
      t = B - q * D;
      B = D;
      D = t;
      t = xh - q * yh;
      xh = yh;
      yh = t;
    }
    if (B === 0) {
      const q = x / y;
      let t = x - q * y;
      x = y;
      y = t;
      t = ux - q * uy;
      ux = uy;
      uy = t;
    } else {
      const bA = BigInt(A),
        bB = BigInt(B),
        bC = BigInt(C),
        bD = BigInt(D);
      const nx = bA * x + bB * y;
      const ny = bC * x + bD * y;
      const nux = bA * ux + bB * uy;
      const nuy = bC * ux + bD * uy;
      x = nx;
      y = ny;
      ux = nux;
      uy = nuy;
    }
  }
  if (x !== 1n) throw new RangeError("not invertible");
  ux %= m;
  return ux < 0n ? ux + m : ux;
}

/** DER INTEGER of a non-negative value. */
function derInteger(v: bigint): Buffer {
  let hex = v.toString(16);
  if (hex.length % 2) hex = "0" + hex;
  if (parseInt(hex.slice(0, 2), 16) & 0x80) hex = "00" + hex;
  const body = Buffer.from(hex, "hex");
  return Buffer.concat([Buffer.from([0x02, body.length]), body]);
}

/** ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER } (RFC 3279 §2.2.3), as PIV returns it in tag 82. */
export function derSignature(r: bigint, s: bigint): Uint8Array {
  const body = Buffer.concat([derInteger(r), derInteger(s)]);
  const head = body.length < 0x80 ? Buffer.from([0x30, body.length]) : Buffer.from([0x30, 0x81, body.length]);
  return new Uint8Array(Buffer.concat([head, body]));
}

/** Nonces drawn per batch: one modular inversion serves the whole batch (Montgomery's trick). */
const BATCH = 32;

interface Nonce {
  /** k⁻¹ mod n. */
  kInv: bigint;
  /** r = x(k·G) mod n, never 0. */
  r: bigint;
}

// Precomputed nonces per curve, each used exactly once (popped). They are key-independent, like the
// nonce tables of many ECDSA implementations; they live only in process memory, as the cached keys do.
const pools = new Map<EcCurve, Nonce[]>();

/**
 * Draws BATCH nonces: k and R = k·G natively (OpenSSL draws k uniformly from [1, n−1] with its DRBG and
 * multiplies in constant time), then all k⁻¹ with one blinded inversion: with P = Πkᵢ and a random b,
 * P⁻¹ = b·(P·b)⁻¹, and each kᵢ⁻¹ is peeled off with prefix products.
 */
function refill(curve: EcCurve): Nonce[] {
  const { n, bytes } = CURVES[curve];
  const ecdh = multiplier(curve);
  const ks: bigint[] = [];
  const rs: bigint[] = [];
  while (ks.length < BATCH) {
    const R = ecdh.generateKeys(); // 04 ‖ x ‖ y
    const kBuf = ecdh.getPrivateKey();
    const k = bytesToBigInt(kBuf);
    kBuf.fill(0);
    const r = bytesToBigInt(R.subarray(1, 1 + bytes)) % n;
    if (r === 0n) continue; // probability ~2^-256
    ks.push(k);
    rs.push(r);
  }
  const prefix: bigint[] = new Array<bigint>(BATCH);
  prefix[0] = ks[0];
  for (let i = 1; i < BATCH; i++) prefix[i] = (prefix[i - 1] * ks[i]) % n;
  const rnd = randomBytes(bytes);
  const b = (bytesToBigInt(rnd) % (n - 1n)) + 1n;
  rnd.fill(0);
  let inv = (invMod((prefix[BATCH - 1] * b) % n, n) * b) % n; // (k₀…k_{B−1})⁻¹
  const out: Nonce[] = new Array<Nonce>(BATCH);
  for (let i = BATCH - 1; i > 0; i--) {
    out[i] = { kInv: (inv * prefix[i - 1]) % n, r: rs[i] };
    inv = (inv * ks[i]) % n;
  }
  out[0] = { kInv: inv, r: rs[0] };
  return out;
}

function nextNonce(curve: EcCurve): Nonce {
  let pool = pools.get(curve);
  if (!pool?.length) pools.set(curve, (pool = refill(curve)));
  return pool.pop()!;
}

/**
 * Signs `digest` (a hash computed by the host) with private scalar `d` on `curve`, returning the DER signature.
 * The digest is converted per FIPS 186-5 §6.4.1 step 4 (bits2int): its leftmost min(bitlen(n), 8·len) bits, so
 * a longer hash is truncated and a shorter one used as is.
 */
export function signDigest(curve: EcCurve, d: bigint, digest: Uint8Array): Uint8Array {
  const { n, bytes } = CURVES[curve];
  if (digest.length === 0) throw new RangeError("empty digest");
  const e = bytesToBigInt(digest.length > bytes ? digest.subarray(0, bytes) : digest) % n;
  for (;;) {
    const { kInv, r } = nextNonce(curve);
    const s = (kInv * ((e + ((r * d) % n)) % n)) % n;
    if (s === 0n) continue; // probability ~2^-256: draw another nonce
    return derSignature(r, s);
  }
}
