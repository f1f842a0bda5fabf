// The card's state counter and its report at login (issue 17 §6): how the issuer notices a card image that went
// back to an older copy of itself (restored from a backup or a clone), e.g. a PIN blocked (6983) that a restored
// image shows as 63C3 again.
//
// The counter (CardState.stateCounter) goes up by one in EVERY commit of the card's persistent state
// (CardRuntime.commit), inside the same atomic image write as the change it counts: each PIN or PUK try (the
// decrement committed before the comparison, pin.ts), each INITIALIZE UPDATE (so each login attempt), each package,
// key, PUT KEY, ... A power cut leaves the old state with the old counter or the new state with the new one, never
// a changed state under an old counter. An image restored from a copy carries the copy's lower counter.
//
// The report: after INITIALIZE UPDATE on a logical channel, GET DATA `80 CA DF 23 00` on the ISD answers
//   DF23 { 80 counter (8 bytes, big-endian), 81 MAC (8 bytes) }
//   MAC = SCP03 KDF(S-MAC, 0x80, host challenge || card challenge || counter, 64 bits)   (kdf.ts, SP 800-108)
// with that channel's session S-MAC: derived from the card key Sk and the host's fresh challenge, so only the
// card (or custody) can compute it and a report belongs to one session. 0x80 is cardkms-proprietary (kdf.ts keeps
// GlobalPlatform's constants below it), so the MAC is never a card or host cryptogram. The issuer asks for the
// report in the same round as INITIALIZE UPDATE and checks it with the session material custody computed for the
// card cryptogram (src/server/terminal-routes.ts); a terminal that changes the counter breaks the MAC.
//
// Card side: stateCounterMac, encodeStateCounterReport. Host side: STATE_COUNTER_COMMAND, checkStateCounterReport
// (throws StateCounterError, never CardError).

import { timingSafeEqual } from "node:crypto";
import { encodeCommand, parseResponse } from "./apdu.ts";
import { kdf } from "./scp03/kdf.ts";
import { concat, findTlv, parseTlvs, tlv } from "./tlv.ts";

/** ISD data object of the state counter report. */
export const TAG_STATE_COUNTER = 0xdf23;
/** cardkms-proprietary SCP03 derivation constant of the report's MAC. */
export const DERIVE_STATE_COUNTER = 0x80;
/** The counter is an unsigned integer of 8 bytes on the wire, kept below 2^53 (a JS safe integer). */
export const MAX_STATE_COUNTER = Number.MAX_SAFE_INTEGER;

/** GET DATA DF23 on the ISD: what the host sends after INITIALIZE UPDATE. */
export const STATE_COUNTER_COMMAND: Uint8Array = encodeCommand({ cla: 0x80, ins: 0xca, p1: 0xdf, p2: 0x23, le: 256 });

function counterBytes(counter: number): Uint8Array {
  if (!Number.isSafeInteger(counter) || counter < 0) throw new RangeError("state counter out of range");
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, BigInt(counter));
  return out;
}

/** The report's MAC under a session's S-MAC; `context` is host challenge || card challenge. */
export function stateCounterMac(sMac: Uint8Array, context: Uint8Array, counter: number): Uint8Array {
  return kdf(sMac, DERIVE_STATE_COUNTER, concat(context, counterBytes(counter)), 64);
}

/** DF23 { 80 counter, 81 MAC }. */
export function encodeStateCounterReport(counter: number, mac: Uint8Array): Uint8Array {
  return tlv(TAG_STATE_COUNTER, tlv(0x80, counterBytes(counter)), tlv(0x81, mac));
}

/** Why a report was not accepted: the card refused GET DATA (`sw`), the answer is malformed, or its MAC is wrong. */
export class StateCounterError extends Error {
  constructor(
    readonly reason: "refused" | "malformed" | "mac",
    message: string,
    readonly sw?: number,
  ) {
    super(message);
    this.name = "StateCounterError";
  }
}

/**
 * Host side: the counter of a report (the card's whole response, data || SW) once its MAC verifies under the
 * session's S-MAC and challenges.
 */
export function checkStateCounterReport(response: Uint8Array, s: { sMac: Uint8Array; hostChallenge: Uint8Array; cardChallenge: Uint8Array }): number {
  if (response.length < 2) throw new StateCounterError("malformed", "no status word");
  const r = parseResponse(response);
  if (r.sw !== 0x9000) throw new StateCounterError("refused", `the card refused GET DATA DF23 (SW ${r.sw.toString(16).toUpperCase().padStart(4, "0")})`, r.sw);
  let counter: Uint8Array | undefined;
  let mac: Uint8Array | undefined;
  try {
    const top = parseTlvs(r.data);
    const inner = top.length === 1 && top[0].tag === TAG_STATE_COUNTER ? parseTlvs(top[0].value) : [];
    counter = inner.length === 2 ? findTlv(inner, 0x80) : undefined;
    mac = inner.length === 2 ? findTlv(inner, 0x81) : undefined;
  } catch {
    // a TLV error: malformed, below
  }
  if (counter?.length !== 8 || mac?.length !== 8) throw new StateCounterError("malformed", "the state counter report is not DF23 { 80 counter (8), 81 MAC (8) }");
  const value = new DataView(counter.buffer, counter.byteOffset, 8).getBigUint64(0);
  if (value > BigInt(MAX_STATE_COUNTER)) throw new StateCounterError("malformed", "the state counter is out of range");
  const n = Number(value);
  const expected = stateCounterMac(s.sMac, concat(s.hostChallenge, s.cardChallenge), n);
  if (!timingSafeEqual(expected, mac)) throw new StateCounterError("mac", "the state counter report's MAC does not verify");
  return n;
}
