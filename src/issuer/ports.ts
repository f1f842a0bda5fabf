// The issuer's storage port: what the issuing flows (issuer.ts, card-lifecycle.ts, rotation*.ts, rewrap.ts,
// validity.ts, webhooks.ts, audit-checkpoints.ts) need from the system DB, as TypeScript interfaces. The store
// implements them (src/store/store.ts: `class Store implements IssuerStore, AuditCheckpointStore`), on SQLite and
// PostgreSQL through one code path; the wiring (server/, cli/, demo/) hands a Store to the domain.
//
// The contract the domain relies on, besides each method's own:
//   - a store given to a transaction's `fn` is bound to that transaction: every call on it — the audit append and
//     the rotation records included — commits or rolls back with it; called on a bound store, transaction() joins it;
//   - audit() appends to the hash-chained, tamper-evident audit log (serialised appends, src/store/audit.ts) in the
//     transaction the store is bound to, else in one of its own; NEVER a secret in an entry;
//   - refusals are DomainErrors (src/util/errors.ts) of kind invalid, not_found or conflict (StoreError).
//
// Never here: a query, Kysely, SQL or a connection.

import type { JsonValue } from "../util/json.ts";
import type {
  Card,
  CardKeySet,
  CardStatus,
  CardStatusChange,
  Certificate,
  DeliveryPackage,
  KeyPair,
  KeyPairStatus,
  KeySetStatus,
  NewCard,
  NewCredential,
  NewKeySet,
  NewRotation,
  PackageStatus,
  RecordedCredential,
  Rotation,
  RotationStatus,
  StoredCheckpoint,
  StoredEvent,
  User,
  Webhook,
  WebhookDelivery,
  WrappedKey,
} from "./records.ts";
import type { RotationApproval, RotationItem } from "./rotation-records.ts";

/** One entry of the audit log: who did what to which subject; details name things by ID, never a secret. */
export interface AuditInput {
  /** Operator name, "system", or the card/terminal acting. */
  actor: string;
  /** e.g. "card.issued", "credential.delivered", "rotation.approved", "certificate.revoked". */
  action: string;
  /** ID of what the action was about (card, key pair, certificate, rotation ...). */
  subject: string;
  details?: { [key: string]: JsonValue };
  /** Epoch ms (default: now). */
  at?: number;
}

export interface AuditLog {
  /** Appends `entry` to the audit log, in the transaction this store is bound to (else in its own). */
  audit(entry: AuditInput): Promise<void>;
}

/** What a rotation owes besides its job row (rotation-records.ts), bound to the same DB or transaction as its store. */
export interface RotationRecords {
  approvals(rotationId: string): Promise<RotationApproval[]>;
  addItems(rotationId: string, items: Omit<RotationItem, "rotationId" | "updatedAt" | "packageSeq">[], now: number): Promise<void>;
  items(rotationId: string): Promise<RotationItem[]>;
  /** pending -> packaged for the one caller that finds it pending (the row held until its transaction ends); false: another call has it. */
  claimItem(rotationId: string, slot: string, now: number): Promise<boolean>;
  setItemPackage(rotationId: string, slot: string, pkg: { cardId: string; seq: number; keyPairId?: string }): Promise<void>;
  /** Running rotations whose distribution is done and whose new card is `cardId`. */
  distributedTo(cardId: string): Promise<string[]>;
  /** Card `cardId`'s status when it is one of `states`, its row held until the transaction ends; else the status it is in. */
  holdCard(cardId: string, states: readonly string[]): Promise<{ held: true; status: string } | { held: false; status?: string }>;
  /** Keys wrapped under `keySetId` whose key pair is not card `cardId`'s: how many, and the first. */
  foreignWrappedKeys(keySetId: string, cardId: string): Promise<{ count: number; first?: string }>;
}

export interface CardStore {
  createUser(input: { id?: string; personalData: Record<string, JsonValue> }): Promise<User>;
  getUser(id: string): Promise<User | undefined>;
  registerCard(input: NewCard): Promise<Card>;
  /** With `hold`, inside a transaction: the card's row held until it ends. */
  getCard(id: string, o?: { hold?: boolean }): Promise<Card | undefined>;
  getCardContext(id: string): Promise<{ card: Card; keySet?: CardKeySet; user: User } | undefined>;
  setCardStatus(id: string, status: CardStatus, o?: { actor?: string; reason?: string | null }): Promise<void>;
  changeCardStatus(id: string, to: CardStatus, o: { from?: readonly CardStatus[]; actor: string | null; reason: string | null }): Promise<CardStatusChange>;
  addKeySet(input: NewKeySet): Promise<CardKeySet>;
  getKeySet(id: string): Promise<CardKeySet | undefined>;
  listKeySets(cardId: string): Promise<CardKeySet[]>;
  setKeySetStatus(id: string, status: KeySetStatus): Promise<void>;
}

export interface CredentialStore {
  recordCredential(input: NewCredential): Promise<RecordedCredential>;
  getKeyPair(id: string): Promise<KeyPair | undefined>;
  listKeyPairs(filter: { cardId?: string; userId?: string; status?: KeyPairStatus; slot?: string }): Promise<KeyPair[]>;
  updateKeyPair(id: string, change: { status?: KeyPairStatus; cardId?: string | null; slot?: string | null }): Promise<void>;
  claimCredentialSlot(cardId: string, slot: string, claimId: string, leaseMs: number): Promise<boolean>;
  releaseCredentialSlot(cardId: string, slot: string, claimId: string): Promise<boolean>;
  getWrappedKey(keyPairId: string, keySetId: string): Promise<WrappedKey | undefined>;
  countWrappedKeys(keySetId: string, afterId?: number): Promise<number>;
  wrappedKeyPagesWithAlgorithm(keySetId: string, options?: { afterId?: number; pageSize?: number }): AsyncGenerator<(WrappedKey & { algorithm: string })[]>;
  getCertificateBySerial(serial: string): Promise<Certificate | undefined>;
  listCertificates(keyPairId: string): Promise<Certificate[]>;
  revokeCertificate(id: string, reason: string, at?: number): Promise<Certificate>;
  createPackage(cardId: string, body: Uint8Array | ((seq: number) => Uint8Array | Promise<Uint8Array>)): Promise<DeliveryPackage>;
  getPackage(cardId: string, seq: number): Promise<DeliveryPackage | undefined>;
  listPackages(cardId: string, filter?: { status?: PackageStatus; afterSeq?: number; limit?: number }): Promise<DeliveryPackage[]>;
  advancePackage(cardId: string, seq: number, to: "fetched" | "acknowledged"): Promise<boolean>;
}

export interface RotationStore {
  proposeRotation(input: NewRotation): Promise<Rotation>;
  getRotation(id: string): Promise<Rotation | undefined>;
  listRotations(filter?: { status?: RotationStatus; cardId?: string }): Promise<Rotation[]>;
  openRotationForKeySet(fromKeySetId: string): Promise<Rotation | undefined>;
  approveRotation(id: string, operator: string, o?: { required?: number }): Promise<Rotation>;
  startRotation(id: string, input: { toCardId?: string | null; toKeySetId: string; total: number }): Promise<Rotation>;
  checkpointRotation(id: string, step: { expectedCursor: number; cursor: number; rewrapped: { keyPairId: string; wrapped: Uint8Array }[] }): Promise<Rotation>;
  claimDistribution(id: string): Promise<Rotation | undefined>;
  finishDistribution(id: string): Promise<boolean>;
  completeDistribution(id: string): Promise<Rotation | undefined>;
  cancelRotation(id: string): Promise<Rotation>;
  /** The records of rotation_approvals and rotation_items, bound as this store is. */
  readonly rotationRecords: RotationRecords;
}

/** Validity (FIG. 5, para 0062): what runs out by `until`, a page at a time. */
export interface ValidityStore {
  expiringCards(until: number, page?: { afterId?: string; limit?: number }): Promise<Card[]>;
  expiringKeySets(until: number, page?: { afterId?: string; limit?: number }): Promise<CardKeySet[]>;
  expiringCertificates(until: number, page?: { afterId?: string; limit?: number }): Promise<Certificate[]>;
}

/** The events outbox and the webhooks' deliveries (webhooks.ts). */
export interface EventStore {
  /** null when an event with the same `dedupKey` is recorded already. */
  enqueueEvent(input: { type: string; subject: string; payload: JsonValue; dedupKey?: string }): Promise<StoredEvent | null>;
  getEvents(ids: number[]): Promise<StoredEvent[]>;
  eventsToFanOut(limit?: number): Promise<StoredEvent[]>;
  fanOutEvent(eventId: number, webhookIds: string[], dueAt: number): Promise<void>;
  dueWebhookDeliveries(now: number): Promise<Map<string, number>>;
  claimWebhookDeliveries(input: { webhookId: string; limit: number; now: number; owner: string; leaseUntil: number }): Promise<WebhookDelivery[]>;
  renewWebhookLease(eventId: number, webhookId: string, owner: string, leaseUntil: number): Promise<boolean>;
  releaseWebhookLeases(owner: string, keys: { eventId: number; webhookId: string }[]): Promise<void>;
  completeWebhookDelivery(eventId: number, webhookId: string): Promise<void>;
  failWebhookDelivery(input: { eventId: number; webhookId: string; owner: string; error: string; nextAttemptAt: number; dead: boolean }): Promise<boolean>;
  settleWebhookEvents(eventId?: number): Promise<number>;
  countWaitingWebhookDeliveries(now: number): Promise<number>;
  retryDeadWebhookDeliveries(filter: { webhookId?: string; deliveries?: { eventId: number; webhookId: string }[] }, now: number): Promise<WebhookDelivery[]>;
  addWebhook(input: { id?: string; url: string; eventTypes: string[]; secretRef?: string | null }): Promise<Webhook>;
  listWebhooks(type?: string): Promise<Webhook[]>;
  disableWebhook(id: string): Promise<boolean>;
}

/** Everything the issuing flows store, and how they group it into transactions. */
export interface IssuerStore extends AuditLog, CardStore, CredentialStore, RotationStore, ValidityStore, EventStore {
  /** The store's clock, epoch ms. */
  now(): number;
  /** Runs `fn` in one transaction with a store bound to it; inside a transaction already, `fn` joins it. */
  transaction<T>(fn: (store: IssuerStore) => Promise<T>): Promise<T>;
  /**
   * Like transaction(), with group commit: concurrent calls share one commit, each in its own savepoint. `fn` does
   * all its DB work through the store it is given and never waits for another group call.
   */
  groupTransaction<T>(fn: (store: IssuerStore) => Promise<T>): Promise<T>;
}

/** The audit log's signed checkpoints (audit-checkpoints.ts): their records, bound as their store is. */
export interface AuditCheckpointRecords {
  /** The chain hashes of the audit entries 1..`upTo` (all when not given), in seq order: one consistent snapshot. */
  chainHashes(upTo?: number): Promise<{ seq: number; hash: string }[]>;
  /** Records a checkpoint; one of the same size already recorded is kept. */
  add(c: StoredCheckpoint): Promise<void>;
  latest(): Promise<StoredCheckpoint | undefined>;
  bySize(size: number): Promise<StoredCheckpoint | undefined>;
}

/** What the whole hash chain says (src/store/audit.ts verifyAuditLog): intact, or the first entry that is not. */
export type AuditChainCheck = { ok: true } | { ok: false; seq: number; message: string };

/** What audit-checkpoints.ts needs: the checkpoints, the chain's verification, and an append for its refusals. */
export interface AuditCheckpointStore extends AuditLog {
  readonly auditCheckpoints: AuditCheckpointRecords;
  /** Walks the whole chain; with `expectedHead`, also checks the log still holds that exact entry. */
  verifyAuditLog(o: { expectedHead: { seq: number; hash: string } | null }): Promise<AuditChainCheck>;
}

/** What the issuer remembers of a card's state counter (issue 17 §6; card-login.ts). */
export interface CardStateCounter {
  cardId: string;
  /** The highest state counter the card reported at an accepted login. */
  counter: number;
  updatedAt: number;
  /** Set while the card is flagged: when the rollback was seen, and the counter that login reported. */
  rollback: { at: number; reported: number } | null;
}

export type LoginOutcome =
  | { accepted: true; previous: number | null }
  /** rollback: seen now, the card is flagged; flagged: it was already; raced: two logins of the card crossed, not flagged. */
  | { accepted: false; reason: "rollback" | "flagged" | "raced"; record: CardStateCounter };

/**
 * The cards' state counters (src/store/state-counter-repository.ts implements it on the system DB, each call in a
 * transaction of its own): a rollback is flagged, audited ("card.rollback") and notified (event "card.rollback") in
 * the transaction that records it; a clear is audited ("card.rollback-cleared") with the removal.
 */
export interface StateCounterRecords {
  get(cardId: string): Promise<CardStateCounter | undefined>;
  /** Every flagged card, the oldest flag first. */
  listFlagged(): Promise<CardStateCounter[]>;
  /** A login the card proved, reporting `reported`; `since`: when its handshake began; `details` (IDs and numbers) go into a rollback's audit entry. */
  recordLogin(cardId: string, reported: number, o: { since: number; actor: string; details?: { [k: string]: JsonValue } }): Promise<LoginOutcome>;
  /** An operator's decision on a flagged card: the flag and the counter removed; undefined when it is not flagged. */
  clear(cardId: string, o: { actor: string; reason: string }): Promise<CardStateCounter | undefined>;
}
