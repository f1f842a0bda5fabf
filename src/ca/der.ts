export { toHex } from "../util/bytes.ts";
// DER (ITU-T X.690 §10) — just the encodings a certificate and a CRL need, and a bounds-checked reader.
//
// Why hand-rolled and not @peculiar/asn1-schema on the hot path: serialising a whole TBSCertificate through
// the schema library costs ~0.5 ms, which caps issuance near 1,700 certificates/s. The constant parts
// (issuer name, extensions of a profile) are still produced by @peculiar/asn1-x509 once per CA; per
// certificate we only concatenate them with a serial, two times, a subject name and a key.

const enc = new TextEncoder();

/** Concatenates byte strings into one new array. */
export function concat(parts: readonly Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function lengthOctets(n: number): Uint8Array {
  if (n < 0x80) return Uint8Array.of(n);
  const bytes: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
  return Uint8Array.of(0x80 | bytes.length, ...bytes);
}

/** Tag-length-value with a one-byte tag (all tags used here are low-tag-number form). */
export function tlv(tag: number, ...content: Uint8Array[]): Uint8Array {
  const body = content.length === 1 ? content[0] : concat(content);
  const len = lengthOctets(body.length);
  const out = new Uint8Array(1 + len.length + body.length);
  out[0] = tag;
  out.set(len, 1);
  out.set(body, 1 + len.length);
  return out;
}

export const TAG = {
  BOOLEAN: 0x01,
  INTEGER: 0x02,
  BIT_STRING: 0x03,
  OCTET_STRING: 0x04,
  NULL: 0x05,
  OID: 0x06,
  ENUMERATED: 0x0a,
  UTF8_STRING: 0x0c,
  PRINTABLE_STRING: 0x13,
  TELETEX_STRING: 0x14,
  IA5_STRING: 0x16,
  UTC_TIME: 0x17,
  GENERALIZED_TIME: 0x18,
  BMP_STRING: 0x1e,
  SEQUENCE: 0x30,
  SET: 0x31,
} as const;

export const sequence = (...parts: Uint8Array[]): Uint8Array => tlv(TAG.SEQUENCE, ...parts);

/** INTEGER from an unsigned big-endian magnitude: minimal form, a 0x00 prepended when the top bit is set. */
export function unsignedInteger(magnitude: Uint8Array): Uint8Array {
  let i = 0;
  while (i < magnitude.length - 1 && magnitude[i] === 0) i++;
  const m = magnitude.subarray(i);
  if (m.length === 0) return Uint8Array.of(TAG.INTEGER, 1, 0);
  return m[0] & 0x80 ? tlv(TAG.INTEGER, Uint8Array.of(0), m) : tlv(TAG.INTEGER, m);
}

/** INTEGER from a non-negative safe integer. */
export function smallInteger(n: number): Uint8Array {
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`expected a non-negative safe integer, got ${n}`);
  const bytes: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
  return unsignedInteger(Uint8Array.from(bytes.length ? bytes : [0]));
}

/** OBJECT IDENTIFIER from dotted decimal (X.690 §8.19). */
export function oid(dotted: string): Uint8Array {
  const arcs = dotted.split(".").map((s) => {
    if (!/^\d+$/.test(s)) throw new Error(`bad OID ${dotted}`);
    return BigInt(s);
  });
  if (arcs.length < 2 || arcs[0] > 2n || (arcs[0] < 2n && arcs[1] > 39n)) throw new Error(`bad OID ${dotted}`);
  const out: number[] = [];
  const push = (v: bigint) => {
    const groups: number[] = [Number(v & 0x7fn)];
    for (v >>= 7n; v > 0n; v >>= 7n) groups.unshift(Number(v & 0x7fn) | 0x80);
    out.push(...groups);
  };
  push(arcs[0] * 40n + arcs[1]);
  for (const a of arcs.slice(2)) push(a);
  return tlv(TAG.OID, Uint8Array.from(out));
}

/** Dotted decimal from OID content octets. */
export function oidToString(content: Uint8Array): string {
  const arcs: bigint[] = [];
  let v = 0n;
  for (const b of content) {
    v = (v << 7n) | BigInt(b & 0x7f);
    if (!(b & 0x80)) {
      arcs.push(v);
      v = 0n;
    }
  }
  if (arcs.length === 0) throw new Error("empty OID");
  const first = arcs[0] < 80n ? arcs[0] / 40n : 2n;
  return [first, arcs[0] - first * 40n, ...arcs.slice(1)].join(".");
}

const pad2 = (n: number) => (n < 10 ? "0" : "") + n;

/**
 * Time (RFC 5280 §4.1.2.5): UTCTime through 2049, GeneralizedTime from 2050, always Zulu and whole seconds.
 * Milliseconds are dropped; callers truncate their records the same way (see `wholeSeconds`).
 */
export function time(d: Date): Uint8Array {
  const y = d.getUTCFullYear();
  const rest = pad2(d.getUTCMonth() + 1) + pad2(d.getUTCDate()) + pad2(d.getUTCHours()) + pad2(d.getUTCMinutes()) + pad2(d.getUTCSeconds()) + "Z";
  if (y < 1950 || y > 9999) throw new RangeError(`time out of range: ${d.toISOString()}`);
  return y < 2050 ? tlv(TAG.UTC_TIME, enc.encode(pad2(y % 100) + rest)) : tlv(TAG.GENERALIZED_TIME, enc.encode(String(y) + rest));
}

export function wholeSeconds(d: Date): Date {
  return new Date(Math.floor(d.getTime() / 1000) * 1000);
}

export const bitString = (bytes: Uint8Array): Uint8Array => tlv(TAG.BIT_STRING, Uint8Array.of(0), bytes);
export const octetString = (bytes: Uint8Array): Uint8Array => tlv(TAG.OCTET_STRING, bytes);
export const explicit = (n: number, inner: Uint8Array): Uint8Array => tlv(0xa0 | n, inner);

/** One decoded TLV: `start`..`end` is the content, `headerStart`..`end` the whole encoding. */
export interface Tlv {
  tag: number;
  headerStart: number;
  start: number;
  end: number;
}

/** Reads one TLV at `offset`, refusing indefinite lengths, non-minimal lengths and overruns of `limit`. */
export function readTlv(buf: Uint8Array, offset: number, limit = buf.length): Tlv {
  if (offset + 2 > limit) throw new Error("DER: truncated header");
  const tag = buf[offset];
  if ((tag & 0x1f) === 0x1f) throw new Error("DER: high tag numbers are not supported");
  let p = offset + 1;
  let len = buf[p++];
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 4) throw new Error("DER: unsupported length form");
    if (p + n > limit) throw new Error("DER: truncated length");
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + buf[p++];
    if (len < 0x80 || (n > 1 && buf[p - n] === 0)) throw new Error("DER: non-minimal length");
  }
  if (p + len > limit) throw new Error("DER: content overruns its container");
  return { tag, headerStart: offset, start: p, end: p + len };
}

/** The TLVs directly inside a constructed TLV, which must be filled exactly. */
export function children(buf: Uint8Array, parent: Tlv): Tlv[] {
  const out: Tlv[] = [];
  for (let p = parent.start; p < parent.end;) {
    const t = readTlv(buf, p, parent.end);
    out.push(t);
    p = t.end;
  }
  return out;
}

/** Reads a whole buffer as exactly one TLV of the expected tag. */
export function readOnly(buf: Uint8Array, tag: number, what: string): Tlv {
  const t = readTlv(buf, 0);
  if (t.tag !== tag || t.end !== buf.length) throw new Error(`${what}: expected one DER element with tag 0x${tag.toString(16)}`);
  return t;
}

/**
 * The content of an INTEGER in DER's minimal two's-complement form (X.690 §8.3.2): at least one octet, and no
 * redundant leading 0x00 (before a clear top bit) or 0xFF (before a set top bit).
 */
export function integerContent(buf: Uint8Array, t: Tlv): Uint8Array {
  const c = buf.subarray(t.start, t.end);
  if (c.length === 0) throw new Error("DER: INTEGER without content octets");
  if (c.length > 1 && ((c[0] === 0x00 && !(c[1] & 0x80)) || (c[0] === 0xff && c[1] & 0x80))) throw new Error("DER: INTEGER not in minimal form (redundant leading octet)");
  return c;
}

/** Checks one primitive element of the universal class against DER's rules for its type. */
function checkPrimitive(buf: Uint8Array, t: Tlv): void {
  const c = buf.subarray(t.start, t.end);
  switch (t.tag) {
    case 0x00:
      throw new Error("DER: end-of-contents octets outside an indefinite length");
    case TAG.BOOLEAN:
      if (c.length !== 1 || (c[0] !== 0x00 && c[0] !== 0xff)) throw new Error("DER: BOOLEAN must be one octet, 00 or FF (X.690 §11.1)");
      return;
    case TAG.INTEGER:
    case TAG.ENUMERATED:
      integerContent(buf, t);
      return;
    case TAG.BIT_STRING:
      if (c.length === 0 || c[0] > 7 || (c.length === 1 && c[0] !== 0)) throw new Error("DER: malformed BIT STRING unused-bits octet");
      if (c.length > 1 && c[c.length - 1] & ((1 << c[0]) - 1)) throw new Error("DER: BIT STRING unused bits must be zero (X.690 §11.2.1)");
      return;
    case TAG.NULL:
      if (c.length !== 0) throw new Error("DER: NULL must be empty");
      return;
    case TAG.OID:
      if (c.length === 0 || c[c.length - 1] & 0x80) throw new Error("DER: truncated OBJECT IDENTIFIER");
      for (let i = 0; i < c.length; i++) if (c[i] === 0x80 && (i === 0 || !(c[i - 1] & 0x80))) throw new Error("DER: OBJECT IDENTIFIER subidentifier not minimal");
      return;
  }
}

/**
 * Checks that `buf` is exactly one element in DER (X.690 §10), walking every constructed element: definite,
 * minimal lengths (readTlv); no constructed encodings of universal primitive types; minimal INTEGERs; BOOLEAN,
 * NULL, BIT STRING and OID in their only DER form; at most `maxDepth` levels of nesting, so deep input is refused
 * without recursion. Contents of OCTET and BIT STRINGs, strings and times are not looked into. SET OF ordering
 * and omitted DEFAULT values are not checked. Throws Error("DER: …") naming the first violation.
 */
export function assertDer(buf: Uint8Array, maxDepth = 32): void {
  const top = readTlv(buf, 0);
  if (top.end !== buf.length) throw new Error("DER: trailing octets after the element");
  const stack: [Tlv, number][] = [[top, 1]];
  for (let item = stack.pop(); item; item = stack.pop()) {
    const [t, depth] = item;
    if (t.tag & 0x20) {
      if ((t.tag & 0xc0) === 0 && t.tag !== TAG.SEQUENCE && t.tag !== TAG.SET) throw new Error(`DER: constructed encoding of primitive type 0x${(t.tag & 0x1f).toString(16)}`);
      if (depth >= maxDepth && t.end > t.start) throw new Error(`DER: nested deeper than ${maxDepth} levels`);
      for (let p = t.start; p < t.end;) {
        const child = readTlv(buf, p, t.end);
        stack.push([child, depth + 1]);
        p = child.end;
      }
    } else if ((t.tag & 0xc0) === 0) {
      checkPrimitive(buf, t);
    }
  }
}

export const bytesOf = (buf: Uint8Array, t: Tlv): Uint8Array => buf.subarray(t.start, t.end);
export const encodingOf = (buf: Uint8Array, t: Tlv): Uint8Array => buf.subarray(t.headerStart, t.end);

export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
