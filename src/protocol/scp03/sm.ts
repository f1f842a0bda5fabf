// Wire-level rules of SCP03 secure messaging shared by the card side (card-channel.ts) and the host side
// (host.ts), so the two can never disagree on them. GP Card Spec v2.3 Amendment D (SCP03) v1.1.2/v1.2:
//   §5.1 / Table 5-1   "i" parameter: 0x10 pseudo-random card challenge, 0x20 R-MAC, 0x40 R-ENCRYPTION (S8 mode)
//   §6.2.4             C-MAC over MAC chaining value || CLA INS P1 P2 Lc || data, CLA with b3 set, channel bits 0
//   §6.2.5             R-MAC over MAC chaining value || response data || SW; none on error status words
//   §6.2.6 / §6.2.7    encryption counter, command ICV = AES(S-ENC, counter), response ICV with first byte 0x80
//   §7.1.2 Table 7-6   security levels

/** GP security level bits (Amendment D Table 7-6, GP Card Spec §10.6). */
export const SEC = {
  C_MAC: 0x01,
  C_DECRYPTION: 0x02,
  R_MAC: 0x10,
  R_ENCRYPTION: 0x20,
  AUTHENTICATED: 0x80,
} as const;

/** Security levels EXTERNAL AUTHENTICATE accepts: none, C-MAC, +C-DEC, +R-MAC, +R-ENC. */
export const VALID_LEVELS: readonly number[] = [0x00, 0x01, 0x03, 0x11, 0x13, 0x33];

/** SCP03 "i" parameter this card reports: pseudo-random card challenge, R-MAC and R-ENCRYPTION support, S8 mode. */
export const I_PARAM = 0x70;

/** GlobalPlatform Issuer Security Domain AID (GP Card Spec §H.1.3): context of the pseudo-random card challenge. */
export const ISD_AID = Uint8Array.from([0xa0, 0x00, 0x00, 0x01, 0x51, 0x00, 0x00, 0x00]);

export const INS_INITIALIZE_UPDATE = 0x50;
export const INS_EXTERNAL_AUTHENTICATE = 0x82;

/** SW 6300: authentication of the host cryptogram failed (GP Card Spec §11.4.4 EXTERNAL AUTHENTICATE). */
export const SW_AUTH_FAILED = 0x6300;

/**
 * Class byte as it enters the C-MAC (Amendment D §6.2.4): logical channel number set to zero, b4 cleared and b3
 * set (GP proprietary secure messaging). Chaining (b5) and the proprietary bit (b8) are kept as sent.
 */
export function macClass(cla: number): number {
  return (cla & 0xf0) | 0x04;
}

/** Lc as it appears on the wire: one byte, or 00 || two bytes for extended length. */
export function lcBytes(lc: number, extended: boolean): Uint8Array {
  return extended ? Uint8Array.of(0, lc >> 8, lc & 0xff) : Uint8Array.of(lc);
}

/** 16-byte encryption counter block (Amendment D §6.2.6); for responses the first byte is 0x80 (§6.2.7). */
export function counterBlock(counter: number, response: boolean): Uint8Array {
  const b = new Uint8Array(16);
  let c = counter;
  for (let i = 15; i >= 8 && c > 0; i--) {
    b[i] = c & 0xff;
    c = Math.floor(c / 256);
  }
  if (response) b[0] = 0x80;
  return b;
}

/** Status words that carry an R-MAC (Amendment D §6.2.5): 9000 and the warnings 62xx / 63xx. */
export function isProtectedSw(sw: number): boolean {
  return sw === 0x9000 || sw >> 8 === 0x62 || sw >> 8 === 0x63;
}

export function concatBytes(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** Best-effort wipe of key material held in RAM. */
export function wipe(...bufs: (Uint8Array | undefined)[]): void {
  for (const b of bufs) b?.fill(0);
}
