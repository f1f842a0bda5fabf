// Attaches a card to real PC/SC middleware: the card becomes the virtual ICC of vsmartcard's `vpcd` reader
// driver, which pcscd loads from /etc/reader.conf.d/vpcd. vpcd listens on TCP (default port 35963 = 0x8C7B,
// CHANNELID in reader.conf) and the ICC connects to it; pcscd then shows the reader "Virtual PCD 00 00" with our
// card inserted, and any PC/SC client (OpenSC, pcsc-tools, browsers) talks to the card through pcscd.
//
// Wire protocol (vsmartcard virtualsmartcard/src/vpcd/vpcd.c, sendToVICC/recvFromVICC): every message in
// either direction is a 2-byte big-endian length followed by that many bytes. From vpcd, a 1-byte message is a
// control code — 0x00 power off, 0x01 power on, 0x02 reset (none answered), 0x04 get ATR (answered with the
// ATR) — and anything longer is a command APDU, answered with the response APDU. pcscd polls card presence
// with "get ATR" about every 400 ms; a closed connection is a removed card.
//
// The reader has a single slot, so only one card can be attached per port at a time: the connector takes a
// cross-process lock on the port (see lock.ts) before it connects, so concurrent tests queue instead of
// talking to each other's cards. Nothing here ever logs APDU contents (PINs and keys travel in them).

import { EventEmitter } from "node:events";
import { readFileSync } from "node:fs";
import { Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { encodeResponse } from "../protocol/apdu.ts";
import { SW } from "../protocol/sw.ts";
import { acquireFileLock, type FileLock } from "./lock.ts";
import type { IccLike } from "./transport.ts";

export const VPCD_DEFAULT_HOST = "127.0.0.1";
export const VPCD_DEFAULT_PORT = 35963;
/** PC/SC name of the vpcd reader configured by Debian's /etc/reader.conf.d/vpcd (first reader, slot 0). */
export const VPCD_READER = "Virtual PCD 00 00";

const CTRL_POWER_OFF = 0x00;
const CTRL_POWER_ON = 0x01;
const CTRL_RESET = 0x02;
const CTRL_GET_ATR = 0x04;
const MAX_FRAME = 0xffff;

/**
 * The host to reach vpcd at when none is given: $CARDKMS_VPCD_HOST, else the quick-ACK loopback address that
 * scripts/pcsc-up.sh set up and wrote to $CARDKMS_PCSC_DIR/vpcd-host (see there: it turns ~44 ms per APDU into
 * ~0.2 ms), else 127.0.0.1. Any 127/8 address reaches vpcd, which listens on all addresses.
 */
export function defaultVpcdHost(): string {
  const env = process.env.CARDKMS_VPCD_HOST;
  if (env) return env;
  try {
    const h = readFileSync(join(process.env.CARDKMS_PCSC_DIR ?? "/tmp/cardkms-pcsc", "vpcd-host"), "utf8").trim();
    if (/^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h)) return h;
  } catch {
    // no pcsc-up.sh run, or no quick-ACK route
  }
  return VPCD_DEFAULT_HOST;
}

export interface VpcdOptions {
  /** Default: defaultVpcdHost(). */
  host?: string;
  port?: number;
  /** First reconnect delay; doubles per failed attempt up to maxBackoffMs (with ±20% jitter). */
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /**
   * Cross-process lock serializing cards on this port: true (default) uses <tmpdir>/cardkms-vpcd-<port>.lock,
   * a string names the lock file, false disables it.
   */
  lock?: boolean | string;
  /** How long start() waits for the lock. Default 120 s. */
  lockTimeoutMs?: number;
  /** Diagnostics sink (connection events only, never APDU contents). */
  log?: (message: string) => void;
}

export interface VpcdStats {
  connects: number;
  apdus: number;
  atrRequests: number;
  powerOn: number;
  powerOff: number;
  resets: number;
}

export type VpcdState = "idle" | "locking" | "connecting" | "connected" | "closed" | "failed";

/**
 * Events: "connect" (TCP up), "ready" (pcscd has seen the card, see waitReady), "disconnect" (reason string),
 * "cardFailure" (the card threw, e.g. PowerLoss: the connector stops and stays "failed"), "close".
 */
export class VpcdConnector extends EventEmitter {
  readonly host: string;
  readonly port: number;
  readonly stats: VpcdStats = { connects: 0, apdus: 0, atrRequests: 0, powerOn: 0, powerOff: 0, resets: 0 };
  private st: VpcdState = "idle";
  private sock: Socket | undefined;
  private timer: NodeJS.Timeout | undefined;
  private attempts = 0;
  private rx: Buffer = Buffer.alloc(0);
  private lock: FileLock | undefined;
  private startP: Promise<void> | undefined;
  private closeP: Promise<void> | undefined;
  /** Messages seen on the current connection. */
  private seen = { atr: 0, powerOn: false };
  private isReady = false;
  private failure: Error | undefined;

  constructor(
    private readonly card: IccLike,
    private readonly opts: VpcdOptions = {},
  ) {
    super();
    this.host = opts.host ?? defaultVpcdHost();
    this.port = opts.port ?? VPCD_DEFAULT_PORT;
  }

  get state(): VpcdState {
    return this.st;
  }

  /** True while pcscd has this card inserted in the reader (as far as the connector can tell). */
  get ready(): boolean {
    return this.isReady;
  }

  /** Takes the port lock, then connects (and keeps reconnecting) in the background. Idempotent. */
  start(): Promise<void> {
    return (this.startP ??= this.doStart());
  }

  private async doStart(): Promise<void> {
    if (this.st !== "idle") return;
    const lockPath = this.opts.lock === false ? undefined : typeof this.opts.lock === "string" ? this.opts.lock : join(tmpdir(), `cardkms-vpcd-${this.port}.lock`);
    if (lockPath) {
      this.st = "locking";
      const lock = await acquireFileLock(lockPath, this.opts.lockTimeoutMs ?? 120_000, `pid ${process.pid} (cardkms vpcd connector)`);
      if (this.st !== "locking") {
        // closed while waiting for the lock
        await lock.release();
        return;
      }
      this.lock = lock;
    }
    this.st = "connecting";
    this.connect();
  }

  /**
   * Resolves once pcscd has taken the card: vpcd accepted the connection and pcscd powered it up (POWER ON),
   * or — when pcscd did not notice a card swap between two presence polls — polled its ATR twice.
   * Rejects on timeout, on close, or when the card fails.
   */
  waitReady(timeoutMs = 15_000): Promise<void> {
    if (this.isReady) return Promise.resolve();
    if (this.failure) return Promise.reject(this.failure);
    if (this.st === "closed") return Promise.reject(new Error("vpcd connector is closed"));
    return new Promise<void>((resolve, reject) => {
      const done = (err?: Error) => {
        clearTimeout(t);
        this.off("ready", onReady);
        this.off("cardFailure", onFail);
        this.off("close", onClose);
        if (err) reject(err);
        else resolve();
      };
      const onReady = () => done();
      const onFail = (e: Error) => done(e);
      const onClose = () => done(new Error("vpcd connector closed before the card was ready"));
      const t = setTimeout(
        () =>
          done(
            new Error(
              `vpcd at ${this.host}:${this.port} did not take the card within ${timeoutMs} ms (state ${this.st}, ` +
                `${this.stats.connects} connects). Is pcscd running with the vpcd driver? Try scripts/pcsc-up.sh`,
            ),
          ),
        timeoutMs,
      );
      this.on("ready", onReady);
      this.on("cardFailure", onFail);
      this.on("close", onClose);
    });
  }

  /** Removes the card from the reader: stops reconnecting, closes the connection, releases the port lock. */
  close(): Promise<void> {
    return (this.closeP ??= this.doClose());
  }

  private async doClose(): Promise<void> {
    if (this.st !== "failed") this.st = "closed";
    clearTimeout(this.timer);
    this.timer = undefined;
    const s = this.sock;
    this.sock = undefined;
    if (s && !s.destroyed) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => s.destroy(), 1000);
        s.once("close", () => {
          clearTimeout(t);
          resolve();
        });
        s.end();
      });
    }
    this.setReady(false);
    await this.startP?.catch(() => undefined);
    const lock = this.lock;
    this.lock = undefined;
    await lock?.release();
    this.emit("close");
  }

  private log(m: string): void {
    this.opts.log?.(`vpcd ${this.host}:${this.port}: ${m}`);
  }

  private connect(): void {
    if (this.st !== "connecting") return;
    const s = new Socket();
    this.sock = s;
    this.rx = Buffer.alloc(0);
    this.seen = { atr: 0, powerOn: false };
    s.setNoDelay(true);
    let reason = "connection closed";
    s.on("connect", () => {
      s.setNoDelay(true);
      this.st = "connected";
      this.stats.connects++;
      this.log("connected");
      this.emit("connect");
    });
    s.on("data", (d: Buffer) => this.onData(s, d));
    s.on("error", (e: NodeJS.ErrnoException) => {
      reason = e.code ?? e.message;
    });
    s.on("close", () => {
      if (this.sock !== s) return; // closed by close()
      this.sock = undefined;
      const wasConnected = this.st === "connected";
      this.setReady(false);
      if (this.st === "closed" || this.st === "failed") return;
      if (wasConnected) this.log(`disconnected: ${reason}`);
      this.emit("disconnect", reason);
      this.st = "connecting";
      this.scheduleReconnect();
    });
    s.connect(this.port, this.host);
  }

  private scheduleReconnect(): void {
    const min = this.opts.minBackoffMs ?? 100;
    const max = this.opts.maxBackoffMs ?? 2000;
    const base = Math.min(max, min * 2 ** Math.min(this.attempts, 20));
    this.attempts++;
    const delay = Math.round(base * (0.8 + Math.random() * 0.4));
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.connect();
    }, delay);
  }

  private setReady(r: boolean): void {
    if (this.isReady === r) return;
    this.isReady = r;
    if (r) {
      this.log("card present in pcscd");
      this.emit("ready");
    }
  }

  private onData(s: Socket, d: Buffer): void {
    this.rx = this.rx.length ? Buffer.concat([this.rx, d]) : d;
    while (this.rx.length >= 2) {
      const len = this.rx.readUInt16BE(0);
      if (this.rx.length < 2 + len) break;
      const msg = this.rx.subarray(2, 2 + len);
      this.rx = this.rx.subarray(2 + len);
      this.attempts = 0; // the peer is a live vpcd: reset the backoff
      let reply: Uint8Array | undefined;
      try {
        reply = this.handle(msg);
      } catch (e) {
        this.fail(e instanceof Error ? e : new Error(String(e)));
        return;
      }
      if (reply) s.write(frame(reply));
      if (s !== this.sock) return;
    }
  }

  /** One message from vpcd; returns the answer, if the message has one. */
  private handle(msg: Buffer): Uint8Array | undefined {
    if (msg.length === 0) return undefined;
    if (msg.length === 1) {
      switch (msg[0]) {
        case CTRL_GET_ATR:
          this.stats.atrRequests++;
          this.seen.atr++;
          if (!this.isReady && (this.seen.powerOn || this.seen.atr >= 2)) {
            // pcscd updates its reader state right after this answer; give it a moment before clients connect.
            const s = this.sock;
            setTimeout(() => s && this.sock === s && this.setReady(true), 50);
          }
          return this.card.atr;
        case CTRL_POWER_ON:
          // The card's RAM does not survive a power cycle; our runtime models power-up as a warm reset.
          this.stats.powerOn++;
          this.seen.powerOn = true;
          this.card.reset();
          return undefined;
        case CTRL_POWER_OFF:
          this.stats.powerOff++;
          this.card.reset();
          return undefined;
        case CTRL_RESET:
          this.stats.resets++;
          this.card.reset();
          return undefined;
        default:
          this.log(`ignoring unknown control code 0x${msg[0].toString(16).padStart(2, "0")}`);
          return undefined;
      }
    }
    this.stats.apdus++;
    const r = this.card.transmit(new Uint8Array(msg.buffer, msg.byteOffset, msg.byteLength));
    // The length prefix cannot carry more than 65535 bytes (a 65536-byte response plus SW): refuse such a Le.
    return r.length > MAX_FRAME ? encodeResponse({ data: new Uint8Array(0), sw: SW.WRONG_LENGTH }) : r;
  }

  private fail(e: Error): void {
    this.failure = e;
    this.st = "failed";
    this.log(`card failed (${e.name}); removing it from the reader`);
    this.emit("cardFailure", e);
    this.sock?.destroy();
    void this.close();
  }
}

function frame(payload: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(2 + payload.length);
  out.writeUInt16BE(payload.length, 0);
  out.set(payload, 2);
  return out;
}

/** Attaches a card to vpcd and waits until pcscd has it. On failure, everything is cleaned up. */
export async function attachVpcd(card: IccLike, opts: VpcdOptions & { readyTimeoutMs?: number } = {}): Promise<VpcdConnector> {
  const c = new VpcdConnector(card, opts);
  try {
    await c.start();
    await c.waitReady(opts.readyTimeoutMs ?? 15_000);
  } catch (e) {
    await c.close();
    throw e;
  }
  return c;
}
