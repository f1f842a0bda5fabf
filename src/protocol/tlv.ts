// BER-TLV (ISO/IEC 7816-4 §6.3 / X.690 length rules) as cards use it: tags of 1-3 bytes, definite lengths of up to 3 bytes.
// Malformed input is refused with 6A80 (wrong data) so applets can parse their command data without extra checks.

import { CardError, SW } from "./sw.ts";

export interface Tlv {
  tag: number;
  value: Uint8Array;
}

/** Parses a sequence of TLVs that must exactly fill `buf`. */
export function parseTlvs(buf: Uint8Array): Tlv[] {
  const out: Tlv[] = [];
  let i = 0;
  while (i < buf.length) {
    // ISO 7816-4 allows 00 padding between objects (FF too, but GlobalPlatform uses FFxx tags such as FF21)
    if (buf[i] === 0x00) {
      i++;
      continue;
    }
    let tag = buf[i++];
    if ((tag & 0x1f) === 0x1f) {
      let n = 0;
      do {
        if (i >= buf.length || ++n > 2) throw new CardError(SW.WRONG_DATA, "bad TLV tag");
        tag = (tag << 8) | buf[i];
      } while (buf[i++] & 0x80);
    }
    if (i >= buf.length) throw new CardError(SW.WRONG_DATA, "TLV without length");
    let len = buf[i++];
    if (len & 0x80) {
      const n = len & 0x7f;
      if (n === 0 || n > 3 || i + n > buf.length) throw new CardError(SW.WRONG_DATA, "bad TLV length");
      len = 0;
      for (let k = 0; k < n; k++) len = (len << 8) | buf[i++];
    }
    if (i + len > buf.length) throw new CardError(SW.WRONG_DATA, "TLV value runs past the data");
    out.push({ tag, value: buf.subarray(i, i + len) });
    i += len;
  }
  return out;
}

/** Finds the first TLV with `tag` in `buf` (top level only). */
export function findTlv(buf: Uint8Array | Tlv[], tag: number): Uint8Array | undefined {
  const list = buf instanceof Uint8Array ? parseTlvs(buf) : buf;
  return list.find((t) => t.tag === tag)?.value;
}

/** Like findTlv but a missing tag is refused with 6A80. */
export function requireTlv(buf: Uint8Array | Tlv[], tag: number): Uint8Array {
  const v = findTlv(buf, tag);
  if (!v) throw new CardError(SW.WRONG_DATA, `missing tag ${tag.toString(16)}`);
  return v;
}

function tagBytes(tag: number): number[] {
  if (tag > 0xffff) return [tag >> 16, (tag >> 8) & 0xff, tag & 0xff];
  if (tag > 0xff) return [tag >> 8, tag & 0xff];
  return [tag];
}

function lenBytes(len: number): number[] {
  if (len < 0x80) return [len];
  if (len < 0x100) return [0x81, len];
  if (len < 0x10000) return [0x82, len >> 8, len & 0xff];
  return [0x83, len >> 16, (len >> 8) & 0xff, len & 0xff];
}

/** Encodes one TLV; `value` may be bytes or a list of already-encoded children to concatenate. */
export function tlv(tag: number, ...value: Uint8Array[]): Uint8Array {
  const total = value.reduce((n, v) => n + v.length, 0);
  const head = [...tagBytes(tag), ...lenBytes(total)];
  const out = new Uint8Array(head.length + total);
  out.set(head, 0);
  let o = head.length;
  for (const v of value) {
    out.set(v, o);
    o += v.length;
  }
  return out;
}

export function concat(...parts: Uint8Array[]): Uint8Array {
  const total = parts.reduce((n, v) => n + v.length, 0);
  const out = new Uint8Array(total);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}
