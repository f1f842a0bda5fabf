// The issuer's store: every read and write of the system DB (seed 000 FIG. 4/5) the issuing flows make, written
// once against Kysely and run unchanged on SQLite and PostgreSQL.
//
// What it owns: users, cards (VT), card key sets (SkVT; custody references only), key pairs (public keys), the
// wrapped private keys Sk[PRk] (one row per card key set a key is wrapped under), certificates (CtVT), delivery
// packages and their per-card sequence numbers, rotation jobs (FIG. 15) with their resumable checkpoint, the
// events outbox, webhooks and operator credentials.
// What it must never do: store a key value, a clear private key, a password or an API token. It holds handles
// into key custody, wrapped keys, and hashes of credentials.

import { randomBytes } from "node:crypto";
import { newId } from "./ids.ts";
import { sql, type Insertable, type Selectable, type Transaction } from "kysely";
import {
  engineOf,
  openDatabase,
  type CardStatus,
  type Database,
  type Db,
  type Engine,
  type KeyPairStatus,
  type KeySetStatus,
  type OpenOptions,
  type PackageStatus,
  type RotationDistribution,
  type RotationStatus,
  type RotationStrategy,
  type WebhookDeliveryStatus,
} from "./db.ts";
import { migrateToLatest } from "./migrate.ts";
import { groupCommit } from "./group.ts";
import { canonicalAdded, canonicalDropped, parseAdded, rotationBinding, RotationRepository, type AddedCredentialSpec } from "./rotation-repository.ts";

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

export interface User {
  id: string;
  personalData: Record<string, JsonValue>;
  createdAt: number;
}

export interface Card {
  id: string;
  userId: string;
  status: CardStatus;
  validFrom: number;
  validUntil: number;
  currentKeySetId: string | null;
  lastPackageSeq: number;
  createdAt: number;
  updatedAt: number;
  /** Bumped by every status change: what a terminal token is bound to besides the card (card-lifecycle.ts). */
  statusVersion: number;
  /** The last status change (null: none since issue); every change is in the audit log. */
  statusChangedAt: number | null;
  statusChangedBy: string | null;
  statusReason: string | null;
}

export interface CardKeySet {
  id: string;
  cardId: string;
  kvn: number;
  version: number;
  status: KeySetStatus;
  validFrom: number;
  validUntil: number;
  custodyRef: string;
  label: string | null;
  createdAt: number;
}

export interface KeyPair {
  id: string;
  userId: string;
  cardId: string | null;
  slot: string | null;
  algorithm: string;
  publicKey: Buffer;
  status: KeyPairStatus;
  createdAt: number;
}

export interface WrappedKey {
  /** Row id: the page cursor of the bulk re-wrap. */
  id: number;
  keyPairId: string;
  keySetId: string;
  /** Sk[PRk]. */
  wrapped: Buffer;
  createdAt: number;
}

export interface Certificate {
  id: string;
  serial: string;
  keyPairId: string;
  der: Buffer;
  subject: string;
  notBefore: number;
  notAfter: number;
  revokedAt: number | null;
  revocationReason: string | null;
  createdAt: number;
}

export interface DeliveryPackage {
  id: number;
  cardId: string;
  seq: number;
  body: Buffer;
  status: PackageStatus;
  createdAt: number;
  fetchedAt: number | null;
  acknowledgedAt: number | null;
}

export interface Rotation {
  id: string;
  cardId: string;
  toCardId: string | null;
  fromKeySetId: string;
  toKeySetId: string | null;
  strategy: RotationStrategy;
  status: RotationStatus;
  cursor: number;
  total: number;
  done: number;
  approvedBy: string | null;
  approvedAt: number | null;
  error: string | null;
  createdAt: number;
  updatedAt: number;
  /** Who proposed it (null: the validity scan, or before migration 0012); that operator may not approve it. */
  proposedBy: string | null;
  /** The new card, bound at proposal: issueNewCard registers exactly this ID. */
  newCardId: string | null;
  /** The credentials distribute adds (embodiments 4, 5), by slot, and the old card's slots it leaves behind. */
  added: AddedCredentialSpec[];
  dropped: string[];
  /** Distinct operators other than the proposer who must approve it. */
  approvalsRequired: number;
  distribution: RotationDistribution;
  distributedAt: number | null;
}

export interface StoredEvent {
  id: number;
  type: string;
  subject: string;
  payload: JsonValue;
  dedupKey: string | null;
  createdAt: number;
  deliveredAt: number | null;
  attempts: number;
  lastError: string | null;
  /** Epoch ms before which a failed delivery is not retried; null: due now. */
  nextAttemptAt: number | null;
}

export interface Webhook {
  id: string;
  url: string;
  eventTypes: string[];
  secretRef: string | null;
  createdAt: number;
  disabledAt: number | null;
}

/** One delivery of an event to a webhook (migration 0014): its state, schedule and claim. */
export interface WebhookDelivery {
  eventId: number;
  webhookId: string;
  status: WebhookDeliveryStatus;
  attempts: number;
  nextAttemptAt: number;
  leaseOwner: string | null;
  leaseUntil: number | null;
  lastError: string | null;
  createdAt: number;
  updatedAt: number;
  deliveredAt: number | null;
  deadAt: number | null;
}

export interface Operator {
  id: string;
  name: string;
  passwordHash: string | null;
  tokenHash: string | null;
  roles: string[];
  createdAt: number;
  disabledAt: number | null;
}

export interface NewKeyPair {
  id?: string;
  userId: string;
  cardId?: string | null;
  slot?: string | null;
  algorithm: string;
  publicKey: Uint8Array;
  status?: KeyPairStatus;
}

export interface NewCertificate {
  id?: string;
  serial: string;
  der: Uint8Array;
  subject: string;
  notBefore: number;
  notAfter: number;
}

export interface RecordedCredential {
  keyPair: KeyPair;
  wrapped: WrappedKey[];
  certificate: Certificate | null;
}

export class StoreError extends Error {
  constructor(
    readonly code: "not_found" | "conflict" | "invalid",
    message: string,
  ) {
    super(message);
    this.name = "StoreError";
  }
}

const CARD_STATUSES: readonly CardStatus[] = ["issued", "active", "suspended", "retired", "destroyed"];

/**
 * The card lifecycle as the store enforces it (names, roles and audit: src/issuer/card-lifecycle.ts): the statuses a
 * card may move to each status from. Nothing goes back to issued; retired and destroyed are final (a retired card
 * may still be reported destroyed).
 */
export const CARD_STATUS_FROM: Readonly<Record<CardStatus, readonly CardStatus[]>> = {
  issued: [],
  active: ["issued", "suspended"],
  suspended: ["active"],
  retired: ["issued", "active", "suspended"],
  destroyed: ["issued", "active", "suspended", "retired"],
};

/** A status change the store made: the card as it is now and the status it left. */
export interface CardStatusChange {
  card: Card;
  from: CardStatus;
}
const STRATEGIES: readonly RotationStrategy[] = ["embodiment3", "embodiment4", "embodiment5"];
/** Rows per INSERT statement (keeps under SQLite's and PostgreSQL's bound-parameter limits). */
const INSERT_CHUNK = 1000;
const MAX_PAGE = 50_000;

export interface StoreOptions {
  /** Clock in epoch ms (tests pin it). */
  now?: () => number;
}

export class Store {
  readonly engine: Engine;
  readonly #now: () => number;

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

  // ---- users ----------------------------------------------------------------------------------------------

  async createUser(input: { id?: string; personalData: Record<string, JsonValue> }): Promise<User> {
    const row = { id: input.id ?? newId(), personal_data: JSON.stringify(input.personalData), created_at: this.now() };
    await this.#insertOrConflict(this.db.insertInto("users").values(row).execute(), `user ${row.id} exists`);
    return toUser(row);
  }

  async getUser(id: string): Promise<User | undefined> {
    const row = await this.db.selectFrom("users").selectAll().where("id", "=", id).executeTakeFirst();
    return row && toUser(row);
  }

  // ---- cards and card key sets (ST11-ST15) ----------------------------------------------------------------

  /** Registers a card issued to a user (ST14), validity VT = [validFrom, validUntil]. */
  async registerCard(input: {
    id?: string;
    userId: string;
    validFrom: number;
    validUntil: number;
    status?: CardStatus;
  }): Promise<Card> {
    checkValidity("card", input.validFrom, input.validUntil);
    const status = input.status ?? "issued";
    if (!CARD_STATUSES.includes(status)) throw new StoreError("invalid", `card status: unknown ${status}`);
    const now = this.now();
    const row: Insertable<Database["cards"]> = {
      id: input.id ?? newId(),
      user_id: input.userId,
      status,
      valid_from: input.validFrom,
      valid_until: input.validUntil,
      current_key_set_id: null,
      created_at: now,
      updated_at: now,
    };
    await this.#insertOrConflict(this.db.insertInto("cards").values(row).execute(), `card ${row.id} exists, or user ${input.userId} unknown`);
    return (await this.getCard(row.id))!;
  }

  /**
   * The card. With `hold`, inside a transaction, its row stays locked until the transaction ends: a status change of
   * the card waits for this transaction, so what it read is still the card's status when it commits
   * (card-lifecycle.ts requireCardState). PostgreSQL: SELECT ... FOR NO KEY UPDATE. SQLite has one writer: the
   * transaction takes the write lock before it reads (a write that changes nothing), waiting for another
   * connection's writer (busy_timeout) rather than failing later when its read is no longer the latest.
   */
  async getCard(id: string, o: { hold?: boolean } = {}): Promise<Card | undefined> {
    let q = this.db.selectFrom("cards").selectAll().where("id", "=", id);
    if (o.hold && this.db.isTransaction) {
      if (this.engine === "postgres") q = q.forNoKeyUpdate();
      else await this.db.updateTable("cards").set((eb) => ({ status_version: eb.ref("status_version") })).where("id", "=", id).execute();
    }
    const row = await q.executeTakeFirst();
    return row && toCard(row);
  }

  /**
   * A card with its current key set and its user, in one read (a credential request's hot path). The key set is
   * undefined when the card has none yet.
   */
  async getCardContext(id: string): Promise<{ card: Card; keySet?: CardKeySet; user: User } | undefined> {
    const r = await this.db
      .selectFrom("cards as c")
      .innerJoin("users as u", "u.id", "c.user_id")
      .leftJoin("card_key_sets as k", "k.id", "c.current_key_set_id")
      .selectAll("c")
      .select(["u.personal_data as u_personal_data", "u.created_at as u_created_at"])
      .select(["k.card_id as k_card_id", "k.kvn as k_kvn", "k.version as k_version", "k.status as k_status", "k.valid_from as k_valid_from"])
      .select(["k.valid_until as k_valid_until", "k.custody_ref as k_custody_ref", "k.label as k_label", "k.created_at as k_created_at"])
      .where("c.id", "=", id)
      .executeTakeFirst();
    if (!r) return undefined;
    const card = toCard(r);
    const user = toUser({ id: r.user_id, personal_data: r.u_personal_data, created_at: r.u_created_at });
    if (r.current_key_set_id === null || r.k_card_id === null) return { card, user };
    const keySet = toKeySet({
      id: r.current_key_set_id,
      card_id: r.k_card_id,
      kvn: r.k_kvn!,
      version: r.k_version!,
      status: r.k_status!,
      valid_from: r.k_valid_from!,
      valid_until: r.k_valid_until!,
      custody_ref: r.k_custody_ref!,
      label: r.k_label,
      created_at: r.k_created_at!,
    });
    return { card, keySet, user };
  }

  async listCardsForUser(userId: string): Promise<Card[]> {
    const rows = await this.db.selectFrom("cards").selectAll().where("user_id", "=", userId).orderBy("created_at").orderBy("id").execute();
    return rows.map(toCard);
  }

  /**
   * Moves card `id` to `status` as the lifecycle allows (CARD_STATUS_FROM); already there, nothing changes. A move
   * the lifecycle does not allow (out of a final status, back to issued) is a conflict. See changeCardStatus.
   */
  async setCardStatus(id: string, status: CardStatus, o: { actor?: string; reason?: string | null } = {}): Promise<void> {
    if (!CARD_STATUSES.includes(status)) throw new StoreError("invalid", `card status: unknown ${status}`);
    await this.transaction(async (s) => {
      const cur = await s.getCard(id, { hold: true });
      if (cur?.status === status) return;
      await s.changeCardStatus(id, status, { actor: o.actor ?? null, reason: o.reason ?? null });
    });
  }

  /**
   * Moves card `id` to `to` from one of `from` (default: every status CARD_STATUS_FROM allows) in one transaction
   * that holds the card's row: of concurrent changes, each sees the status the one before it committed, so a card
   * never leaves a final status and two changes never both start from the same one. Bumps status_version (live
   * terminal tokens of the card stop acting for it) and records when, by whom and why. StoreError "conflict"
   * naming the current status when it is not one of `from`; "not_found" for an unknown card.
   */
  async changeCardStatus(id: string, to: CardStatus, o: { from?: readonly CardStatus[]; actor: string | null; reason: string | null }): Promise<CardStatusChange> {
    if (!CARD_STATUSES.includes(to)) throw new StoreError("invalid", `card status: unknown ${to}`);
    const from = o.from ?? CARD_STATUS_FROM[to];
    return this.transaction(async (s) => {
      const cur = await s.getCard(id, { hold: true });
      if (!cur) throw new StoreError("not_found", `card ${id} not found`);
      if (!from.includes(cur.status)) throw new StoreError("conflict", `card ${id} is ${cur.status}; expected ${from.join(" or ") || "(none)"} to become ${to}`);
      const now = s.now();
      const row = await s.db
        .updateTable("cards")
        .set((eb) => ({ status: to, status_version: eb("status_version", "+", 1), status_changed_at: now, status_changed_by: o.actor, status_reason: o.reason, updated_at: now }))
        .where("id", "=", id)
        .where("status", "=", cur.status)
        .returningAll()
        .executeTakeFirst();
      if (!row) throw new StoreError("conflict", `card ${id} changed status meanwhile`);
      return { card: toCard(row), from: cur.status };
    });
  }

  /**
   * Adds a card key set (ST11-ST12: only its custody reference, never the key values). With `makeCurrent`, new
   * private keys for the card are wrapped under it from now on.
   */
  async addKeySet(input: {
    id?: string;
    cardId: string;
    kvn: number;
    version: number;
    validFrom: number;
    validUntil: number;
    custodyRef: string;
    label?: string | null;
    status?: KeySetStatus;
    makeCurrent?: boolean;
  }): Promise<CardKeySet> {
    if (!Number.isInteger(input.kvn) || input.kvn < 1 || input.kvn > 127) throw new StoreError("invalid", `kvn: expected 1..127, got ${input.kvn}`);
    if (!Number.isInteger(input.version) || input.version < 1) throw new StoreError("invalid", `key set version: expected a positive integer, got ${input.version}`);
    checkValidity("key set", input.validFrom, input.validUntil);
    if (!input.custodyRef) throw new StoreError("invalid", "custodyRef: empty");
    const row = {
      id: input.id ?? newId(),
      card_id: input.cardId,
      kvn: input.kvn,
      version: input.version,
      status: input.status ?? ("active" as KeySetStatus),
      valid_from: input.validFrom,
      valid_until: input.validUntil,
      custody_ref: input.custodyRef,
      label: input.label ?? null,
      created_at: this.now(),
    };
    return this.transaction(async (s) => {
      await s.#insertOrConflict(
        s.db.insertInto("card_key_sets").values(row).execute(),
        `key set ${row.id}: exists, card ${input.cardId} unknown, or KVN ${input.kvn} / version ${input.version} already used on it`,
      );
      if (input.makeCurrent) await s.setCurrentKeySet(input.cardId, row.id);
      return toKeySet(row);
    });
  }

  async getKeySet(id: string): Promise<CardKeySet | undefined> {
    const row = await this.db.selectFrom("card_key_sets").selectAll().where("id", "=", id).executeTakeFirst();
    return row && toKeySet(row);
  }

  async listKeySets(cardId: string): Promise<CardKeySet[]> {
    const rows = await this.db.selectFrom("card_key_sets").selectAll().where("card_id", "=", cardId).orderBy("version").execute();
    return rows.map(toKeySet);
  }

  /** Makes `keySetId` (which must belong to the card) the one new private keys are wrapped under. */
  async setCurrentKeySet(cardId: string, keySetId: string): Promise<void> {
    const r = await this.db
      .updateTable("cards")
      .set({ current_key_set_id: keySetId, updated_at: this.now() })
      .where("id", "=", cardId)
      .where((eb) => eb.exists(eb.selectFrom("card_key_sets").select("id").where("id", "=", keySetId).where("card_id", "=", cardId)))
      .executeTakeFirst();
    if (Number(r.numUpdatedRows) !== 1) throw new StoreError("not_found", `card ${cardId} has no key set ${keySetId}`);
  }

  async setKeySetStatus(id: string, status: KeySetStatus): Promise<void> {
    const r = await this.db.updateTable("card_key_sets").set({ status }).where("id", "=", id).executeTakeFirst();
    if (Number(r.numUpdatedRows) !== 1) throw new StoreError("not_found", `key set ${id} not found`);
  }

  // ---- credentials (ST16-ST21) ----------------------------------------------------------------------------

  /**
   * Records a new credential in ONE transaction: the key pair (ST17), its private key wrapped under each given
   * card key set (ST18, Sk[PRk]) and, when already issued, its certificate (ST21). Either all rows land or none.
   */
  async recordCredential(input: {
    keyPair: NewKeyPair;
    wrapped: { keySetId: string; wrapped: Uint8Array }[];
    certificate?: NewCertificate | null;
  }): Promise<RecordedCredential> {
    const now = this.now();
    const kp = input.keyPair;
    if (kp.publicKey.length === 0) throw new StoreError("invalid", "publicKey: empty");
    const kpRow = {
      id: kp.id ?? newId(),
      user_id: kp.userId,
      card_id: kp.cardId ?? null,
      slot: kp.slot ?? null,
      algorithm: kp.algorithm,
      public_key: kp.publicKey,
      status: kp.status ?? ("active" as KeyPairStatus),
      created_at: now,
    };
    for (const w of input.wrapped) if (w.wrapped.length === 0) throw new StoreError("invalid", `wrapped key under ${w.keySetId}: empty`);
    const cert = input.certificate ?? null;
    if (cert) checkValidity("certificate", cert.notBefore, cert.notAfter);
    return this.transaction(async (s) => {
      await s.#insertOrConflict(
        s.db.insertInto("key_pairs").values(kpRow).execute(),
        kpRow.slot !== null && kpRow.status === "active"
          ? `key pair ${kpRow.id} exists, user/card unknown, or slot ${kpRow.slot} of card ${kpRow.card_id} holds an active key pair already`
          : `key pair ${kpRow.id} exists, or user/card unknown`,
      );
      let wrapped: WrappedKey[] = [];
      if (input.wrapped.length > 0) {
        const rows = await s.#insertOrConflict(
          s.db
            .insertInto("wrapped_keys")
            .values(input.wrapped.map((w) => ({ key_pair_id: kpRow.id, key_set_id: w.keySetId, wrapped: w.wrapped, created_at: now })))
            .returning("id")
            .execute(),
          `wrapped keys of ${kpRow.id}: unknown key set, or the same key set twice`,
        );
        wrapped = rows.map((r, i) => ({ id: r.id, keyPairId: kpRow.id, keySetId: input.wrapped[i].keySetId, wrapped: Buffer.from(input.wrapped[i].wrapped), createdAt: now }));
      }
      let certificate: Certificate | null = null;
      if (cert) {
        const row = certRow(cert, kpRow.id, now);
        await s.#insertOrConflict(s.db.insertInto("certificates").values(row).execute(), `certificate serial ${cert.serial} exists`);
        certificate = toCertificate(row);
      }
      return { keyPair: toKeyPair(kpRow), wrapped, certificate };
    });
  }

  /** Adds Sk[PRk] of an existing key pair under another card key set (embodiment 3-5 re-wrap, single key). */
  async addWrappedKey(keyPairId: string, keySetId: string, wrapped: Uint8Array): Promise<WrappedKey> {
    const now = this.now();
    const r = await this.#insertOrConflict(
      this.db.insertInto("wrapped_keys").values({ key_pair_id: keyPairId, key_set_id: keySetId, wrapped, created_at: now }).returning("id").executeTakeFirstOrThrow(),
      `key pair ${keyPairId} already wrapped under ${keySetId}, or either is unknown`,
    );
    return { id: r.id, keyPairId, keySetId, wrapped: Buffer.from(wrapped), createdAt: now };
  }

  async addCertificate(keyPairId: string, cert: NewCertificate): Promise<Certificate> {
    checkValidity("certificate", cert.notBefore, cert.notAfter);
    const row = certRow(cert, keyPairId, this.now());
    await this.#insertOrConflict(this.db.insertInto("certificates").values(row).execute(), `certificate serial ${cert.serial} exists, or key pair ${keyPairId} unknown`);
    return toCertificate(row);
  }

  async getKeyPair(id: string): Promise<KeyPair | undefined> {
    const row = await this.db.selectFrom("key_pairs").selectAll().where("id", "=", id).executeTakeFirst();
    return row && toKeyPair(row);
  }

  async listKeyPairs(filter: { cardId?: string; userId?: string; status?: KeyPairStatus; slot?: string }): Promise<KeyPair[]> {
    let q = this.db.selectFrom("key_pairs").selectAll();
    if (filter.cardId !== undefined) q = q.where("card_id", "=", filter.cardId);
    if (filter.slot !== undefined) q = q.where("slot", "=", filter.slot);
    if (filter.userId !== undefined) q = q.where("user_id", "=", filter.userId);
    if (filter.status !== undefined) q = q.where("status", "=", filter.status);
    return (await q.orderBy("created_at").orderBy("id").execute()).map(toKeyPair);
  }

  async updateKeyPair(id: string, change: { status?: KeyPairStatus; cardId?: string | null; slot?: string | null }): Promise<void> {
    const set: { status?: KeyPairStatus; card_id?: string | null; slot?: string | null } = {};
    if (change.status !== undefined) set.status = change.status;
    if (change.cardId !== undefined) set.card_id = change.cardId;
    if (change.slot !== undefined) set.slot = change.slot;
    if (Object.keys(set).length === 0) return;
    const r = await this.db.updateTable("key_pairs").set(set).where("id", "=", id).executeTakeFirst();
    if (Number(r.numUpdatedRows) !== 1) throw new StoreError("not_found", `key pair ${id} not found`);
  }

  /**
   * A credential request's claim on (card, slot), held from before its key is certified until the transaction that
   * records it (rotation-repository.ts): true when this claim holds it now — it was free, or its holder's lease ran
   * out (a stalled or crashed server) — false while another request holds it.
   */
  async claimCredentialSlot(cardId: string, slot: string, claimId: string, leaseMs: number): Promise<boolean> {
    return new RotationRepository(this.db).claimSlot(cardId, slot, claimId, this.now(), leaseMs);
  }

  /** Gives a claim up (in the recording transaction, or after a failure); false when `claimId` no longer holds it. */
  async releaseCredentialSlot(cardId: string, slot: string, claimId: string): Promise<boolean> {
    return new RotationRepository(this.db).releaseSlot(cardId, slot, claimId);
  }

  async getWrappedKey(keyPairId: string, keySetId: string): Promise<WrappedKey | undefined> {
    const row = await this.db
      .selectFrom("wrapped_keys")
      .selectAll()
      .where("key_pair_id", "=", keyPairId)
      .where("key_set_id", "=", keySetId)
      .executeTakeFirst();
    return row && toWrapped(row);
  }

  async countWrappedKeys(keySetId: string, afterId = 0): Promise<number> {
    const r = await this.db
      .selectFrom("wrapped_keys")
      .select((eb) => eb.fn.countAll<number>().as("n"))
      .where("key_set_id", "=", keySetId)
      .where("id", ">", afterId)
      .executeTakeFirstOrThrow();
    return Number(r.n);
  }

  /**
   * The keys wrapped under a card key set, as pages in primary-key order (keyset pagination: each page is one
   * indexed range query `id > last`, so memory stays at one page however many keys there are, and no
   * connection or snapshot is held between pages). Start after `afterId` to resume a checkpointed scan.
   */
  async *wrappedKeyPages(keySetId: string, options: { afterId?: number; pageSize?: number } = {}): AsyncGenerator<WrappedKey[]> {
    const size = options.pageSize ?? 1000;
    if (!Number.isInteger(size) || size < 1 || size > MAX_PAGE) throw new StoreError("invalid", `pageSize: expected 1..${MAX_PAGE}, got ${size}`);
    let after = options.afterId ?? 0;
    while (true) {
      const rows = await this.db
        .selectFrom("wrapped_keys")
        .selectAll()
        .where("key_set_id", "=", keySetId)
        .where("id", ">", after)
        .orderBy("id")
        .limit(size)
        .execute();
      if (rows.length === 0) return;
      after = rows[rows.length - 1].id;
      yield rows.map(toWrapped);
      if (rows.length < size) return;
    }
  }

  /**
   * As wrappedKeyPages, each key with its key pair's algorithm (what key custody needs to unwrap it: CKK_EC or
   * CKK_RSA on PKCS#11), read in the same query (a join on the key pair's primary key) for the bulk re-wrap.
   */
  async *wrappedKeyPagesWithAlgorithm(keySetId: string, options: { afterId?: number; pageSize?: number } = {}): AsyncGenerator<(WrappedKey & { algorithm: string })[]> {
    const size = options.pageSize ?? 1000;
    if (!Number.isInteger(size) || size < 1 || size > MAX_PAGE) throw new StoreError("invalid", `pageSize: expected 1..${MAX_PAGE}, got ${size}`);
    let after = options.afterId ?? 0;
    while (true) {
      const rows = await this.db
        .selectFrom("wrapped_keys as w")
        .innerJoin("key_pairs as k", "k.id", "w.key_pair_id")
        .select(["w.id", "w.key_pair_id", "w.key_set_id", "w.wrapped", "w.created_at", "k.algorithm"])
        .where("w.key_set_id", "=", keySetId)
        .where("w.id", ">", after)
        .orderBy("w.id")
        .limit(size)
        .execute();
      if (rows.length === 0) return;
      after = rows[rows.length - 1].id;
      yield rows.map((r) => ({ ...toWrapped(r), algorithm: r.algorithm }));
      if (rows.length < size) return;
    }
  }

  async getCertificate(id: string): Promise<Certificate | undefined> {
    const row = await this.db.selectFrom("certificates").selectAll().where("id", "=", id).executeTakeFirst();
    return row && toCertificate(row);
  }

  async getCertificateBySerial(serial: string): Promise<Certificate | undefined> {
    const row = await this.db.selectFrom("certificates").selectAll().where("serial", "=", serial).executeTakeFirst();
    return row && toCertificate(row);
  }

  async listCertificates(keyPairId: string): Promise<Certificate[]> {
    const rows = await this.db.selectFrom("certificates").selectAll().where("key_pair_id", "=", keyPairId).orderBy("created_at").execute();
    return rows.map(toCertificate);
  }

  /** Revokes a certificate once; a second revocation is a conflict (the first reason and time stand). */
  async revokeCertificate(id: string, reason: string, at = this.now()): Promise<Certificate> {
    const r = await this.db
      .updateTable("certificates")
      .set({ revoked_at: at, revocation_reason: reason })
      .where("id", "=", id)
      .where("revoked_at", "is", null)
      .executeTakeFirst();
    if (Number(r.numUpdatedRows) !== 1) {
      const c = await this.getCertificate(id);
      throw c ? new StoreError("conflict", `certificate ${id} already revoked`) : new StoreError("not_found", `certificate ${id} not found`);
    }
    return (await this.getCertificate(id))!;
  }

  /** Revoked certificates that have not yet expired (what a CRL lists). */
  async listRevokedCertificates(now = this.now()): Promise<Certificate[]> {
    const rows = await this.db
      .selectFrom("certificates")
      .selectAll()
      .where("revoked_at", "is not", null)
      .where("not_after", ">", now)
      .orderBy("revoked_at")
      .orderBy("id")
      .execute();
    return rows.map(toCertificate);
  }

  // ---- delivery packages (ST22) ---------------------------------------------------------------------------

  /**
   * Hands out the card's next package sequence number. Atomic on both engines: one UPDATE ... RETURNING on the
   * card row (PostgreSQL row lock; SQLite's single writer), so concurrent callers never get the same number.
   */
  async allocatePackageSeq(cardId: string): Promise<number> {
    const r = await this.db
      .updateTable("cards")
      .set((eb) => ({ last_package_seq: eb("last_package_seq", "+", 1) }))
      .where("id", "=", cardId)
      .returning("last_package_seq")
      .executeTakeFirst();
    if (!r) throw new StoreError("not_found", `card ${cardId} not found`);
    return Number(r.last_package_seq);
  }

  /** Stores a delivery package for the card under the next sequence number (allocation and insert atomic). */
  async createPackage(cardId: string, body: Uint8Array | ((seq: number) => Uint8Array | Promise<Uint8Array>)): Promise<DeliveryPackage> {
    return this.transaction(async (s) => {
      const seq = await s.allocatePackageSeq(cardId);
      const bytes = typeof body === "function" ? await body(seq) : body;
      const row = { card_id: cardId, seq, body: bytes, status: "pending" as PackageStatus, created_at: s.now(), fetched_at: null, acknowledged_at: null };
      const r = await s.db.insertInto("packages").values(row).returning("id").executeTakeFirstOrThrow();
      return toPackage({ ...row, id: r.id });
    });
  }

  async getPackage(cardId: string, seq: number): Promise<DeliveryPackage | undefined> {
    const row = await this.db.selectFrom("packages").selectAll().where("card_id", "=", cardId).where("seq", "=", seq).executeTakeFirst();
    return row && toPackage(row);
  }

  async listPackages(cardId: string, filter: { status?: PackageStatus; afterSeq?: number; limit?: number } = {}): Promise<DeliveryPackage[]> {
    let q = this.db.selectFrom("packages").selectAll().where("card_id", "=", cardId).where("seq", ">", filter.afterSeq ?? 0);
    if (filter.status) q = q.where("status", "=", filter.status);
    return (await q.orderBy("seq").limit(filter.limit ?? 100).execute()).map(toPackage);
  }

  /**
   * pending -> fetched -> acknowledged; never backwards. Returns false when the package was already further. A
   * rotation item the package carries moves with it in the same transaction (delivered, acknowledged).
   */
  async advancePackage(cardId: string, seq: number, to: "fetched" | "acknowledged"): Promise<boolean> {
    const now = this.now();
    return this.transaction(async (s) => {
      const q =
        to === "fetched"
          ? s.db.updateTable("packages").set({ status: "fetched", fetched_at: now }).where("status", "=", "pending")
          : s.db.updateTable("packages").set({ status: "acknowledged", acknowledged_at: now }).where("status", "in", ["pending", "fetched"]);
      const r = await q.where("card_id", "=", cardId).where("seq", "=", seq).executeTakeFirst();
      if (Number(r.numUpdatedRows) === 1) {
        await new RotationRepository(s.db).advanceItemForPackage(cardId, seq, to === "fetched" ? "delivered" : "acknowledged", now);
        return true;
      }
      if (!(await s.getPackage(cardId, seq))) throw new StoreError("not_found", `card ${cardId} has no package ${seq}`);
      return false;
    });
  }

  // ---- card-key rotation jobs (embodiments 3-5, FIG. 15) --------------------------------------------------

  /**
   * Records a rotation the validity scan (or an operator) proposes; it runs only after approval (para 0062). What
   * the approvals will cover is fixed here: the new card's ID (a fresh one unless given), the credentials it adds and
   * the old card's slots it leaves behind. One open rotation per key set and one rotation per new card ID (unique
   * indexes, migration 0012): a second is a conflict.
   */
  async proposeRotation(input: {
    id?: string;
    cardId: string;
    fromKeySetId: string;
    strategy: RotationStrategy;
    toCardId?: string | null;
    toKeySetId?: string | null;
    proposedBy?: string | null;
    newCardId?: string;
    added?: AddedCredentialSpec[];
    dropped?: string[];
    approvalsRequired?: number;
  }): Promise<Rotation> {
    if (!STRATEGIES.includes(input.strategy)) throw new StoreError("invalid", `strategy: expected one of ${STRATEGIES.join(", ")}, got ${input.strategy}`);
    const approvals = input.approvalsRequired ?? 1;
    if (!Number.isInteger(approvals) || approvals < 1 || approvals > 16) throw new StoreError("invalid", `approvals required: expected 1..16, got ${approvals}`);
    const now = this.now();
    const row = {
      id: input.id ?? newId(),
      card_id: input.cardId,
      to_card_id: input.toCardId ?? null,
      from_key_set_id: input.fromKeySetId,
      to_key_set_id: input.toKeySetId ?? null,
      strategy: input.strategy,
      status: "proposed" as RotationStatus,
      cursor: 0,
      total: 0,
      done: 0,
      approved_by: null,
      approved_at: null,
      error: null,
      created_at: now,
      updated_at: now,
      proposed_by: input.proposedBy ?? null,
      new_card_id: input.newCardId ?? input.toCardId ?? randomBytes(8).toString("hex"),
      added: canonicalAdded(input.added ?? []),
      dropped: canonicalDropped(input.dropped ?? []),
      approvals_required: approvals,
      distribution: "none" as RotationDistribution,
      distributed_at: null,
    };
    await this.#insertOrConflict(
      this.db.insertInto("rotations").values(row).execute(),
      `rotation ${row.id}: exists, card/key set unknown, key set ${input.fromKeySetId} already has an open rotation, or new card ${row.new_card_id} is another rotation's`,
    );
    return toRotation(row);
  }

  async getRotation(id: string): Promise<Rotation | undefined> {
    const row = await this.db.selectFrom("rotations").selectAll().where("id", "=", id).executeTakeFirst();
    return row && toRotation(row);
  }

  async listRotations(filter: { status?: RotationStatus; cardId?: string } = {}): Promise<Rotation[]> {
    let q = this.db.selectFrom("rotations").selectAll();
    if (filter.status) q = q.where("status", "=", filter.status);
    if (filter.cardId) q = q.where("card_id", "=", filter.cardId);
    return (await q.orderBy("created_at").orderBy("id").execute()).map(toRotation);
  }

  /** Open (not finished) rotation for a key set, if any: the validity scan queues at most one per key set. */
  async openRotationForKeySet(fromKeySetId: string): Promise<Rotation | undefined> {
    const row = await this.db
      .selectFrom("rotations")
      .selectAll()
      .where("from_key_set_id", "=", fromKeySetId)
      .where("status", "in", ["proposed", "approved", "running"])
      .executeTakeFirst();
    return row && toRotation(row);
  }

  /**
   * One operator's approval (four eyes, issue 15 §2), in one transaction: the rotation's row is taken first (a
   * guarded UPDATE: concurrent approvals of one rotation run one after the other, on PostgreSQL too), the proposer
   * is refused, the approval is recorded bound to the rotation's binding (rotationBinding; once per operator: the
   * primary key), and the rotation becomes approved once `required` distinct operators other than the proposer —
   * at least what the proposal asked for — approved this binding. Until then it stays proposed.
   */
  async approveRotation(id: string, operator: string, o: { required?: number } = {}): Promise<Rotation> {
    return this.transaction(async (s) => {
      const now = s.now();
      const row = await s.db.updateTable("rotations").set({ updated_at: now }).where("id", "=", id).where("status", "=", "proposed").returningAll().executeTakeFirst();
      if (!row) {
        const cur = await s.getRotation(id);
        if (!cur) throw new StoreError("not_found", `rotation ${id} not found`);
        throw new StoreError("conflict", `rotation ${id} is ${cur.status}; expected proposed`);
      }
      const r = toRotation(row);
      if (r.proposedBy !== null && r.proposedBy === operator) throw new StoreError("conflict", `four eyes: ${operator} proposed rotation ${id} and may not approve it; another operator must`);
      const repo = new RotationRepository(s.db);
      const binding = rotationBinding(r).hash;
      if (!(await repo.addApproval(id, operator, binding, now))) throw new StoreError("conflict", `four eyes: ${operator} approved rotation ${id} already; it needs another operator`);
      const given = (await repo.approvals(id)).filter((a) => a.bindingHash === binding && a.operator !== r.proposedBy).length;
      if (given < Math.max(r.approvalsRequired, o.required ?? 1)) return r;
      return s.#transition(id, ["proposed"], { status: "approved", approved_by: operator, approved_at: now, updated_at: now });
    });
  }

  /** approved -> running, with the new card/key set and the number of keys to re-wrap. Restarting a running job
   *  (after a crash) keeps its cursor and counters. */
  async startRotation(id: string, input: { toCardId?: string | null; toKeySetId: string; total: number }): Promise<Rotation> {
    const cur = await this.getRotation(id);
    if (!cur) throw new StoreError("not_found", `rotation ${id} not found`);
    if (cur.status === "running" && cur.toKeySetId === input.toKeySetId) return cur;
    return this.#transition(id, ["approved"], {
      status: "running",
      to_card_id: input.toCardId ?? cur.toCardId,
      to_key_set_id: input.toKeySetId,
      total: input.total,
      updated_at: this.now(),
    });
  }

  /**
   * One step of the streaming bulk re-wrap, atomically: the re-wrapped keys Sk2[PRk] are inserted, the cursor
   * moves to `cursor` (the last source wrapped_keys.id handled) and `done` grows — all or nothing. The step is
   * refused (conflict) unless the job is running with its cursor still at `expectedCursor`, so a second worker
   * or a replay after a crash cannot apply a page twice; re-inserting a pair that already exists is ignored.
   */
  async checkpointRotation(
    id: string,
    step: { expectedCursor: number; cursor: number; rewrapped: { keyPairId: string; wrapped: Uint8Array }[] },
  ): Promise<Rotation> {
    if (!(step.cursor >= step.expectedCursor)) throw new StoreError("invalid", `cursor ${step.cursor} is behind ${step.expectedCursor}`);
    return this.transaction(async (s) => {
      const now = s.now();
      const moved = await s.db
        .updateTable("rotations")
        .set((eb) => ({ cursor: step.cursor, done: eb("done", "+", step.rewrapped.length), updated_at: now }))
        .where("id", "=", id)
        .where("status", "=", "running")
        .where("cursor", "=", step.expectedCursor)
        .returningAll()
        .executeTakeFirst();
      if (!moved) {
        const cur = await s.getRotation(id);
        if (!cur) throw new StoreError("not_found", `rotation ${id} not found`);
        throw new StoreError("conflict", `rotation ${id} is ${cur.status} at cursor ${cur.cursor}, expected running at ${step.expectedCursor}`);
      }
      const keySetId = moved.to_key_set_id;
      if (!keySetId) throw new StoreError("invalid", `rotation ${id} has no target key set`);
      if (s.engine === "sqlite" && step.rewrapped.length > 0) {
        // The whole page as ONE parameter (a JSON array of [key pair id, hex Sk2[PRk]]) unpacked by SQLite's
        // json_each (unhex: SQLite >= 3.41, bundled by better-sqlite3): building, compiling and binding VALUES
        // lists of thousands of rows took about a quarter of the commit's CPU (measured on 200,000 keys).
        const page = JSON.stringify(step.rewrapped.map((r) => [r.keyPairId, Buffer.from(r.wrapped.buffer, r.wrapped.byteOffset, r.wrapped.byteLength).toString("hex")]));
        await sql`insert into wrapped_keys (key_pair_id, key_set_id, wrapped, created_at)
          select j.value ->> 0, ${keySetId}, unhex(j.value ->> 1), ${now} from json_each(${page}) as j where true
          on conflict (key_pair_id, key_set_id) do nothing`.execute(s.db);
        return toRotation(moved);
      }
      for (let i = 0; i < step.rewrapped.length; i += INSERT_CHUNK) {
        const chunk = step.rewrapped.slice(i, i + INSERT_CHUNK);
        await s.db
          .insertInto("wrapped_keys")
          .values(chunk.map((r) => ({ key_pair_id: r.keyPairId, key_set_id: keySetId, wrapped: r.wrapped, created_at: now })))
          .onConflict((oc) => oc.columns(["key_pair_id", "key_set_id"]).doNothing())
          .execute();
      }
      return toRotation(moved);
    });
  }

  /**
   * running -> completed, only while nothing is owed to the new card (no item pending or packaged: rotation_items).
   * A rotation that distributes completes through completeDistribution; this is for re-wrap-only jobs.
   */
  async completeRotation(id: string): Promise<Rotation> {
    const row = await this.db
      .updateTable("rotations")
      .set({ status: "completed", updated_at: this.now() })
      .where("id", "=", id)
      .where("status", "=", "running")
      .where(nothingOwed)
      .returningAll()
      .executeTakeFirst();
    if (row) return toRotation(row);
    const cur = await this.getRotation(id);
    if (!cur) throw new StoreError("not_found", `rotation ${id} not found`);
    throw new StoreError("conflict", cur.status === "running" ? `rotation ${id} still owes its new card keys` : `rotation ${id} is ${cur.status}; expected running`);
  }

  /**
   * The distribution's claim (issue 15 §1): none -> distributing for the one caller whose guarded UPDATE finds the
   * rotation running and unclaimed; undefined for every other (the row is locked until the claimer's transaction
   * ends, so on PostgreSQL the others wait and then find it claimed).
   */
  async claimDistribution(id: string): Promise<Rotation | undefined> {
    const row = await this.db
      .updateTable("rotations")
      .set({ distribution: "distributing", updated_at: this.now() })
      .where("id", "=", id)
      .where("status", "=", "running")
      .where("distribution", "=", "none")
      .returningAll()
      .executeTakeFirst();
    return row && toRotation(row);
  }

  /** distributing -> distributed (every package made); false when another call got there first. */
  async finishDistribution(id: string): Promise<boolean> {
    const now = this.now();
    const r = await this.db.updateTable("rotations").set({ distribution: "distributed", distributed_at: now, updated_at: now }).where("id", "=", id).where("distribution", "=", "distributing").executeTakeFirst();
    return Number(r.numUpdatedRows) === 1;
  }

  /**
   * running -> completed for a distributed rotation once every item is delivered, acknowledged or dropped — one
   * guarded UPDATE; undefined while something is owed (or when another call completed it).
   */
  async completeDistribution(id: string): Promise<Rotation | undefined> {
    const row = await this.db
      .updateTable("rotations")
      .set({ status: "completed", updated_at: this.now() })
      .where("id", "=", id)
      .where("status", "=", "running")
      .where("distribution", "=", "distributed")
      .where(nothingOwed)
      .returningAll()
      .executeTakeFirst();
    return row && toRotation(row);
  }

  async failRotation(id: string, error: string): Promise<Rotation> {
    return this.#transition(id, ["proposed", "approved", "running"], { status: "failed", error, updated_at: this.now() });
  }

  async cancelRotation(id: string): Promise<Rotation> {
    return this.#transition(id, ["proposed", "approved"], { status: "cancelled", updated_at: this.now() });
  }

  async #transition(id: string, from: RotationStatus[], set: Partial<Selectable<Database["rotations"]>>): Promise<Rotation> {
    const row = await this.db.updateTable("rotations").set(set).where("id", "=", id).where("status", "in", from).returningAll().executeTakeFirst();
    if (row) return toRotation(row);
    const cur = await this.getRotation(id);
    if (!cur) throw new StoreError("not_found", `rotation ${id} not found`);
    throw new StoreError("conflict", `rotation ${id} is ${cur.status}; expected ${from.join(" or ")}`);
  }

  // ---- validity (FIG. 5, para 0062) -----------------------------------------------------------------------

  /** Cards neither retired nor destroyed whose validity VT ends at or before `until` (already expired ones included). */
  async expiringCards(until: number, page: { afterId?: string; limit?: number } = {}): Promise<Card[]> {
    const rows = await this.db
      .selectFrom("cards")
      .selectAll()
      .where("valid_until", "<=", until)
      .where("status", "not in", ["retired", "destroyed"])
      .where("id", ">", page.afterId ?? "")
      .orderBy("id")
      .limit(page.limit ?? 1000)
      .execute();
    return rows.map(toCard);
  }

  /** Card key sets not retired whose validity SkVT ends at or before `until`. */
  async expiringKeySets(until: number, page: { afterId?: string; limit?: number } = {}): Promise<CardKeySet[]> {
    const rows = await this.db
      .selectFrom("card_key_sets")
      .selectAll()
      .where("valid_until", "<=", until)
      .where("status", "!=", "retired")
      .where("id", ">", page.afterId ?? "")
      .orderBy("id")
      .limit(page.limit ?? 1000)
      .execute();
    return rows.map(toKeySet);
  }

  /** Unrevoked certificates whose validity CtVT ends at or before `until`. */
  async expiringCertificates(until: number, page: { afterId?: string; limit?: number } = {}): Promise<Certificate[]> {
    const rows = await this.db
      .selectFrom("certificates")
      .selectAll()
      .where("not_after", "<=", until)
      .where("revoked_at", "is", null)
      .where("id", ">", page.afterId ?? "")
      .orderBy("id")
      .limit(page.limit ?? 1000)
      .execute();
    return rows.map(toCertificate);
  }

  // ---- events outbox and webhooks -------------------------------------------------------------------------

  /**
   * Appends a notification to the outbox (in the caller's transaction, if any, so it lands with the change it
   * reports). With a `dedupKey` already present nothing is added and null is returned.
   */
  async enqueueEvent(input: { type: string; subject: string; payload: JsonValue; dedupKey?: string }): Promise<StoredEvent | null> {
    const row = {
      type: input.type,
      subject: input.subject,
      payload: JSON.stringify(input.payload),
      dedup_key: input.dedupKey ?? null,
      created_at: this.now(),
      delivered_at: null,
      last_error: null,
    };
    const r = await this.db
      .insertInto("events")
      .values(row)
      .onConflict((oc) => oc.column("dedup_key").doNothing())
      .returning(["id", "attempts"])
      .executeTakeFirst();
    return r ? toEvent({ ...row, id: r.id, attempts: r.attempts, next_attempt_at: null, fanned_out_at: null }) : null;
  }

  /** Events in id order after `afterId` (the events endpoint's cursor). */
  async listEvents(filter: { afterId?: number; limit?: number; type?: string } = {}): Promise<StoredEvent[]> {
    let q = this.db.selectFrom("events").selectAll().where("id", ">", filter.afterId ?? 0);
    if (filter.type) q = q.where("type", "=", filter.type);
    return (await q.orderBy("id").limit(filter.limit ?? 100).execute()).map(toEvent);
  }

  /** Undelivered events due at `now` (never attempted, or their next attempt has come), oldest first. */
  async undeliveredEvents(limit = 100, now = this.now()): Promise<StoredEvent[]> {
    const rows = await this.db
      .selectFrom("events")
      .selectAll()
      .where("delivered_at", "is", null)
      .where((eb) => eb.or([eb("next_attempt_at", "is", null), eb("next_attempt_at", "<=", now)]))
      .orderBy("id")
      .limit(limit)
      .execute();
    return rows.map(toEvent);
  }

  /** Undelivered events whose next attempt is later than `now`. */
  async countWaitingEvents(now = this.now()): Promise<number> {
    const r = await this.db
      .selectFrom("events")
      .select((eb) => eb.fn.countAll<number | string>().as("n"))
      .where("delivered_at", "is", null)
      .where("next_attempt_at", ">", now)
      .executeTakeFirstOrThrow();
    return Number(r.n);
  }

  /** The webhooks that answered 2xx to an event (their deliveries are delivered). */
  async webhookAcks(eventId: number): Promise<Set<string>> {
    const rows = await this.db.selectFrom("webhook_queue").select("webhook_id").where("event_id", "=", eventId).where("status", "=", "delivered").execute();
    return new Set(rows.map((r) => r.webhook_id));
  }

  // ---- webhook deliveries (migration 0014): one row per (event, webhook), claimed before it is sent -------------

  /** Events whose deliveries are not queued yet, oldest first. */
  async eventsToFanOut(limit = 100): Promise<StoredEvent[]> {
    const rows = await this.db.selectFrom("events").selectAll().where("fanned_out_at", "is", null).orderBy("id").limit(limit).execute();
    return rows.map(toEvent);
  }

  /**
   * Queues an event's deliveries to `webhookIds`, due at `dueAt`, and marks it queued (delivered at once when nobody
   * subscribes). Idempotent: two servers queueing the same event make one row per webhook.
   */
  async fanOutEvent(eventId: number, webhookIds: string[], dueAt: number): Promise<void> {
    const now = this.now();
    await this.transaction(async (s) => {
      if (webhookIds.length > 0)
        await s.db
          .insertInto("webhook_queue")
          .values(webhookIds.map((w) => ({ event_id: eventId, webhook_id: w, status: "pending" as const, next_attempt_at: dueAt, created_at: now, updated_at: now })))
          .onConflict((oc) => oc.columns(["event_id", "webhook_id"]).doNothing())
          .execute();
      await s.db
        .updateTable("events")
        .set(webhookIds.length > 0 ? { fanned_out_at: now } : { fanned_out_at: now, delivered_at: now })
        .where("id", "=", eventId)
        .where("fanned_out_at", "is", null)
        .execute();
    });
  }

  /** Enabled webhooks with pending deliveries due at `now` and not claimed by anyone (or whose claim ran out): how many each. */
  async dueWebhookDeliveries(now: number): Promise<Map<string, number>> {
    const rows = await this.db
      .selectFrom("webhook_queue as q")
      .innerJoin("webhooks as w", "w.id", "q.webhook_id")
      .select((eb) => ["q.webhook_id", eb.fn.countAll<number | string>().as("n")])
      .where("w.disabled_at", "is", null)
      .where("q.status", "=", "pending")
      .where("q.next_attempt_at", "<=", now)
      .where((eb) => eb.or([eb("q.lease_until", "is", null), eb("q.lease_until", "<=", now)]))
      .groupBy("q.webhook_id")
      .execute();
    return new Map(rows.map((r) => [r.webhook_id, Number(r.n)]));
  }

  /**
   * Claims up to `limit` of a webhook's due, unclaimed pending deliveries for `owner` until `leaseUntil`, oldest due
   * first. The claim is one UPDATE whose WHERE says "unclaimed or expired": on PostgreSQL a second server's UPDATE
   * of the same row waits for the first to commit and then no longer matches, so a delivery is claimed by one
   * server at a time; SQLite has one writer. Returns what this call claimed.
   */
  async claimWebhookDeliveries(input: { webhookId: string; limit: number; now: number; owner: string; leaseUntil: number }): Promise<WebhookDelivery[]> {
    const { webhookId, now } = input;
    const rows = await this.db
      .updateTable("webhook_queue")
      .set({ lease_owner: input.owner, lease_until: input.leaseUntil, updated_at: now })
      .where("webhook_id", "=", webhookId)
      .where("status", "=", "pending")
      .where("next_attempt_at", "<=", now)
      .where((eb) => eb.or([eb("lease_until", "is", null), eb("lease_until", "<=", now)]))
      .where("event_id", "in", (eb) =>
        eb
          .selectFrom("webhook_queue as c")
          .select("c.event_id")
          .where("c.webhook_id", "=", webhookId)
          .where("c.status", "=", "pending")
          .where("c.next_attempt_at", "<=", now)
          .where((e) => e.or([e("c.lease_until", "is", null), e("c.lease_until", "<=", now)]))
          .orderBy("c.next_attempt_at")
          .orderBy("c.event_id")
          .limit(input.limit),
      )
      .returningAll()
      .execute();
    return rows.map(toDelivery).sort((a, b) => a.nextAttemptAt - b.nextAttemptAt || a.eventId - b.eventId);
  }

  /** Extends `owner`'s claim on a pending delivery; false when the claim is no longer `owner`'s (it ran out and another server took it, or the delivery is settled). */
  async renewWebhookLease(eventId: number, webhookId: string, owner: string, leaseUntil: number): Promise<boolean> {
    const r = await this.db
      .updateTable("webhook_queue")
      .set({ lease_until: leaseUntil })
      .where("event_id", "=", eventId)
      .where("webhook_id", "=", webhookId)
      .where("lease_owner", "=", owner)
      .where("status", "=", "pending")
      .executeTakeFirst();
    return Number(r.numUpdatedRows) === 1;
  }

  /** Gives up `owner`'s claims on these deliveries (a dispatcher stopping): due again for any server at once. */
  async releaseWebhookLeases(owner: string, keys: { eventId: number; webhookId: string }[]): Promise<void> {
    for (const k of keys)
      await this.db
        .updateTable("webhook_queue")
        .set({ lease_owner: null, lease_until: null })
        .where("event_id", "=", k.eventId)
        .where("webhook_id", "=", k.webhookId)
        .where("lease_owner", "=", owner)
        .execute();
  }

  /**
   * A 2xx answer: the delivery is delivered (whoever holds its claim: it was delivered), the event's attempt is
   * counted, and the event is marked delivered when no enabled webhook still waits for it.
   */
  async completeWebhookDelivery(eventId: number, webhookId: string): Promise<void> {
    const now = this.now();
    await this.db
      .updateTable("webhook_queue")
      .set((eb) => ({ status: "delivered", delivered_at: now, attempts: eb("attempts", "+", 1), lease_owner: null, lease_until: null, last_error: null, updated_at: now }))
      .where("event_id", "=", eventId)
      .where("webhook_id", "=", webhookId)
      .where("status", "=", "pending")
      .execute();
    await this.db.updateTable("events").set((eb) => ({ attempts: eb("attempts", "+", 1) })).where("id", "=", eventId).execute();
    await this.settleWebhookEvents(eventId);
  }

  /**
   * A failed attempt by the claim's `owner`: the delivery waits until `nextAttemptAt`, or with `dead` goes to the
   * dead-letter record. False (nothing recorded) when the claim is no longer `owner`'s.
   */
  async failWebhookDelivery(input: { eventId: number; webhookId: string; owner: string; error: string; nextAttemptAt: number; dead: boolean }): Promise<boolean> {
    const now = this.now();
    const r = await this.db
      .updateTable("webhook_queue")
      .set((eb) => ({
        attempts: eb("attempts", "+", 1),
        last_error: input.error,
        next_attempt_at: input.nextAttemptAt,
        lease_owner: null,
        lease_until: null,
        updated_at: now,
        ...(input.dead ? { status: "dead" as const, dead_at: now } : {}),
      }))
      .where("event_id", "=", input.eventId)
      .where("webhook_id", "=", input.webhookId)
      .where("lease_owner", "=", input.owner)
      .where("status", "=", "pending")
      .executeTakeFirst();
    if (Number(r.numUpdatedRows) !== 1) return false;
    await this.db
      .updateTable("events")
      .set((eb) => ({ attempts: eb("attempts", "+", 1), last_error: `webhook ${input.webhookId}: ${input.error}`.slice(0, 1000) }))
      .where("id", "=", input.eventId)
      .execute();
    return true;
  }

  /**
   * Marks delivered the queued events (or the one given) that no enabled webhook still waits for: every delivery
   * delivered, or to a webhook since disabled. A dead letter keeps its event undelivered. Returns how many.
   */
  async settleWebhookEvents(eventId?: number): Promise<number> {
    let q = this.db
      .updateTable("events")
      .set({ delivered_at: this.now(), last_error: null })
      .where("delivered_at", "is", null)
      .where("fanned_out_at", "is not", null)
      .where((eb) =>
        eb.not(
          eb.exists(
            eb
              .selectFrom("webhook_queue as q")
              .innerJoin("webhooks as w", "w.id", "q.webhook_id")
              .select("q.event_id")
              .whereRef("q.event_id", "=", "events.id")
              .where("q.status", "!=", "delivered")
              .where("w.disabled_at", "is", null),
          ),
        ),
      );
    if (eventId !== undefined) q = q.where("id", "=", eventId);
    return Number((await q.executeTakeFirst()).numUpdatedRows);
  }

  /** Pending deliveries to enabled webhooks not due before `now`. */
  async countWaitingWebhookDeliveries(now: number): Promise<number> {
    const r = await this.db
      .selectFrom("webhook_queue as q")
      .innerJoin("webhooks as w", "w.id", "q.webhook_id")
      .select((eb) => eb.fn.countAll<number | string>().as("n"))
      .where("w.disabled_at", "is", null)
      .where("q.status", "=", "pending")
      .where("q.next_attempt_at", ">", now)
      .executeTakeFirstOrThrow();
    return Number(r.n);
  }

  /** Deliveries by status (e.g. the dead letters), in (event, webhook) order; page with `after`. */
  async listWebhookDeliveries(
    filter: { status?: WebhookDeliveryStatus; webhookId?: string; eventId?: number; after?: { eventId: number; webhookId: string }; limit?: number } = {},
  ): Promise<WebhookDelivery[]> {
    let q = this.db.selectFrom("webhook_queue").selectAll();
    if (filter.status) q = q.where("status", "=", filter.status);
    if (filter.webhookId) q = q.where("webhook_id", "=", filter.webhookId);
    if (filter.eventId !== undefined) q = q.where("event_id", "=", filter.eventId);
    const after = filter.after;
    if (after) q = q.where((eb) => eb.or([eb("event_id", ">", after.eventId), eb.and([eb("event_id", "=", after.eventId), eb("webhook_id", ">", after.webhookId)])]));
    const rows = await q.orderBy("event_id").orderBy("webhook_id").limit(filter.limit ?? 100).execute();
    return rows.map(toDelivery);
  }

  /**
   * Moves dead letters back to pending, due at `now`, with their attempts counted afresh: all of a webhook's, or the
   * ones named. Only those of enabled webhooks. Returns the deliveries retried.
   */
  async retryDeadWebhookDeliveries(filter: { webhookId?: string; deliveries?: { eventId: number; webhookId: string }[] }, now: number): Promise<WebhookDelivery[]> {
    if (!filter.webhookId && !filter.deliveries?.length) throw new StoreError("invalid", "retry: name a webhook or deliveries");
    return this.transaction(async (s) => {
      let q = s.db
        .updateTable("webhook_queue")
        .set({ status: "pending", attempts: 0, next_attempt_at: now, dead_at: null, lease_owner: null, lease_until: null, updated_at: now })
        .where("status", "=", "dead")
        .where("webhook_id", "in", (eb) => eb.selectFrom("webhooks").select("id").where("disabled_at", "is", null));
      if (filter.webhookId) q = q.where("webhook_id", "=", filter.webhookId);
      const named = filter.deliveries;
      if (named?.length) q = q.where((eb) => eb.or(named.map((d) => eb.and([eb("event_id", "=", d.eventId), eb("webhook_id", "=", d.webhookId)]))));
      const rows = await q.returningAll().execute();
      return rows.map(toDelivery).sort((a, b) => a.eventId - b.eventId || a.webhookId.localeCompare(b.webhookId));
    });
  }

  /** Events by id (those that exist). */
  async getEvents(ids: number[]): Promise<StoredEvent[]> {
    if (ids.length === 0) return [];
    return (await this.db.selectFrom("events").selectAll().where("id", "in", ids).orderBy("id").execute()).map(toEvent);
  }

  async markEventDelivered(id: number): Promise<void> {
    await this.db.updateTable("events").set((eb) => ({ delivered_at: this.now(), attempts: eb("attempts", "+", 1), last_error: null })).where("id", "=", id).execute();
  }

  /** A failed attempt; the event is not handed out again before `nextAttemptAt` (epoch ms; omitted: due now). */
  async markEventFailed(id: number, error: string, nextAttemptAt?: number): Promise<void> {
    await this.db
      .updateTable("events")
      .set((eb) => ({ attempts: eb("attempts", "+", 1), last_error: error, next_attempt_at: nextAttemptAt ?? null }))
      .where("id", "=", id)
      .execute();
  }

  async addWebhook(input: { id?: string; url: string; eventTypes: string[]; secretRef?: string | null }): Promise<Webhook> {
    let parsed: URL;
    try {
      parsed = new URL(input.url);
    } catch {
      throw new StoreError("invalid", `webhook url: not a URL: ${input.url}`);
    }
    if (parsed.protocol !== "http:" && parsed.protocol !== "https:") throw new StoreError("invalid", `webhook url: expected http(s), got ${parsed.protocol}`);
    const row = { id: input.id ?? newId(), url: input.url, event_types: JSON.stringify(input.eventTypes), secret_ref: input.secretRef ?? null, created_at: this.now(), disabled_at: null };
    await this.#insertOrConflict(this.db.insertInto("webhooks").values(row).execute(), `webhook ${row.id} exists`);
    return toWebhook(row);
  }

  /** Enabled webhooks that subscribe to `type` (or to "*"); all enabled ones without a type. */
  async listWebhooks(type?: string): Promise<Webhook[]> {
    const rows = await this.db.selectFrom("webhooks").selectAll().where("disabled_at", "is", null).orderBy("created_at").orderBy("id").execute();
    return rows.map(toWebhook).filter((w) => type === undefined || w.eventTypes.includes("*") || w.eventTypes.includes(type));
  }

  /** A webhook by id, enabled or not. */
  async getWebhook(id: string): Promise<Webhook | undefined> {
    const row = await this.db.selectFrom("webhooks").selectAll().where("id", "=", id).executeTakeFirst();
    return row && toWebhook(row);
  }

  /** Disables an enabled webhook (no further deliveries); false when there is no enabled webhook `id`. */
  async disableWebhook(id: string): Promise<boolean> {
    const r = await this.db.updateTable("webhooks").set({ disabled_at: this.now() }).where("id", "=", id).where("disabled_at", "is", null).executeTakeFirst();
    return Number(r.numUpdatedRows) === 1;
  }

  // ---- operators ------------------------------------------------------------------------------------------

  /** Stores an operator with HASHES of its password and/or API token (the caller hashes; never the secret). */
  async createOperator(input: { id?: string; name: string; passwordHash?: string | null; tokenHash?: string | null; roles: string[] }): Promise<Operator> {
    if (!input.passwordHash && !input.tokenHash) throw new StoreError("invalid", `operator ${input.name}: needs a password hash or a token hash`);
    const row = {
      id: input.id ?? newId(),
      name: input.name,
      password_hash: input.passwordHash ?? null,
      token_hash: input.tokenHash ?? null,
      roles: JSON.stringify(input.roles),
      created_at: this.now(),
      disabled_at: null,
    };
    await this.#insertOrConflict(this.db.insertInto("operators").values(row).execute(), `operator ${input.name} exists`);
    return toOperator(row);
  }

  async getOperatorByName(name: string): Promise<Operator | undefined> {
    const row = await this.db.selectFrom("operators").selectAll().where("name", "=", name).where("disabled_at", "is", null).executeTakeFirst();
    return row && toOperator(row);
  }

  async getOperatorByTokenHash(tokenHash: string): Promise<Operator | undefined> {
    const row = await this.db.selectFrom("operators").selectAll().where("token_hash", "=", tokenHash).where("disabled_at", "is", null).executeTakeFirst();
    return row && toOperator(row);
  }

  async disableOperator(id: string): Promise<void> {
    await this.db.updateTable("operators").set({ disabled_at: this.now() }).where("id", "=", id).execute();
  }

  /** Maps the engines' unique / foreign-key violations to one StoreError("conflict"). */
  async #insertOrConflict<T>(p: Promise<T>, message: string): Promise<T> {
    try {
      return await p;
    } catch (e) {
      if (isConstraintViolation(e)) throw new StoreError("conflict", message);
      throw e;
    }
  }
}

/** True for a unique, foreign-key or check violation on either engine. */
export function isConstraintViolation(e: unknown): boolean {
  if (typeof e !== "object" || e === null) return false;
  const code = (e as { code?: unknown }).code;
  if (typeof code !== "string") return false;
  return code.startsWith("SQLITE_CONSTRAINT") || code === "23505" || code === "23503" || code === "23514";
}

/** No item of the rotation (the outer query's row) is still owed: pending or packaged. */
const nothingOwed = sql<boolean>`not exists (select 1 from rotation_items i where i.rotation_id = rotations.id and i.state in ('pending', 'packaged'))`;

function checkValidity(what: string, from: number, until: number): void {
  if (!Number.isSafeInteger(from) || !Number.isSafeInteger(until)) throw new StoreError("invalid", `${what} validity: expected epoch ms integers`);
  if (from > until) throw new StoreError("invalid", `${what} validity: starts (${from}) after it ends (${until})`);
}

function certRow(cert: NewCertificate, keyPairId: string, now: number) {
  if (!/^[0-9a-f]+$/.test(cert.serial)) throw new StoreError("invalid", `certificate serial: expected lowercase hex, got ${cert.serial}`);
  return {
    id: cert.id ?? newId(),
    serial: cert.serial,
    key_pair_id: keyPairId,
    der: cert.der,
    subject: cert.subject,
    not_before: cert.notBefore,
    not_after: cert.notAfter,
    revoked_at: null as number | null,
    revocation_reason: null as string | null,
    created_at: now,
  };
}

const buf = (b: Uint8Array): Buffer => (Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength));

function toUser(r: Selectable<Database["users"]>): User {
  return { id: r.id, personalData: JSON.parse(r.personal_data) as Record<string, JsonValue>, createdAt: r.created_at };
}

function toCard(r: Selectable<Database["cards"]>): Card {
  return {
    id: r.id,
    userId: r.user_id,
    status: r.status,
    validFrom: r.valid_from,
    validUntil: r.valid_until,
    currentKeySetId: r.current_key_set_id,
    lastPackageSeq: r.last_package_seq,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
    statusVersion: Number(r.status_version),
    statusChangedAt: r.status_changed_at === null ? null : Number(r.status_changed_at),
    statusChangedBy: r.status_changed_by,
    statusReason: r.status_reason,
  };
}

function toKeySet(r: Selectable<Database["card_key_sets"]>): CardKeySet {
  return {
    id: r.id,
    cardId: r.card_id,
    kvn: r.kvn,
    version: r.version,
    status: r.status,
    validFrom: r.valid_from,
    validUntil: r.valid_until,
    custodyRef: r.custody_ref,
    label: r.label,
    createdAt: r.created_at,
  };
}

function toKeyPair(r: Selectable<Database["key_pairs"]>): KeyPair {
  return { id: r.id, userId: r.user_id, cardId: r.card_id, slot: r.slot, algorithm: r.algorithm, publicKey: buf(r.public_key), status: r.status, createdAt: r.created_at };
}

function toWrapped(r: Selectable<Database["wrapped_keys"]>): WrappedKey {
  return { id: r.id, keyPairId: r.key_pair_id, keySetId: r.key_set_id, wrapped: buf(r.wrapped), createdAt: r.created_at };
}

function toCertificate(r: Selectable<Database["certificates"]>): Certificate {
  return {
    id: r.id,
    serial: r.serial,
    keyPairId: r.key_pair_id,
    der: buf(r.der),
    subject: r.subject,
    notBefore: r.not_before,
    notAfter: r.not_after,
    revokedAt: r.revoked_at,
    revocationReason: r.revocation_reason,
    createdAt: r.created_at,
  };
}

function toPackage(r: Selectable<Database["packages"]>): DeliveryPackage {
  return { id: r.id, cardId: r.card_id, seq: r.seq, body: buf(r.body), status: r.status, createdAt: r.created_at, fetchedAt: r.fetched_at, acknowledgedAt: r.acknowledged_at };
}

function toRotation(r: Selectable<Database["rotations"]>): Rotation {
  return {
    id: r.id,
    cardId: r.card_id,
    toCardId: r.to_card_id,
    fromKeySetId: r.from_key_set_id,
    toKeySetId: r.to_key_set_id,
    strategy: r.strategy,
    status: r.status,
    cursor: r.cursor,
    total: r.total,
    done: r.done,
    approvedBy: r.approved_by,
    approvedAt: r.approved_at,
    error: r.error,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
    proposedBy: r.proposed_by,
    newCardId: r.new_card_id,
    added: parseAdded(r.added),
    dropped: JSON.parse(r.dropped) as string[],
    approvalsRequired: Number(r.approvals_required),
    distribution: r.distribution,
    distributedAt: r.distributed_at === null ? null : Number(r.distributed_at),
  };
}

function toEvent(r: Selectable<Database["events"]>): StoredEvent {
  return {
    id: r.id,
    type: r.type,
    subject: r.subject,
    payload: JSON.parse(r.payload) as JsonValue,
    dedupKey: r.dedup_key,
    createdAt: r.created_at,
    deliveredAt: r.delivered_at,
    attempts: r.attempts,
    lastError: r.last_error,
    nextAttemptAt: r.next_attempt_at ?? null,
  };
}

function toWebhook(r: Selectable<Database["webhooks"]>): Webhook {
  return { id: r.id, url: r.url, eventTypes: JSON.parse(r.event_types) as string[], secretRef: r.secret_ref, createdAt: r.created_at, disabledAt: r.disabled_at };
}

function toDelivery(r: Selectable<Database["webhook_queue"]>): WebhookDelivery {
  return {
    eventId: Number(r.event_id),
    webhookId: r.webhook_id,
    status: r.status,
    attempts: r.attempts,
    nextAttemptAt: r.next_attempt_at,
    leaseOwner: r.lease_owner,
    leaseUntil: r.lease_until,
    lastError: r.last_error,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
    deliveredAt: r.delivered_at,
    deadAt: r.dead_at,
  };
}

function toOperator(r: Selectable<Database["operators"]>): Operator {
  return {
    id: r.id,
    name: r.name,
    passwordHash: r.password_hash,
    tokenHash: r.token_hash,
    roles: JSON.parse(r.roles) as string[],
    createdAt: r.created_at,
    disabledAt: r.disabled_at,
  };
}
