// Host side of the PC/SC path, for tests, benchmarks and demos: bring pcscd up (scripts/pcsc-up.sh), attach a
// card to the vpcd reader for the duration of a function, and drive the card through real middleware with the
// Debian command-line clients — opensc-tool (OpenSC's PC/SC reader layer, automatic GET RESPONSE) and scriptor
// (pcsc-tools: raw SCardTransmit, no GET RESPONSE, extended lengths pass through untouched).

import { execFile } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { hex } from "../protocol/apdu.ts";
import type { IccLike } from "./transport.ts";
import { attachVpcd, VPCD_READER, type VpcdConnector, type VpcdOptions } from "./vpcd.ts";

export const REPO_ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const OPENSC_PKCS11 = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so";

export interface RunResult {
  stdout: string;
  stderr: string;
  code: number;
  ms: number;
}

/** Runs a command without a shell; never rejects on exit status (callers check `code`), only on spawn errors/timeouts. */
export function run(cmd: string, args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv; input?: string; maxBuffer?: number } = {}): Promise<RunResult> {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const child = execFile(cmd, args, { timeout: opts.timeoutMs ?? 30_000, env: opts.env ?? process.env, maxBuffer: opts.maxBuffer ?? 64 << 20, encoding: "utf8" }, (err, stdout, stderr) => {
      const e = err as (NodeJS.ErrnoException & { killed?: boolean; code?: number | string }) | null;
      if (e && (e.killed || typeof e.code === "string")) {
        const why = e.killed ? `timed out after ${opts.timeoutMs ?? 30_000} ms` : e.message;
        return reject(new Error(`${cmd} ${why}\n${stderr}`));
      }
      resolve({ stdout, stderr, code: e ? Number(e.code ?? 1) : 0, ms: performance.now() - t0 });
    });
    if (opts.input !== undefined) child.stdin?.end(opts.input);
  });
}

let upOnce: Promise<void> | undefined;

/** Installs missing packages and starts pcscd with the vpcd reader (scripts/pcsc-up.sh); once per process. */
export function ensurePcscd(timeoutMs = 600_000): Promise<void> {
  return (upOnce ??= (async () => {
    const r = await run("bash", [join(REPO_ROOT, "scripts", "pcsc-up.sh")], { timeoutMs });
    if (r.code !== 0) {
      upOnce = undefined;
      throw new Error(`scripts/pcsc-up.sh failed (${r.code}):\n${r.stderr}${r.stdout}`);
    }
  })());
}

export interface AttachOptions extends VpcdOptions {
  readyTimeoutMs?: number;
}

/**
 * Attaches `card` to the vpcd reader (after making sure pcscd runs), calls fn, and always removes the card
 * again, so the next test can attach its own. The port lock in the connector serializes parallel callers.
 */
export async function withAttachedCard<T>(card: IccLike, fn: (conn: VpcdConnector) => Promise<T>, opts: AttachOptions = {}): Promise<T> {
  await ensurePcscd();
  const conn = await attachVpcd(card, opts);
  try {
    return await fn(conn);
  } finally {
    await conn.close();
  }
}

export interface ApduExchange {
  command: string;
  sw: number;
  data: Uint8Array;
}

/**
 * Sends APDUs (hex) through pcscd with `opensc-tool -s`, in one PC/SC session, using OpenSC's "default" card
 * driver (no card-type probing). OpenSC fetches 61xx remainders with GET RESPONSE itself.
 */
export async function openscSend(apdus: string[], opts: { reader?: string; driver?: string; timeoutMs?: number } = {}): Promise<ApduExchange[]> {
  const args = ["-r", opts.reader ?? VPCD_READER, "-c", opts.driver ?? "default"];
  for (const a of apdus) args.push("-s", a);
  const r = await run("opensc-tool", args, { timeoutMs: opts.timeoutMs ?? 60_000 });
  const out = parseOpenscTool(r.stdout);
  if (r.code !== 0 || out.length !== apdus.length) {
    throw new Error(`opensc-tool exited ${r.code} after ${out.length}/${apdus.length} APDUs: ${r.stderr.trim() || r.stdout.slice(-500)}`);
  }
  return out;
}

/** Parses opensc-tool's "Sending: / Received (SW1=0x.., SW2=0x..):" output. */
export function parseOpenscTool(stdout: string): ApduExchange[] {
  const res: ApduExchange[] = [];
  let cur: { command: string; sw: number; bytes: string[] } | undefined;
  let command = "";
  const flush = () => {
    if (cur) res.push({ command: cur.command, sw: cur.sw, data: new Uint8Array(Buffer.from(cur.bytes.join(""), "hex")) });
    cur = undefined;
  };
  for (const line of stdout.split("\n")) {
    const send = /^Sending: ([0-9A-F ]*)$/.exec(line);
    if (send) {
      flush();
      command = send[1].replace(/ /g, "");
      continue;
    }
    const recv = /^Received \(SW1=0x([0-9a-fA-F]{2}), SW2=0x([0-9a-fA-F]{2})\)/.exec(line);
    if (recv) {
      flush();
      cur = { command, sw: parseInt(recv[1] + recv[2], 16), bytes: [] };
      continue;
    }
    const bytes = cur && dumpLineBytes(line);
    if (bytes) cur!.bytes.push(bytes);
    else if (cur && line.trim() !== "") flush();
  }
  flush();
  return res;
}

/**
 * The bytes of one line of OpenSC's hex dump: n "XX " tokens, then n ASCII characters — directly after the
 * tokens (single-line dumps) or in column 48 (multi-line dumps pad short last lines).
 */
function dumpLineBytes(line: string): string | undefined {
  for (const n of [line.length - 48, line.length / 4]) {
    if (!Number.isInteger(n) || n < 1 || n > 16) continue;
    const hexPart = line.slice(0, 3 * n);
    if (!/^([0-9A-F]{2} )+$/.test(hexPart)) continue;
    if (4 * n !== line.length && !/^ *$/.test(line.slice(3 * n, 48))) continue;
    return hexPart.replace(/ /g, "");
  }
  return undefined;
}

/**
 * Sends APDUs (hex) through pcscd with pcsc-tools' `scriptor`: plain SCardTransmit in one session, T=1,
 * nothing added — a 61xx comes back as is, and extended APDUs are passed through.
 */
export async function scriptorSend(apdus: string[], opts: { reader?: string; timeoutMs?: number } = {}): Promise<{ sw: number; data: Uint8Array }[]> {
  const r = await run("scriptor", ["-r", opts.reader ?? VPCD_READER], { input: apdus.join("\n") + "\n", timeoutMs: opts.timeoutMs ?? 60_000 });
  const out: { sw: number; data: Uint8Array }[] = parseScriptor(r.stdout);
  if (r.code !== 0 || out.length !== apdus.length) {
    throw new Error(`scriptor exited ${r.code} after ${out.length}/${apdus.length} APDUs: ${r.stderr.trim() || r.stdout.slice(-500)}`);
  }
  return out;
}

/** Parses scriptor's "< XX XX ... [: status text]" responses, which wrap over lines of 16 bytes. */
export function parseScriptor(stdout: string): { sw: number; data: Uint8Array }[] {
  const out: { sw: number; data: Uint8Array }[] = [];
  let cur: string[] | undefined;
  const flush = () => {
    if (cur) {
      const bytes = Buffer.from(cur.join(""), "hex");
      if (bytes.length >= 2) out.push({ data: new Uint8Array(bytes.subarray(0, bytes.length - 2)), sw: bytes.readUInt16BE(bytes.length - 2) });
    }
    cur = undefined;
  };
  for (const raw of stdout.replace(/\r/g, "").split("\n")) {
    let line = raw;
    if (line.startsWith("< ")) {
      flush();
      cur = [];
      line = line.slice(2);
    } else if (!cur) continue;
    else if (!/^([0-9A-F]{2} ?)+( : .*)?$/.test(line)) {
      flush();
      continue;
    }
    const status = line.indexOf(" : ");
    cur.push((status >= 0 ? line.slice(0, status) : line).replace(/\s/g, ""));
    if (status >= 0) flush();
  }
  flush();
  return out;
}

/** ATR of the card in the reader, as opensc-tool reports it (upper-case hex). */
export async function readerAtr(reader = VPCD_READER): Promise<string> {
  const r = await run("opensc-tool", ["-r", reader, "-a"], { timeoutMs: 30_000 });
  if (r.code !== 0) throw new Error(`opensc-tool -a exited ${r.code}: ${r.stderr.trim()}`);
  return r.stdout.trim().replace(/:/g, "").toUpperCase();
}

export const toHex = hex;

/** OpenSC configuration that pins the PIV-II driver (no other drivers' probe APDUs). Optional: see the file. */
export const OPENSC_PIV_CONF = join(REPO_ROOT, "test", "fixtures", "opensc.conf");

/** Runs pkcs11-tool with OpenSC's PKCS#11 module; `pinPiv` sets OPENSC_CONF to OPENSC_PIV_CONF. Never throws on exit status. */
export function pkcs11Tool(args: string[], opts: { pinPiv?: boolean; timeoutMs?: number } = {}): Promise<RunResult> {
  const env = opts.pinPiv ? { ...process.env, OPENSC_CONF: OPENSC_PIV_CONF } : process.env;
  return run("pkcs11-tool", ["--module", OPENSC_PKCS11, ...args], { env, timeoutMs: opts.timeoutMs ?? 60_000 });
}

/**
 * Wraps a card so every command's header (CLA INS P1 P2, hex) and status word are recorded — never data, which
 * can carry PINs or keys. For checking which commands middleware sends.
 */
export function recordingCard(card: IccLike): IccLike & { log: { header: string; sw: number }[] } {
  const log: { header: string; sw: number }[] = [];
  return {
    log,
    get atr() {
      return card.atr;
    },
    reset: () => card.reset(),
    transmit: (apdu: Uint8Array) => {
      const r = card.transmit(apdu);
      log.push({ header: hex(apdu.subarray(0, 4)), sw: (r[r.length - 2] << 8) | r[r.length - 1] });
      return r;
    },
  };
}
