// PIN and PUK (ISO 7816-4 VERIFY / CHANGE REFERENCE DATA / RESET RETRY COUNTER semantics).
// The retry counter is decremented and committed BEFORE the candidate is compared, so cutting the power
// after seeing a wrong answer can never give a try back (the anti-tearing rule of real cards).

import { createHash, timingSafeEqual } from "node:crypto";
import type { CardRuntime } from "./runtime.ts";
import type { CardState, PinState } from "./state.ts";
import { CardError, SW } from "./sw.ts";

export type PinRef = "pin" | "puk";

export function hashPin(salt: string, value: string | Uint8Array): string {
  return createHash("sha256").update(Buffer.from(salt, "hex")).update(value).digest("hex");
}

function matches(p: PinState, candidate: Uint8Array): boolean {
  if (!p.hash) return false;
  const a = Buffer.from(hashPin(p.salt, candidate), "hex");
  return timingSafeEqual(a, Buffer.from(p.hash, "hex"));
}

/** 63Cx with x tries left, or 6983 once blocked. */
function failure(tries: number): CardError {
  return tries === 0 ? new CardError(SW.AUTH_METHOD_BLOCKED, "blocked") : new CardError(SW.VERIFY_FAILED | Math.min(tries, 15), "wrong reference data");
}

export function triesLeft(card: CardRuntime, ref: PinRef): number {
  return card.state[ref].tries;
}

/**
 * Checks `candidate` against the PIN or PUK. Throws 63Cx / 6983 on failure.
 * Order of persistent writes: (1) tries-1 committed, (2) compare, (3) on success tries reset committed.
 */
export function verifyReference(card: CardRuntime, ref: PinRef, candidate: Uint8Array): void {
  const before = card.state[ref];
  if (before.tries <= 0) throw new CardError(SW.AUTH_METHOD_BLOCKED, `${ref} blocked`);
  card.commit((s) => {
    s[ref].tries -= 1;
  });
  if (!matches(card.state[ref], candidate)) throw failure(card.state[ref].tries);
  card.commit((s) => {
    s[ref].tries = s[ref].maxTries;
  });
}

/** CHANGE REFERENCE DATA: verifies the old value (with the counter rule above), then sets the new one atomically. */
export function changeReference(card: CardRuntime, ref: PinRef, oldValue: Uint8Array, newValue: Uint8Array): void {
  const before = card.state[ref];
  if (before.tries <= 0) throw new CardError(SW.AUTH_METHOD_BLOCKED, `${ref} blocked`);
  card.commit((s) => {
    s[ref].tries -= 1;
  });
  if (!matches(card.state[ref], oldValue)) throw failure(card.state[ref].tries);
  card.commit((s) => setReference(s, ref, newValue));
}

/** RESET RETRY COUNTER: the PUK (counted like a PIN) unblocks the PIN and sets a new one; PUK reset and new PIN in one commit. */
export function resetRetryCounter(card: CardRuntime, puk: Uint8Array, newPin: Uint8Array): void {
  if (card.state.puk.tries <= 0) throw new CardError(SW.AUTH_METHOD_BLOCKED, "puk blocked");
  card.commit((s) => {
    s.puk.tries -= 1;
  });
  if (!matches(card.state.puk, puk)) throw failure(card.state.puk.tries);
  card.commit((s) => {
    s.puk.tries = s.puk.maxTries;
    setReference(s, "pin", newPin);
  });
}

function setReference(s: CardState, ref: PinRef, value: Uint8Array): void {
  s[ref].hash = hashPin(s[ref].salt, value);
  s[ref].tries = s[ref].maxTries;
}
