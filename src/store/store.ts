// The issuer's store: every read and write of the system DB (seed 000 FIG. 4/5) the issuing flows make, written
// once against Kysely and run unchanged on SQLite and PostgreSQL.
//
// What it owns: users, cards (VT), card key sets (SkVT; custody references only), key pairs (public keys), the
// wrapped private keys Sk[PRk] (one row per card key set a key is wrapped under), certificates (CtVT), delivery
// packages and their per-card sequence numbers, rotation jobs (FIG. 15) with their resumable checkpoint, the
// events outbox, webhooks and operator credentials.
// What it must never do: store a key value, a clear private key, a password or an API token. It holds handles
// into key custody, wrapped keys, and hashes of credentials.
//
// This file is the facade: Store opens the DB, runs transactions and group commits, and hands every other call to
// the repository of its aggregate, bound to the same DB or transaction and to the same clock:
//   user-repository.ts           users
//   card-repository.ts           cards, their status (CARD_STATUS_FROM), the cards whose validity runs out
//   key-set-repository.ts        card key sets, a card's current key set, the key sets whose validity runs out
//   key-pair-repository.ts       key pairs, wrapped keys, a credential recorded at once, slot claims, re-wrap pages
//   certificate-repository.ts    certificates, revocations, the certificates whose validity runs out
//   package-repository.ts        delivery packages and their per-card sequence numbers
//   rotation-job-repository.ts   rotation jobs (what a rotation owes besides its job row: rotation-repository.ts)
//   event-repository.ts          the events outbox
//   webhook-repository.ts        webhooks and their deliveries
//   operator-repository.ts       operators
//   repository.ts                StoreError and what the repositories share
//   rotation-repository.ts       what a rotation owes besides its job row (Store.rotationRecords)
//   audit.ts                     the hash-chained audit log (Store.audit appends in the store's transaction)
//   audit-checkpoint-repository.ts  the audit log's signed checkpoints (Store.auditCheckpoints)
// Each method's comment is with its code in those files. Store implements the issuer's storage port
// (src/issuer/ports.ts: IssuerStore, AuditCheckpointStore); the records are the issuer's (src/issuer/records.ts) and
// are exported from here as before, so callers import everything from store.ts.

import type { Transaction } from "kysely";
import { engineOf, openDatabase, type Database, type Db, type Engine, type OpenOptions } from "./db.ts";
import { migrateToLatest } from "./migrate.ts";
import { groupCommit } from "./group.ts";
import { recordAudit, verifyAuditLog, type AuditHead, type AuditVerification } from "./audit.ts";
import { AuditCheckpointRepository } from "./audit-checkpoint-repository.ts";
import { CARD_STATUS_FROM, CardRepository } from "./card-repository.ts";
import { CertificateRepository } from "./certificate-repository.ts";
import { EventRepository } from "./event-repository.ts";
import { KeyPairRepository } from "./key-pair-repository.ts";
import { KeySetRepository } from "./key-set-repository.ts";
import { OperatorRepository, type Operator } from "./operator-repository.ts";
import { PackageRepository } from "./package-repository.ts";
import { isConstraintViolation, StoreError } from "./repository.ts";
import { RotationJobRepository } from "./rotation-job-repository.ts";
import { RotationRepository } from "./rotation-repository.ts";
import { UserRepository } from "./user-repository.ts";
import { WebhookRepository } from "./webhook-repository.ts";
import type { AuditCheckpointStore, AuditInput, IssuerStore } from "../issuer/ports.ts";
import type {
  Card,
  CardKeySet,
  CardStatus,
  CardStatusChange,
  Certificate,
  DeliveryPackage,
  JsonValue,
  KeyPair,
  KeyPairStatus,
  KeySetStatus,
  NewCard,
  NewCertificate,
  NewCredential,
  NewKeyPair,
  NewKeySet,
  NewRotation,
  PackageStatus,
  RecordedCredential,
  Rotation,
  RotationStatus,
  StoredEvent,
  User,
  Webhook,
  WebhookDelivery,
  WebhookDeliveryStatus,
  WrappedKey,
} from "../issuer/records.ts";

export { CARD_STATUS_FROM, isConstraintViolation, StoreError };
export type {
  Card,
  CardKeySet,
  CardStatusChange,
  Certificate,
  DeliveryPackage,
  JsonValue,
  KeyPair,
  NewCertificate,
  NewKeyPair,
  Operator,
  RecordedCredential,
  Rotation,
  StoredEvent,
  User,
  Webhook,
  WebhookDelivery,
  WrappedKey,
};

export interface StoreOptions {
  /** Clock in epoch ms (tests pin it). */
  now?: () => number;
}

export class Store implements IssuerStore, AuditCheckpointStore {
  readonly engine: Engine;
  readonly #now: () => number;
  // The repositories, each made on first use (a Store is made for every transaction; most use only a few).
  #usersRepository?: UserRepository;
  #cardsRepository?: CardRepository;
  #keySetsRepository?: KeySetRepository;
  #keyPairsRepository?: KeyPairRepository;
  #certificatesRepository?: CertificateRepository;
  #packagesRepository?: PackageRepository;
  #rotationsRepository?: RotationJobRepository;
  #eventsRepository?: EventRepository;
  #webhooksRepository?: WebhookRepository;
  #operatorsRepository?: OperatorRepository;
  #rotationRecords?: RotationRepository;
  #auditCheckpoints?: AuditCheckpointRepository;

  constructor(
    readonly db: Db | Transaction<Database>,
    options: StoreOptions = {},
  ) {
    this.engine = engineOf(db);
    this.#now = options.now ?? Date.now;
  }

  /**
   * Opens the DB at `url` (see db.ts), migrates it to the latest schema and returns its store.
   * SQLite runs in WAL mode with synchronous=NORMAL unless `sqliteSynchronous` says "full": a commit survives a
   * crash or SIGKILL of this process and the DB is never corrupted, but the last commits before a power loss
   * or kernel crash may be lost (the WAL is fsynced at checkpoints, not at every commit). "full" fsyncs every
   * commit (~0.5 ms each on the benchmark machine).
   */
  static async open(url: string, options: OpenOptions & StoreOptions = {}): Promise<Store> {
    const db = openDatabase(url, { sqliteSynchronous: "normal", sqliteCheckpoint: "background", ...options });
    try {
      await migrateToLatest(db);
    } catch (e) {
      await db.destroy();
      throw e;
    }
    return new Store(db, options);
  }

  async close(): Promise<void> {
    if (this.db.isTransaction) throw new StoreError("invalid", "close: this store is bound to a transaction");
    await this.db.destroy();
  }

  now(): number {
    return this.#now();
  }

  /**
   * Runs `fn` in one transaction with a store bound to it (so the issuer can, e.g., record a credential, queue
   * its package and append the audit entry atomically). Inside a transaction already, `fn` joins it.
   */
  async transaction<T>(fn: (store: Store) => Promise<T>): Promise<T> {
    if (this.db.isTransaction) return fn(this);
    return (this.db as Db).transaction().execute((trx) => fn(new Store(trx, { now: this.#now })));
  }

  /**
   * Like transaction(), with group commit (see group.ts): calls that arrive while a group is committing run
   * together in the next transaction, each inside its own savepoint (a failing `fn` rolls back only its own
   * changes and gets its own error), and are committed at once. The CA repository on the same DB joins the same
   * groups. `fn` must do all its DB work through the store it is given, and must not wait for another group call.
   */
  groupTransaction<T>(fn: (store: Store) => Promise<T>): Promise<T> {
    if (this.db.isTransaction) return fn(this);
    return groupCommit(this.db, (trx) => fn(new Store(trx, { now: this.#now })));
  }

  // ---- the audit log ---------------------------------------------------------------------------------------
  // audit.ts, audit-checkpoint-repository.ts

  /** Appends one entry to the audit log: in the transaction this store is bound to (a group's: at its end), else in its own (recordAudit). */
  async audit(entry: AuditInput): Promise<void> {
    await recordAudit(this.db, entry);
  }

  /** Walks the whole audit chain (verifyAuditLog); with `expectedHead`, also checks the log still holds that entry. */
  verifyAuditLog(o: { expectedHead?: AuditHead | null; pageSize?: number } = {}): Promise<AuditVerification> {
    return verifyAuditLog(this.db, o);
  }

  /** The audit log's signed checkpoints, bound to this store's DB or transaction. */
  get auditCheckpoints(): AuditCheckpointRepository {
    return (this.#auditCheckpoints ??= new AuditCheckpointRepository(this.db));
  }

  // ---- users ----------------------------------------------------------------------------------------------
  // user-repository.ts

  createUser(input: { id?: string; personalData: Record<string, JsonValue> }): Promise<User> {
    return this.#users.createUser(input);
  }

  getUser(id: string): Promise<User | undefined> {
    return this.#users.getUser(id);
  }

  // ---- cards and card key sets (ST11-ST15) ----------------------------------------------------------------
  // card-repository.ts, key-set-repository.ts

  registerCard(input: NewCard): Promise<Card> {
    return this.#cards.registerCard(input);
  }

  getCard(id: string, o: { hold?: boolean } = {}): Promise<Card | undefined> {
    return this.#cards.getCard(id, o);
  }

  getCardContext(id: string): Promise<{ card: Card; keySet?: CardKeySet; user: User } | undefined> {
    return this.#cards.getCardContext(id);
  }

  listCardsForUser(userId: string): Promise<Card[]> {
    return this.#cards.listCardsForUser(userId);
  }

  setCardStatus(id: string, status: CardStatus, o: { actor?: string; reason?: string | null } = {}): Promise<void> {
    return this.#cards.setCardStatus(id, status, o);
  }

  changeCardStatus(id: string, to: CardStatus, o: { from?: readonly CardStatus[]; actor: string | null; reason: string | null }): Promise<CardStatusChange> {
    return this.#cards.changeCardStatus(id, to, o);
  }

  addKeySet(input: NewKeySet): Promise<CardKeySet> {
    return this.#keySets.addKeySet(input);
  }

  getKeySet(id: string): Promise<CardKeySet | undefined> {
    return this.#keySets.getKeySet(id);
  }

  listKeySets(cardId: string): Promise<CardKeySet[]> {
    return this.#keySets.listKeySets(cardId);
  }

  setCurrentKeySet(cardId: string, keySetId: string): Promise<void> {
    return this.#keySets.setCurrentKeySet(cardId, keySetId);
  }

  setKeySetStatus(id: string, status: KeySetStatus): Promise<void> {
    return this.#keySets.setKeySetStatus(id, status);
  }

  // ---- credentials (ST16-ST21) ----------------------------------------------------------------------------
  // key-pair-repository.ts, certificate-repository.ts

  recordCredential(input: NewCredential): Promise<RecordedCredential> {
    return this.#keyPairs.recordCredential(input);
  }

  addWrappedKey(keyPairId: string, keySetId: string, wrapped: Uint8Array): Promise<WrappedKey> {
    return this.#keyPairs.addWrappedKey(keyPairId, keySetId, wrapped);
  }

  addCertificate(keyPairId: string, cert: NewCertificate): Promise<Certificate> {
    return this.#certificates.addCertificate(keyPairId, cert);
  }

  getKeyPair(id: string): Promise<KeyPair | undefined> {
    return this.#keyPairs.getKeyPair(id);
  }

  listKeyPairs(filter: { cardId?: string; userId?: string; status?: KeyPairStatus; slot?: string }): Promise<KeyPair[]> {
    return this.#keyPairs.listKeyPairs(filter);
  }

  updateKeyPair(id: string, change: { status?: KeyPairStatus; cardId?: string | null; slot?: string | null }): Promise<void> {
    return this.#keyPairs.updateKeyPair(id, change);
  }

  claimCredentialSlot(cardId: string, slot: string, claimId: string, leaseMs: number): Promise<boolean> {
    return this.#keyPairs.claimCredentialSlot(cardId, slot, claimId, leaseMs);
  }

  releaseCredentialSlot(cardId: string, slot: string, claimId: string): Promise<boolean> {
    return this.#keyPairs.releaseCredentialSlot(cardId, slot, claimId);
  }

  getWrappedKey(keyPairId: string, keySetId: string): Promise<WrappedKey | undefined> {
    return this.#keyPairs.getWrappedKey(keyPairId, keySetId);
  }

  countWrappedKeys(keySetId: string, afterId = 0): Promise<number> {
    return this.#keyPairs.countWrappedKeys(keySetId, afterId);
  }

  wrappedKeyPages(keySetId: string, options: { afterId?: number; pageSize?: number } = {}): AsyncGenerator<WrappedKey[]> {
    return this.#keyPairs.wrappedKeyPages(keySetId, options);
  }

  wrappedKeyPagesWithAlgorithm(keySetId: string, options: { afterId?: number; pageSize?: number } = {}): AsyncGenerator<(WrappedKey & { algorithm: string })[]> {
    return this.#keyPairs.wrappedKeyPagesWithAlgorithm(keySetId, options);
  }

  getCertificate(id: string): Promise<Certificate | undefined> {
    return this.#certificates.getCertificate(id);
  }

  getCertificateBySerial(serial: string): Promise<Certificate | undefined> {
    return this.#certificates.getCertificateBySerial(serial);
  }

  listCertificates(keyPairId: string): Promise<Certificate[]> {
    return this.#certificates.listCertificates(keyPairId);
  }

  revokeCertificate(id: string, reason: string, at = this.now()): Promise<Certificate> {
    return this.#certificates.revokeCertificate(id, reason, at);
  }

  listRevokedCertificates(now = this.now()): Promise<Certificate[]> {
    return this.#certificates.listRevokedCertificates(now);
  }

  // ---- delivery packages (ST22) ---------------------------------------------------------------------------
  // package-repository.ts

  allocatePackageSeq(cardId: string): Promise<number> {
    return this.#packages.allocatePackageSeq(cardId);
  }

  createPackage(cardId: string, body: Uint8Array | ((seq: number) => Uint8Array | Promise<Uint8Array>)): Promise<DeliveryPackage> {
    return this.#packages.createPackage(cardId, body);
  }

  getPackage(cardId: string, seq: number): Promise<DeliveryPackage | undefined> {
    return this.#packages.getPackage(cardId, seq);
  }

  listPackages(cardId: string, filter: { status?: PackageStatus; afterSeq?: number; limit?: number } = {}): Promise<DeliveryPackage[]> {
    return this.#packages.listPackages(cardId, filter);
  }

  advancePackage(cardId: string, seq: number, to: "fetched" | "acknowledged"): Promise<boolean> {
    return this.#packages.advancePackage(cardId, seq, to);
  }

  // ---- card-key rotation jobs (embodiments 3-5, FIG. 15) --------------------------------------------------
  // rotation-job-repository.ts

  proposeRotation(input: NewRotation): Promise<Rotation> {
    return this.#rotations.proposeRotation(input);
  }

  getRotation(id: string): Promise<Rotation | undefined> {
    return this.#rotations.getRotation(id);
  }

  listRotations(filter: { status?: RotationStatus; cardId?: string } = {}): Promise<Rotation[]> {
    return this.#rotations.listRotations(filter);
  }

  openRotationForKeySet(fromKeySetId: string): Promise<Rotation | undefined> {
    return this.#rotations.openRotationForKeySet(fromKeySetId);
  }

  approveRotation(id: string, operator: string, o: { required?: number } = {}): Promise<Rotation> {
    return this.#rotations.approveRotation(id, operator, o);
  }

  startRotation(id: string, input: { toCardId?: string | null; toKeySetId: string; total: number }): Promise<Rotation> {
    return this.#rotations.startRotation(id, input);
  }

  checkpointRotation(id: string, step: { expectedCursor: number; cursor: number; rewrapped: { keyPairId: string; wrapped: Uint8Array }[] }): Promise<Rotation> {
    return this.#rotations.checkpointRotation(id, step);
  }

  completeRotation(id: string): Promise<Rotation> {
    return this.#rotations.completeRotation(id);
  }

  claimDistribution(id: string): Promise<Rotation | undefined> {
    return this.#rotations.claimDistribution(id);
  }

  finishDistribution(id: string): Promise<boolean> {
    return this.#rotations.finishDistribution(id);
  }

  completeDistribution(id: string): Promise<Rotation | undefined> {
    return this.#rotations.completeDistribution(id);
  }

  failRotation(id: string, error: string): Promise<Rotation> {
    return this.#rotations.failRotation(id, error);
  }

  cancelRotation(id: string): Promise<Rotation> {
    return this.#rotations.cancelRotation(id);
  }

  /** What a rotation owes besides its job row (approvals, items; rotation-repository.ts), bound as this store is. */
  get rotationRecords(): RotationRepository {
    return (this.#rotationRecords ??= new RotationRepository(this.db));
  }

  // ---- validity (FIG. 5, para 0062) -----------------------------------------------------------------------
  // card-repository.ts, key-set-repository.ts, certificate-repository.ts

  expiringCards(until: number, page: { afterId?: string; limit?: number } = {}): Promise<Card[]> {
    return this.#cards.expiringCards(until, page);
  }

  expiringKeySets(until: number, page: { afterId?: string; limit?: number } = {}): Promise<CardKeySet[]> {
    return this.#keySets.expiringKeySets(until, page);
  }

  expiringCertificates(until: number, page: { afterId?: string; limit?: number } = {}): Promise<Certificate[]> {
    return this.#certificates.expiringCertificates(until, page);
  }

  // ---- events outbox and webhooks -------------------------------------------------------------------------
  // event-repository.ts, webhook-repository.ts

  enqueueEvent(input: { type: string; subject: string; payload: JsonValue; dedupKey?: string }): Promise<StoredEvent | null> {
    return this.#events.enqueueEvent(input);
  }

  listEvents(filter: { afterId?: number; limit?: number; type?: string } = {}): Promise<StoredEvent[]> {
    return this.#events.listEvents(filter);
  }

  undeliveredEvents(limit = 100, now = this.now()): Promise<StoredEvent[]> {
    return this.#events.undeliveredEvents(limit, now);
  }

  countWaitingEvents(now = this.now()): Promise<number> {
    return this.#events.countWaitingEvents(now);
  }

  webhookAcks(eventId: number): Promise<Set<string>> {
    return this.#webhooks.webhookAcks(eventId);
  }

  // ---- webhook deliveries (migration 0014): one row per (event, webhook), claimed before it is sent -------------
  // webhook-repository.ts, event-repository.ts

  eventsToFanOut(limit = 100): Promise<StoredEvent[]> {
    return this.#webhooks.eventsToFanOut(limit);
  }

  fanOutEvent(eventId: number, webhookIds: string[], dueAt: number): Promise<void> {
    return this.#webhooks.fanOutEvent(eventId, webhookIds, dueAt);
  }

  dueWebhookDeliveries(now: number): Promise<Map<string, number>> {
    return this.#webhooks.dueWebhookDeliveries(now);
  }

  claimWebhookDeliveries(input: { webhookId: string; limit: number; now: number; owner: string; leaseUntil: number }): Promise<WebhookDelivery[]> {
    return this.#webhooks.claimWebhookDeliveries(input);
  }

  renewWebhookLease(eventId: number, webhookId: string, owner: string, leaseUntil: number): Promise<boolean> {
    return this.#webhooks.renewWebhookLease(eventId, webhookId, owner, leaseUntil);
  }

  releaseWebhookLeases(owner: string, keys: { eventId: number; webhookId: string }[]): Promise<void> {
    return this.#webhooks.releaseWebhookLeases(owner, keys);
  }

  completeWebhookDelivery(eventId: number, webhookId: string): Promise<void> {
    return this.#webhooks.completeWebhookDelivery(eventId, webhookId);
  }

  failWebhookDelivery(input: { eventId: number; webhookId: string; owner: string; error: string; nextAttemptAt: number; dead: boolean }): Promise<boolean> {
    return this.#webhooks.failWebhookDelivery(input);
  }

  settleWebhookEvents(eventId?: number): Promise<number> {
    return this.#webhooks.settleWebhookEvents(eventId);
  }

  countWaitingWebhookDeliveries(now: number): Promise<number> {
    return this.#webhooks.countWaitingWebhookDeliveries(now);
  }

  listWebhookDeliveries(
    filter: { status?: WebhookDeliveryStatus; webhookId?: string; eventId?: number; after?: { eventId: number; webhookId: string }; limit?: number } = {},
  ): Promise<WebhookDelivery[]> {
    return this.#webhooks.listWebhookDeliveries(filter);
  }

  retryDeadWebhookDeliveries(filter: { webhookId?: string; deliveries?: { eventId: number; webhookId: string }[] }, now: number): Promise<WebhookDelivery[]> {
    return this.#webhooks.retryDeadWebhookDeliveries(filter, now);
  }

  getEvents(ids: number[]): Promise<StoredEvent[]> {
    return this.#events.getEvents(ids);
  }

  markEventDelivered(id: number): Promise<void> {
    return this.#events.markEventDelivered(id);
  }

  markEventFailed(id: number, error: string, nextAttemptAt?: number): Promise<void> {
    return this.#events.markEventFailed(id, error, nextAttemptAt);
  }

  addWebhook(input: { id?: string; url: string; eventTypes: string[]; secretRef?: string | null }): Promise<Webhook> {
    return this.#webhooks.addWebhook(input);
  }

  listWebhooks(type?: string): Promise<Webhook[]> {
    return this.#webhooks.listWebhooks(type);
  }

  getWebhook(id: string): Promise<Webhook | undefined> {
    return this.#webhooks.getWebhook(id);
  }

  disableWebhook(id: string): Promise<boolean> {
    return this.#webhooks.disableWebhook(id);
  }

  // ---- operators ------------------------------------------------------------------------------------------
  // operator-repository.ts

  createOperator(input: { id?: string; name: string; passwordHash?: string | null; tokenHash?: string | null; roles: string[] }): Promise<Operator> {
    return this.#operators.createOperator(input);
  }

  getOperatorByName(name: string): Promise<Operator | undefined> {
    return this.#operators.getOperatorByName(name);
  }

  getOperatorByTokenHash(tokenHash: string): Promise<Operator | undefined> {
    return this.#operators.getOperatorByTokenHash(tokenHash);
  }

  disableOperator(id: string): Promise<void> {
    return this.#operators.disableOperator(id);
  }

  enabledOperatorsNamed(prefix: string): Promise<Operator[]> {
    return this.#operators.enabledOperatorsNamed(prefix);
  }

  // ---- the repositories ----------------------------------------------------------------------------------------

  get #users(): UserRepository {
    return (this.#usersRepository ??= new UserRepository(this.db, this.#now));
  }

  get #cards(): CardRepository {
    return (this.#cardsRepository ??= new CardRepository(this.db, this.#now));
  }

  get #keySets(): KeySetRepository {
    return (this.#keySetsRepository ??= new KeySetRepository(this.db, this.#now));
  }

  get #keyPairs(): KeyPairRepository {
    return (this.#keyPairsRepository ??= new KeyPairRepository(this.db, this.#now));
  }

  get #certificates(): CertificateRepository {
    return (this.#certificatesRepository ??= new CertificateRepository(this.db, this.#now));
  }

  get #packages(): PackageRepository {
    return (this.#packagesRepository ??= new PackageRepository(this.db, this.#now));
  }

  get #rotations(): RotationJobRepository {
    return (this.#rotationsRepository ??= new RotationJobRepository(this.db, this.#now));
  }

  get #events(): EventRepository {
    return (this.#eventsRepository ??= new EventRepository(this.db, this.#now));
  }

  get #webhooks(): WebhookRepository {
    return (this.#webhooksRepository ??= new WebhookRepository(this.db, this.#now));
  }

  get #operators(): OperatorRepository {
    return (this.#operatorsRepository ??= new OperatorRepository(this.db, this.#now));
  }
}
