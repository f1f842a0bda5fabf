// The issuing system of seed 000 (FIG. 3, system server 10x): it owns the system DB (FIG. 4/5) through its storage
// port (ports.ts IssuerStore; the wiring hands it the Store, and gets the same Store back as `issuer.store`),
// reaches every secret through KeyCustody, and asks the CA to certify through a CaClient (in-process or HTTP,
// ST19-ST21). No HTTP and no CLI in here: server/ and cli/ wire it.
//
// It must never hold a private key in clear: credential keys are generated inside custody, leave it only as
// Sk[PRk] (wrapped under the card's key, ST18), and are destroyed in custody afterwards. The card keys Sk are
// diversified inside custody from a master key and the card ID; the DB keeps only references (ST12).

import { randomBytes, randomUUID } from "node:crypto";
import type { KeyAlg } from "../card/state.ts";
import { PURPOSE } from "../protocol/derivation.ts";
import { assemblePackage, packageHeaderBytes, packagePlaintext } from "../protocol/package.ts";
import type { CaClient } from "../ca/client.ts";
import { validateSubject, type SubjectName } from "../ca/name.ts";
import type { RevocationReason } from "../ca/crl.ts";
import type { DerivedKeySetRef, KeyCustody, KeySetRef } from "../custody/custody.ts";
import { CustodyError } from "../custody/custody.ts";
import type { IssuerStore } from "./ports.ts";
import type { Card, CardKeySet, Certificate, DeliveryPackage, JsonValue, KeyPair, User } from "./records.ts";
import type { CardKeys } from "./card-keys.ts";
import { deliveryScript, personalisationScript, runScript, type CardScript } from "./card-scripts.ts";
import { changeCardState, checkCardState, requireCardState, type CardActor, type CardTransition } from "./card-lifecycle.ts";
import type { Transmit } from "../protocol/apdu-client.ts";
import { TransportKeyError, transportKeysFor, type TransportOptions } from "./transport-keys.ts";
import { IssuerError } from "./errors.ts";

export { CardStateError, IssuerError, type CardStateCheck } from "./errors.ts";

const DAY = 86_400_000;
/** How long a credential request's claim on a slot holds against others: a stalled server's is taken over after it. */
const SLOT_CLAIM_LEASE_MS = 5 * 60_000;

/** PIV key slots a credential can go to (seed 000: the card's key pair area). */
export const SLOTS = ["9a", "9c", "9d", "9e", ...Array.from({ length: 20 }, (_, i) => (0x82 + i).toString(16))] as const;
export type Slot = string;

export const CARD_KEY_ALGS: readonly KeyAlg[] = ["P256", "P384", "RSA2048", "RSA3072"];

export interface IssuerOptions<S extends IssuerStore = IssuerStore> {
  store: S;
  custody: KeyCustody;
  ca: CaClient;
  /** Custody label of the master key card keys are diversified from. */
  masterKey?: string;
  validity?: { cardDays?: number; keySetDays?: number };
  /**
   * Blank cards' transport keys (transport-keys.ts): per card from the manufacturer's KMC in custody (label `kmc`,
   * default "transport-kmc"); the public test keys only with `insecurePublicTransportKeys` (development).
   */
  transport?: TransportOptions;
  /** Called after each successful act, for metrics. */
  onEvent?: (e: { type: "card.issued" | "credential.issued" | "credential.delivered" | "certificate.revoked" | "card.personalised"; path?: "package" | "online" }) => void;
}

export interface IssuedCredential {
  keyPair: KeyPair;
  certificate: Certificate;
  package: DeliveryPackage;
}

/** The certificate subject from the user's registered data (seed 001 step 417: from the user's personal data). */
export function subjectFrom(personalData: Record<string, JsonValue>, cardId: string): SubjectName {
  const s = (k: string) => (typeof personalData[k] === "string" ? (personalData[k] as string) : undefined);
  return {
    commonName: s("commonName") ?? s("name"),
    email: s("email"),
    organization: s("organization"),
    organizationalUnit: s("organizationalUnit"),
    country: s("country"),
    serialNumber: cardId,
  };
}

export class Issuer<S extends IssuerStore = IssuerStore> {
  readonly store: S;
  readonly custody: KeyCustody;
  readonly ca: CaClient;
  readonly masterKey: string;
  private readonly cardDays: number;
  private readonly keySetDays: number;
  private readonly onEvent: NonNullable<IssuerOptions["onEvent"]>;
  private readonly transport: TransportOptions;

  private constructor(o: IssuerOptions<S>) {
    this.store = o.store;
    this.custody = o.custody;
    this.ca = o.ca;
    this.masterKey = o.masterKey ?? "card-master";
    this.cardDays = o.validity?.cardDays ?? 5 * 365;
    this.keySetDays = o.validity?.keySetDays ?? 2 * 365;
    this.onEvent = o.onEvent ?? (() => {});
    this.transport = { ...o.transport };
  }

  /** Opens the issuer; on first start creates the card master key in custody (never extractable). */
  static async open<S extends IssuerStore>(o: IssuerOptions<S>): Promise<Issuer<S>> {
    const issuer = new Issuer<S>(o);
    if (!(await o.custody.hasKey(issuer.masterKey))) await o.custody.createSecretKey(issuer.masterKey, { type: "aes", bits: 256, usage: ["derive"] });
    return issuer;
  }

  private async audit(actor: string, action: string, subject: string, details: Record<string, JsonValue> = {}): Promise<void> {
    await this.store.audit({ actor, action, subject, details });
  }

  /**
   * The transport keys of blank card `cardId` in custody: diversified from the manufacturer's KMC; the public test
   * keys only in development mode. Refused (IssuerError "refused") without a KMC in custody.
   */
  private async transportKeys(cardId: string): Promise<CardKeys> {
    try {
      return { custody: this.custody, ref: await transportKeysFor(this.custody, cardId, this.transport) };
    } catch (e) {
      if (e instanceof TransportKeyError) throw new IssuerError("refused", e.message);
      throw e;
    }
  }

  /** The custody handle of a card key set recorded in the system DB. */
  keysOf(ks: CardKeySet): CardKeys {
    return { custody: this.custody, ref: JSON.parse(ks.custodyRef) as KeySetRef };
  }

  async card(cardId: string): Promise<Card> {
    const c = await this.store.getCard(cardId);
    if (!c) throw new IssuerError("not_found", `no card ${cardId}`);
    return c;
  }

  async currentKeySet(card: Card): Promise<CardKeySet> {
    const ks = card.currentKeySetId ? await this.store.getKeySet(card.currentKeySetId) : undefined;
    if (!ks) throw new IssuerError("invalid", `card ${card.id} has no current key set`);
    return ks;
  }

  // --- users (FIG. 4: user ID and registered data) ----------------------------------------------------------

  /**
   * Records a user. The personal data that goes into certificates (subjectFrom) must make a valid subject as it
   * is — no control characters, well-formed, NFC (name.ts) — or InvalidSubjectError names the field and nothing
   * is stored: what is recorded is what every certificate of the user will say, byte for byte.
   */
  async registerUser(personalData: Record<string, JsonValue>, actor: string, id?: string): Promise<User> {
    validateSubject(subjectFrom(personalData, "0000000000000000"), "personalData");
    const u = await this.store.createUser({ id, personalData });
    await this.audit(actor, "user.registered", u.id);
    return u;
  }

  // --- ST11-ST15: issue a card ------------------------------------------------------------------------------

  /**
   * ST11-ST12: a card-unique key set Sk, diversified in custody from the master key and a new card ID, recorded
   * (as a reference) for the user. Returns the personalisation script (ST13-ST14) for the card issuing machine.
   */
  async issueCard(input: { userId: string; cardId?: string }, actor: string): Promise<{ card: Card; keySet: CardKeySet; script: CardScript }> {
    const user = await this.store.getUser(input.userId);
    if (!user) throw new IssuerError("not_found", `no user ${input.userId}`);
    const cardId = input.cardId ?? randomBytes(8).toString("hex");
    if (!/^([0-9a-f]{2}){8,16}$/.test(cardId)) throw new IssuerError("invalid", "card ID must be 8 to 16 bytes of lowercase hex");
    const transport = await this.transportKeys(cardId); // before anything is recorded: no KMC, no card
    const now = this.store.now();
    const ref: DerivedKeySetRef = { kind: "derived", master: this.masterKey, cardId, kvn: 1 };
    const kcvs = await this.custody.keySetKcvs(ref);
    const { card, keySet } = await this.store.transaction(async (s) => {
      await s.registerCard({ id: cardId, userId: user.id, validFrom: now, validUntil: now + this.cardDays * DAY, status: "issued" });
      const keySet = await s.addKeySet({
        cardId,
        kvn: 1,
        version: 1,
        validFrom: now,
        validUntil: now + this.keySetDays * DAY,
        custodyRef: JSON.stringify(ref),
        label: `kcv ${kcvs.enc}`,
        makeCurrent: true,
      });
      await s.audit({ actor, action: "card.issued", subject: cardId, details: { userId: user.id, keySet: keySet.id, kvn: 1 } });
      return { card: (await s.getCard(cardId))!, keySet };
    });
    this.onEvent({ type: "card.issued" });
    return { card, keySet, script: await personalisationScript(transport, this.keysOf(keySet)) };
  }

  /** ST13-ST14 with the card at hand (the card issuing machine): run the script, mark the card active. */
  async personaliseCard(cardId: string, transmit: Transmit, actor: string): Promise<Card> {
    await runScript(transmit, await this.personalisationScriptFor(cardId));
    return this.markPersonalised(cardId, actor);
  }

  /**
   * ST13-ST14 through a remote card issuing machine: the personalisation script of a card still waiting for it,
   * to run in a RelaySession; when the card has accepted it, `markPersonalised`.
   */
  async personalisationScriptFor(cardId: string): Promise<CardScript> {
    const card = checkCardState(await this.card(cardId), "personalisation");
    return personalisationScript(await this.transportKeys(cardId), this.keysOf(await this.currentKeySet(card)));
  }

  /**
   * ST14 done: the card accepted its key set and confirmed SECURED (the script's results were checked); the card is
   * active — the lifecycle's "personalise" transition (card-lifecycle.ts), from issued only, audited.
   */
  async markPersonalised(cardId: string, actor: string): Promise<Card> {
    const card = checkCardState(await this.card(cardId), "personalisation");
    const ks = await this.currentKeySet(card);
    // a card personalised over the public test keys is marked for the auditors: its Sk is as public as a recording
    const details: Record<string, JsonValue> = { kvn: ks.kvn };
    if (this.transport.insecurePublicTransportKeys === true) details.transport = "insecure-public-test-keys";
    const { card: active } = await changeCardState(this.store, { cardId, transition: "personalise", actor, by: "operator", reason: "personalised: the card confirmed SECURED", details });
    this.onEvent({ type: "card.personalised" });
    return active;
  }

  /**
   * Moves a card through the lifecycle (card-lifecycle.ts): suspend, resume, retire, report-destroyed. `by`: an
   * operator, or the card's own terminal (the route checked the binding). Audited with the actor and the reason.
   */
  async changeCardState(input: { cardId: string; transition: Exclude<CardTransition, "personalise">; reason: string; by: CardActor }, actor: string): Promise<Card> {
    if ((input.transition as CardTransition) === "personalise") throw new IssuerError("invalid", "a card becomes active by its personalisation only");
    return (await changeCardState(this.store, { ...input, actor })).card;
  }

  // --- ST16-ST25: distribution request, update and addition (claims 4, 7) ------------------------------------

  /**
   * ST16-ST21: a key pair generated inside custody, certified by the CA with the user's registered data, wrapped
   * under the card's current key Sk (ST18), recorded with its certificate, and sealed into a package for the
   * terminal (ST22). With `replace`, the slot's previous key pair is superseded (update, claim 4); without, the
   * slot must be free (addition, claim 7).
   */
  async requestCredential(
    input: { cardId: string; slot: Slot; alg: KeyAlg; profile?: string; replace?: boolean },
    actor: string,
    o: { recorded?: (s: IssuerStore, c: IssuedCredential) => Promise<void> } = {},
  ): Promise<IssuedCredential> {
    if (!SLOTS.includes(input.slot as (typeof SLOTS)[number])) throw new IssuerError("invalid", `slot must be one of ${SLOTS.join(", ")}`);
    if (!CARD_KEY_ALGS.includes(input.alg)) throw new IssuerError("invalid", `algorithm must be one of ${CARD_KEY_ALGS.join(", ")}`);
    // one read for the card, its current key set and its user
    const ctx = await this.store.getCardContext(input.cardId);
    if (!ctx) throw new IssuerError("not_found", `no card ${input.cardId}`);
    const { card, user } = ctx;
    checkCardState(card, "credential.request");
    const ks = ctx.keySet;
    if (!ks) throw new IssuerError("invalid", `card ${card.id} has no current key set`);
    const keys = this.keysOf(ks);
    if (!("custody" in keys)) throw new IssuerError("invalid", "card keys must be in custody");

    // The slot is claimed before anything is generated or certified (issue 15 §1): of concurrent requests for one
    // slot — on one server or several — one goes on, the others are refused here and certify nothing. The claim is
    // given up in the transaction that records the credential; the slot is read once it is held.
    const claim = randomUUID();
    if (!(await this.store.claimCredentialSlot(card.id, input.slot, claim, SLOT_CLAIM_LEASE_MS)))
      throw new IssuerError("conflict", `slot ${input.slot} of card ${card.id} is being issued by another request; ask again once it is done`);
    let certified: string | undefined;
    try {
      const result = await this.#issueClaimed({ ...input, card, user, ks, keys, claim }, actor, o, (serial) => (certified = serial));
      this.onEvent({ type: "credential.issued" });
      return result;
    } catch (e) {
      // nothing recorded: the claim goes (unless it was taken over), and so does a certificate the CA issued for it
      await this.store.releaseCredentialSlot(card.id, input.slot, claim).catch(() => {});
      if (certified) await this.ca.revoke(certified, "cessationOfOperation").catch(() => {});
      throw e;
    }
  }

  /** requestCredential once the slot is claimed: the slot check, key generation, certification, the record. */
  async #issueClaimed(
    input: { slot: Slot; alg: KeyAlg; profile?: string; replace?: boolean; card: Card; user: User; ks: CardKeySet; keys: { custody: KeyCustody; ref: KeySetRef }; claim: string },
    actor: string,
    o: { recorded?: (s: IssuerStore, c: IssuedCredential) => Promise<void> },
    onCertified: (serial: string) => void,
  ): Promise<IssuedCredential> {
    const { card, user, ks, keys } = input;
    const occupied = await this.store.listKeyPairs({ cardId: card.id, status: "active", slot: input.slot });
    if (occupied.length && !input.replace) throw new IssuerError("conflict", `slot ${input.slot} of card ${card.id} holds a key; ask for replace`);

    // ST17: generate inside custody; the key never exists outside it except as Sk[PRk].
    const label = `credential-${randomUUID()}`;
    await this.custody.generateKeyPair(label, input.alg, { extractable: "wrapped", ephemeral: true });
    let spki: Uint8Array;
    let skPrk: Uint8Array;
    try {
      spki = await this.custody.publicKey(label);
      skPrk = Uint8Array.from([ks.kvn, ...(await this.custody.wrapPrivateKey(label, { card: keys.ref }))]);
    } finally {
      // "the secret key disappears from the key generation device" (seed 001 step 434)
      await this.custody.deleteKey(label).catch((e: unknown) => {
        if (!(e instanceof CustodyError)) throw e;
      });
    }
    // ST19-ST21: the CA certifies (possibly at another site).
    const profile = input.profile ?? (input.slot === "9c" ? "signature" : input.slot === "9d" ? "keyManagement" : "authentication");
    const cert = await this.ca.certify({ profile, applicantId: user.id, subject: subjectFrom(user.personalData, card.id), publicKey: Buffer.from(spki).toString("base64") });
    onCertified(cert.serial);

    // Group commit: concurrent requests share one commit (each in its own savepoint), see IssuerStore.groupTransaction (ports.ts).
    return this.store.groupTransaction(async (s) => {
      // Still this request's slot (a claim outlives its lease only on a stalled server), and still as read: the
      // partial unique index on key_pairs (one active pair per card and slot) stands behind both checks.
      if (!(await s.releaseCredentialSlot(card.id, input.slot, input.claim)))
        throw new IssuerError("conflict", `slot ${input.slot} of card ${card.id}: this request's claim was taken over by another; nothing was recorded`);
      const now = (await s.listKeyPairs({ cardId: card.id, status: "active", slot: input.slot })).map((k) => k.id);
      if (now.join() !== occupied.map((k) => k.id).join()) throw new IssuerError("conflict", `slot ${input.slot} of card ${card.id} changed while the key was certified; ask again`);
      // the card's row held until this commits: a suspension in between waits, or is seen here
      await requireCardState(s, card.id, "credential.request");
      for (const old of occupied) await s.updateKeyPair(old.id, { status: "superseded" });
      const rec = await s.recordCredential({
        keyPair: { userId: user.id, cardId: card.id, slot: input.slot, algorithm: input.alg, publicKey: spki },
        wrapped: [{ keySetId: ks.id, wrapped: skPrk }],
        certificate: {
          serial: cert.serial,
          der: cert.certificate,
          subject: JSON.stringify(subjectFrom(user.personalData, card.id)),
          notBefore: cert.notBefore.getTime(),
          notAfter: cert.notAfter.getTime(),
        },
      });
      // ST22: the package {Sk[PRk], Ct} for the terminal, sealed in custody under the card's package key.
      const pkg = await s.createPackage(card.id, (seq) => this.sealPackage(keys.custody, keys.ref, ks.kvn, card.id, input.slot, seq, input.alg, skPrk, cert.certificate));
      await s.audit({
        actor,
        action: input.replace && occupied.length ? "credential.updated" : "credential.issued",
        subject: card.id,
        details: { slot: input.slot, alg: input.alg, keyPair: rec.keyPair.id, serial: cert.serial, packageSeq: pkg.seq, superseded: occupied.map((k) => k.id) },
      });
      const issued = { keyPair: rec.keyPair, certificate: rec.certificate!, package: pkg };
      await o.recorded?.(s, issued);
      return issued;
    });
  }

  private async sealPackage(custody: KeyCustody, ref: KeySetRef, kvn: number, cardId: string, slot: string, seq: number, alg: KeyAlg, skPrk: Uint8Array, cert?: Uint8Array): Promise<Uint8Array> {
    const header = packageHeaderBytes("credential", kvn, cardId, slot, seq);
    const sealed = await custody.sealForCard(ref, PURPOSE.package(1), header, packagePlaintext(alg, skPrk, cert));
    return assemblePackage(header, sealed.nonce, sealed.ciphertext);
  }

  /** The online path (ST22-ST25 through an SCP03 session the server drives): a script for a stored credential. */
  async onlineDeliveryScript(cardId: string, keyPairId: string): Promise<CardScript> {
    const card = checkCardState(await this.card(cardId), "credential.online");
    const kp = await this.store.getKeyPair(keyPairId);
    if (!kp || kp.cardId !== card.id || !kp.slot) throw new IssuerError("not_found", `card ${cardId} has no key pair ${keyPairId}`);
    const ks = await this.currentKeySet(card);
    const w = await this.store.getWrappedKey(kp.id, ks.id);
    if (!w) throw new IssuerError("invalid", `key pair ${kp.id} is not wrapped under the card's current key set`);
    const cert = (await this.store.listCertificates(kp.id)).find((c) => !c.revokedAt);
    return deliveryScript(this.keysOf(ks), { keyRef: parseInt(kp.slot, 16), alg: kp.algorithm as KeyAlg, skPrk: w.wrapped, cert: cert?.der });
  }

  /** Runs the online delivery with the card at hand (in-process or PC/SC transport). */
  async deliverOnline(cardId: string, keyPairId: string, transmit: Transmit, actor: string): Promise<void> {
    await runScript(transmit, await this.onlineDeliveryScript(cardId, keyPairId));
    await this.recordOnlineDelivery(cardId, keyPairId, actor);
  }

  /** The online delivery script ran and the card accepted every command (a relay that finished and was checked). */
  async recordOnlineDelivery(cardId: string, keyPairId: string, actor: string): Promise<void> {
    await this.store.transaction(async (s) => {
      await requireCardState(s, cardId, "credential.online");
      await s.audit({ actor, action: "credential.delivered", subject: cardId, details: { keyPair: keyPairId, path: "online" } });
    });
    this.onEvent({ type: "credential.delivered", path: "online" });
  }

  /** Packages waiting for a card's terminal (ST22), oldest first; marks them fetched. */
  async packagesFor(cardId: string, afterSeq = 0): Promise<DeliveryPackage[]> {
    await this.card(cardId);
    const list = await this.store.listPackages(cardId, { afterSeq });
    let moved = false;
    for (const p of list) if (p.status === "pending") moved = (await this.store.advancePackage(cardId, p.seq, "fetched")) || moved;
    if (moved) await this.#delivered(cardId, `terminal:${cardId}`);
    return list;
  }

  /** The terminal reports that the card accepted a package (ST24-ST25). */
  async acknowledgePackage(cardId: string, seq: number, actor: string): Promise<void> {
    const p = await this.store.getPackage(cardId, seq);
    if (!p) throw new IssuerError("not_found", `card ${cardId} has no package ${seq}`);
    // Acknowledged before: nothing more to record (a terminal retrying its ack is not a second delivery).
    if (!(await this.store.advancePackage(cardId, seq, "acknowledged"))) return;
    await this.audit(actor, "credential.delivered", cardId, { packageSeq: seq, path: "package" });
    this.onEvent({ type: "credential.delivered", path: "package" });
    await this.#delivered(cardId, actor);
  }

  readonly #deliveryListeners = new Map<string, (cardId: string, actor: string) => Promise<void>>();

  /**
   * `listener` runs after packages of a card moved on (fetched by the card's terminal, acknowledged): a rotation
   * whose last owed package that was completes there (rotation.ts). One listener per `name`. Its failure never
   * fails the delivery (it is recorded already); the next delivery, or a distribute, settles again.
   */
  onPackagesDelivered(name: string, listener: (cardId: string, actor: string) => Promise<void>): void {
    this.#deliveryListeners.set(name, listener);
  }

  async #delivered(cardId: string, actor: string): Promise<void> {
    for (const l of this.#deliveryListeners.values()) await l(cardId, actor).catch(() => {});
  }

  /** Revokes a certificate at the CA and in the system DB. */
  async revokeCertificate(serial: string, reason: RevocationReason, actor: string): Promise<Certificate> {
    const cert = await this.store.getCertificateBySerial(serial);
    if (!cert) throw new IssuerError("not_found", `no certificate ${serial}`);
    await this.ca.revoke(serial, reason);
    const revoked = cert.revokedAt ? cert : await this.store.revokeCertificate(cert.id, reason);
    await this.store.updateKeyPair(cert.keyPairId, { status: "revoked" });
    await this.audit(actor, "certificate.revoked", serial, { reason, keyPair: cert.keyPairId });
    this.onEvent({ type: "certificate.revoked" });
    return revoked;
  }
}
