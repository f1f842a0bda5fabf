// Deterministic encodings hashed or signed by the reproduction module: canonical JSON (object keys sorted,
// undefined members dropped, no whitespace — the subset of RFC 8785 needed for strings, integers, booleans,
// arrays and objects), SHA-256 digests with a domain-separation label, base64.

export { toB64 as b64 } from "../util/bytes.ts";
import { createHash } from "node:crypto";
import { canonicalJson as canonicalJsonWith } from "../util/json.ts";

/** The signed documents' canonical JSON (src/util/json.ts): undefined members dropped, integers only. */
export const canonicalJson = (value: unknown): string => canonicalJsonWith(value, { numbers: "safe-integer" });

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
