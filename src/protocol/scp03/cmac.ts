// AES-CMAC (NIST SP 800-38B, RFC 4493) on Node's crypto: the MAC and PRF of GlobalPlatform SCP03
// (GP Card Spec v2.3 Amendment D §4.1.3 and §4.1.5). Also the AES helpers SCP03 needs: single-block ECB,
// CBC without padding, and ISO/IEC 9797-1 padding method 2.

import { createCipheriv, createDecipheriv } from "node:crypto";

const BLOCK = 16;

function cipherName(key: Uint8Array, mode: "ecb" | "cbc"): string {
  switch (key.length) {
    case 16:
      return `aes-128-${mode}`;
    case 24:
      return `aes-192-${mode}`;
    case 32:
      return `aes-256-${mode}`;
    default:
      throw new RangeError(`AES key must be 16, 24 or 32 bytes, not ${key.length}`);
  }
}

/** True for a valid AES key length (16, 24 or 32 bytes). */
export function isAesKeyLength(n: number): boolean {
  return n === 16 || n === 24 || n === 32;
}

/** AES-CBC encryption without padding; `data` must be a whole number of blocks. */
export function aesCbcEncrypt(key: Uint8Array, iv: Uint8Array, data: Uint8Array): Uint8Array {
  if (data.length % BLOCK) throw new RangeError("AES-CBC input is not a whole number of blocks");
  const c = createCipheriv(cipherName(key, "cbc"), key, iv);
  c.setAutoPadding(false);
  return new Uint8Array(Buffer.concat([c.update(data), c.final()]));
}

/** AES-CBC decryption without padding removal; `data` must be a whole number of blocks. */
export function aesCbcDecrypt(key: Uint8Array, iv: Uint8Array, data: Uint8Array): Uint8Array {
  if (data.length % BLOCK) throw new RangeError("AES-CBC input is not a whole number of blocks");
  const d = createDecipheriv(cipherName(key, "cbc"), key, iv);
  d.setAutoPadding(false);
  return new Uint8Array(Buffer.concat([d.update(data), d.final()]));
}

/** AES encryption of whole blocks in ECB mode (used for single blocks: ICVs, key check values). */
export function aesEcbEncrypt(key: Uint8Array, data: Uint8Array): Uint8Array {
  if (data.length % BLOCK) throw new RangeError("AES-ECB input is not a whole number of blocks");
  const c = createCipheriv(cipherName(key, "ecb"), key, null);
  c.setAutoPadding(false);
  return new Uint8Array(Buffer.concat([c.update(data), c.final()]));
}

/** ISO/IEC 9797-1 padding method 2: append 0x80, then zeros up to a multiple of `block` (always adds a byte). */
export function pad80(data: Uint8Array, block = BLOCK): Uint8Array {
  const out = new Uint8Array((Math.floor(data.length / block) + 1) * block);
  out.set(data, 0);
  out[data.length] = 0x80;
  return out;
}

/** Removes ISO/IEC 9797-1 method 2 padding; undefined when the padding is malformed. */
export function unpad80(data: Uint8Array): Uint8Array | undefined {
  let i = data.length - 1;
  while (i >= 0 && data[i] === 0x00) i--;
  if (i < 0 || data[i] !== 0x80 || data.length - i > BLOCK) return undefined;
  return data.subarray(0, i);
}

/** Doubling in GF(2^128) (SP 800-38B §6.1 subkey generation). */
function dbl(b: Uint8Array): Uint8Array {
  const out = new Uint8Array(BLOCK);
  for (let i = 0; i < BLOCK; i++) out[i] = ((b[i] << 1) | (i + 1 < BLOCK ? b[i + 1] >> 7 : 0)) & 0xff;
  if (b[0] & 0x80) out[BLOCK - 1] ^= 0x87;
  return out;
}

/** AES-CMAC of `data` under `key` (16/24/32 bytes); returns the full 16-byte tag. */
export function aesCmac(key: Uint8Array, data: Uint8Array): Uint8Array {
  const l = aesEcbEncrypt(key, new Uint8Array(BLOCK));
  const k1 = dbl(l);
  const n = data.length === 0 ? 1 : Math.ceil(data.length / BLOCK);
  const complete = data.length > 0 && data.length % BLOCK === 0;
  const msg = new Uint8Array(n * BLOCK);
  msg.set(data, 0);
  const last = (n - 1) * BLOCK;
  let sub: Uint8Array;
  if (complete) sub = k1;
  else {
    msg[data.length] = 0x80;
    sub = dbl(k1);
  }
  for (let i = 0; i < BLOCK; i++) msg[last + i] ^= sub[i];
  const enc = aesCbcEncrypt(key, new Uint8Array(BLOCK), msg);
  return enc.slice(enc.length - BLOCK);
}
