// Shared test helpers: temporary card images, APDU shorthands, the CLI as a child process.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
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

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs the cardkms command as a child process (`node --import tsx src/cli/main.ts …`) with this process's
 * environment minus the server, token and PIN variables, plus `env`.
 */
export function runCli(args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ["--import", "tsx", "src/cli/main.ts", ...args],
      { env: { ...process.env, CARDKMS_SERVER: "", CARDKMS_TOKEN: "", CARDKMS_PIN: "", ...env }, timeout: 60_000 },
      (err, stdout, stderr) => resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

/** The JSON a successful `--json` command printed (fails the test, with its stderr, when it exited non-zero). */
export function cliJson(r: CliResult, what: string) {
  assert.equal(r.code, 0, `${what}: ${r.stderr}`);
  return JSON.parse(r.stdout);
}
