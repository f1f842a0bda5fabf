// ISO/IEC 7816-4 §5.1 command-response pairs: short and extended length fields.
// parseCommand is the card's first line of defence: any malformed APDU is refused here
// with 6700 (wrong length) before an applet sees it.

import { CardError, SW } from "./sw.ts";

export interface CommandApdu {
  cla: number;
  ins: number;
  p1: number;
  p2: number;
  data: Uint8Array;
  /** Expected response length: undefined if absent (case 1/3), 1..65536 otherwise (0 encodes the maximum). */
  le: number | undefined;
  extended: boolean;
}

/** A command as a host builds it (lengths are worked out by encodeCommand). */
export interface ApduCommand {
  cla: number;
  ins: number;
  p1: number;
  p2: number;
  data?: Uint8Array;
  le?: number;
}

export interface ResponseApdu {
  data: Uint8Array;
  sw: number;
}

const EMPTY = new Uint8Array(0);

/** Parses a command APDU (cases 1, 2S, 3S, 4S, 2E, 3E, 4E). Throws CardError(6700) when the lengths do not add up. */
export function parseCommand(raw: Uint8Array): CommandApdu {
  if (raw.length < 4) throw new CardError(SW.WRONG_LENGTH, "APDU shorter than its header");
  const cla = raw[0],
    ins = raw[1],
    p1 = raw[2],
    p2 = raw[3];
  const body = raw.length - 4;
  const make = (data: Uint8Array, le: number | undefined, extended: boolean): CommandApdu => ({ cla, ins, p1, p2, data, le, extended });
  if (body === 0) return make(EMPTY, undefined, false); // case 1
  const b1 = raw[4];
  if (body === 1) return make(EMPTY, b1 === 0 ? 256 : b1, false); // case 2S
  if (b1 !== 0) {
    // short Lc
    const lc = b1;
    if (body === 1 + lc) return make(raw.subarray(5, 5 + lc), undefined, false); // 3S
    if (body === 2 + lc) {
      const le = raw[5 + lc];
      return make(raw.subarray(5, 5 + lc), le === 0 ? 256 : le, false); // 4S
    }
    throw new CardError(SW.WRONG_LENGTH, `Lc ${lc} does not match the ${body - 1} bytes that follow`);
  }
  // b1 == 0: extended length
  if (body === 3) {
    const le = (raw[5] << 8) | raw[6];
    return make(EMPTY, le === 0 ? 65536 : le, true); // 2E
  }
  if (body < 3) throw new CardError(SW.WRONG_LENGTH, "truncated extended length field");
  const lc = (raw[5] << 8) | raw[6];
  if (lc === 0) throw new CardError(SW.WRONG_LENGTH, "extended Lc of zero");
  if (body === 3 + lc) return make(raw.subarray(7, 7 + lc), undefined, true); // 3E
  if (body === 5 + lc) {
    const le = (raw[7 + lc] << 8) | raw[8 + lc];
    return make(raw.subarray(7, 7 + lc), le === 0 ? 65536 : le, true); // 4E
  }
  throw new CardError(SW.WRONG_LENGTH, `extended Lc ${lc} does not match the ${body - 3} bytes that follow`);
}

/** Encodes a command APDU, choosing extended lengths when data > 255 or le > 256 (or when forced). */
export function encodeCommand(c: ApduCommand & { extended?: boolean }): Uint8Array {
  const data = c.data ?? EMPTY;
  if (data.length > 65535) throw new RangeError(`APDU data of ${data.length} bytes exceeds 65535`);
  if (c.le !== undefined && (c.le < 1 || c.le > 65536)) throw new RangeError(`Le ${c.le} outside 1..65536`);
  const ext = c.extended || data.length > 255 || (c.le !== undefined && c.le > 256);
  const out: number[] = [c.cla, c.ins, c.p1, c.p2];
  if (!ext) {
    if (data.length) out.push(data.length, ...data);
    if (c.le !== undefined) out.push(c.le === 256 ? 0 : c.le);
    return Uint8Array.from(out);
  }
  const parts: number[] = [];
  if (data.length) parts.push(0, data.length >> 8, data.length & 0xff);
  if (c.le !== undefined) {
    const le = c.le === 65536 ? 0 : c.le;
    if (!data.length) parts.push(0);
    parts.push(le >> 8, le & 0xff);
  }
  const res = new Uint8Array(4 + parts.length + data.length);
  res.set(out, 0);
  if (data.length) {
    res.set(parts.slice(0, 3), 4);
    res.set(data, 7);
    res.set(parts.slice(3), 7 + data.length);
  } else res.set(parts, 4);
  return res;
}

export function encodeResponse(r: ResponseApdu): Uint8Array {
  const out = new Uint8Array(r.data.length + 2);
  out.set(r.data, 0);
  out[r.data.length] = r.sw >> 8;
  out[r.data.length + 1] = r.sw & 0xff;
  return out;
}

export function parseResponse(raw: Uint8Array): ResponseApdu {
  if (raw.length < 2) throw new Error(`response of ${raw.length} bytes has no status word`);
  const n = raw.length - 2;
  return { data: raw.subarray(0, n), sw: (raw[n] << 8) | raw[n + 1] };
}

/** Logical channel number encoded in a CLA byte (ISO 7816-4 §5.4.1), or -1 for a proprietary/invalid class. */
export function claChannel(cla: number): number {
  if ((cla & 0x40) === 0) return cla & 0x03; // first interindustry values: channels 0..3
  return 4 + (cla & 0x0f); // further interindustry values: channels 4..19
}

/** True when the class byte says "secure messaging" (first interindustry b3b4 != 00, or b6 for further). */
export function claSecureMessaging(cla: number): boolean {
  return (cla & 0x40) === 0 ? (cla & 0x0c) !== 0 : (cla & 0x20) !== 0;
}

/** True when the class byte marks a command that is not the last of a chain (b5). */
export function claChaining(cla: number): boolean {
  return (cla & 0x10) !== 0;
}

export const hex = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("hex").toUpperCase();
export const unhex = (s: string): Uint8Array => {
  const clean = s.replace(/[\s:]/g, "");
  if (!/^([0-9a-fA-F]{2})*$/.test(clean)) throw new Error(`not hex: ${s}`);
  return new Uint8Array(Buffer.from(clean, "hex"));
};
