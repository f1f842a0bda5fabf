// A card's login for its terminal (seed 000 ST22-ST25, issue 3 §8: "a terminal acts for a card only after the card
// proves itself"; the HTTP side: src/server/terminal-routes.ts). A terminal holds no credential of its own: it relays
// an SCP03 handshake between the issuer and the card, and the issuer, after checking the card cryptogram with the
// card's CURRENT key set in custody, issues a short-lived token bound to that card.
//
//   begin(cardId, client)                  -> the APDUs to relay (SELECT ISD, INITIALIZE UPDATE, GET DATA DF23: the
//                                             state counter report) and the handshake's session ID
//   finish(cardId, sessionId, responses)   -> the token, when it expires, and the EXTERNAL AUTHENTICATE to forward
//
// The proof carries the card's state counter (issue 17 §6, src/protocol/state-counter.ts): MACed under the session
// keys custody derives from the card key, so the terminal cannot change it. It must be above the highest counter the
// card reported at an earlier login (StateCounterRecords, src/issuer/ports.ts); when it is not, the card image went
// back to an older copy (or a clone logged in): the login is refused (card_rollback), audited, notified and the card
// flagged — later logins are refused at once, before any APDU reaches the card, until an operator clears the flag.
//
// Refusals are CardLoginErrors (errors.ts). An unknown card and one that is not active are answered alike: nobody
// learns which card IDs exist. Audited here: "terminal.refused" (the card did not prove itself, or is flagged) and
// "terminal.authenticated", through the issuer's store port.
//
// The pending handshakes and the live terminal tokens are tables the wiring hands in (HandshakeTable,
// TerminalTokenTable; in the system DB, so that a login begun on one server finishes on another and a token issued by
// one is accepted by all (issue 16 §1): src/server/terminal-sessions.ts). A pending handshake is kept without any
// secret: before the card answers, the host's side of SCP03 is its key version and host challenge. Never here: HTTP,
// SQL, a token or key material in a log or an audit entry.

import { encodeCommand, parseResponse } from "../protocol/apdu.ts";
import { Scp03Error, Scp03HostSession } from "../protocol/scp03/host.ts";
import { ISD_AID } from "../protocol/scp03/sm.ts";
import { checkStateCounterReport, STATE_COUNTER_COMMAND, StateCounterError } from "../protocol/state-counter.ts";
import { inCustody, LEVEL_FULL } from "./card-keys.ts";
import { CardLoginError } from "./errors.ts";
import type { Issuer } from "./issuer.ts";
import type { CardStateCounter, StateCounterRecords } from "./ports.ts";

/** A handshake begun and not finished: the card, the key set it must prove, and the host's side of SCP03. */
export interface PendingLogin {
  cardId: string;
  keySetId: string;
  host: Scp03HostSession;
  /** When the handshake began (store clock): a lower counter from a login that crossed another is not a rollback. */
  startedAt: number;
}

/**
 * The pending handshakes. Bounded per card and per card and client address, each bound retiring its oldest, so that
 * a flood against one card retires only the flooder's handshakes.
 */
export interface HandshakeTable {
  /** Keeps `login`, begun by `client`, under a fresh session ID. */
  add(login: PendingLogin, client: string): Promise<string>;
  /**
   * Takes the pending login of card `cardId` under `sessionId`, if it has not expired: it is gone after this (one
   * attempt per handshake; of two servers taking it at once, one gets it).
   */
  take(sessionId: string, cardId: string): Promise<PendingLogin | undefined>;
}

/** The live terminal tokens: one issued for a card at its status_version now; only the table sees it after this. */
export interface TerminalTokenTable {
  issue(cardId: string, statusVersion: number): Promise<{ token: string; expiresAt: number }>;
}

export interface CardLoginOptions {
  issuer: Issuer;
  counters: StateCounterRecords;
  handshakes: HandshakeTable;
  tokens: TerminalTokenTable;
}

const SELECT_ISD = encodeCommand({ cla: 0x00, ins: 0xa4, p1: 0x04, p2: 0x00, data: ISD_AID, le: 256 });
const swHex = (sw: number) => sw.toString(16).toUpperCase().padStart(4, "0");
const relayFailed = (detail: string) => new CardLoginError("relay_failed", detail);
/** The same answer for a card that does not exist and one that is not active: no oracle of card IDs. */
const noActiveCard = (id: string) => new CardLoginError("not_found", `no active card with id ${id}`, "card not found");

/** The refusal of a login of a card whose state went back (now, or flagged before). */
function rollbackRefusal(cardId: string, r: CardStateCounter, now: boolean): CardLoginError {
  const flag = r.rollback!;
  const detail = now
    ? `card ${cardId} reported state counter ${flag.reported}, not above ${r.counter} it reported at an earlier login: its image went back to an older copy, or a clone logged in. The card is flagged; an operator must clear it.`
    : `card ${cardId} is flagged since ${new Date(flag.at).toISOString()}: a login reported state counter ${flag.reported}, not above ${r.counter}. An operator must clear the flag (POST /v1/cards/${cardId}/state-counter/clear).`;
  return new CardLoginError("card_rollback", detail);
}

export class CardLogin {
  readonly #issuer: Issuer;
  readonly #counters: StateCounterRecords;
  readonly #handshakes: HandshakeTable;
  readonly #tokens: TerminalTokenTable;

  constructor(o: CardLoginOptions) {
    this.#issuer = o.issuer;
    this.#counters = o.counters;
    this.#handshakes = o.handshakes;
    this.#tokens = o.tokens;
  }

  /** Starts the login of active card `cardId` for a terminal at `client` (its address): the APDUs to relay and the session ID. */
  async begin(cardId: string, client: string): Promise<{ sessionId: string; apdus: Uint8Array[] }> {
    const store = this.#issuer.store;
    const card = await store.getCard(cardId);
    if (!card || card.status !== "active") throw noActiveCard(cardId);
    // A flagged card gets no INITIALIZE UPDATE: each one the login does not complete counts against the
    // card's secure-channel failure limit, which a terminal retrying in a loop would otherwise reach.
    const remembered = await this.#counters.get(card.id);
    if (remembered?.rollback) throw rollbackRefusal(card.id, remembered, false);
    const keySet = await this.#issuer.currentKeySet(card);
    const host = new Scp03HostSession(null, { level: LEVEL_FULL, kvn: keySet.kvn });
    const apdus = [SELECT_ISD, host.initializeUpdate(), STATE_COUNTER_COMMAND];
    const sessionId = await this.#handshakes.add({ cardId: card.id, keySetId: keySet.id, host, startedAt: store.now() }, client);
    return { sessionId, apdus };
  }

  /**
   * The card's answers to SELECT, INITIALIZE UPDATE and GET DATA DF23: a token bound to the card once its cryptogram
   * and its state counter report verify under its current key set and the counter went up; one attempt per handshake.
   */
  async finish(cardId: string, sessionId: string, responses: readonly Uint8Array[]): Promise<{ token: string; expiresAt: number; apdus: Uint8Array[] }> {
    const hs = await this.#handshakes.take(sessionId, cardId); // one attempt per handshake
    if (!hs || hs.cardId !== cardId) throw new CardLoginError("not_found", `no open authentication session ${sessionId} for card ${cardId}`, "authentication session not found");
    const [sel, iu, report] = responses;
    const swSel = parseResponse(sel).sw;
    if (swSel !== 0x9000) throw relayFailed(`the card refused SELECT (SW ${swHex(swSel)})`);
    const swIu = parseResponse(iu).sw;
    if (swIu !== 0x9000) throw relayFailed(`the card refused INITIALIZE UPDATE (SW ${swHex(swIu)})`);
    let challenges: { hostChallenge: Uint8Array; cardChallenge: Uint8Array };
    try {
      challenges = hs.host.challenges(iu);
    } catch (e) {
      if (e instanceof Scp03Error) throw relayFailed(e.message);
      throw e;
    }
    // The key set may have been rotated since the handshake started: the proof must be for the current one.
    // The card may have left active meanwhile: no token then (the same answer as at the start: no oracle).
    const card = await this.#issuer.card(cardId);
    if (card.status !== "active") throw noActiveCard(cardId);
    const current = await this.#issuer.currentKeySet(card);
    if (current.id !== hs.keySetId) throw new CardLoginError("key_set_changed", "the card's key set changed during authentication; start again");
    const keys = this.#issuer.keysOf(current);
    if (!inCustody(keys)) throw new Error("card keys must be in custody");
    const material = await keys.custody.scp03Session(keys.ref, challenges.hostChallenge, challenges.cardChallenge);
    const store = this.#issuer.store;
    const actor = `card:${cardId}`;
    const refused = async (reason: string, detail: string) => {
      await store.audit({ actor, action: "terminal.refused", subject: cardId, details: { reason, kvn: current.kvn } });
      return new CardLoginError("card_not_proven", detail);
    };
    let externalAuthenticate: Uint8Array;
    let counter: number;
    try {
      try {
        externalAuthenticate = hs.host.authenticateWith(iu, material);
      } catch (e) {
        if (!(e instanceof Scp03Error)) throw e;
        throw await refused("wrong card cryptogram", "wrong card cryptogram: this is not the card, or not its current key set");
      }
      try {
        counter = checkStateCounterReport(report, { sMac: material.sMac, ...challenges });
      } catch (e) {
        if (!(e instanceof StateCounterError)) throw e;
        if (e.reason === "mac") throw await refused("state counter report does not verify", "the state counter report does not verify under the card's session: it was changed on the way");
        throw relayFailed(`the card did not report its state counter: ${e.message}`);
      }
    } finally {
      material.sEnc.fill(0);
      material.sMac.fill(0);
      material.sRmac.fill(0);
      hs.host.end();
    }
    const outcome = await this.#counters.recordLogin(cardId, counter, { since: hs.startedAt, actor, details: { kvn: current.kvn } });
    if (!outcome.accepted) {
      if (outcome.reason === "raced") throw new CardLoginError("login_crossed", "another login of this card crossed this one; start again");
      if (outcome.reason === "flagged")
        await store.audit({ actor, action: "terminal.refused", subject: cardId, details: { reason: "card flagged for a rollback", kvn: current.kvn, stateCounter: counter } });
      throw rollbackRefusal(cardId, outcome.record, outcome.reason === "rollback");
    }
    const { token, expiresAt } = await this.#tokens.issue(cardId, card.statusVersion);
    await store.audit({ actor, action: "terminal.authenticated", subject: cardId, details: { kvn: current.kvn, expiresAt, stateCounter: counter } });
    return { token, expiresAt, apdus: [externalAuthenticate] };
  }

  // ---- the operators' side of the state counter ----------------------------------------------------------------

  /** The counter card `cardId` reported at its last accepted login, and its rollback flag (not_found: no such card). */
  async stateCounter(cardId: string): Promise<{ cardId: string; record: CardStateCounter | undefined }> {
    const card = await this.#issuer.card(cardId);
    return { cardId: card.id, record: await this.#counters.get(card.id) };
  }

  /** An operator's decision on a card flagged for a rollback: the flag and the counter removed (audited by the records). */
  async clearRollback(cardId: string, o: { actor: string; reason: string }): Promise<CardStateCounter> {
    const card = await this.#issuer.card(cardId);
    const cleared = await this.#counters.clear(card.id, o);
    if (!cleared) throw new CardLoginError("not_flagged", `card ${card.id} is not flagged for a rollback`);
    return cleared;
  }

  /** The cards flagged for a rollback, the oldest flag first. */
  flagged(): Promise<CardStateCounter[]> {
    return this.#counters.listFlagged();
  }
}
