// Deterministic encodings hashed or signed by the reproduction module: canonical JSON (object keys sorted,
// undefined members dropped, no whitespace — the subset of RFC 8785 needed for strings, integers, booleans,
// arrays and objects), SHA-256 digests with a domain-separation label, base64.

export { toB64 as b64 } from "../util/bytes.ts";
import { createHash } from "node:crypto";

export function canonicalJson(value: unknown): string {
  if (value === null || typeof value === "boolean" || typeof value === "string") return JSON.stringify(value);
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value)) throw new TypeError("canonical JSON: only safe integers are encoded");
    return String(value);
  }
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  if (typeof value === "object") {
    const o = value as Record<string, unknown>;
    const keys = Object.keys(o)
      .filter((k) => o[k] !== undefined)
      .sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(o[k])}`).join(",")}}`;
  }
  throw new TypeError(`canonical JSON: cannot encode a ${typeof value}`);
}

/** SHA-256 over `label || 0x00 || parts...`, each part length-prefixed (u32 BE) so that concatenations are unambiguous. */
export function labelledDigest(label: string, ...parts: (string | Uint8Array)[]): Buffer {
  const h = createHash("sha256").update(label).update(Uint8Array.of(0));
  for (const p of parts) {
    const b = typeof p === "string" ? Buffer.from(p, "utf8") : p;
    const len = Buffer.alloc(4);
    len.writeUInt32BE(b.length);
    h.update(len).update(b);
  }
  return h.digest();
}

/** Decodes strict base64; throws a TypeError naming `what` (never the value) when it is not. */
export function fromB64(s: unknown, what: string): Uint8Array {
  if (typeof s !== "string" || !/^[A-Za-z0-9+/]*={0,2}$/.test(s) || s.length % 4 !== 0) throw new TypeError(`${what} is not base64`);
  return new Uint8Array(Buffer.from(s, "base64"));
}

/** Constant-time equality of two byte strings of possibly different lengths. */
export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
  return d === 0;
}
