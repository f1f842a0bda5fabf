// Bytes as text, and their SHA-256: the one definition of each (issue 10 §5). Every layer may use these.

import { createHash } from "node:crypto";

const view = (b: Uint8Array): Buffer => Buffer.from(b.buffer, b.byteOffset, b.byteLength);

/** Lower-case hex. */
export const toHex = (b: Uint8Array): string => view(b).toString("hex");

/** Bytes of a hex string (no checks: Buffer's parser stops at the first non-hex pair). */
export const fromHex = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, "hex"));

/** Base64 with padding (RFC 4648 §4). */
export const toB64 = (b: Uint8Array): string => view(b).toString("base64");

/** Base64url without padding (RFC 4648 §5). */
export const toB64url = (b: Uint8Array): string => view(b).toString("base64url");

/** SHA-256 of `b`, lower-case hex. */
export const sha256Hex = (b: Uint8Array): string => createHash("sha256").update(b).digest("hex");
