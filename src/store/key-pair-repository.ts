// Key pairs and their wrapped private keys in the issuer's store (ST16-ST21): the public key of each key pair (ST17),
// its private key wrapped under each card key set it is wrapped under (Sk[PRk], ST18; one row per key set), a whole
// credential recorded in one transaction (with its certificate: certificate-repository.ts), the credential slot
// claims (through rotation-repository.ts), and the paged reads of the bulk re-wrap. Store (store.ts) delegates to it;
// one code path for SQLite and PostgreSQL, except two PostgreSQL round-trip savers on the issuance path (issue 16 §5):
// an issued credential's three inserts as one statement, and the slot claim outside group commit.
//
// Never: a clear private key. Only wrapped ones, and public keys.

import { sql, type Kysely, type Selectable, type Transaction } from "kysely";
import { certRow, toCertificate } from "./certificate-repository.ts";
import { compiled } from "./compiled.ts";
import type { Database, KeyPairStatus } from "./db.ts";
import { groupCommit } from "./group.ts";
import { newId } from "./ids.ts";
import { buf, checkValidity, insertOrConflict, isConstraintViolation, StoreError, StoreRepository } from "./repository.ts";
import { RotationRepository } from "./rotation-repository.ts";
import type { Certificate, KeyPair, NewCredential, RecordedCredential, WrappedKey } from "../issuer/records.ts";

const MAX_PAGE = 50_000;

// The statements of a credential's record, compiled once (compiled.ts): the issuance hot path.
type KeyPairRow = Selectable<Database["key_pairs"]>;
const INSERT_KEY_PAIR = compiled((db: Kysely<Database>, p: KeyPairRow) =>
  db.insertInto("key_pairs").values({ id: p.id, user_id: p.user_id, card_id: p.card_id, slot: p.slot, algorithm: p.algorithm, public_key: p.public_key, status: p.status, created_at: p.created_at }),
);
const INSERT_WRAPPED_KEY = compiled((db: Kysely<Database>, p: { key_pair_id: string; key_set_id: string; wrapped: Uint8Array; created_at: number }) =>
  db.insertInto("wrapped_keys").values({ key_pair_id: p.key_pair_id, key_set_id: p.key_set_id, wrapped: p.wrapped, created_at: p.created_at }).returning("id"),
);
const INSERT_CERTIFICATE = compiled((db: Kysely<Database>, p: ReturnType<typeof certRow>) =>
  db.insertInto("certificates").values({
    id: p.id,
    serial: p.serial,
    key_pair_id: p.key_pair_id,
    der: p.der,
    subject: p.subject,
    not_before: p.not_before,
    not_after: p.not_after,
    revoked_at: p.revoked_at,
    revocation_reason: p.revocation_reason,
    created_at: p.created_at,
  }),
);
// `status = 'active'` as a literal, not a parameter: SQLite then plans the partial unique index key_pairs_active_slot
// once. Compared with a bound parameter, the plan depends on its value, and SQLite prepares the statement again
// every time the parameter is bound (seen as the costliest select of the issuance profile).
const ACTIVE_IN_SLOT = compiled((db: Kysely<Database>, p: { cardId: string; slot: string }) =>
  db.selectFrom("key_pairs").selectAll().where("card_id", "=", p.cardId).where("slot", "=", p.slot).where("status", "=", sql.lit("active")).orderBy("created_at").orderBy("id"),
);

export class KeyPairRepository extends StoreRepository<KeyPairRepository> {
  protected override bind(trx: Transaction<Database>): KeyPairRepository {
    return new KeyPairRepository(trx, this.clock);
  }

  /**
   * Records a new credential in ONE transaction: the key pair (ST17), its private key wrapped under each given
   * card key set (ST18, Sk[PRk]) and, when already issued, its certificate (ST21). Either all rows land or none.
   */
  async recordCredential(input: NewCredential): Promise<RecordedCredential> {
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
    if (this.engine === "postgres" && input.wrapped.length === 1 && cert) return this.#recordIssuedCredential(kpRow, input.wrapped[0], certRow(cert, kpRow.id, now));
    return this.transaction(async (s) => {
      await insertOrConflict(
        INSERT_KEY_PAIR.execute(s.db, kpRow),
        kpRow.slot !== null && kpRow.status === "active"
          ? `key pair ${kpRow.id} exists, user/card unknown, or slot ${kpRow.slot} of card ${kpRow.card_id} holds an active key pair already`
          : `key pair ${kpRow.id} exists, or user/card unknown`,
      );
      let wrapped: WrappedKey[] = [];
      if (input.wrapped.length === 1) {
        const [w] = input.wrapped;
        const r = await insertOrConflict(
          INSERT_WRAPPED_KEY.execute(s.db, { key_pair_id: kpRow.id, key_set_id: w.keySetId, wrapped: w.wrapped, created_at: now }),
          `wrapped keys of ${kpRow.id}: unknown key set, or the same key set twice`,
        );
        wrapped = [{ id: r.rows[0].id, keyPairId: kpRow.id, keySetId: w.keySetId, wrapped: Buffer.from(w.wrapped), createdAt: now }];
      } else if (input.wrapped.length > 0) {
        const rows = await insertOrConflict(
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
        await insertOrConflict(INSERT_CERTIFICATE.execute(s.db, row), `certificate serial ${cert.serial} exists`);
        certificate = toCertificate(row);
      }
      return { keyPair: toKeyPair(kpRow), wrapped, certificate };
    });
  }

  /**
   * recordCredential of an issued credential (one wrapped key, its certificate) on PostgreSQL: the three inserts in
   * one statement (data-modifying CTEs), so one round trip instead of three, and atomic without a transaction of its
   * own (issue 16 §5). The foreign keys between them are checked at the end of the statement. Same rows, same
   * conflicts (reported by the table that refused) as the three statements.
   */
  async #recordIssuedCredential(kpRow: KeyPairRow, w: { keySetId: string; wrapped: Uint8Array }, c: ReturnType<typeof certRow>): Promise<RecordedCredential> {
    const now = kpRow.created_at;
    let r;
    try {
      r = await sql<{ wrapped_id: number }>`with kp as (
          insert into key_pairs (id, user_id, card_id, slot, algorithm, public_key, status, created_at)
          values (${kpRow.id}, ${kpRow.user_id}, ${kpRow.card_id}, ${kpRow.slot}, ${kpRow.algorithm}, ${kpRow.public_key}, ${kpRow.status}, ${now}) returning id),
        wk as (insert into wrapped_keys (key_pair_id, key_set_id, wrapped, created_at) select kp.id, ${w.keySetId}::text, ${w.wrapped}::bytea, ${now}::bigint from kp returning id),
        ct as (insert into certificates (id, serial, key_pair_id, der, subject, not_before, not_after, revoked_at, revocation_reason, created_at)
          select ${c.id}::text, ${c.serial}::text, kp.id, ${c.der}::bytea, ${c.subject}::text, ${c.not_before}::bigint, ${c.not_after}::bigint, null, null, ${now}::bigint from kp returning id)
        select (select id from wk) as wrapped_id, (select count(*) from ct) as certificates`.execute(this.db);
    } catch (e) {
      if (!isConstraintViolation(e)) throw e;
      const table = (e as { table?: string }).table;
      throw new StoreError(
        "conflict",
        table === "certificates"
          ? `certificate serial ${c.serial} exists`
          : table === "wrapped_keys"
            ? `wrapped keys of ${kpRow.id}: unknown key set, or the same key set twice`
            : kpRow.slot !== null && kpRow.status === "active"
              ? `key pair ${kpRow.id} exists, user/card unknown, or slot ${kpRow.slot} of card ${kpRow.card_id} holds an active key pair already`
              : `key pair ${kpRow.id} exists, or user/card unknown`,
      );
    }
    const wrapped: WrappedKey[] = [{ id: r.rows[0].wrapped_id, keyPairId: kpRow.id, keySetId: w.keySetId, wrapped: Buffer.from(w.wrapped), createdAt: now }];
    return { keyPair: toKeyPair(kpRow), wrapped, certificate: toCertificate(c) };
  }

  /** Adds Sk[PRk] of an existing key pair under another card key set (embodiment 3-5 re-wrap, single key). */
  async addWrappedKey(keyPairId: string, keySetId: string, wrapped: Uint8Array): Promise<WrappedKey> {
    const now = this.now();
    const r = await insertOrConflict(
      this.db.insertInto("wrapped_keys").values({ key_pair_id: keyPairId, key_set_id: keySetId, wrapped, created_at: now }).returning("id").executeTakeFirstOrThrow(),
      `key pair ${keyPairId} already wrapped under ${keySetId}, or either is unknown`,
    );
    return { id: r.id, keyPairId, keySetId, wrapped: Buffer.from(wrapped), createdAt: now };
  }

  async getKeyPair(id: string): Promise<KeyPair | undefined> {
    const row = await this.db.selectFrom("key_pairs").selectAll().where("id", "=", id).executeTakeFirst();
    return row && toKeyPair(row);
  }

  async listKeyPairs(filter: { cardId?: string; userId?: string; status?: KeyPairStatus; slot?: string }): Promise<KeyPair[]> {
    if (filter.cardId !== undefined && filter.slot !== undefined && filter.status === "active" && filter.userId === undefined) {
      return (await ACTIVE_IN_SLOT.execute(this.db, { cardId: filter.cardId, slot: filter.slot })).rows.map(toKeyPair);
    }
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
   * out (a stalled or crashed server) — false while another request holds it. Outside a transaction it has
   * committed, and so holds against other requests and servers, when this resolves: on SQLite through group commit
   * (group.ts), sharing its commit with the other requests of the same event-loop turn; on PostgreSQL as one
   * statement of its own.
   */
  async claimCredentialSlot(cardId: string, slot: string, claimId: string, leaseMs: number): Promise<boolean> {
    const now = this.now();
    // PostgreSQL: the claim is one statement (an upsert), atomic on its own: sent straight to the pool it costs one
    // round trip on any free connection, where a group call waits for its group and adds its savepoint's (issue 16 §5);
    // concurrent commits share their WAL flushes in PostgreSQL itself.
    if (!this.db.isTransaction && this.engine === "postgres") return new RotationRepository(this.db).claimSlot(cardId, slot, claimId, now, leaseMs);
    return groupCommit(this.db, (trx) => new RotationRepository(trx).claimSlot(cardId, slot, claimId, now, leaseMs));
  }

  /** Gives a claim up (in the recording transaction, or after a failure); false when `claimId` no longer holds it. */
  async releaseCredentialSlot(cardId: string, slot: string, claimId: string): Promise<boolean> {
    return new RotationRepository(this.db).releaseSlot(cardId, slot, claimId);
  }

  async getWrappedKey(keyPairId: string, keySetId: string): Promise<WrappedKey | undefined> {
    const row = await this.db.selectFrom("wrapped_keys").selectAll().where("key_pair_id", "=", keyPairId).where("key_set_id", "=", keySetId).executeTakeFirst();
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
      const rows = await this.db.selectFrom("wrapped_keys").selectAll().where("key_set_id", "=", keySetId).where("id", ">", after).orderBy("id").limit(size).execute();
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
}

function toKeyPair(r: Selectable<Database["key_pairs"]>): KeyPair {
  return { id: r.id, userId: r.user_id, cardId: r.card_id, slot: r.slot, algorithm: r.algorithm, publicKey: buf(r.public_key), status: r.status, createdAt: r.created_at };
}

function toWrapped(r: Selectable<Database["wrapped_keys"]>): WrappedKey {
  return { id: r.id, keyPairId: r.key_pair_id, keySetId: r.key_set_id, wrapped: buf(r.wrapped), createdAt: r.created_at };
}
