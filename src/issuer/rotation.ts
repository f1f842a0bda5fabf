// Card key rotation Sk1 -> Sk2 onto a new card (seed 000 embodiments 3, 4 and 5, para 0059-0098, FIG. 15).
//
// Issuer side: a rotation is proposed (by an operator, or by the validity scan, para 0062), approved by operators
// other than the proposer (four eyes, rotation-approvals.ts: each approval bound to the old card, key set,
// strategy, new card ID, additions and drops fixed at proposal), and then run: the NEW card (the approved card ID, a
// new `cards` row for the same user) is issued with the key set Sk2 (KVN 2, diversified in custody for the new card)
// — and, for embodiments 4 and 5, Sk1 beside it — then the system DB is updated and packages are created as the
// strategy's row of FIG. 15 says (FIG15 below, policy as data). Every step is appended to the audit log.
//
// Issue 15: what a rotation acts on is checked where it acts (the old card active and the only owner of the keys
// under its key set; the new card personalised before anything is distributed), in the transaction that acts. The
// distribution is explicit state (rotation_items, rotation-repository.ts): claimed once per rotation by a guarded
// UPDATE, then one item per slot moved on by guarded UPDATEs — pending, packaged, delivered (its package fetched by
// the new card's terminal), acknowledged (the card's receipt) or dropped by the approved proposal — so concurrent and
// resumed calls make each package and key once, on any number of servers, and the rotation completes only when
// nothing is owed.
//
// Terminal side (terminalRotate, rotation-terminal.ts, re-exported here): what the user terminal does with the old
// card, the new card and its overflow store (the seed's hard disk HD) for each strategy.
//
// Mechanism for "the new card holds Sk1 and Sk2" (embodiments 4, 5): the new card receives, as its KVN 1, the
// very key set Sk1 of the old card (same custody reference: the old card's diversified keys), bound by STORE DATA
// key set origin to the old card's ID — a predecessor key set (isd.ts): its purpose keys are derived with the old
// card's ID, so the new card opens the old card's Sk1[PRk] exports that the terminal hands it (para 0088-0089),
// each (old card, slot) no older than one it already took. Its own Sk2, KVN 2, is the newest own key set: new
// keys are wrapped under it, and its exports are sealed under it and its own card ID (embodiment 5, FIG. 22-24).
// Credential packages addressed to the old card stay the old card's (package.ts).
//
// What it must never do: see a private key in clear (custody wraps and re-wraps), or send a pair over the network
// that FIG. 15 does not list for the strategy.

import { CARD_ACTS } from "./card-lifecycle.ts";
import type { KeyAlg } from "../card/state.ts";
import { PURPOSE } from "../protocol/derivation.ts";
import { assemblePackage, packageHeaderBytes, packagePlaintext } from "../protocol/package.ts";
import type { DerivedKeySetRef, KeySetRef } from "../custody/custody.ts";
import type { Transmit } from "../protocol/apdu-client.ts";
import { isKind } from "../util/errors.ts";
import type { IssuerStore, RotationRecords } from "./ports.ts";
import type { Card, CardKeySet, DeliveryPackage, Rotation, RotationDistribution, RotationStrategy } from "./records.ts";
import { canonicalAdded, OWED_ITEM_STATES, type AddedCredentialSpec, type RotationItem } from "./rotation-records.ts";
import { CARD_KEY_ALGS, Issuer, IssuerError, SLOTS, type IssuedCredential, type Slot } from "./issuer.ts";
import { personalisationScript, runScript, type CardScript } from "./card-scripts.ts";
import { runRewrap, type RewrapOptions } from "./rewrap.ts";
import { approvalState, approveRotation, bindingDetails, requireApproved, type ApprovalState } from "./rotation-approvals.ts";

export type { RotationStrategy } from "./records.ts";
export { terminalRotate, type TerminalRotateInput, type TerminalRotateResult } from "./rotation-terminal.ts";

/** FIG. 15, one row per embodiment: what is added, and what is updated where. */
export const FIG15: Record<RotationStrategy, { add: boolean; systemDb: "all" | "added"; network: "all" | "added"; newCard: "all" | "added"; hd: "all" | "added"; newCardKeySets: ("Sk1" | "Sk2")[] }> =
  {
    embodiment3: { add: false, systemDb: "all", network: "all", newCard: "all", hd: "all", newCardKeySets: ["Sk2"] },
    embodiment4: { add: true, systemDb: "added", network: "added", newCard: "added", hd: "added", newCardKeySets: ["Sk1", "Sk2"] },
    embodiment5: { add: true, systemDb: "all", network: "added", newCard: "added", hd: "all", newCardKeySets: ["Sk1", "Sk2"] },
  };

/** KVN of the new key set Sk2 on the new card. */
export const SK2_KVN = 2;

export interface AddedCredential {
  slot: Slot;
  alg: KeyAlg;
  profile?: string;
}

const refOf = (ks: CardKeySet): KeySetRef => JSON.parse(ks.custodyRef) as KeySetRef;

/** A rotation's distribution as the status query shows it: what was sent, what the new card still owes a receipt for. */
export interface DistributionStatus {
  state: RotationDistribution;
  /** One per slot of the old card and per credential added, by slot. */
  items: RotationItem[];
  /** Slots still owed to the new card (pending, or packaged and not yet fetched by its terminal). */
  owed: string[];
}

export interface RotationResult {
  rotation: Rotation;
  /** What crossed the network: the packages this rotation made for the new card, in sequence order. */
  packages: DeliveryPackage[];
  added: IssuedCredential[];
  distribution: DistributionStatus;
}

export interface CardRotationOptions {
  /** Distinct operators other than the proposer who must approve a rotation (config rotations.approvals; default 1). */
  approvals?: number;
  /** Called once per rotation that completes (metrics). */
  onCompleted?: (r: Rotation) => void;
}

/** What a rotation is proposed with: everything its approvals will cover besides the old card and its key set. */
export interface ProposeInput {
  cardId: string;
  strategy: RotationStrategy;
  /** The new card's ID (8-16 bytes, lowercase hex); a fresh one when not given. */
  newCardId?: string;
  /** Embodiments 4, 5: the credentials distribute adds, generated under Sk2. */
  add?: AddedCredential[];
  /** Slots of the old card whose key pairs the new card is not to get. */
  drop?: string[];
}

/** The states a card may be in for each card a rotation acts on (issue 15 §6). */
/** The card states a rotation acts on (card-lifecycle.ts CARD_ACTS, the one table of what each act allows). */
const OLD_CARD_STATES = CARD_ACTS["rotation.propose"];
const NEW_CARD_STATES = CARD_ACTS["rotation.distribute"];
const CARD_ID = /^([0-9a-f]{2}){8,16}$/;
const PROFILE = /^[A-Za-z][A-Za-z0-9_-]{0,63}$/;

const sameAdded = (a: readonly AddedCredential[] | readonly AddedCredentialSpec[], b: readonly AddedCredentialSpec[]) => canonicalAdded(a) === canonicalAdded(b);
/** How a re-wrap runs: page size, progress, stop signal, and what is awaited before each page's commit (rewrap.ts). */
export type RewrapJobOptions = Pick<RewrapOptions, "pageSize" | "onProgress" | "signal" | "beforeCommit">;

const describeAdded = (a: readonly AddedCredentialSpec[]) => a.map((x) => `${x.slot} ${x.alg}${x.profile ? ` (${x.profile})` : ""}`).join(", ") || "none";

export class CardRotation {
  readonly store: IssuerStore;
  readonly #approvals: number;
  readonly #onCompleted: (r: Rotation) => void;

  constructor(
    readonly issuer: Issuer,
    o: CardRotationOptions = {},
  ) {
    this.store = issuer.store;
    this.#approvals = o.approvals ?? 1;
    this.#onCompleted = o.onCompleted ?? (() => {});
    if (!Number.isInteger(this.#approvals) || this.#approvals < 1 || this.#approvals > 16) throw new RangeError(`rotation approvals: expected 1..16, got ${o.approvals}`);
    // A rotation completes when the new card's terminal fetched the last package it owed (issue 15 §4).
    issuer.onPackagesDelivered("rotation", (cardId, actor) => this.settleFor(cardId, actor));
  }

  private async rotation(id: string): Promise<Rotation> {
    const r = await this.store.getRotation(id);
    if (!r) throw new IssuerError("not_found", `no rotation ${id}`);
    return r;
  }

  /**
   * Proposes rotating the card's current key set (para 0062: detected and notified; it runs once approved). The old
   * card must be active, the new card's ID unused, and every key wrapped under the key set the old card's own
   * (issue 15 §6): the re-wrap re-wraps them all. What the approvals cover is fixed here (rotation-approvals.ts).
   */
  async propose(input: ProposeInput, actor: string): Promise<Rotation> {
    const policy = FIG15[input.strategy];
    if (!policy) throw new IssuerError("invalid", `strategy must be one of ${Object.keys(FIG15).join(", ")}`);
    const add = input.add ?? [];
    const drop = input.drop ?? [];
    if (!policy.add && add.length) throw new IssuerError("invalid", `${input.strategy} adds no key pair (FIG. 15)`);
    for (const a of add) {
      if (!SLOTS.includes(a.slot as (typeof SLOTS)[number])) throw new IssuerError("invalid", `add: slot must be one of ${SLOTS.join(", ")}`);
      if (!CARD_KEY_ALGS.includes(a.alg)) throw new IssuerError("invalid", `add: algorithm must be one of ${CARD_KEY_ALGS.join(", ")}`);
      if (a.profile !== undefined && !PROFILE.test(a.profile)) throw new IssuerError("invalid", `add: profile ${JSON.stringify(a.profile)} is not a profile name`);
    }
    if (new Set(add.map((a) => a.slot)).size !== add.length) throw new IssuerError("invalid", "add: one credential per slot");
    if (new Set(drop).size !== drop.length) throw new IssuerError("invalid", "drop: each slot once");
    if (input.newCardId !== undefined && (!CARD_ID.test(input.newCardId) || input.newCardId === input.cardId))
      throw new IssuerError("invalid", "the new card ID must be 8 to 16 bytes of lowercase hex, other than the old card's");
    return this.store.transaction(async (s) => {
      const repo = s.rotationRecords;
      const card = await s.getCard(input.cardId);
      if (!card) throw new IssuerError("not_found", `no card ${input.cardId}`);
      const old = await repo.holdCard(card.id, OLD_CARD_STATES);
      if (!old.held) throw new IssuerError("conflict", `card ${card.id} is ${old.status}: only an ${OLD_CARD_STATES.join(" or ")} card's key set is rotated`);
      const ks = card.currentKeySetId ? await s.getKeySet(card.currentKeySetId) : undefined;
      if (!ks) throw new IssuerError("invalid", `card ${card.id} has no current key set`);
      if (ks.cardId !== card.id || ks.status === "retired")
        throw new IssuerError("conflict", `key set ${ks.id} is ${ks.status === "retired" ? "retired" : `card ${ks.cardId}'s`}: not a key set card ${card.id} can rotate`);
      await this.#ownKeysOnly(repo, ks.id, card.id);
      if (input.newCardId !== undefined && (await s.getCard(input.newCardId))) throw new IssuerError("conflict", `card ${input.newCardId} exists: the new card must be a new one`);
      if (await s.openRotationForKeySet(ks.id)) throw new IssuerError("conflict", `key set ${ks.id} of card ${card.id} already has an open rotation`);
      const slotted = (await s.listKeyPairs({ cardId: card.id, status: "active" })).filter((k) => k.slot);
      for (const d of drop) if (!slotted.some((k) => k.slot === d)) throw new IssuerError("invalid", `drop: card ${card.id} has no active key pair in slot ${d}`);
      for (const a of add)
        if (slotted.some((k) => k.slot === a.slot && !drop.includes(a.slot)))
          throw new IssuerError("conflict", `add: slot ${a.slot} holds card ${card.id}'s key pair, which the new card gets; add into a free slot, or drop it`);
      let r: Rotation;
      try {
        r = await s.proposeRotation({
          cardId: card.id,
          fromKeySetId: ks.id,
          strategy: input.strategy,
          proposedBy: actor,
          newCardId: input.newCardId,
          added: add,
          dropped: drop,
          approvalsRequired: this.#approvals,
        });
      } catch (e) {
        if (isKind(e, "conflict")) throw new IssuerError("conflict", e.message);
        throw e;
      }
      await s.audit({ actor, action: "rotation.proposed", subject: r.id, details: { ...bindingDetails(r), keySet: ks.id, kvn: ks.kvn, approvalsRequired: r.approvalsRequired } });
      return r;
    });
  }

  /** Refuses a key set that wraps another card's keys (a re-wrap would hand them to this rotation's new card). */
  async #ownKeysOnly(repo: RotationRecords, keySetId: string, cardId: string): Promise<void> {
    const foreign = await repo.foreignWrappedKeys(keySetId, cardId);
    if (foreign.count > 0)
      throw new IssuerError(
        "conflict",
        `key set ${keySetId} wraps ${foreign.count} key pair(s) that are not card ${cardId}'s (first: ${foreign.first}): rotating it would re-wrap them for another card`,
      );
  }

  /** An operator's approval (para 0062; four eyes: rotation-approvals.ts); a proposal from the validity scan is approved the same way. */
  async approve(id: string, actor: string): Promise<Rotation> {
    return approveRotation(this.store, id, actor, { required: this.#approvals });
  }

  /** Withdraws a rotation that has not started (proposed or approved): to change what it is bound to, propose anew. */
  async cancel(id: string, actor: string): Promise<Rotation> {
    return this.store.transaction(async (s) => {
      let r: Rotation;
      try {
        r = await s.cancelRotation(id);
      } catch (e) {
        if (isKind(e, "not_found") || isKind(e, "conflict") || isKind(e, "invalid")) throw new IssuerError(e.kind as "not_found" | "conflict" | "invalid", e.message);
        throw e;
      }
      await s.audit({ actor, action: "rotation.cancelled", subject: id, details: bindingDetails(r) });
      return r;
    });
  }

  /**
   * ST11-ST12 for the new card (para 0063, 0081): the approved new card ID and a `cards` row for the same user, with
   * Sk2 (KVN 2, diversified in custody for the new card) as its current key set and — embodiments 4, 5 — the old
   * card's Sk1 recorded beside it; the rotation moves to running with the number of keys to re-wrap. Idempotent:
   * a running rotation returns its new card. A card ID other than the approved one is refused by name.
   */
  async issueNewCard(id: string, actor: string, input: { cardId?: string } = {}): Promise<{ rotation: Rotation; card: Card; sk2: CardKeySet; sk1?: CardKeySet }> {
    const r0 = await this.rotation(id);
    const bound = r0.toCardId ?? r0.newCardId;
    if (input.cardId !== undefined && input.cardId !== bound) throw new IssuerError("conflict", `new card ${input.cardId} is not the one rotation ${id} was approved for (${bound ?? "none"})`);
    if (r0.status === "running" && r0.toCardId && r0.toKeySetId) {
      const sets = await this.store.listKeySets(r0.toCardId);
      return { rotation: r0, card: await this.issuer.card(r0.toCardId), sk2: sets.find((k) => k.id === r0.toKeySetId)!, sk1: sets.find((k) => k.id !== r0.toKeySetId) };
    }
    if (r0.status !== "approved") throw new IssuerError("conflict", `rotation ${id} is ${r0.status}: it must be approved by an operator first`);
    const cardId = r0.newCardId;
    if (!cardId || !CARD_ID.test(cardId)) throw new IssuerError("conflict", `rotation ${id} is bound to no valid new card ID: cancel it and propose again`);
    await requireApproved(this.store, r0, this.#approvals);
    const old = await this.issuer.card(r0.cardId);
    const sk1 = await this.store.getKeySet(r0.fromKeySetId);
    if (!sk1) throw new IssuerError("invalid", `rotation ${id}: key set ${r0.fromKeySetId} missing`);
    const ref: DerivedKeySetRef = { kind: "derived", master: this.issuer.masterKey, cardId, kvn: SK2_KVN };
    const kcvs = await this.issuer.custody.keySetKcvs(ref);
    const total = await this.store.countWrappedKeys(sk1.id);
    const keepSk1 = FIG15[r0.strategy].newCardKeySets.includes("Sk1");
    const now = this.store.now();
    return this.store.transaction(async (s) => {
      const repo = s.rotationRecords;
      const held = await repo.holdCard(old.id, OLD_CARD_STATES);
      if (!held.held) throw new IssuerError("conflict", `card ${old.id} is ${held.status}: rotation ${id} rotates an ${OLD_CARD_STATES.join(" or ")} card only`);
      await this.#ownKeysOnly(repo, sk1.id, old.id);
      if (await s.getCard(cardId)) throw new IssuerError("conflict", `card ${cardId} exists: rotation ${id}'s new card must be a new one`);
      await s.registerCard({ id: cardId, userId: old.userId, validFrom: now, validUntil: now + (old.validUntil - old.validFrom), status: "issued" });
      const keyDays = sk1.validUntil - sk1.validFrom;
      const sk2 = await s.addKeySet({ cardId, kvn: SK2_KVN, version: 2, validFrom: now, validUntil: now + keyDays, custodyRef: JSON.stringify(ref), label: `Sk2 kcv ${kcvs.enc}`, makeCurrent: true });
      const sk1Copy = keepSk1
        ? await s.addKeySet({ cardId, kvn: sk1.kvn, version: 1, validFrom: sk1.validFrom, validUntil: sk1.validUntil, custodyRef: sk1.custodyRef, label: `Sk1 of card ${old.id}` })
        : undefined;
      const rotation = await s.startRotation(id, { toCardId: cardId, toKeySetId: sk2.id, total });
      await s.audit({
        actor,
        action: "rotation.started",
        subject: id,
        details: { strategy: r0.strategy, oldCard: old.id, newCard: cardId, sk2: sk2.id, kvn: SK2_KVN, keepsSk1: keepSk1, toRewrap: FIG15[r0.strategy].systemDb === "all" ? total : 0 },
      });
      await s.audit({ actor, action: "card.issued", subject: cardId, details: { userId: old.userId, keySet: sk2.id, kvn: SK2_KVN, rotation: id, replaces: old.id } });
      return { rotation, card: (await s.getCard(cardId))!, sk2, sk1: sk1Copy };
    });
  }

  /**
   * ST13-ST14 for the new card: PUT KEY Sk2 over the transport key, then (embodiments 4, 5) PUT KEY Sk1 added
   * beside it under a session on Sk2 (`keep`) and bound to the old card's ID (STORE DATA key set origin), so the
   * card holds KVN 1 (the old card's) and 2 (its own, the newest).
   */
  async newCardScripts(id: string): Promise<CardScript[]> {
    const r = await this.rotation(id);
    if (!r.toCardId || !r.toKeySetId) throw new IssuerError("conflict", `rotation ${id} has no new card yet`);
    const scripts = [await this.issuer.personalisationScriptFor(r.toCardId)];
    const sets = await this.store.listKeySets(r.toCardId);
    const sk2 = sets.find((k) => k.id === r.toKeySetId)!;
    const sk1 = sets.find((k) => k.id !== r.toKeySetId);
    if (sk1) scripts.push(await personalisationScript(this.issuer.keysOf(sk2), this.issuer.keysOf(sk1), { keep: true, predecessor: r.cardId }));
    return scripts;
  }

  /** Personalises the new card at hand (the card issuing machine) and marks it active. */
  async personaliseNewCard(id: string, transmit: Transmit, actor: string): Promise<Card> {
    for (const s of await this.newCardScripts(id)) await runScript(transmit, s);
    return this.issuer.markPersonalised((await this.rotation(id)).toCardId!, actor);
  }

  /** The bulk re-wrap Sk1[PRk] -> Sk2[PRk] in the system DB (embodiments 3, 5; none for 4). Resumable. */
  async rewrap(id: string, opts: RewrapJobOptions = {}): Promise<Rotation> {
    const r = await this.rotation(id);
    if (FIG15[r.strategy].systemDb !== "all") return r;
    return runRewrap({ store: this.store, custody: this.issuer.custody, rotationId: id, ...opts });
  }

  /**
   * The bulk re-wrap as a job of `actor` (the servers' background re-wrap, a leased job: issue 16 §2), from
   * rotation `from` as last read: audited "rotation.rewrap-started" (its cursor, done, total; and `takeover`, the
   * runner it took the job over from, when it resumes another's) before the first page and, when it ran to its end —
   * not stopped by the signal — "rotation.rewrapped" (done, total, cursor as committed). Answers the rotation as
   * last committed and whether the signal stopped it. `beforeCommit` (the job's lease renewal) may end it before a page.
   */
  async rewrapJob(from: Rotation, actor: string, opts: RewrapJobOptions & { takeover?: { from: string | null; attempts: number } } = {}): Promise<{ rotation: Rotation; stopped: boolean }> {
    const { takeover, ...run } = opts;
    const details = { cursor: from.cursor, done: from.done, total: from.total, ...(takeover ? { takeover: { from: takeover.from, attempt: takeover.attempts } } : {}) };
    await this.store.audit({ actor, action: "rotation.rewrap-started", subject: from.id, details });
    const end = await this.rewrap(from.id, run);
    if (opts.signal?.aborted) return { rotation: end, stopped: true };
    await this.store.audit({ actor, action: "rotation.rewrapped", subject: from.id, details: { done: end.done, total: end.total, cursor: end.cursor } });
    return { rotation: end, stopped: false };
  }

  /**
   * Redistribution (issue 15 §1, §4): embodiment 3 sends every pair of the old card as {Sk2[PRk], Ct} (para 0068);
   * 4 and 5 send only the added pairs, generated under Sk2 (ST16-ST21, para 0085-0087), the old ones leaving the old
   * card through the terminal. In three steps, each safe to run concurrently and to resume:
   *   1. the claim, once per rotation (none -> distributing, a guarded UPDATE) in one transaction with what it acts
   *      on: the approvals checked against the binding, the new card personalised (else refused, nothing retired),
   *      one item per slot recorded, the old card's pairs moved to the new card, the old card retired (and Sk1 where
   *      every key was re-wrapped);
   *   2. each pending item packaged by the one call whose guarded UPDATE takes it (an added credential's slot is
   *      claimed before it is certified, issuer.ts), so a second caller makes no second package or key;
   *   3. distributing -> distributed; the rotation completes once every item is delivered (its package fetched by
   *      the new card's terminal) or dropped — here, or when the terminal fetches the last one.
   * `add`, when given, must be the approved additions. Returns the rotation's packages and additions, whoever made them.
   */
  async distribute(id: string, actor: string, opts: { add?: AddedCredential[] } = {}): Promise<RotationResult> {
    let r = await this.rotation(id);
    if (opts.add !== undefined && !sameAdded(opts.add, r.added)) {
      throw new IssuerError("conflict", `add: rotation ${id} was approved to add ${describeAdded(r.added)}, not ${describeAdded(opts.add)}; cancel it and propose the additions anew`);
    }
    if ((r.status !== "running" && r.status !== "completed") || !r.toCardId || !r.toKeySetId) throw new IssuerError("conflict", `rotation ${id} is ${r.status}: issue the new card first`);
    if (r.distribution === "none") await this.#claimDistribution(r, actor);
    r = await this.rotation(id);
    if (r.distribution === "distributing") {
      const busy = await this.#packageItems(r, actor);
      if (busy.length) throw new IssuerError("conflict", `rotation ${id}: another call is distributing it (slot ${busy.join(", ")} in progress); ask again for its result`);
      if (await this.store.finishDistribution(id)) {
        const items = await this.store.rotationRecords.items(id);
        await this.store.audit({
          actor,
          action: "rotation.distributed",
          subject: id,
          details: { newCard: r.toCardId, packages: items.filter((i) => i.packageSeq !== null).map((i) => ({ slot: i.slot, seq: i.packageSeq })) },
        });
      }
    }
    await this.settle(id, actor);
    return this.result(id);
  }

  /** Step 1 of distribute; nothing when another call claimed it first. */
  async #claimDistribution(r0: Rotation, actor: string): Promise<void> {
    const policy = FIG15[r0.strategy];
    await this.store.transaction(async (s) => {
      const r = await s.claimDistribution(r0.id);
      if (!r || !r.toCardId || !r.toKeySetId) return;
      await requireApproved(s, r, this.#approvals);
      const repo = s.rotationRecords;
      const fresh = await repo.holdCard(r.toCardId, NEW_CARD_STATES);
      if (!fresh.held)
        throw new IssuerError(
          "conflict",
          `rotation ${r.id}: new card ${r.toCardId} is ${fresh.status}, not ${NEW_CARD_STATES.join(" or ")}: personalise it first (new-card); nothing was distributed and card ${r.cardId} stays as it is`,
        );
      const old = await repo.holdCard(r.cardId, OLD_CARD_STATES);
      if (!old.held) throw new IssuerError("conflict", `rotation ${r.id}: card ${r.cardId} is ${old.status}, not ${OLD_CARD_STATES.join(" or ")}`);
      if (policy.systemDb === "all" && (await s.countWrappedKeys(r.fromKeySetId, r.cursor)) > 0) throw new IssuerError("conflict", `rotation ${r.id}: the bulk re-wrap has not finished`);
      const oldPairs = (await s.listKeyPairs({ cardId: r.cardId, status: "active" })).filter((k) => k.slot);
      const carried = oldPairs.filter((k) => !r.dropped.includes(k.slot!));
      const taken = new Map((await s.listKeyPairs({ cardId: r.toCardId, status: "active" })).filter((k) => k.slot).map((k) => [k.slot!, k.id]));
      for (const slot of [...carried.map((k) => k.slot!), ...r.added.map((a) => a.slot)]) {
        const other = taken.get(slot);
        if (other)
          throw new IssuerError(
            "conflict",
            `rotation ${r.id}: slot ${slot} of new card ${r.toCardId} holds key pair ${other}, which is not the rotation's; it cannot take the old card's or the approved one`,
          );
      }
      const byPackage = policy.network === "all";
      await repo.addItems(
        r.id,
        [
          ...carried.map((k) => ({
            slot: k.slot!,
            kind: "carried" as const,
            path: byPackage ? ("package" as const) : ("terminal" as const),
            keyPairId: k.id,
            algorithm: k.algorithm,
            profile: null,
            state: byPackage ? ("pending" as const) : ("delivered" as const),
          })),
          ...oldPairs
            .filter((k) => r.dropped.includes(k.slot!))
            .map((k) => ({ slot: k.slot!, kind: "carried" as const, path: "terminal" as const, keyPairId: k.id, algorithm: k.algorithm, profile: null, state: "dropped" as const })),
          ...r.added.map((a) => ({ slot: a.slot, kind: "added" as const, path: "package" as const, keyPairId: null, algorithm: a.alg, profile: a.profile ?? null, state: "pending" as const })),
        ],
        s.now(),
      );
      for (const kp of carried) await s.updateKeyPair(kp.id, { cardId: r.toCardId });
      await s.setCardStatus(r.cardId, "retired");
      await s.audit({ actor, action: "card.retired", subject: r.cardId, details: { from: old.status ?? null, reason: `replaced by card ${r.toCardId} (rotation ${r.id})`, rotation: r.id } });
      if (policy.systemDb === "all") await s.setKeySetStatus(r.fromKeySetId, "retired");
      await s.audit({
        actor,
        action: "rotation.redistributed",
        subject: r.id,
        details: { newCard: r.toCardId, keyPairs: carried.map((k) => k.id), sent: byPackage ? carried.length : 0, dropped: r.dropped, added: r.added.map((a) => a.slot), oldCardRetired: r.cardId },
      });
    });
  }

  /** Step 2 of distribute: packages every pending item this call takes; the slots another call is on. */
  async #packageItems(r: Rotation, actor: string): Promise<string[]> {
    const newCardId = r.toCardId!;
    const sk2 = (await this.store.getKeySet(r.toKeySetId!))!;
    const busy: string[] = [];
    for (const item of await this.store.rotationRecords.items(r.id)) {
      if (item.state !== "pending") continue;
      if (item.kind === "carried") {
        await this.store.transaction(async (s) => {
          const repo = s.rotationRecords;
          if (!(await repo.claimItem(r.id, item.slot, s.now()))) return;
          const w = await s.getWrappedKey(item.keyPairId!, sk2.id);
          if (!w) throw new IssuerError("invalid", `key pair ${item.keyPairId} has no Sk2[PRk]`);
          const cert = (await s.listCertificates(item.keyPairId!)).filter((c) => !c.revokedAt).pop();
          const pkg = await s.createPackage(newCardId, async (seq) => {
            const header = packageHeaderBytes("credential", sk2.kvn, newCardId, item.slot, seq);
            const sealed = await this.issuer.custody.sealForCard(refOf(sk2), PURPOSE.package(1), header, packagePlaintext(item.algorithm as KeyAlg, w.wrapped, cert?.der));
            return assemblePackage(header, sealed.nonce, sealed.ciphertext);
          });
          await repo.setItemPackage(r.id, item.slot, { cardId: newCardId, seq: pkg.seq });
        });
        continue;
      }
      try {
        await this.issuer.requestCredential({ cardId: newCardId, slot: item.slot, alg: item.algorithm as KeyAlg, profile: item.profile ?? undefined }, actor, {
          recorded: async (s, c) => {
            const repo = s.rotationRecords;
            if (!(await repo.claimItem(r.id, item.slot, s.now()))) throw new IssuerError("conflict", `rotation ${r.id}: slot ${item.slot} was packaged by another call`);
            await repo.setItemPackage(r.id, item.slot, { cardId: newCardId, seq: c.package.seq, keyPairId: c.keyPair.id });
          },
        });
      } catch (e) {
        if (!(e instanceof IssuerError && e.code === "conflict")) throw e;
        // The slot's key pair first, then the item: a concurrent call of this rotation records both in one
        // transaction, so a key pair seen here whose item still reads pending afterwards was not the rotation's.
        // (Read the other way round, its commit could fall between the reads and look like an outside issuance.)
        const other = (await this.store.listKeyPairs({ cardId: newCardId, status: "active", slot: item.slot }))[0];
        const now = (await this.store.rotationRecords.items(r.id)).find((i) => i.slot === item.slot);
        if (now?.state !== "pending") continue; // another call packaged it
        if (other)
          throw new IssuerError(
            "conflict",
            `rotation ${r.id}: slot ${item.slot} of new card ${newCardId} holds key pair ${other.id}, issued outside the rotation; the approved addition cannot go there`,
          );
        busy.push(item.slot);
      }
    }
    return busy;
  }

  /** Completes rotation `id` when it is distributed and nothing is owed (audited); true when this call completed it. */
  async settle(id: string, actor: string): Promise<boolean> {
    const done = await this.store.transaction(async (s) => {
      const done = await s.completeDistribution(id);
      if (!done) return undefined;
      const items = await s.rotationRecords.items(id);
      await s.audit({
        actor,
        action: "rotation.completed",
        subject: id,
        details: { strategy: done.strategy, oldCard: done.cardId, newCard: done.toCardId, rewrapped: done.done, items: items.map((i) => ({ slot: i.slot, kind: i.kind, state: i.state })) },
      });
      return done;
    });
    if (done) this.#onCompleted(done);
    return done !== undefined;
  }

  /** After a delivery to card `cardId`: completes the rotations it was the new card of, if nothing is owed any more. */
  async settleFor(cardId: string, actor: string): Promise<void> {
    for (const id of await this.store.rotationRecords.distributedTo(cardId)) await this.settle(id, actor);
  }

  /** What a rotation's approvals and distribution are now: the status query (route and CLI). */
  async status(id: string): Promise<{ rotation: Rotation; approvals: ApprovalState & { proposedBy: string | null }; distribution: DistributionStatus }> {
    const rotation = await this.rotation(id);
    const approvals = await approvalState(this.store, rotation, this.#approvals);
    return { rotation, approvals: { ...approvals, proposedBy: rotation.proposedBy }, distribution: await this.#distribution(rotation) };
  }

  async #distribution(r: Rotation): Promise<DistributionStatus> {
    const items = await this.store.rotationRecords.items(r.id);
    return { state: r.distribution, items, owed: items.filter((i) => OWED_ITEM_STATES.includes(i.state)).map((i) => i.slot) };
  }

  /** The rotation's packages and additions as recorded: the same for every caller of distribute. */
  async result(id: string): Promise<RotationResult> {
    const rotation = await this.rotation(id);
    const distribution = await this.#distribution(rotation);
    const packages: DeliveryPackage[] = [];
    const added: IssuedCredential[] = [];
    for (const i of distribution.items) {
      if (i.packageSeq === null || !rotation.toCardId) continue;
      const pkg = await this.store.getPackage(rotation.toCardId, i.packageSeq);
      if (!pkg) continue;
      packages.push(pkg);
      if (i.kind !== "added" || !i.keyPairId) continue;
      const keyPair = await this.store.getKeyPair(i.keyPairId);
      const certificate = (await this.store.listCertificates(i.keyPairId)).filter((c) => !c.revokedAt).pop();
      if (keyPair && certificate) added.push({ keyPair, certificate, package: pkg });
    }
    packages.sort((a, b) => a.seq - b.seq);
    added.sort((a, b) => a.package.seq - b.package.seq);
    return { rotation, packages, added, distribution };
  }
}
