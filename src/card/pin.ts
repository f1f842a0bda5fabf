// PIN and PUK (ISO 7816-4 VERIFY / CHANGE REFERENCE DATA / RESET RETRY COUNTER semantics).
// The retry counter is decremented and committed BEFORE the candidate is compared, so cutting the power
// after seeing a wrong answer can never give a try back (the anti-tearing rule of real cards). The same commit
// moves the card's state counter (runtime.ts), so an image restored to give tries back is seen at the next login.
//
// Reference data (issue 17 §6): hash = scrypt(SHA-256(salt || value), salt, N = 2^logN, r, p) of 32 bytes, with a
// fresh 16-byte random salt per reference and the cost stored beside it (PinState.kdf). Production default
// DEFAULT_PIN_KDF: N = 2^13, r = 8, p = 1 — 8 MiB of memory and one scrypt per try (about 20-30 ms on the
// reference 2-core machine; VERIFY costs one, CHANGE REFERENCE DATA and RESET RETRY COUNTER two). Cards may be
// made with another cost (CreateCardOptions.pinKdf); an image whose stored cost is outside KDF_LIMITS (never
// written by this code) answers 6984 before a try is spent.
//
// Migration: images made before the KDF hold SHA-256(salt || value), which is exactly the KDF's input, so
// CardRuntime.open stretches them on load without knowing the PIN (upgradeReferences), in one atomic commit; the
// right PIN verifies before and after, and no image opened by this code keeps the fast hash. (A copy of the old
// image taken before still holds it: nothing in the card can change that.)

import { createHash, randomBytes, scryptSync, timingSafeEqual } from "node:crypto";
import type { CardState, PinKdf, PinState } from "./state.ts";
import { CardError, SW } from "../protocol/sw.ts";

export type PinRef = "pin" | "puk";

/** What the PIN checks need of the card (CardRuntime is one): its state, and the atomic commit that changes it. */
export interface PinCard {
  readonly state: Readonly<CardState>;
  commit(mutate: (s: CardState) => void): void;
}

/** The production cost (see the header). */
export const DEFAULT_PIN_KDF: Readonly<PinKdf> = Object.freeze({ alg: "scrypt", logN: 13, r: 8, p: 1 });

/**
 * The cheapest cost a card accepts (N = 2^10, r = 1: 128 KiB), for tests that spend PIN tries by the hundred
 * (tearing, fuzzing), whose subject does not depend on the cost. Never for a card in use.
 */
export const CHEAPEST_PIN_KDF: Readonly<PinKdf> = Object.freeze({ alg: "scrypt", logN: 10, r: 1, p: 1 });

/** Costs a card accepts: N from 2^10 to 2^20, r 1..32, p 1..16, and at most 256 MiB of scrypt memory. */
export const KDF_LIMITS = { logN: [10, 20], r: [1, 32], p: [1, 16], memoryBytes: 256 << 20 } as const;

/** Why `k` is not a usable PIN KDF, or undefined when it is. */
export function pinKdfProblem(k: unknown): string | undefined {
  const o = k as Partial<PinKdf> | null;
  if (typeof o !== "object" || o === null || o.alg !== "scrypt") return "the PIN KDF must be scrypt";
  const within = (v: unknown, [lo, hi]: readonly [number, number]) => Number.isInteger(v) && (v as number) >= lo && (v as number) <= hi;
  if (!within(o.logN, KDF_LIMITS.logN)) return `scrypt logN must be ${KDF_LIMITS.logN.join("..")}`;
  if (!within(o.r, KDF_LIMITS.r)) return `scrypt r must be ${KDF_LIMITS.r.join("..")}`;
  if (!within(o.p, KDF_LIMITS.p)) return `scrypt p must be ${KDF_LIMITS.p.join("..")}`;
  if (128 * 2 ** o.logN! * o.r! > KDF_LIMITS.memoryBytes) return "scrypt memory (128 * N * r) must stay within 256 MiB";
  return undefined;
}

/** SHA-256(salt || value): the reference data of images made before the KDF, and the KDF's input. */
function digest(salt: string, value: string | Uint8Array): Buffer {
  return createHash("sha256").update(Buffer.from(salt, "hex")).update(value).digest();
}

function stretch(d: Uint8Array, salt: string, k: PinKdf): Buffer {
  const N = 2 ** k.logN;
  return scryptSync(d, Buffer.from(salt, "hex"), 32, { N, r: k.r, p: k.p, maxmem: 2 * 128 * N * k.r + (1 << 20) });
}

/** Fresh reference data for `value`: a new salt, the hash under `kdf`, `tries` tries. */
export function newReference(value: string | Uint8Array, tries: number, kdf: Readonly<PinKdf> = DEFAULT_PIN_KDF): PinState {
  const problem = pinKdfProblem(kdf);
  if (problem) throw new RangeError(problem);
  const salt = randomBytes(16).toString("hex");
  return { hash: stretch(digest(salt, value), salt, kdf).toString("hex"), salt, kdf: { ...kdf }, tries, maxTries: tries };
}

/** Reference data from before the KDF, stretched with it (its stored hash is the KDF's input); others as they are. */
export function upgradeReference(p: PinState, kdf: Readonly<PinKdf> = DEFAULT_PIN_KDF): PinState {
  if (p.kdf) return p;
  const hash = p.hash ? stretch(Buffer.from(p.hash, "hex"), p.salt, kdf).toString("hex") : "";
  return { ...p, hash, kdf: { ...kdf } };
}

/** True when the image holds reference data from before the KDF (CardRuntime.open upgrades it). */
export function needsUpgrade(s: Readonly<CardState>): boolean {
  return !s.pin.kdf || !s.puk.kdf;
}

/** Stretches both references of an image made before the KDF (inside a commit). */
export function upgradeReferences(s: CardState): void {
  s.pin = upgradeReference(s.pin);
  s.puk = upgradeReference(s.puk);
}

function matches(p: PinState, candidate: Uint8Array): boolean {
  if (!p.hash) return false;
  const d = digest(p.salt, candidate);
  const h = p.kdf ? stretch(d, p.salt, p.kdf) : d;
  const stored = Buffer.from(p.hash, "hex");
  return h.length === stored.length && timingSafeEqual(h, stored);
}

/** The KDF new reference data of `p` is made with: its own cost when usable, else the default. */
const kdfFor = (p: PinState): Readonly<PinKdf> => (p.kdf && !pinKdfProblem(p.kdf) ? p.kdf : DEFAULT_PIN_KDF);

/** 63Cx with x tries left, or 6983 once blocked. */
function failure(tries: number): CardError {
  return tries === 0 ? new CardError(SW.AUTH_METHOD_BLOCKED, "blocked") : new CardError(SW.VERIFY_FAILED | Math.min(tries, 15), "wrong reference data");
}

export function triesLeft(card: PinCard, ref: PinRef): number {
  return card.state[ref].tries;
}

/**
 * The first step of every comparison: refuses a blocked reference (6983) or one whose stored cost is unusable
 * (6984), then commits tries-1 (and with it the state counter) before anything is compared.
 */
function spendTry(card: PinCard, ref: PinRef): void {
  const p = card.state[ref];
  if (p.tries <= 0) throw new CardError(SW.AUTH_METHOD_BLOCKED, `${ref} blocked`);
  if (p.kdf && pinKdfProblem(p.kdf)) throw new CardError(SW.REFERENCE_DATA_NOT_USABLE, `${ref} reference data has an unusable KDF cost`);
  card.commit((s) => {
    s[ref].tries -= 1;
  });
}

/**
 * Checks `candidate` against the PIN or PUK. Throws 63Cx / 6983 on failure.
 * Order of persistent writes: (1) tries-1 committed, (2) compare, (3) on success tries reset committed.
 */
export function verifyReference(card: PinCard, ref: PinRef, candidate: Uint8Array): void {
  spendTry(card, ref);
  if (!matches(card.state[ref], candidate)) throw failure(card.state[ref].tries);
  card.commit((s) => {
    s[ref].tries = s[ref].maxTries;
  });
}

/** CHANGE REFERENCE DATA: verifies the old value (with the counter rule above), then sets the new one atomically. */
export function changeReference(card: PinCard, ref: PinRef, oldValue: Uint8Array, newValue: Uint8Array): void {
  spendTry(card, ref);
  const p = card.state[ref];
  if (!matches(p, oldValue)) throw failure(p.tries);
  const next = newReference(newValue, p.maxTries, kdfFor(p));
  card.commit((s) => {
    s[ref] = next;
  });
}

/** RESET RETRY COUNTER: the PUK (counted like a PIN) unblocks the PIN and sets a new one; PUK reset and new PIN in one commit. */
export function resetRetryCounter(card: PinCard, puk: Uint8Array, newPin: Uint8Array): void {
  spendTry(card, "puk");
  if (!matches(card.state.puk, puk)) throw failure(card.state.puk.tries);
  const pin = newReference(newPin, card.state.pin.maxTries, kdfFor(card.state.pin));
  card.commit((s) => {
    s.puk.tries = s.puk.maxTries;
    s.pin = pin;
  });
}
