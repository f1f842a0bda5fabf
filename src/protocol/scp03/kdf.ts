// SCP03 data derivation (GP Card Spec v2.3 Amendment D §4.1.5): NIST SP 800-108 KDF in counter mode with
// AES-CMAC as PRF. The fixed input data is laid out as SCP03 defines it (not the SP 800-108 default order):
//   label (11 bytes 00 || 1-byte derivation constant) || 00 (separation indicator) || L (2 bytes, bits)
//   || i (1-byte counter, from 1) || context
// Derivation constants (Amendment D Table 4-1) are exported below. Other cardkms modules may use kdf() with
// their own constants (>= 0x80 are reserved here for cardkms-proprietary uses, clear of GP's range).

import { aesCmac } from "./cmac.ts";

export const DERIVE = {
  CARD_CRYPTOGRAM: 0x00,
  HOST_CRYPTOGRAM: 0x01,
  CARD_CHALLENGE: 0x02,
  S_ENC: 0x04,
  S_MAC: 0x06,
  S_RMAC: 0x07,
} as const;

/** SP 800-108 counter-mode KDF with AES-CMAC, SCP03 layout. `bits` must be a positive multiple of 8, at most 0xFFFF. */
export function kdf(key: Uint8Array, constant: number, context: Uint8Array, bits: number): Uint8Array {
  if (!Number.isInteger(bits) || bits <= 0 || bits % 8 || bits > 0xffff) throw new RangeError(`bad KDF output length ${bits}`);
  if (!Number.isInteger(constant) || constant < 0 || constant > 0xff) throw new RangeError(`bad derivation constant ${constant}`);
  const bytes = bits / 8;
  const blocks = Math.ceil(bytes / 16);
  if (blocks > 0xff) throw new RangeError("KDF output too long for a 1-byte counter");
  const input = new Uint8Array(16 + context.length);
  input[11] = constant;
  input[12] = 0x00;
  input[13] = bits >> 8;
  input[14] = bits & 0xff;
  input.set(context, 16);
  const out = new Uint8Array(blocks * 16);
  for (let i = 1; i <= blocks; i++) {
    input[15] = i;
    out.set(aesCmac(key, input), (i - 1) * 16);
  }
  return out.slice(0, bytes);
}

export interface SessionKeys {
  sEnc: Uint8Array;
  sMac: Uint8Array;
  sRmac: Uint8Array;
}

/** Session keys (Amendment D §6.2.1): context = host challenge || card challenge; length = static key length. */
export function deriveSessionKeys(enc: Uint8Array, mac: Uint8Array, context: Uint8Array): SessionKeys {
  return {
    sEnc: kdf(enc, DERIVE.S_ENC, context, enc.length * 8),
    sMac: kdf(mac, DERIVE.S_MAC, context, mac.length * 8),
    sRmac: kdf(mac, DERIVE.S_RMAC, context, mac.length * 8),
  };
}

/** Card (constant 00) or host (01) authentication cryptogram, 64 bits in S8 mode (Amendment D §6.2.2.2-3). */
export function cryptogram(sMac: Uint8Array, constant: number, context: Uint8Array): Uint8Array {
  return kdf(sMac, constant, context, 64);
}

/** Pseudo-random card challenge (Amendment D §6.2.2.1): KDF(Key-ENC, 02, sequence counter || SD AID, 64). */
export function pseudoRandomChallenge(enc: Uint8Array, seq: Uint8Array, aid: Uint8Array): Uint8Array {
  const ctx = new Uint8Array(seq.length + aid.length);
  ctx.set(seq, 0);
  ctx.set(aid, seq.length);
  return kdf(enc, DERIVE.CARD_CHALLENGE, ctx, 64);
}
