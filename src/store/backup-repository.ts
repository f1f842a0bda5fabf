// The server side of the back-up device 8 (seed 001 FIG. 11-12, claims 41, 48): the user's enciphered objects,
// versioned, in the system DB (table: migrations/0004_backups.ts), one code path for SQLite and PostgreSQL.
//
// Holds only envelopes (src/protocol/enciphered.ts): data enciphered under the card's key management key, which
// only that card — or a card reissued with the same key — can open. `put` refuses anything that is not a
// well-formed envelope, so plaintext handed over by mistake never lands in the DB. Versions are never
// overwritten: each put of a changed object is a new row with the next version number, (user_id, object_id,
// version) is unique, and a put that loses a race for a version number takes the next one. Putting the same
// envelope as the object's latest version again adds nothing (a backup run repeats harmlessly).
//
// Every new version is recorded in the audit log (IDs, version, hashes — never the envelope).
//
// The domain — the storage port this implements (BackupStore), what a put accepts (checkNewBackup), the refusals
// (BackupError) and the wire shapes — is src/backup/; this file holds the rows and their queries only.

import type { Kysely, Transaction } from "kysely";
import { BackupError } from "../backup/errors.ts";
import { checkNewBackup } from "../backup/objects.ts";
import type { BackupInfo, BackupRecord, BackupStore, NewBackup, PutResult } from "../backup/repository.ts";
import { appendAudit } from "./audit.ts";
import type { Database, Db } from "./db.ts";
import { newId } from "./ids.ts";

export { BackupError } from "../backup/errors.ts";
export { MAX_ENVELOPE_BYTES, OBJECT_ID } from "../backup/objects.ts";
export type { BackupInfo, BackupRecord, NewBackup, PutResult } from "../backup/repository.ts";

export interface BackupsTable {
  id: string;
  user_id: string;
  card_id: string | null;
  object_id: string;
  version: number;
  envelope: Uint8Array;
  sha256: string;
  recipient_kid: string;
  created_at: number;
}

// a type alias, not an interface: Kysely's withTables wants an index-signature-compatible record
export type BackupTables = { backups: BackupsTable };

const bytes = (b: Uint8Array): Uint8Array => new Uint8Array(b);

function toInfo(r: Omit<BackupsTable, "envelope"> & { size: number }): BackupInfo {
  return {
    id: r.id,
    userId: r.user_id,
    cardId: r.card_id,
    objectId: r.object_id,
    version: Number(r.version),
    sha256: r.sha256,
    recipientKid: r.recipient_kid,
    size: Number(r.size),
    createdAt: Number(r.created_at),
  };
}

function toRecord(r: BackupsTable): BackupRecord {
  return { ...toInfo({ ...r, size: r.envelope.length }), envelope: bytes(r.envelope) };
}

export class BackupRepository implements BackupStore {
  private readonly db: Kysely<Database & BackupTables>;
  private readonly now: () => number;

  /** @param db the system DB, migrated (migrateToLatest) so that 0004_backups exists */
  constructor(db: Db | Kysely<unknown>, opts: { now?: () => number } = {}) {
    this.db = (db as Db).withTables<BackupTables>();
    this.now = opts.now ?? Date.now;
  }

  /**
   * Stores `envelope` as the next version of the user's object (or returns the latest version unchanged when it
   * is the same envelope). Refuses what is not an enciphered-data envelope, an unknown user, and a card that is
   * not the user's.
   */
  async put(input: NewBackup, actor = "terminal"): Promise<PutResult> {
    const { kid, sha256 } = checkNewBackup(input);
    const cardId = input.cardId ?? null;
    return this.db.transaction().execute(async (trx) => {
      const user = await trx.selectFrom("users").select("id").where("id", "=", input.userId).executeTakeFirst();
      if (!user) throw new BackupError("not_found", `no user ${input.userId}`);
      if (cardId !== null) {
        const card = await trx.selectFrom("cards").select("user_id").where("id", "=", cardId).executeTakeFirst();
        if (!card) throw new BackupError("not_found", `no card ${cardId}`);
        if (card.user_id !== input.userId) throw new BackupError("invalid", `card ${cardId} is not user ${input.userId}'s`);
      }
      // A concurrent put may take the version read here (PostgreSQL, read committed): the insert then does
      // nothing and the next round reads the new maximum.
      for (let attempt = 0; attempt < 16; attempt++) {
        const latest = await trx.selectFrom("backups").selectAll().where("user_id", "=", input.userId).where("object_id", "=", input.objectId).orderBy("version", "desc").limit(1).executeTakeFirst();
        if (latest && latest.sha256 === sha256 && Buffer.from(latest.envelope).equals(Buffer.from(input.envelope))) {
          return { backup: toRecord(latest), created: false };
        }
        const row: BackupsTable = {
          id: newId(),
          user_id: input.userId,
          card_id: cardId,
          object_id: input.objectId,
          version: (latest ? Number(latest.version) : 0) + 1,
          envelope: input.envelope,
          sha256,
          recipient_kid: kid,
          created_at: this.now(),
        };
        const inserted = await trx
          .insertInto("backups")
          .values(row)
          .onConflict((oc) => oc.columns(["user_id", "object_id", "version"]).doNothing())
          .returning("id")
          .executeTakeFirst();
        if (!inserted) continue;
        await appendAudit(trx as unknown as Transaction<Database>, {
          actor,
          action: "backup.stored",
          subject: input.userId,
          details: { backup: row.id, objectId: input.objectId, version: row.version, card: cardId, sha256, recipientKid: kid, size: input.envelope.length },
          at: row.created_at,
        });
        return { backup: toRecord(row), created: true };
      }
      throw new BackupError("conflict", `object ${input.objectId}: could not take a version number (too many concurrent puts)`);
    });
  }

  /** The user's stored versions (no envelopes), by object ID then version; one object's with `objectId`. */
  async list(userId: string, opts: { objectId?: string } = {}): Promise<BackupInfo[]> {
    let q = this.db
      .selectFrom("backups")
      .select(["id", "user_id", "card_id", "object_id", "version", "sha256", "recipient_kid", "created_at"])
      .select((eb) => eb.fn<number>("length", ["envelope"]).as("size"))
      .where("user_id", "=", userId);
    if (opts.objectId !== undefined) q = q.where("object_id", "=", opts.objectId);
    const rows = await q.orderBy("object_id").orderBy("version").execute();
    return rows.map(toInfo);
  }

  /** One version of an object. */
  async get(userId: string, objectId: string, version: number): Promise<BackupRecord | undefined> {
    const r = await this.db.selectFrom("backups").selectAll().where("user_id", "=", userId).where("object_id", "=", objectId).where("version", "=", version).executeTakeFirst();
    return r && toRecord(r);
  }

  /** The latest version of an object. */
  async latest(userId: string, objectId: string): Promise<BackupRecord | undefined> {
    const r = await this.db.selectFrom("backups").selectAll().where("user_id", "=", userId).where("object_id", "=", objectId).orderBy("version", "desc").limit(1).executeTakeFirst();
    return r && toRecord(r);
  }

  /** The latest version of each of the user's objects, by object ID (what a restore brings back). */
  async latestAll(userId: string): Promise<BackupRecord[]> {
    const rows = await this.db
      .selectFrom("backups as b")
      .selectAll("b")
      .where("b.user_id", "=", userId)
      .where("b.version", "=", (eb) =>
        eb
          .selectFrom("backups as v")
          .select((e) => e.fn.max<number>("v.version").as("m"))
          .whereRef("v.user_id", "=", "b.user_id")
          .whereRef("v.object_id", "=", "b.object_id"),
      )
      .orderBy("b.object_id")
      .execute();
    return rows.map(toRecord);
  }
}
