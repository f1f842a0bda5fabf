// Shared test helpers: temporary card images, APDU shorthands, the CLI as a child process.
import assert from "node:assert/strict";
import { execFile, spawn, type ChildProcessByStdio } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Readable } from "node:stream";
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
 * The cardkms command as a user runs it: the compiled CLI (`npm run build`, which scripts/test.sh runs before the
 * tests, so they never meet a dist/ older than the sources). The one place that says how tests start it.
 */
export const CLI_MAIN = join(import.meta.dirname, "..", "dist", "cli", "main.js");

/** A child CLI still running after this long has hung: a hang detector, never a speed check. */
export const CLI_HANG_MS = 5 * 60_000;

function cliArgv(args: string[]): string[] {
  if (!existsSync(CLI_MAIN)) throw new Error(`${CLI_MAIN} is missing: run \`npm run build\` first (npm test does)`);
  return [CLI_MAIN, ...args];
}

/** Runs `cardkms args` to its end with `env` as its whole environment (default: this process's). */
export function execCli(args: string[], o: { env?: NodeJS.ProcessEnv } = {}): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(process.execPath, cliArgv(args), { env: o.env, timeout: CLI_HANG_MS }, (err, stdout, stderr) => resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr }));
  });
}

/** Starts `cardkms args` as a long-running child (`issuer serve`, `card attach`), its output piped; the caller ends it. */
export function spawnCli(args: string[], o: { env?: NodeJS.ProcessEnv; cwd?: string } = {}): ChildProcessByStdio<null, Readable, Readable> {
  return spawn(process.execPath, cliArgv(args), { ...o, stdio: ["ignore", "pipe", "pipe"] });
}

/**
 * Runs the cardkms command as a child process with this process's environment minus the server, token and PIN
 * variables, plus `env`.
 */
export function runCli(args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  return execCli(args, { env: { ...process.env, CARDKMS_SERVER: "", CARDKMS_TOKEN: "", CARDKMS_PIN: "", ...env } });
}

/** The JSON a successful `--json` command printed (fails the test, with its stderr, when it exited non-zero). */
export function cliJson(r: CliResult, what: string) {
  assert.equal(r.code, 0, `${what}: ${r.stderr}`);
  return JSON.parse(r.stdout);
}
