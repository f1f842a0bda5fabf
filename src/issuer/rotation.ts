// Card key rotation Sk1 -> Sk2 onto a new card (seed 000 embodiments 3, 4 and 5, para 0059-0098, FIG. 15).
//
// Issuer side: a rotation is proposed (by an operator, or by the validity scan, para 0062), approved by an
// operator, and then run: a NEW card (new card ID, a new `cards` row for the same user) is issued with the key set
// Sk2 (KVN 2, diversified in custody for the new card) — and, for embodiments 4 and 5, Sk1 beside it — then the
// system DB is updated and packages are created as the strategy's row of FIG. 15 says (FIG15 below, policy as
// data). Every step is appended to the audit log.
//
// Terminal side (terminalRotate): what the user terminal does with the old card, the new card and its overflow
// store (the seed's hard disk HD) for each strategy.
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

import { randomBytes } from "node:crypto";
import type { KeyAlg } from "../card/state.ts";
import { PURPOSE } from "../card/derivation.ts";
import { assemblePackage, packageHeader, packageHeaderBytes, packagePlaintext } from "../card/package.ts";
import type { DerivedKeySetRef, KeySetRef } from "../custody/custody.ts";
import type { RotationStrategy } from "../store/db.ts";
import type { Card, CardKeySet, DeliveryPackage, Rotation, Store } from "../store/store.ts";
import { appendAudit } from "../store/audit.ts";
import { ApduError, type Transmit } from "../terminal/apdu-client.ts";
import { moveOut, type OverflowStore } from "../terminal/overflow.ts";
import type { PivClient } from "../terminal/piv-client.ts";
import { Issuer, IssuerError, type IssuedCredential, type Slot } from "./issuer.ts";
import { personalisationScript, runScript, type CardScript } from "./card-scripts.ts";
import { runRewrap, type RewrapProgress } from "./rewrap.ts";

export type { RotationStrategy } from "../store/db.ts";

/** FIG. 15, one row per embodiment: what is added, and what is updated where. */
export const FIG15: Record<RotationStrategy, { add: boolean; systemDb: "all" | "added"; network: "all" | "added"; newCard: "all" | "added"; hd: "all" | "added"; newCardKeySets: ("Sk1" | "Sk2")[] }> = {
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

export interface RotationResult {
  rotation: Rotation;
  /** What crossed the network: the packages created for the new card by this rotation, in sequence order. */
  packages: DeliveryPackage[];
  added: IssuedCredential[];
}

const refOf = (ks: CardKeySet): KeySetRef => JSON.parse(ks.custodyRef) as KeySetRef;

export class CardRotation {
  readonly store: Store;

  constructor(readonly issuer: Issuer) {
    this.store = issuer.store;
  }

  private async rotation(id: string): Promise<Rotation> {
    const r = await this.store.getRotation(id);
    if (!r) throw new IssuerError("not_found", `no rotation ${id}`);
    return r;
  }

  /** Proposes rotating the card's current key set (para 0062: detected and notified; it runs once approved). */
  async propose(input: { cardId: string; strategy: RotationStrategy }, actor: string): Promise<Rotation> {
    if (!(input.strategy in FIG15)) throw new IssuerError("invalid", `strategy must be one of ${Object.keys(FIG15).join(", ")}`);
    const card = await this.issuer.card(input.cardId);
    const ks = await this.issuer.currentKeySet(card);
    if (await this.store.openRotationForKeySet(ks.id)) throw new IssuerError("conflict", `key set ${ks.id} of card ${card.id} already has an open rotation`);
    return this.store.transaction(async (s) => {
      const r = await s.proposeRotation({ cardId: card.id, fromKeySetId: ks.id, strategy: input.strategy });
      await appendAudit(s.db, { actor, action: "rotation.proposed", subject: r.id, details: { cardId: card.id, keySet: ks.id, kvn: ks.kvn, strategy: r.strategy } });
      return r;
    });
  }

  /** The operator's approval (para 0062); a proposal from the validity scan is approved the same way. */
  async approve(id: string, actor: string): Promise<Rotation> {
    return this.store.transaction(async (s) => {
      const r = await s.approveRotation(id, actor);
      await appendAudit(s.db, { actor, action: "rotation.approved", subject: id, details: { strategy: r.strategy } });
      return r;
    });
  }

  /**
   * ST11-ST12 for the new card (para 0063, 0081): a new card ID and `cards` row for the same user, with Sk2
   * (KVN 2, diversified in custody for the new card) as its current key set and — embodiments 4, 5 — the old
   * card's Sk1 recorded beside it; the rotation moves to running with the number of keys to re-wrap. Idempotent:
   * a running rotation returns its new card.
   */
  async issueNewCard(id: string, actor: string, input: { cardId?: string } = {}): Promise<{ rotation: Rotation; card: Card; sk2: CardKeySet; sk1?: CardKeySet }> {
    const r0 = await this.rotation(id);
    if (r0.status === "running" && r0.toCardId && r0.toKeySetId) {
      const sets = await this.store.listKeySets(r0.toCardId);
      return { rotation: r0, card: await this.issuer.card(r0.toCardId), sk2: sets.find((k) => k.id === r0.toKeySetId)!, sk1: sets.find((k) => k.id !== r0.toKeySetId) };
    }
    if (r0.status !== "approved") throw new IssuerError("conflict", `rotation ${id} is ${r0.status}: it must be approved by an operator first`);
    const old = await this.issuer.card(r0.cardId);
    const sk1 = await this.store.getKeySet(r0.fromKeySetId);
    if (!sk1) throw new IssuerError("invalid", `rotation ${id}: key set ${r0.fromKeySetId} missing`);
    const cardId = input.cardId ?? randomBytes(8).toString("hex");
    if (!/^([0-9a-f]{2}){8,16}$/.test(cardId) || cardId === old.id) throw new IssuerError("invalid", "the new card ID must be 8 to 16 bytes of lowercase hex, other than the old card's");
    const ref: DerivedKeySetRef = { kind: "derived", master: this.issuer.masterKey, cardId, kvn: SK2_KVN };
    const kcvs = await this.issuer.custody.keySetKcvs(ref);
    const total = await this.store.countWrappedKeys(sk1.id);
    const keepSk1 = FIG15[r0.strategy].newCardKeySets.includes("Sk1");
    const now = this.store.now();
    const res = await this.store.transaction(async (s) => {
      await s.registerCard({ id: cardId, userId: old.userId, validFrom: now, validUntil: now + (old.validUntil - old.validFrom), status: "issued" });
      const keyDays = sk1.validUntil - sk1.validFrom;
      const sk2 = await s.addKeySet({ cardId, kvn: SK2_KVN, version: 2, validFrom: now, validUntil: now + keyDays, custodyRef: JSON.stringify(ref), label: `Sk2 kcv ${kcvs.enc}`, makeCurrent: true });
      const sk1Copy = keepSk1
        ? await s.addKeySet({ cardId, kvn: sk1.kvn, version: 1, validFrom: sk1.validFrom, validUntil: sk1.validUntil, custodyRef: sk1.custodyRef, label: `Sk1 of card ${old.id}` })
        : undefined;
      const rotation = await s.startRotation(id, { toCardId: cardId, toKeySetId: sk2.id, total });
      await appendAudit(s.db, { actor, action: "rotation.started", subject: id, details: { strategy: r0.strategy, oldCard: old.id, newCard: cardId, sk2: sk2.id, kvn: SK2_KVN, keepsSk1: keepSk1, toRewrap: FIG15[r0.strategy].systemDb === "all" ? total : 0 } });
      await appendAudit(s.db, { actor, action: "card.issued", subject: cardId, details: { userId: old.userId, keySet: sk2.id, kvn: SK2_KVN, rotation: id, replaces: old.id } });
      return { rotation, card: (await s.getCard(cardId))!, sk2, sk1: sk1Copy };
    });
    return res;
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
  async rewrap(id: string, opts: { pageSize?: number; onProgress?: (p: RewrapProgress) => void; signal?: AbortSignal } = {}): Promise<Rotation> {
    const r = await this.rotation(id);
    if (FIG15[r.strategy].systemDb !== "all") return r;
    return runRewrap({ store: this.store, custody: this.issuer.custody, rotationId: id, ...opts });
  }

  /**
   * Redistribution and completion: embodiment 3 sends every pair of the old card as {Sk2[PRk], Ct} (para 0068);
   * 4 and 5 send only the added pairs, generated under Sk2 (ST16-ST21, para 0085-0087). The old card's key pairs
   * are recorded on the new card; the old card is retired, and so is Sk1 where every key was re-wrapped.
   */
  async distribute(id: string, actor: string, opts: { add?: AddedCredential[] } = {}): Promise<RotationResult> {
    let r = await this.rotation(id);
    if (r.status === "completed") throw new IssuerError("conflict", `rotation ${id} is completed`);
    if (r.status !== "running" || !r.toCardId || !r.toKeySetId) throw new IssuerError("conflict", `rotation ${id} is ${r.status}: issue the new card first`);
    const policy = FIG15[r.strategy];
    const add = opts.add ?? [];
    if (!policy.add && add.length) throw new IssuerError("invalid", `${r.strategy} adds no key pair (FIG. 15)`);
    if (policy.systemDb === "all" && (await this.store.countWrappedKeys(r.fromKeySetId, r.cursor)) > 0) throw new IssuerError("conflict", `rotation ${id}: the bulk re-wrap has not finished`);
    const newCard = await this.issuer.card(r.toCardId);
    const sk2 = (await this.store.getKeySet(r.toKeySetId))!;
    const oldPairs = (await this.store.listKeyPairs({ cardId: r.cardId, status: "active" })).filter((k) => k.slot);
    const before = newCard.lastPackageSeq;

    // The old card's pairs move to the new card in the DB; embodiment 3 redistributes them all under Sk2 — once:
    // a distribute resumed after a crash finds the new card's packages already there (embodiment 3 adds none).
    const redistribute = policy.network === "all" && newCard.lastPackageSeq === 0;
    await this.store.transaction(async (s) => {
      for (const kp of oldPairs) {
        await s.updateKeyPair(kp.id, { cardId: newCard.id });
        if (!redistribute) continue;
        const w = await s.getWrappedKey(kp.id, sk2.id);
        if (!w) throw new IssuerError("invalid", `key pair ${kp.id} has no Sk2[PRk]`);
        const cert = (await s.listCertificates(kp.id)).filter((c) => !c.revokedAt).pop();
        await s.createPackage(newCard.id, async (seq) => {
          const header = packageHeaderBytes("credential", sk2.kvn, newCard.id, kp.slot!, seq);
          const sealed = await this.issuer.custody.sealForCard(refOf(sk2), PURPOSE.package(1), header, packagePlaintext(kp.algorithm as KeyAlg, w.wrapped, cert?.der));
          return assemblePackage(header, sealed.nonce, sealed.ciphertext);
        });
      }
      await appendAudit(s.db, { actor, action: "rotation.redistributed", subject: id, details: { newCard: newCard.id, keyPairs: oldPairs.map((k) => k.id), sent: redistribute ? oldPairs.length : 0 } });
    });

    // Embodiments 4, 5: the added pairs, generated and wrapped under the new card's current key set Sk2.
    // A resumed distribute skips slots an earlier run already filled under Sk2.
    const added: IssuedCredential[] = [];
    const filled = new Set((await this.store.listKeyPairs({ cardId: newCard.id, status: "active" })).filter((k) => !oldPairs.some((o) => o.id === k.id)).map((k) => k.slot));
    for (const a of add) if (!filled.has(a.slot)) added.push(await this.issuer.requestCredential({ cardId: newCard.id, slot: a.slot, alg: a.alg, profile: a.profile }, actor));

    r = await this.store.transaction(async (s) => {
      await s.setCardStatus(r.cardId, "retired");
      if (policy.systemDb === "all") await s.setKeySetStatus(r.fromKeySetId, "retired");
      const done = await s.completeRotation(id);
      await appendAudit(s.db, { actor, action: "rotation.completed", subject: id, details: { strategy: r.strategy, oldCard: r.cardId, newCard: newCard.id, rewrapped: done.done, added: added.map((c) => c.keyPair.id) } });
      return done;
    });
    const packages = await this.store.listPackages(newCard.id, { afterSeq: before, limit: 10_000 });
    return { rotation: r, packages, added };
  }
}

// ---- terminal side ------------------------------------------------------------------------------------------

export interface TerminalRotateInput {
  strategy: RotationStrategy;
  /** The old card (PIN verified); needed for embodiments 4 and 5, whose old pairs leave it through the terminal. */
  oldCard?: { piv: PivClient; cardId: string };
  /** The new card (PIN verified). */
  newCard: { piv: PivClient; cardId: string };
  /** The terminal's overflow store (the seed's HD). */
  store: OverflowStore;
  /** The packages fetched for the new card, in sequence order (what crossed the network). */
  packages: Uint8Array[];
  /** Slots that live in the overflow store rather than on the new card afterwards (para 0071, 0088). */
  offCard: string[];
  /** Slots the old card holds (default: those with a certificate object, 9A 9C 9D 9E). */
  oldSlots?: string[];
}

export interface TerminalRotateResult {
  /** Slots the new card holds. */
  onCard: string[];
  /** Overflow store entries afterwards: card, slot and the KVN the pair is sealed under. */
  inStore: { cardId: string; slot: string; kvn: number }[];
  /**
   * Old pairs the new card refused, left in the store as the old card's Sk1[PRk]: 6982 from a new card that
   * holds no key set bound to the old card (personalised without its predecessor), 6985 for an export older
   * than one of the same slot it already took.
   */
  stranded: { slot: string; sw: number }[];
}

/**
 * The user terminal's part of a rotation (FIG. 15, columns "new card" and "HD"):
 *   3: each {Sk2[PRk], Ct} goes into the new card; the pairs the store held come back out of the new card as its
 *      exports under Sk2, replacing the old card's Sk1 entries (para 0069-0071).
 *   4: every pair moves out of the old card into the store as the old card's Sk1[PRk] (para 0083); those meant
 *      for the new card go into it, which opens them with its predecessor key set Sk1 (para 0088-0089), and leave
 *      the store; those meant for the store stay there as Sk1[PRk] (HD: only the added pairs are updated), and
 *      the new card takes them on demand the same way. The added pairs are loaded, the ones for the store moved
 *      out again under Sk2.
 *   5: as 4, but every old Sk1[PRk] goes into the new card, and each one meant for the store is re-exported by it
 *      under Sk2, its newest own key set, and replaces the old entry: the store holds Sk2[PRk] only (FIG. 22-24).
 * Each pair is at every step on a card or in the store: an old entry is removed only once the new card holds the
 * pair or the store holds its Sk2 replacement.
 */
export async function terminalRotate(input: TerminalRotateInput): Promise<TerminalRotateResult> {
  const { store, newCard } = input;
  const oldId = input.oldCard?.cardId;
  const off = new Set(input.offCard);
  const stranded: TerminalRotateResult["stranded"] = [];
  const onCard = new Set<string>();
  const slotNum = (s: string) => parseInt(s, 16);

  if (input.strategy !== "embodiment3") {
    const old = input.oldCard;
    if (!old) throw new IssuerError("invalid", `${input.strategy} moves the old card's pairs through the terminal: the old card is needed`);
    // Para 0083: out of the old card into the store, as the old card's Sk1[PRk].
    for (const s of input.oldSlots ?? (await slotsOn(old.piv))) await moveOut(old.piv, store, slotNum(s));
    for (const e of store.list(old.cardId)) {
      // Embodiment 4 leaves the store's old entries as they are (FIG. 15: HD updates only the added ones).
      if (input.strategy === "embodiment4" && off.has(e.keyRef)) continue;
      try {
        await newCard.piv.loadPackage(e.bytes);
      } catch (err) {
        if (!(err instanceof ApduError)) throw err;
        stranded.push({ slot: e.keyRef, sw: err.sw });
        continue;
      }
      // Embodiment 5, FIG. 22-24: what lives in the store goes back there re-exported by the new card under Sk2.
      if (off.has(e.keyRef)) await moveOut(newCard.piv, store, slotNum(e.keyRef));
      else onCard.add(e.keyRef);
      store.remove(old.cardId, e.keyRef);
    }
  }
  for (const p of input.packages) {
    const h = packageHeader(p);
    await newCard.piv.loadPackage(p);
    onCard.add(h.keyRef);
    if (off.has(h.keyRef)) {
      // Para 0071 / 0088: the pair for the store, now as the new card's export under Sk2 (it replaces the old
      // card's Sk1 entry of that slot in embodiment 3).
      await moveOut(newCard.piv, store, slotNum(h.keyRef));
      onCard.delete(h.keyRef);
      if (oldId && input.strategy === "embodiment3") store.remove(oldId, h.keyRef);
    }
  }
  const inStore = [...(oldId ? store.list(oldId) : []), ...store.list(newCard.cardId)].map((e) => ({ cardId: e.cardId, slot: e.keyRef, kvn: packageHeader(e.bytes).kvn }));
  return { onCard: [...onCard].sort(), inStore, stranded };
}

/** Slots of a card that hold a certificate (what a terminal can see of them without a secure channel). */
async function slotsOn(piv: PivClient): Promise<string[]> {
  const out: string[] = [];
  for (const s of ["9a", "9c", "9d", "9e"]) if (await piv.readCertificate(parseInt(s, 16))) out.push(s);
  return out;
}
