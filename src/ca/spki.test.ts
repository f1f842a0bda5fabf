// The key gate of src/ca/spki.ts: one accepted encoding per key (strict DER, node:crypto's re-encoding), one identity
// per key (publicKeySha256 over any encoding), and the key's values (RSA per BR §6.1.6, EC points on the curve).
// Keys are pre-generated (testing.ts keyPair caches one per algorithm and label): no RSA key generation here.

import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, createPublicKey, generateKeyPairSync } from "node:crypto";
import * as der from "./der.ts";
import { canonicalSpki, integerRoot, InvalidPublicKeyError, isPerfectPower, keyPolicy, parseSubjectPublicKeyInfo, publicKeySha256, RSA_MAX_EXPONENT, SMALL_PRIMES, smallPrimeFactor } from "./spki.ts";
import { ecPoint, ecSpki, intContent, keyPair, rsaParts, rsaSpki, spkiOf } from "../../test/support/ca-testing.ts";

const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
const big = (b: Uint8Array) => BigInt("0x" + Buffer.from(b).toString("hex"));
const bytes = (v: bigint, len = 0): Uint8Array => {
  const h = v.toString(16);
  return new Uint8Array(
    Buffer.from((h.length % 2 ? "0" : "") + h, "hex")
      .toString("hex")
      .padStart(len * 2, "0")
      .match(/../g)!
      .map((x) => parseInt(x, 16)),
  );
};
const refused = (check: string, detail?: RegExp) => (e: unknown) => {
  assert.ok(e instanceof InvalidPublicKeyError, `expected InvalidPublicKeyError, got ${String(e)}`);
  assert.equal(e.check, check, e.message);
  if (detail) assert.match(e.message, detail);
  return true;
};

const rsa = keyPair("RSA2048", "subject").publicKey;
const { n, e } = rsaParts(rsa);
const P256_P = 2n ** 256n - 2n ** 224n + 2n ** 192n + 2n ** 96n - 1n;

test("keys of every accepted type parse; the SPKI is node:crypto's encoding and its hash the identity", () => {
  for (const k of [keyPair("P256", "subject").publicKey, keyPair("P384", "subject").publicKey, rsa, keyPair("RSA3072", "subject").publicKey]) {
    const spki = spkiOf(k);
    const p = parseSubjectPublicKeyInfo(spki);
    assert.deepEqual(p.spki, spki);
    assert.equal(p.sha256, sha256(spki));
    assert.equal(p.sha256, publicKeySha256(spki));
    assert.ok(p.key.equals(k));
  }
  assert.equal(parseSubjectPublicKeyInfo(rsaSpki(intContent(n), intContent(e))).type, "RSA2048");
});

test("strict DER: every other encoding of the same key is refused as public-key-encoding, yet has the same identity", () => {
  const canonical = spkiOf(rsa);
  const longForm = (tlv: Uint8Array) => {
    // a short length (< 128) rewritten as 81 xx, or a long one given an extra leading zero octet
    const l = tlv[1];
    return l & 0x80 ? der.concat([Uint8Array.of(tlv[0], l + 1, 0), tlv.subarray(2)]) : der.concat([Uint8Array.of(tlv[0], 0x81, l), tlv.subarray(2)]);
  };
  const nInt = der.tlv(der.TAG.INTEGER, intContent(n));
  const eInt = der.tlv(der.TAG.INTEGER, intContent(e));
  const wrap = (rsaPublicKey: Uint8Array) => der.sequence(der.sequence(der.oid("1.2.840.113549.1.1.1"), Uint8Array.of(5, 0)), der.bitString(rsaPublicKey));
  const variants: [string, Uint8Array][] = [
    ["modulus 00 00‖n", rsaSpki(intContent(n, 1), intContent(e))],
    ["modulus with three extra zero octets", rsaSpki(intContent(n, 3), intContent(e))],
    ["exponent 00 01 00 01", rsaSpki(intContent(n), intContent(e, 1))],
    ["both padded", rsaSpki(intContent(n, 2), intContent(e, 2))],
    ["long-form length of the exponent", wrap(der.sequence(nInt, longForm(eInt)))],
    ["long-form length of the modulus", wrap(der.sequence(longForm(nInt), eInt))],
    ["long-form length of RSAPublicKey", wrap(longForm(der.sequence(nInt, eInt)))],
    ["long-form length of the whole SPKI", longForm(canonical)],
  ];
  for (const [what, v] of variants) {
    assert.notDeepEqual(v, canonical, what);
    assert.throws(() => parseSubjectPublicKeyInfo(v), refused("public-key-encoding"), what);
    assert.equal(publicKeySha256(v), sha256(canonical), `${what}: node:crypto reads it as the same key, so the identity is the same`);
  }
  // the same for an EC key: its only INTEGER-free encodings differ in lengths
  const ec = spkiOf(keyPair("P256", "subject").publicKey);
  assert.throws(() => parseSubjectPublicKeyInfo(longForm(ec)), refused("public-key-encoding"));
  assert.equal(publicKeySha256(longForm(ec)), sha256(ec));
  // parameters: absent instead of NULL is another writing of the same RSA key
  const noNull = der.sequence(der.sequence(der.oid("1.2.840.113549.1.1.1")), der.bitString(der.sequence(nInt, eInt)));
  assert.throws(() => parseSubjectPublicKeyInfo(noNull), refused("public-key-encoding", /NULL/));
  // indefinite lengths, trailing octets
  assert.throws(() => parseSubjectPublicKeyInfo(der.concat([Uint8Array.of(0x30, 0x80), canonical.subarray(4), Uint8Array.of(0, 0)])), refused("public-key-encoding"));
  assert.throws(() => parseSubjectPublicKeyInfo(der.concat([canonical, Uint8Array.of(0)])), refused("public-key-encoding"));
});

test("RSA exponents by value: odd and 2^16+1 ≤ e ≤ the policy's bound (at most 2^256−1)", () => {
  const withE = (ev: bigint) => rsaSpki(intContent(n), intContent(bytes(ev)));
  for (const bad of [1n, 3n, 17n, 65535n, 65538n, 2n ** 256n + 1n, 2n ** 300n + 1n]) {
    assert.throws(() => parseSubjectPublicKeyInfo(withE(bad)), refused("public-key", /exponent/), `e = ${bad}`);
  }
  // e = 1 written 00 01 no longer passes as "at least 3": it is not DER, and its value is refused too
  assert.throws(() => parseSubjectPublicKeyInfo(rsaSpki(intContent(n), Uint8Array.of(0, 1))), refused("public-key-encoding"));
  assert.throws(() => parseSubjectPublicKeyInfo(rsaSpki(intContent(n), Uint8Array.of(0xff, 0x81))), refused("public-key-encoding"));
  assert.throws(() => parseSubjectPublicKeyInfo(rsaSpki(intContent(n), Uint8Array.of(0x81))), refused("public-key", /negative/));
  for (const ok of [65537n, 2n ** 32n + 15n, RSA_MAX_EXPONENT]) assert.equal(parseSubjectPublicKeyInfo(withE(ok)).type, "RSA2048", `e = ${ok}`);
  // an operator may bound it lower (e.g. to 65537, as PIV asks); never outside the BR range
  const strict = keyPolicy({ rsaMaxExponent: 65537n });
  assert.equal(parseSubjectPublicKeyInfo(withE(65537n), strict).type, "RSA2048");
  assert.throws(() => parseSubjectPublicKeyInfo(withE(65539n), strict), refused("public-key", /65537/));
  assert.throws(() => keyPolicy({ rsaMaxExponent: 3n }), RangeError);
  assert.throws(() => keyPolicy({ rsaMaxExponent: 2n ** 256n }), RangeError);
});

test("RSA moduli by value: size, odd, no prime factor below 752, not a perfect power", () => {
  const withN = (nv: bigint) => rsaSpki(intContent(bytes(nv)), intContent(e));
  const nv = big(n);
  assert.throws(() => parseSubjectPublicKeyInfo(withN(nv - 1n)), refused("public-key", /even/));
  assert.throws(() => parseSubjectPublicKeyInfo(withN(nv >> 1n)), refused("public-key", /2047 bits/));
  // divisible by 3, and by 751 (the largest prime checked), odd either way
  let by3 = nv - (nv % 3n);
  if (!(by3 & 1n)) by3 -= 3n;
  assert.throws(() => parseSubjectPublicKeyInfo(withN(by3)), refused("public-key", /small prime factor 3\b/));
  let by751 = nv - (nv % 751n);
  if (!(by751 & 1n)) by751 -= 751n;
  assert.throws(() => parseSubjectPublicKeyInfo(withN(by751)), refused("public-key", /small prime factor/));
  // p² of a 1024-bit prime (the key's own p: its top two bits are set, so p² has 2048 bits)
  const p = big(new Uint8Array(Buffer.from(keyPair("RSA2048", "subject").privateKey.export({ format: "jwk" }).p!, "base64url")));
  assert.throws(() => parseSubjectPublicKeyInfo(withN(p * p)), refused("public-key", /perfect power/));
});

test("helpers: small prime factors, integer roots and perfect powers", () => {
  assert.equal(SMALL_PRIMES.length, 133);
  assert.deepEqual([SMALL_PRIMES[0], SMALL_PRIMES[SMALL_PRIMES.length - 1]], [2, 751]);
  assert.equal(smallPrimeFactor(757n * 761n), 0);
  assert.equal(smallPrimeFactor(751n * 757n), 751);
  const m = 0xd5a3_91c7_0f33_2b61n;
  for (let k = 2; k <= 40; k++) {
    assert.equal(integerRoot(m ** BigInt(k), k), m, `k = ${k}`);
    assert.equal(integerRoot(m ** BigInt(k) - 1n, k), m - 1n, `k = ${k}, one below`);
    assert.equal(integerRoot(m ** BigInt(k) + 1n, k), m, `k = ${k}, one above`);
  }
  for (const k of [2, 3, 5, 7, 11, 13, 101]) assert.ok(isPerfectPower(1009n ** BigInt(k)), `1009^${k}`);
  assert.ok(isPerfectPower(2n ** 2048n), "2^2048 (k = 2048 reduces to k = 2)");
  assert.ok(isPerfectPower((2n ** 127n - 1n) ** 6n), "a sixth power is a square");
  assert.ok(!isPerfectPower(1009n ** 5n + 2n));
  assert.ok(!isPerfectPower(big(n), 757), "a real modulus");
});

test("EC points by value: off the curve, (0,0) and coordinates ≥ p are refused; compressed and hybrid stay refused", () => {
  const kp = keyPair("P256", "subject").publicKey;
  const point = ecPoint(kp);
  const off = point.slice();
  off[64] ^= 1;
  assert.throws(() => parseSubjectPublicKeyInfo(ecSpki("P256", off)), refused("public-key", /not on the curve/));
  assert.throws(() => parseSubjectPublicKeyInfo(ecSpki("P256", der.concat([Uint8Array.of(4), new Uint8Array(64)]))), refused("public-key", /\(0,0\)/));
  const p384off = ecPoint(keyPair("P384", "subject").publicKey);
  p384off[1] ^= 0x80;
  assert.throws(() => parseSubjectPublicKeyInfo(ecSpki("P384", p384off)), refused("public-key", /not on the curve/));
  // a point with a small x can be written with x + p, which still fits in 32 octets: the same point, another encoding
  const b = 0x5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604bn;
  const modpow = (a: bigint, k: bigint, m: bigint) => {
    let r = 1n;
    for (a %= m; k > 0n; k >>= 1n, a = (a * a) % m) if (k & 1n) r = (r * a) % m;
    return r;
  };
  let x = 1n,
    y = 0n;
  for (; ; x++) {
    const rhs = (((x * x * x - 3n * x + b) % P256_P) + P256_P) % P256_P;
    y = modpow(rhs, (P256_P + 1n) / 4n, P256_P);
    if ((y * y) % P256_P === rhs) break;
  }
  const small = der.concat([Uint8Array.of(4), bytes(x, 32), bytes(y, 32)]);
  assert.equal(parseSubjectPublicKeyInfo(ecSpki("P256", small)).type, "P256", "the point itself is a valid key");
  assert.throws(() => parseSubjectPublicKeyInfo(ecSpki("P256", der.concat([Uint8Array.of(4), bytes(x + P256_P, 32), bytes(y, 32)]))), refused("public-key", /not below/));
  // what held before: compressed, hybrid, explicit parameters, other curves
  const compressed = der.concat([Uint8Array.of(2 + Number(point[64] & 1)), point.subarray(1, 33)]);
  assert.throws(() => parseSubjectPublicKeyInfo(ecSpki("P256", compressed)), refused("public-key", /uncompressed/));
  const hybrid = point.slice();
  hybrid[0] = 6 + (point[64] & 1);
  assert.throws(() => parseSubjectPublicKeyInfo(ecSpki("P256", hybrid)), refused("public-key", /uncompressed/));
  const explicitParams = der.sequence(
    der.sequence(der.oid("1.2.840.10045.2.1"), der.sequence(der.smallInteger(1), der.sequence(der.oid("1.2.840.10045.1.1"), der.unsignedInteger(bytes(P256_P))))),
    der.bitString(point),
  );
  assert.throws(() => parseSubjectPublicKeyInfo(explicitParams), refused("public-key", /P-256 or P-384/));
  assert.throws(() => parseSubjectPublicKeyInfo(spkiOf(generateKeyPairSync("ec", { namedCurve: "P-521" }).publicKey)), refused("public-key", /P-256 or P-384/));
});

test("node:crypto itself refuses points off the curve and (0,0): the re-encoding every key goes through is a second check", () => {
  const point = ecPoint(keyPair("P256", "subject").publicKey);
  const off = point.slice();
  off[64] ^= 1;
  const jwk = (pt: Uint8Array) => ({ kty: "EC", crv: "P-256", x: Buffer.from(pt.subarray(1, 33)).toString("base64url"), y: Buffer.from(pt.subarray(33)).toString("base64url") });
  assert.ok(createPublicKey({ key: jwk(point), format: "jwk" }));
  for (const bad of [off, new Uint8Array(65)]) {
    assert.throws(() => createPublicKey({ key: jwk(bad), format: "jwk" }), "the import parse() uses");
    assert.throws(() => canonicalSpki(ecSpki("P256", der.concat([Uint8Array.of(4), bad.subarray(1)]))), "the DER import publicKeySha256 uses");
  }
});

test("EC keys: the accepted encoding is node:crypto's SPKI export for any point (coordinates with leading zero octets included), the KeyObject the same key", () => {
  for (const namedCurve of ["prime256v1", "secp384r1"]) {
    for (let i = 0; i < 300; i++) {
      const { publicKey } = generateKeyPairSync("ec", { namedCurve });
      const spki = new Uint8Array(publicKey.export({ type: "spki", format: "der" }));
      const p = parseSubjectPublicKeyInfo(spki);
      assert.deepEqual(p.spki, spki);
      if (i < 5) assert.ok(p.key.equals(publicKey));
    }
  }
});
