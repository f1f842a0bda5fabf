// The user terminal (issue 3 §6; seed 000 ST22-ST25, embodiment 2): the user-side library that keeps one card
// supplied. It proves the card to the issuer (the card answers an SCP03 challenge the server sends, and checks
// the server's EXTERNAL AUTHENTICATE in turn), fetches the packages waiting for the card, relays each into the
// card with LOAD PACKAGE and acknowledges it; when the card is full it moves the least recently used slot out to
// the overflow store and retries; it brings slots back on demand, and forwards server-driven relay sessions
// (personalisation, online delivery).
//
// It must never see a private key in clear, and it does not: packages are sealed for the card, relay APDUs are
// MACed/encrypted under session keys the terminal does not have, and what the overflow store keeps is the card's
// own sealed export. The only secret the terminal holds is the card-bound token (memory only) and the PIN the
// user gives it for moving keys out (EXPORT KEY WRAPPED and DELETE KEY need it).
//
// Its state file (issue 15 §6) lives in a directory created 0700 and refused when other users may write it; it is
// written 0600 to a fresh temporary name (O_EXCL | O_NOFOLLOW) and renamed into place, and read without following a
// symlink (src/util/files.ts).

import { dirname } from "node:path";
import { parseResponse } from "../protocol/apdu.ts";
import { CERT_OBJECT, packageHeader } from "../protocol/package.ts";
import { transmitFollowing } from "../protocol/apdu-client.ts";
import type { CardTransport } from "../transport/transport.ts";
import { ApduError } from "../protocol/apdu-client.ts";
import type { IssuerApiClient, RelayCardResult, RelayStart } from "./api-client.ts";
import { readCardInfo } from "../protocol/card-info.ts";
import { moveOut, type OverflowEntry } from "../protocol/overflow.ts";
import { OverflowStore } from "./overflow.ts";
import { PivClient } from "../protocol/piv/client.ts";
import { ensurePrivateDirectory, readFileNoFollow, UnsafeFileError, writeFileAtomic } from "../util/files.ts";

const SW_OK = 0x9000;
const SW_FULL = 0x6a84;
const SW_NO_KEY = 0x6a88;
const swText = (sw: number) => sw.toString(16).toUpperCase().padStart(4, "0");

export class TerminalError extends Error {
  constructor(
    message: string,
    readonly sw?: number,
  ) {
    super(message);
    this.name = "TerminalError";
  }
}

/** What the terminal remembers between runs, per card: where syncing stopped and which slots were used when. */
export interface TerminalState {
  version: 1;
  cardId: string;
  /** Highest package sequence number handled (loaded and acknowledged, or refused for good by the card). */
  lastSeq: number;
  /** Packages the card accepted whose acknowledgement has not reached the server yet. */
  pendingAcks: number[];
  /** A logical clock for least-recently-used order (no wall clock: it may jump). */
  clock: number;
  /** Slots this terminal knows to be on the card, with the clock value of their last use. */
  slots: Record<string, number>;
}

export interface UserTerminalOptions {
  /** The issuer; its token (if any) is used for relay sessions, the card-bound token for everything else. Only
   *  the overflow operations work without it. */
  api?: IssuerApiClient;
  transport: CardTransport;
  /** JSON file for TerminalState (or a function of the card ID naming it); without it, memory only. */
  stateFile?: string | ((cardId: string) => string);
  /** Where slots go when the card is full. Without it a full card stops the sync. */
  overflow?: OverflowStore;
  /** The card's PIN, needed to move a slot out (EXPORT KEY WRAPPED, DELETE KEY). Never stored. */
  pin?: string;
  /**
   * Picks the slot to move out of a full card. `candidates` is least recently used first; return one of them,
   * or undefined to give up. Default: the first (LRU).
   */
  chooseSlot?: (candidates: string[], incoming: string) => string | undefined;
}

export interface PackageOutcome {
  seq: number;
  slot: string;
  status: "loaded" | "refused";
  /** The card's status word when it refused (6985: replayed or older; 6A80: not for this card or altered). */
  sw?: string;
  reason?: string;
}

export interface SyncReport {
  cardId: string;
  fetched: number;
  packages: PackageOutcome[];
  /** Slots moved to the overflow store to make room. */
  movedOut: string[];
  lastSeq: number;
}

/** Parses expiresAt as the server sends it: ISO 8601, epoch milliseconds or epoch seconds. */
function expiryMs(v: string | number): number {
  if (typeof v === "number") return v < 1e12 ? v * 1000 : v;
  const n = Date.parse(v);
  return Number.isNaN(n) ? 0 : n;
}

const slotHex = (slot: string | number): string => {
  const s = typeof slot === "number" ? slot.toString(16) : slot.toLowerCase();
  if (!/^[0-9a-f]{2}$/.test(s)) throw new TerminalError(`not a key reference: ${String(slot)} (two hex digits, e.g. 9a)`);
  return s.padStart(2, "0");
};

/**
 * Forwards a server-driven relay session to a card: each round's APDUs go to the card (61xx followed with GET
 * RESPONSE), the card's answers go back, until the server reports the script's results.
 */
export async function relaySession(api: IssuerApiClient, transmit: (apdu: Uint8Array) => Promise<Uint8Array>, start: RelayStart): Promise<RelayCardResult[]> {
  let apdus = start.apdus;
  // A script has two rounds (relay.ts); a bound keeps a misbehaving server from looping the terminal forever.
  for (let round = 0; round < 16; round++) {
    const responses: Uint8Array[] = [];
    for (const a of apdus) responses.push(await transmitFollowing(transmit, a));
    const r = await api.relayStep(start.sessionId, responses);
    if ("done" in r) return r.results;
    apdus = r.apdus;
  }
  throw new TerminalError(`relay session ${start.sessionId} did not finish in 16 rounds`);
}

export class UserTerminal {
  readonly cardId: string;
  private readonly server: IssuerApiClient | undefined;
  private readonly transport: CardTransport;
  private readonly o: UserTerminalOptions;
  private readonly stateFile: string | undefined;
  private state: TerminalState;
  private token: { value: string; expiresAt: number } | undefined;

  private constructor(o: UserTerminalOptions, cardId: string, state: TerminalState, stateFile: string | undefined) {
    this.o = o;
    this.stateFile = stateFile;
    this.server = o.api;
    this.transport = o.transport;
    this.cardId = cardId;
    this.state = state;
  }

  /** Reads the card's ID through APDUs and loads (or starts) the terminal state for it. */
  static async open(o: UserTerminalOptions): Promise<UserTerminal> {
    const info = await readCardInfo((a) => o.transport.transmit(a));
    if (!("cardId" in info)) throw new TerminalError("the card is terminated");
    if (info.lifecycle === "OP_READY") throw new TerminalError(`card ${info.cardId} is blank: personalise it first`);
    const fresh: TerminalState = { version: 1, cardId: info.cardId, lastSeq: 0, pendingAcks: [], clock: 0, slots: {} };
    let state = fresh;
    const stateFile = typeof o.stateFile === "function" ? o.stateFile(info.cardId) : o.stateFile;
    let saved: Buffer | undefined;
    try {
      if (stateFile) ensurePrivateDirectory(dirname(stateFile));
      saved = stateFile ? readFileNoFollow(stateFile) : undefined;
    } catch (e) {
      if (e instanceof UnsafeFileError) throw new TerminalError(`terminal state ${stateFile}: ${e.message}`);
      throw e;
    }
    if (stateFile && saved) {
      let parsed: TerminalState;
      try {
        parsed = JSON.parse(saved.toString("utf8")) as TerminalState;
      } catch (e) {
        throw new TerminalError(`terminal state ${stateFile}: ${(e as Error).message}`);
      }
      if (parsed?.version !== 1 || typeof parsed.lastSeq !== "number" || typeof parsed.slots !== "object") throw new TerminalError(`terminal state ${stateFile}: not a terminal state file`);
      if (parsed.cardId !== info.cardId) throw new TerminalError(`terminal state ${stateFile} belongs to card ${parsed.cardId}, not ${info.cardId}`);
      state = { ...fresh, ...parsed };
    }
    return new UserTerminal(o, info.cardId, state, stateFile);
  }

  private get api(): IssuerApiClient {
    if (!this.server) throw new TerminalError("this terminal has no issuer server");
    return this.server;
  }

  /** A copy of the terminal's state. */
  get status(): TerminalState {
    return structuredClone(this.state);
  }

  private transmit = (apdu: Uint8Array): Promise<Uint8Array> => this.transport.transmit(apdu);

  private save(): void {
    const f = this.stateFile;
    if (!f) return;
    ensurePrivateDirectory(dirname(f));
    writeFileAtomic(f, JSON.stringify(this.state, null, 2) + "\n");
  }

  /** Marks a slot as used now (least-recently-used order for moving slots out). */
  touch(slot: string | number): void {
    this.state.slots[slotHex(slot)] = ++this.state.clock;
    this.save();
  }

  /**
   * Card-bound authentication (issue 3 §8): the server's SELECT, INITIALIZE UPDATE and GET DATA DF23 go to the
   * card; its cryptogram and MACed state counter go back; the server answers with a token for this card only, and
   * with EXTERNAL AUTHENTICATE, which the card checks in turn — a server that does not hold the card's key is
   * refused here. A card whose state counter went back is refused by the server (ApiError 409, card-rollback).
   */
  async authenticate(): Promise<{ expiresAt: number }> {
    const start = await this.api.startCardAuth(this.cardId);
    const responses: Uint8Array[] = [];
    for (const a of start.apdus) responses.push(await transmitFollowing(this.transmit, a));
    const done = await this.api.finishCardAuth(this.cardId, start.sessionId, responses);
    for (const a of done.apdus) {
      const sw = parseResponse(await transmitFollowing(this.transmit, a)).sw;
      if (sw !== SW_OK) throw new TerminalError(`the card refused the server's EXTERNAL AUTHENTICATE (${swText(sw)}): the server did not prove the card key`, sw);
    }
    this.token = { value: done.token, expiresAt: expiryMs(done.expiresAt) };
    return { expiresAt: this.token.expiresAt };
  }

  /** The API as this card (authenticating first when there is no token or it is about to expire). */
  async cardClient(): Promise<IssuerApiClient> {
    return this.asCard();
  }

  private async asCard(): Promise<IssuerApiClient> {
    if (!this.token || this.token.expiresAt - Date.now() < 30_000) await this.authenticate();
    return this.api.withToken(this.token!.value);
  }

  /**
   * Fetches the card's new packages and loads them in sequence order (ST23-ST24), acknowledging each the card
   * accepts (ST25). A full card (6A84) gets room by moving a slot out to the overflow store. A package the card
   * refuses for good (replayed, older, not for this card) is reported and not acknowledged; a card that stays
   * full stops the sync where it is, so the next sync resumes there.
   */
  async sync(): Promise<SyncReport> {
    const api = await this.asCard();
    for (const seq of [...this.state.pendingAcks]) await this.ack(api, seq);
    const fetched = await api.packages(this.cardId, this.state.lastSeq);
    const report: SyncReport = { cardId: this.cardId, fetched: fetched.length, packages: [], movedOut: [], lastSeq: this.state.lastSeq };
    const piv = new PivClient(this.transmit);
    await piv.select();
    for (const p of fetched.sort((a, b) => a.seq - b.seq)) {
      if (p.seq <= this.state.lastSeq) continue;
      let slot: string;
      try {
        const h = packageHeader(p.body);
        slot = h.keyRef;
        if (h.kind !== "credential") throw new Error(`a ${h.kind} package is not a delivery`);
      } catch (e) {
        report.packages.push({ seq: p.seq, slot: "??", status: "refused", reason: `malformed package: ${(e as Error).message}` });
        this.state.lastSeq = p.seq;
        this.save();
        continue;
      }
      const sw = await this.loadWithRoom(piv, p.body, slot, report.movedOut);
      if (sw === SW_OK) {
        // A stale export of this slot in the store could otherwise be loaded back over the new key.
        this.o.overflow?.remove(this.cardId, slot);
        this.state.slots[slot] = ++this.state.clock;
        this.state.pendingAcks.push(p.seq);
        this.state.lastSeq = p.seq;
        this.save();
        await this.ack(api, p.seq);
        report.packages.push({ seq: p.seq, slot, status: "loaded" });
      } else {
        this.state.lastSeq = p.seq;
        this.save();
        report.packages.push({ seq: p.seq, slot, status: "refused", sw: swText(sw), reason: refusal(sw) });
      }
    }
    report.lastSeq = this.state.lastSeq;
    return report;
  }

  private async ack(api: IssuerApiClient, seq: number): Promise<void> {
    await api.acknowledgePackage(this.cardId, seq);
    this.state.pendingAcks = this.state.pendingAcks.filter((s) => s !== seq);
    this.save();
  }

  /** LOAD PACKAGE, making room while the card answers 6A84. Returns the final status word. */
  private async loadWithRoom(piv: PivClient, body: Uint8Array, incoming: string, movedOut: string[]): Promise<number> {
    const tried = new Set<string>();
    for (;;) {
      const r = await piv.apdu.send({ cla: 0x80, ins: 0xf2, p1: 0, p2: 0, data: body });
      if (r.sw !== SW_FULL) return r.sw;
      const { overflow, pin } = this.o;
      if (!overflow) throw new TerminalError(`card ${this.cardId} is full (6A84) and this terminal has no overflow store`, SW_FULL);
      if (pin === undefined) throw new TerminalError(`card ${this.cardId} is full (6A84): moving a key out to the overflow store needs the PIN`, SW_FULL);
      const victim = await this.chooseVictim(piv, incoming, tried);
      if (!victim) throw new TerminalError(`card ${this.cardId} is full (6A84) and no slot can be moved out`, SW_FULL);
      tried.add(victim);
      await piv.verifyPin(pin);
      try {
        await moveOut(piv, overflow, parseInt(victim, 16));
      } catch (e) {
        if (e instanceof ApduError && e.sw === SW_NO_KEY) {
          // The terminal's memory was stale: that slot is empty on the card.
          delete this.state.slots[victim];
          this.save();
          continue;
        }
        throw e;
      }
      delete this.state.slots[victim];
      this.save();
      movedOut.push(victim);
      // LOAD PACKAGE runs on the PIV applet; moveOut left it selected, so the retry goes straight on.
    }
  }

  private async chooseVictim(piv: PivClient, incoming: string, tried: Set<string>): Promise<string | undefined> {
    const onCard = new Map(Object.entries(this.state.slots));
    // Slots put on the card by someone else (e.g. online delivery) are found through their certificates.
    for (const ref of Object.keys(CERT_OBJECT)) {
      if (onCard.has(ref)) continue;
      if (await piv.readCertificate(parseInt(ref, 16))) onCard.set(ref, 0);
    }
    const candidates = [...onCard]
      .filter(([s]) => s !== incoming && !tried.has(s))
      .sort((a, b) => a[1] - b[1] || a[0].localeCompare(b[0]))
      .map(([s]) => s);
    if (!candidates.length) return undefined;
    const pick = this.o.chooseSlot ? this.o.chooseSlot(candidates, incoming) : candidates[0];
    if (pick !== undefined && !candidates.includes(pick)) throw new TerminalError(`chooseSlot picked ${pick}, not one of ${candidates.join(", ")}`);
    return pick;
  }

  /** Moves a slot out to the overflow store on the user's request (needs the PIN). */
  async moveOut(slot: string | number): Promise<OverflowEntry> {
    const ref = slotHex(slot);
    const { overflow, pin } = this.o;
    if (!overflow) throw new TerminalError("this terminal has no overflow store");
    if (pin === undefined) throw new TerminalError("moving a key out needs the PIN");
    const piv = new PivClient(this.transmit);
    await piv.select();
    await piv.verifyPin(pin);
    const e = await moveOut(piv, overflow, parseInt(ref, 16));
    delete this.state.slots[ref];
    this.save();
    return e;
  }

  /**
   * Loads a slot back from the overflow store (embodiment 2, "on demand"). If the card is full, another slot
   * (least recently used) goes out first. The store's entry is removed once the card holds the key again.
   */
  async bringBack(slot: string | number): Promise<{ slot: string; movedOut: string[] }> {
    const ref = slotHex(slot);
    const overflow = this.o.overflow;
    if (!overflow) throw new TerminalError("this terminal has no overflow store");
    const entry = overflow.get(this.cardId, ref);
    if (!entry) throw new TerminalError(`no key for slot ${ref} of card ${this.cardId} in the overflow store`);
    const piv = new PivClient(this.transmit);
    await piv.select();
    const movedOut: string[] = [];
    const sw = await this.loadWithRoom(piv, entry.bytes, ref, movedOut);
    if (sw !== SW_OK) throw new TerminalError(`the card refused the stored key for slot ${ref} (${swText(sw)}): ${refusal(sw)}`, sw);
    overflow.remove(this.cardId, ref);
    this.state.slots[ref] = ++this.state.clock;
    this.save();
    return { slot: ref, movedOut };
  }

  /** Slots of this card waiting in the overflow store. */
  overflowSlots(): string[] {
    return this.o.overflow?.list(this.cardId).map((e) => e.keyRef) ?? [];
  }

  /**
   * Forwards a relay session the server drives (personalisation, online delivery). A session belongs to whoever
   * opened it, so pass the client that did; by default the API's own token when it has one (an operator), else
   * the card-bound token.
   */
  async relay(start: RelayStart, api?: IssuerApiClient): Promise<RelayCardResult[]> {
    return relaySession(api ?? (this.api.hasToken ? this.api : await this.asCard()), this.transmit, start);
  }
}

function refusal(sw: number): string {
  switch (sw) {
    case 0x6985:
      return "replayed or older than what the card holds";
    case 0x6a80:
      return "not for this card, or altered";
    case 0x6a88:
      return "sealed under a card key the card does not hold";
    case 0x6982:
      return "security status not satisfied";
    default:
      return "refused by the card";
  }
}
