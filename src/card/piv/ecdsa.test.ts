import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, generateKeyPairSync, randomBytes, verify } from "node:crypto";
import { bytesToBigInt, invMod, signDigest, type EcCurve } from "./ecdsa.ts";

const N256 = 0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551n;
const N384 = 0xffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973n;

/** Reference inverse: a^(n-2) mod n (Fermat), slow but obviously right. */
function fermat(a: bigint, n: bigint): bigint {
  let r = 1n,
    b = a % n,
    e = n - 2n;
  while (e > 0n) {
    if (e & 1n) r = (r * b) % n;
    b = (b * b) % n;
    e >>= 1n;
  }
  return r;
}

test("invMod agrees with Fermat inversion on random and edge values", () => {
  for (const n of [N256, N384]) {
    const values = [1n, 2n, n - 1n, n - 2n, (n - 1n) / 2n, 1n << 200n, 0xffffffffffffn];
    for (let i = 0; i < 300; i++) values.push((bytesToBigInt(randomBytes(64)) % (n - 1n)) + 1n);
    for (const a of values) {
      const inv = invMod(a, n);
      assert.equal(inv, fermat(a, n), `inverse of ${a.toString(16)}`);
      assert.equal((inv * a) % n, 1n);
    }
  }
  assert.throws(() => invMod(0n, N256), RangeError);
  assert.throws(() => invMod(N256, N256), RangeError);
});

const CASES: { curve: EcCurve; namedCurve: string }[] = [
  { curve: "P256", namedCurve: "P-256" },
  { curve: "P384", namedCurve: "P-384" },
];

for (const { curve, namedCurve } of CASES) {
  test(`signDigest on ${curve} verifies with Node for hashes shorter, equal and longer than the field`, () => {
    const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve });
    const d = bytesToBigInt(Buffer.from(privateKey.export({ format: "jwk" }).d!, "base64url"));
    for (const hash of ["sha1", "sha256", "sha384", "sha512"]) {
      for (let i = 0; i < 10; i++) {
        const msg = randomBytes(1 + i * 7);
        const sig = signDigest(curve, d, createHash(hash).update(msg).digest());
        assert.ok(verify(hash, msg, publicKey, sig), `${hash} #${i}`);
        assert.ok(!verify(hash, Buffer.concat([msg, Buffer.of(0)]), publicKey, sig), "a signature must not verify for another message");
      }
    }
  });

  test(`signDigest on ${curve} never repeats a nonce`, () => {
    const { privateKey } = generateKeyPairSync("ec", { namedCurve });
    const d = bytesToBigInt(Buffer.from(privateKey.export({ format: "jwk" }).d!, "base64url"));
    const digest = createHash("sha256").update("same message").digest();
    const rs = new Set<string>();
    for (let i = 0; i < 500; i++) {
      const sig = Buffer.from(signDigest(curve, d, digest));
      // SEQUENCE { INTEGER r, INTEGER s }: r starts after 30 len (1 or 2 bytes) and 02 len
      const off = sig[1] & 0x80 ? 3 : 2;
      const rLen = sig[off + 1];
      rs.add(sig.subarray(off + 2, off + 2 + rLen).toString("hex"));
    }
    assert.equal(rs.size, 500);
  });
}

test("signDigest refuses an empty digest", () => {
  assert.throws(() => signDigest("P256", 5n, new Uint8Array(0)), RangeError);
});
