// Shared test helpers: temporary card images and APDU shorthands.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after } from "node:test";

/** A fresh temporary directory removed when the test file ends. */
export function tempDir(prefix = "cardkms-"): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export const h = (s: string): Uint8Array => new Uint8Array(Buffer.from(s.replace(/\s/g, ""), "hex"));
export const toHex = (b: Uint8Array): string => Buffer.from(b).toString("hex").toUpperCase();
/** Status word of a response APDU. */
export const swOf = (r: Uint8Array): number => (r[r.length - 2] << 8) | r[r.length - 1];
export const dataOf = (r: Uint8Array): Uint8Array => r.subarray(0, r.length - 2);
