// Scripts the issuer runs on a card through an untrusted relay (the user terminal), as Dogtag's TPS does: the
// server holds the SCP03 session, the terminal only forwards APDUs and responses. Two round trips:
//   1. [SELECT aid, INITIALIZE UPDATE]                 -> the card's responses
//   2. [EXTERNAL AUTHENTICATE, wrapped commands ...]   -> the card's responses, R-MAC checked in order
// The terminal sees only MACed (and, for key material, encrypted) commands; any change it makes is refused by
// the card (6988), and any change to a response is caught here (bad R-MAC).
//
// Between two round trips the session can be kept as RelaySessionState (snapshot / restore, issue 16 §1), so that
// another server takes the next round: the step, how many APDUs carry each command, and the SCP03 host's state
// (scp03/host.ts Scp03SessionState) — public values only, never a session key; a restored session gets its session
// keys again from ScriptKeys (custody derives them from the two challenges) for the round it takes, and close()
// wipes them after. The script itself is not part of the state: the caller rebuilds it, the same, for the round.
//
// Never: custody or a key store. The session keys come from ScriptKeys — a static key set held here, or a
// SessionSource that turns the challenges into session keys where the static keys are (issuer/card-keys.ts builds
// one from key custody).

import { encodeCommand, parseResponse, type ApduCommand } from "./apdu.ts";
import { Scp03Error, Scp03HostSession } from "./scp03/host.ts";
import { transmitFollowing } from "./apdu-client.ts";
import type { Scp03Keys, Scp03SessionState, SessionSource } from "./scp03/host.ts";

/** Full protection: C-MAC, C-DECRYPTION, R-MAC, R-ENCRYPTION. */
export const LEVEL_FULL = 0x33;

/**
 * The keys of a script's SCP03 session: the key version, and the static keys held here or a SessionSource where
 * they live elsewhere (key custody). `explainMismatch`: with a SessionSource, says why a card's answer to
 * INITIALIZE UPDATE did not authenticate (e.g. a blank card without its per-card transport keys), or nothing.
 */
export interface ScriptKeys {
  kvn: number;
  keys: Scp03Keys | SessionSource;
  explainMismatch?: (hostChallenge: Uint8Array, initUpdateResponse: Uint8Array) => string | undefined;
}

export class RelayError extends Error {
  constructor(
    message: string,
    readonly sw?: number,
  ) {
    super(message);
    this.name = "RelayError";
  }
}

export interface RelayResult {
  data: Uint8Array;
  sw: number;
}

type Step = "new" | "selected" | "authenticating" | "done" | "failed";

/** A relay session between two round trips (issue 16 §1): no key, no command, only what the next round needs. */
export interface RelaySessionState {
  step: "selected" | "authenticating";
  /** For each command of the script, how many APDUs (chain parts) carry it (set once authenticating). */
  parts: number[];
  host: Scp03SessionState;
}

export class ScriptRelaySession {
  private step: Step = "new";
  private session: Scp03HostSession | undefined;
  /** For each command of the script, how many APDUs (chain parts) carry it. */
  private parts: number[] = [];

  constructor(
    private readonly keys: ScriptKeys,
    private readonly aid: Uint8Array,
    private readonly script: ApduCommand[],
    private readonly opts: { level?: number; channel?: number } = {},
  ) {}

  get finished(): boolean {
    return this.step === "done" || this.step === "failed";
  }

  /**
   * The session between two round trips (after start(), or after a round that answered APDUs), without any key.
   * Take it before close().
   */
  snapshot(): RelaySessionState {
    if ((this.step !== "selected" && this.step !== "authenticating") || !this.session) throw new RelayError(`a ${this.step} relay session has no state to keep`);
    return { step: this.step, parts: [...this.parts], host: this.session.snapshot() };
  }

  /**
   * A session from its snapshot, over the same keys, application and script it was started with (the caller rebuilds
   * them). Its session keys, when it is past round 1, come back in next() (from ScriptKeys).
   */
  static restore(keys: ScriptKeys, aid: Uint8Array, script: ApduCommand[], state: RelaySessionState): ScriptRelaySession {
    if (state.step !== "selected" && state.step !== "authenticating") throw new RelayError("relay session state: unknown step");
    if (!Array.isArray(state.parts) || state.parts.some((n) => !Number.isInteger(n) || n < 1)) throw new RelayError("relay session state: bad parts");
    if (state.step === "authenticating" && state.parts.length !== script.length)
      throw new RelayError(`relay session state: ${state.parts.length} commands were wrapped, the script has ${script.length}`);
    const r = new ScriptRelaySession(keys, aid, script, { level: state.host.level, channel: state.host.channel });
    r.session = Scp03HostSession.restore(state.host, typeof keys.keys === "function" ? null : keys.keys);
    r.step = state.step;
    r.parts = [...state.parts];
    return r;
  }

  /** Ends the host side and wipes the session keys (after a snapshot, when another round may come elsewhere). */
  close(): void {
    this.session?.end();
  }

  /** Round 1: select the application and start the secure channel. */
  start(): Uint8Array[] {
    if (this.step !== "new") throw new RelayError("relay session already started");
    const k = this.keys;
    this.session = new Scp03HostSession(typeof k.keys === "function" ? null : k.keys, {
      level: this.opts.level ?? LEVEL_FULL,
      kvn: k.kvn,
      channel: this.opts.channel ?? 0,
    });
    this.step = "selected";
    return [encodeCommand({ cla: this.opts.channel ?? 0, ins: 0xa4, p1: 0x04, p2: 0x00, data: this.aid, le: 256 }), this.session.initializeUpdate()];
  }

  /** Feeds the card's responses to the last round; returns the next round, or the script's results when done. */
  async next(responses: Uint8Array[]): Promise<{ apdus: Uint8Array[] } | { results: RelayResult[] }> {
    try {
      return await this.advance(responses);
    } catch (e) {
      this.step = "failed";
      this.session?.end();
      if (e instanceof RelayError) throw e;
      if (e instanceof Scp03Error) throw new RelayError(e.message);
      throw e;
    }
  }

  private async advance(responses: Uint8Array[]): Promise<{ apdus: Uint8Array[] } | { results: RelayResult[] }> {
    const s = this.session;
    if (!s) throw new RelayError("relay session not started");
    if (this.step === "selected") {
      if (responses.length !== 2) throw new RelayError(`expected 2 responses, got ${responses.length}`);
      const sel = parseResponse(responses[0]);
      if (sel.sw !== 0x9000) throw new RelayError("the card refused SELECT", sel.sw);
      const iu = parseResponse(responses[1]);
      if (iu.sw !== 0x9000) throw new RelayError("the card refused INITIALIZE UPDATE", iu.sw);
      let ea: Uint8Array;
      const source = this.keys.keys;
      if (typeof source === "function") {
        const c = s.challenges(responses[1]);
        const material = await source(c.hostChallenge, c.cardChallenge, c.kvn);
        try {
          ea = s.authenticateWith(responses[1], material);
        } catch (e) {
          // a blank card that does not hold its per-card transport keys: say why, when its answer tells
          if (!(e instanceof Scp03Error)) throw e;
          const why = this.keys.explainMismatch?.(c.hostChallenge, responses[1]);
          throw why ? new RelayError(`${e.message} — ${why}`) : e;
        } finally {
          // the host keeps its own copy; custody's is wiped here
          material.sEnc.fill(0);
          material.sMac.fill(0);
          material.sRmac.fill(0);
        }
      } else ea = s.authenticate(responses[1]);
      const apdus = [ea];
      this.parts = [];
      for (const cmd of this.script) {
        const wrapped = s.wrapChained(cmd);
        this.parts.push(wrapped.length);
        apdus.push(...wrapped);
      }
      this.step = "authenticating";
      return { apdus };
    }
    if (this.step === "authenticating") {
      const source = this.keys.keys;
      if (!s.open && typeof source === "function") {
        // restored from a snapshot: custody derives the same session keys again from the two challenges
        const c = s.resumeChallenges;
        const material = await source(c.hostChallenge, c.cardChallenge, c.kvn);
        try {
          s.resumeWith(material);
        } finally {
          material.sEnc.fill(0);
          material.sMac.fill(0);
          material.sRmac.fill(0);
        }
      }
      const expected = 1 + this.parts.reduce((a, b) => a + b, 0);
      if (responses.length !== expected) throw new RelayError(`expected ${expected} responses, got ${responses.length}`);
      const ea = parseResponse(responses[0]);
      if (ea.sw !== 0x9000) throw new RelayError("the card refused EXTERNAL AUTHENTICATE", ea.sw);
      const results: RelayResult[] = [];
      let i = 1;
      for (const n of this.parts) {
        let last: RelayResult = { data: new Uint8Array(0), sw: 0x9000 };
        for (let k = 0; k < n; k++) last = s.unwrap(responses[i++]);
        results.push(last);
      }
      this.step = "done";
      s.end();
      return { results };
    }
    throw new RelayError(`relay session is ${this.step}`);
  }
}

/** Runs a relay session against a card reachable from here (in-process, PC/SC): the same engine as remote. */
export async function runRelay(session: ScriptRelaySession, transmit: (apdu: Uint8Array) => Promise<Uint8Array> | Uint8Array): Promise<RelayResult[]> {
  let apdus = session.start();
  for (;;) {
    const responses: Uint8Array[] = [];
    for (const a of apdus) responses.push(await transmitFollowing(transmit, a));
    const r = await session.next(responses);
    if ("results" in r) return r.results;
    apdus = r.apdus;
  }
}
