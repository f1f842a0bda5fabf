// A CardTransport to a card in a PC/SC reader, for the host side (the user terminal, the card issuing machine).
// The project talks to PC/SC through the Debian command-line clients (pcsc.ts); this one keeps ONE `scriptor`
// process (pcsc-tools) for the whole session and feeds it APDUs through stdin, one line each, reading each
// response as it comes (`-u`: unbuffered stdout). One process means one PC/SC card handle, so the card keeps its
// selected application, PIN status and secure channel between APDUs, as with a native PC/SC binding.
//
// scriptor sends APDUs as they are (plain SCardTransmit, T=1): 61xx comes back unfollowed, which ApduClient and
// transmitFollowing handle. Nothing here logs APDUs: they can carry PINs and wrapped keys.

import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { hex } from "../protocol/apdu.ts";
import { parseScriptor } from "./pcsc.ts";
import { TransportClosedError, type CardTransport } from "./transport.ts";
import { VPCD_READER } from "./vpcd.ts";

export interface ScriptorTransportOptions {
  /** PC/SC reader name (default: the vpcd reader). */
  reader?: string;
  /** Per-APDU timeout (default 30 s). */
  timeoutMs?: number;
  /** The scriptor executable (default "scriptor" on PATH). */
  command?: string;
}

export class ScriptorTransport implements CardTransport {
  private readonly child: ChildProcessWithoutNullStreams;
  private out = "";
  private err = "";
  private closed = false;
  private exited: string | undefined;
  private waiter: { resolve: (r: Uint8Array) => void; reject: (e: Error) => void; timer: NodeJS.Timeout } | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private readonly timeoutMs: number;

  constructor(readonly o: ScriptorTransportOptions = {}) {
    this.timeoutMs = o.timeoutMs ?? 30_000;
    this.child = spawn(o.command ?? "scriptor", ["-u", "-r", o.reader ?? VPCD_READER], { stdio: ["pipe", "pipe", "pipe"] });
    this.child.stdout.setEncoding("utf8");
    this.child.stderr.setEncoding("utf8");
    this.child.stdout.on("data", (d: string) => {
      this.out += d;
      this.poll();
    });
    this.child.stderr.on("data", (d: string) => {
      this.err = (this.err + d).slice(-2000);
    });
    this.child.on("error", (e) => this.fail(`scriptor: ${e.message}`));
    this.child.on("exit", (code, signal) => this.fail(`scriptor exited (${signal ?? code}): ${this.err.trim().split("\n").pop() ?? ""}`));
    this.child.stdin.on("error", () => {
      // EPIPE after scriptor died: reported through "exit"
    });
  }

  private fail(why: string): void {
    this.exited ??= why;
    const w = this.waiter;
    this.waiter = undefined;
    if (w) {
      clearTimeout(w.timer);
      w.reject(new Error(why));
    }
  }

  /** A response is complete at the end of its " : <status text>" line. */
  private poll(): void {
    const w = this.waiter;
    if (!w) return;
    const at = this.out.search(/(^|\n)< /);
    if (at < 0) return;
    const rest = this.out.slice(this.out[at] === "\n" ? at + 1 : at);
    // Hex tokens never hold " : ", so the first one ends this response (its status text follows).
    const end = / : [^\n]*\n/.exec(rest);
    if (!end) return;
    const chunk = rest.slice(0, end.index + end[0].length);
    this.out = rest.slice(chunk.length);
    const parsed = parseScriptor(chunk);
    this.waiter = undefined;
    clearTimeout(w.timer);
    if (parsed.length !== 1) return w.reject(new Error("scriptor: unparseable response"));
    const r = parsed[0];
    w.resolve(Uint8Array.of(...r.data, r.sw >> 8, r.sw & 0xff));
  }

  transmit(apdu: Uint8Array): Promise<Uint8Array> {
    const run = async (): Promise<Uint8Array> => {
      if (this.closed) throw new TransportClosedError("scriptor transport");
      if (this.exited) throw new Error(this.exited);
      return new Promise<Uint8Array>((resolve, reject) => {
        const timer = setTimeout(() => {
          this.waiter = undefined;
          reject(new Error(`scriptor: no response within ${this.timeoutMs} ms`));
        }, this.timeoutMs);
        this.waiter = { resolve, reject, timer };
        this.child.stdin.write(hex(apdu) + "\n");
      });
    };
    const p = this.queue.then(run, run);
    this.queue = p.catch(() => undefined);
    return p;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.exited) return;
    const gone = new Promise<void>((resolve) => this.child.once("exit", () => resolve()));
    this.child.stdin.end("exit\n");
    const t = setTimeout(() => this.child.kill("SIGTERM"), 5000);
    await gone;
    clearTimeout(t);
  }
}
