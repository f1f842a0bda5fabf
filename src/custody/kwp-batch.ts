// AES key wrap with padding (RFC 5649, on the RFC 3394 wrapping function W) for many keys at once, for the
// bulk re-wrap of a card-key rotation (seed 000 embodiments 3 and 5: every Sk1[PRk] becomes Sk2[PRk]).
//
// Why not Node's "id-aes256-wrap-pad" cipher per key: creating an OpenSSL cipher context costs ~20 µs, so a
// re-wrap (unwrap + wrap) tops out near 12,000 keys/s. W is 6·n rounds of one AES block each, and round (j, i)
// of every message is independent of the other messages: so this runs the rounds in lock-step over the whole
// batch, one AES-ECB call per round for all messages together (one long-lived ECB context per key), with the
// 64-bit register bookkeeping done on 32-bit words. Byte-for-byte the same output as RFC 5649 (checked against
// Node's KWP in the custody contract).
//
// Plaintexts (the PKCS#8 keys) exist only in the work buffer, which is wiped before returning.

import { createCipheriv, createDecipheriv, type Cipher, type Decipher } from "node:crypto";
import { aesKeyUnwrapPad, aesKeyWrapPad } from "../protocol/derivation.ts";

const AIV_HI = 0xa65959a6;

/** Thrown for the index of a message whose RFC 5649 integrity check fails under the unwrapping key. */
export class UnwrapError extends Error {
  constructor(readonly index: number) {
    super(`wrapped key ${index} fails its integrity check`);
    this.name = "UnwrapError";
  }
}

const bswap = (x: number): number => (((x & 0xff) << 24) | ((x & 0xff00) << 8) | ((x >>> 8) & 0xff00) | (x >>> 24)) >>> 0;

function ecb(key: Uint8Array, decrypt: boolean): Cipher | Decipher {
  const name = key.length === 32 ? "aes-256-ecb" : key.length === 16 ? "aes-128-ecb" : undefined;
  if (!name) throw new RangeError("AES key wrap keys are 128 or 256 bits here");
  const c = decrypt ? createDecipheriv(name, key, null) : createCipheriv(name, key, null);
  c.setAutoPadding(false);
  return c;
}

function words(b: Buffer): Uint32Array {
  if (b.byteOffset % 4 === 0) return new Uint32Array(b.buffer, b.byteOffset, b.byteLength / 4);
  const c = new Uint8Array(b.byteLength);
  c.set(b);
  return new Uint32Array(c.buffer);
}

/**
 * RFC 3394 W^-1 then W over m messages of n 64-bit blocks each, laid out in X as [A, R1..Rn] per message
 * (32-bit words in memory order). Between the two, checks RFC 5649's AIV, MLI and zero padding.
 */
function rewrapGroup(dec: Decipher, enc: Cipher, X: Uint32Array, bytes: Uint8Array, m: number, n: number, indexOf: (k: number) => number): void {
  const s = 2 + 2 * n;
  const inw = new Uint32Array(4 * m);
  const inb = Buffer.from(inw.buffer);
  for (let j = 5; j >= 0; j--)
    for (let i = n; i >= 1; i--) {
      const t = bswap(n * j + i);
      for (let k = 0, o = 0, q = 0; k < m; k++, o += s, q += 4) {
        inw[q] = X[o];
        inw[q + 1] = X[o + 1] ^ t;
        inw[q + 2] = X[o + 2 * i];
        inw[q + 3] = X[o + 2 * i + 1];
      }
      const out = words(dec.update(inb));
      for (let k = 0, o = 0, q = 0; k < m; k++, o += s, q += 4) {
        X[o] = out[q];
        X[o + 1] = out[q + 1];
        X[o + 2 * i] = out[q + 2];
        X[o + 2 * i + 1] = out[q + 3];
      }
      out.fill(0);
    }
  // RFC 5649 §3: A = A65959A6 || MLI, 8(n-1) < MLI <= 8n, and the padding bytes are zero.
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let k = 0; k < m; k++) {
    const o = k * s * 4;
    const mli = view.getUint32(o + 4);
    let bad = view.getUint32(o) !== AIV_HI || mli <= 8 * (n - 1) || mli > 8 * n;
    if (!bad) for (let p = o + 8 + mli; p < o + 8 + 8 * n; p++) bad ||= bytes[p] !== 0;
    if (bad) throw new UnwrapError(indexOf(k));
  }
  for (let j = 0; j < 6; j++)
    for (let i = 1; i <= n; i++) {
      const t = bswap(n * j + i);
      for (let k = 0, o = 0, q = 0; k < m; k++, o += s, q += 4) {
        inw[q] = X[o];
        inw[q + 1] = X[o + 1];
        inw[q + 2] = X[o + 2 * i];
        inw[q + 3] = X[o + 2 * i + 1];
      }
      const out = words(enc.update(inb));
      for (let k = 0, o = 0, q = 0; k < m; k++, o += s, q += 4) {
        X[o] = out[q];
        X[o + 1] = out[q + 1] ^ t;
        X[o + 2 * i] = out[q + 2];
        X[o + 2 * i + 1] = out[q + 3];
      }
    }
  inw.fill(0);
}

/**
 * Re-wraps every `wrapped[k]` (RFC 5649 under `from`) to RFC 5649 under `to`; results in input order. Throws
 * UnwrapError (with the index) when one does not unwrap under `from`: nothing is returned then.
 */
export function aesKeyRewrapPadBatch(from: Uint8Array, to: Uint8Array, wrapped: readonly Uint8Array[]): Uint8Array[] {
  const out: Uint8Array[] = new Array<Uint8Array>(wrapped.length);
  const groups = new Map<number, number[]>();
  wrapped.forEach((w, k) => {
    if (w.length % 8 !== 0 || w.length < 16) throw new UnwrapError(k);
    const g = groups.get(w.length);
    if (g) g.push(k);
    else groups.set(w.length, [k]);
  });
  const dec = ecb(from, true) as Decipher;
  const enc = ecb(to, false) as Cipher;
  for (const [len, idx] of groups) {
    if (len === 16) {
      // One 64-bit block of plaintext: RFC 5649 uses a single AES block instead of W.
      for (const k of idx) {
        let p: Uint8Array;
        try {
          p = aesKeyUnwrapPad(from, wrapped[k]);
        } catch {
          throw new UnwrapError(k);
        }
        out[k] = aesKeyWrapPad(to, p);
        p.fill(0);
      }
      continue;
    }
    const m = idx.length;
    const bytes = new Uint8Array(m * len);
    idx.forEach((k, g) => bytes.set(wrapped[k], g * len));
    try {
      rewrapGroup(dec, enc, new Uint32Array(bytes.buffer), bytes, m, len / 8 - 1, (g) => idx[g]);
      idx.forEach((k, g) => (out[k] = bytes.slice(g * len, (g + 1) * len)));
    } finally {
      bytes.fill(0);
    }
  }
  return out;
}
