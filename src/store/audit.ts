// Hash-chained, append-only audit log (issue 3, "Security"): every issuance, delivery, rotation and revocation.
//
// NEVER PUT A SECRET IN AN AUDIT ENTRY. Details are stored in clear, exported, and shown to auditors: name keys,
// cards, certificates and operators by their IDs, serials, KVNs and custody references — never a key value, a
// clear or wrapped private key, a PIN, a password or a token. `appendAudit` refuses binary values and the most
// obvious secret field names, but that is a seat belt, not a filter to rely on.
//
// Chain: entry n carries prev_hash = hash of entry n-1 (64 zero hex digits for n = 1) and
//   hash = SHA-256( prev_hash (32 raw bytes) || canonical JSON {action, actor, at, details, seq, subject} )
// where canonical JSON has keys sorted, no whitespace, and `details` is exactly the stored canonical text.
// Appends are serialised: on PostgreSQL the appending transaction takes LOCK TABLE audit_log in SHARE ROW
// EXCLUSIVE mode (conflicts with itself, not with readers) before reading the head; SQLite has one writer. The
// primary key on seq is the last guard: a second entry with the same seq cannot be inserted, so the chain
// cannot fork even if the lock were bypassed. In a group commit (group.ts) the calls' entries are appended together
// at the end of the group (recordAudit, issue 16 §5): the same lock, head read and chain, taken once per group and
// held only for the append and the commit; each entry keeps its own content and time, in the order of the calls.
//
// What verification proves: that the stored chain is internally consistent (no entry altered, removed, inserted
// or reordered without re-computing every hash after it) and, given a head exported earlier (`auditHead`), that
// the log still contains that head — which catches truncation at the end and any rewrite of the past. Anyone
// with write access can recompute SHA-256, so a rewrite of the entries AFTER the last exported head is only
// detectable by exporting heads regularly (or anchoring them elsewhere).

import type { AuditInput } from "../issuer/ports.ts";
import { createHash } from "node:crypto";
import { sql } from "kysely";
import { engineOf, type Db } from "./db.ts";
import { canonicalJson as canonicalJson_, type JsonValue } from "../util/json.ts";
import type { Kysely, Transaction } from "kysely";
import { compiled } from "./compiled.ts";
import { deferToGroupEnd, type GroupBatcher } from "./group.ts";
import type { Database } from "./db.ts";

export const GENESIS_HASH = "0".repeat(64);

export interface AuditEntry {
  seq: number;
  /** Epoch ms. */
  at: number;
  /** Operator name, "system", or the card/terminal acting. */
  actor: string;
  /** e.g. "card.issue", "credential.deliver", "rotation.approve", "certificate.revoke". */
  action: string;
  /** ID of what the action was about (card, key pair, certificate, rotation ...). */
  subject: string;
  details: { [key: string]: JsonValue };
  prevHash: string;
  hash: string;
}

/** A point of the chain to export and later check the log against. */
export interface AuditHead {
  seq: number;
  hash: string;
}

export type AuditProblem =
  /** The entry's hash does not match its content: fields edited, or the entry moved to another seq. */
  | "altered"
  /** The entry is intact but does not follow its predecessor: an entry before it was removed, inserted or moved. */
  | "broken-link"
  /** Sequence numbers jump: entries starting at `seq` were removed. */
  | "missing"
  /** The chain no longer reaches (or no longer matches) the expected head: truncated or rewritten at `seq`. */
  | "head-mismatch";

export type AuditVerification = { ok: true; entries: number; head: AuditHead | null } | { ok: false; seq: number; problem: AuditProblem; message: string; entries: number };

// The head read and the insert of an append, compiled once (compiled.ts): every credential appends.
const HEAD = compiled((db: Kysely<Database>, _p: Record<string, never>) => db.selectFrom("audit_log").select(["seq", "hash"]).orderBy("seq", "desc").limit(1));
const INSERT_ENTRY = compiled((db: Kysely<Database>, p: AuditRow) =>
  db.insertInto("audit_log").values({ seq: p.seq, at: p.at, actor: p.actor, action: p.action, subject: p.subject, details: p.details, prev_hash: p.prev_hash, hash: p.hash }),
);

const FORBIDDEN_DETAIL_KEYS = /^(password|passphrase|secret|token|pin|puk|private_?key|master_?key|key_?value|clear_?key|plaintext)$/i;

/**
 * Appends one entry. Runs in the caller's transaction when given one (so the entry commits or rolls back with
 * the change it records), else in its own.
 */
export async function appendAudit(db: Db | Transaction<Database>, input: AuditInput): Promise<AuditEntry> {
  const entry = auditContent(input);
  const append = (trx: Transaction<Database>) => appendEntries(trx, [entry]).then((rows) => toEntry(rows[0]));
  return db.isTransaction ? append(db as Transaction<Database>) : (db as Db).transaction().execute(append);
}

/**
 * Records one entry with the change it records, like appendAudit; in a group commit's transaction (group.ts) the
 * entry is appended at the end of the group, with the other calls' entries in one append — one lock, one head read,
 * one insert (issue 16 §5). Its seq and hash are known only then, so nothing is returned.
 */
export async function recordAudit(db: Db | Transaction<Database>, input: AuditInput): Promise<void> {
  const entry = auditContent(input);
  if (db.isTransaction && deferToGroupEnd(db as Transaction<unknown>, GROUP_AUDIT, entry)) return;
  await appendAudit(db, input);
}

/** What an entry says (the issuer's port defines it: issuer/ports.ts). */
export type { AuditInput };

/** An entry before it has a place in the chain: checked and its details canonical. */
type AuditContent = Pick<AuditRow, "at" | "actor" | "action" | "subject" | "details">;

function auditContent(input: AuditInput): AuditContent {
  if (!input.actor || !input.action) throw new Error("audit: actor and action are required");
  const details = canonicalJson(input.details ?? {}, "details");
  const at = input.at ?? Date.now();
  if (!Number.isSafeInteger(at)) throw new Error(`audit: at must be epoch ms, got ${at}`);
  return { at, actor: input.actor, action: input.action, subject: input.subject, details };
}

const GROUP_AUDIT: GroupBatcher<AuditContent> = {
  flush: async (trx, values) => void (await appendEntries(trx as unknown as Transaction<Database>, values)),
};

/** Most entries one INSERT carries on PostgreSQL (8 parameters each, far below its 65,535). */
const INSERT_ROWS_MAX = 256;

/**
 * Appends `entries` in order after the current head, in `trx`. Serialised (see the header): on PostgreSQL the lock
 * is held to the end of `trx`; the rows go in one multi-row INSERT per INSERT_ROWS_MAX entries (one round trip);
 * on SQLite (no round trips) one compiled INSERT each.
 */
async function appendEntries(trx: Transaction<Database>, entries: AuditContent[]): Promise<AuditRow[]> {
  const pg = engineOf(trx) === "postgres";
  if (pg) await sql`lock table audit_log in share row exclusive mode`.execute(trx);
  // SQLite: a write that matches nothing takes the database write lock now, so the head read below cannot go
  // stale under another process's append (a deferred read-then-write transaction would fail with SQLITE_BUSY).
  else await sql`update audit_log set seq = seq where seq < 0`.execute(trx);
  const last = (await HEAD.execute(trx, {})).rows[0];
  let seq = last?.seq ?? 0;
  let prevHash = last?.hash ?? GENESIS_HASH;
  const rows: AuditRow[] = [];
  for (const e of entries) {
    const row: AuditRow = { seq: ++seq, ...e, prev_hash: prevHash, hash: "" };
    row.hash = entryHash(row);
    prevHash = row.hash;
    rows.push(row);
  }
  if (pg && rows.length > 1) {
    for (let i = 0; i < rows.length; i += INSERT_ROWS_MAX)
      await trx
        .insertInto("audit_log")
        .values(rows.slice(i, i + INSERT_ROWS_MAX))
        .execute();
  } else for (const row of rows) await INSERT_ENTRY.execute(trx, row);
  return rows;
}

/** The newest entry's seq and hash (null for an empty log): export it to detect later truncation. */
export async function auditHead(db: Db | Transaction<Database>): Promise<AuditHead | null> {
  const last = await db.selectFrom("audit_log").select(["seq", "hash"]).orderBy("seq", "desc").limit(1).executeTakeFirst();
  return last ? { seq: last.seq, hash: last.hash } : null;
}

/** Entries in seq order from `afterSeq`, a page at a time. */
export async function* auditEntries(db: Db | Transaction<Database>, options: { afterSeq?: number; pageSize?: number } = {}): AsyncGenerator<AuditEntry> {
  for await (const page of rawPages(db, options.afterSeq ?? 0, options.pageSize ?? 1000)) for (const r of page) yield toEntry(r);
}

/**
 * Walks the whole chain in seq order, one page in memory at a time, and reports the first entry that is
 * altered, missing or out of place. With `expectedHead` (exported earlier) it also checks the log still holds
 * that exact entry, so truncation of the end and rewriting of the past are found.
 */
export async function verifyAuditLog(db: Db | Transaction<Database>, options: { expectedHead?: AuditHead | null; pageSize?: number } = {}): Promise<AuditVerification> {
  const expected = options.expectedHead ?? null;
  let prev: AuditHead = { seq: 0, hash: GENESIS_HASH };
  let entries = 0;
  let headSeen = expected === null;
  const fail = (seq: number, problem: AuditProblem, message: string): AuditVerification => ({ ok: false, seq, problem, message, entries });
  for await (const page of rawPages(db, 0, options.pageSize ?? 1000)) {
    for (const r of page) {
      if (r.seq !== prev.seq + 1) {
        return fail(prev.seq + 1, "missing", `entries ${prev.seq + 1}..${r.seq - 1} are missing (the log jumps from ${prev.seq} to ${r.seq})`);
      }
      if (entryHash(r) !== r.hash) return fail(r.seq, "altered", `entry ${r.seq} does not match its hash: altered, or moved from another position`);
      if (r.prev_hash !== prev.hash) {
        return fail(r.seq, "broken-link", `entry ${r.seq} does not follow entry ${prev.seq}: an entry before it was removed, inserted or moved`);
      }
      if (expected && r.seq === expected.seq) {
        if (r.hash !== expected.hash) return fail(r.seq, "head-mismatch", `entry ${r.seq} differs from the exported head: the log was rewritten`);
        headSeen = true;
      }
      prev = { seq: r.seq, hash: r.hash };
      entries++;
    }
  }
  if (!headSeen) {
    return fail(prev.seq + 1, "head-mismatch", `the log ends at ${prev.seq}, before the exported head ${expected!.seq}: entries ${prev.seq + 1}..${expected!.seq} were removed`);
  }
  return { ok: true, entries, head: entries > 0 ? prev : null };
}

type AuditRow = Database["audit_log"];

async function* rawPages(db: Db | Transaction<Database>, afterSeq: number, pageSize: number): AsyncGenerator<AuditRow[]> {
  if (!Number.isInteger(pageSize) || pageSize < 1) throw new Error(`audit: pageSize must be a positive integer, got ${pageSize}`);
  let after = afterSeq;
  while (true) {
    const rows = await db.selectFrom("audit_log").selectAll().where("seq", ">", after).orderBy("seq").limit(pageSize).execute();
    if (rows.length === 0) return;
    yield rows;
    if (rows.length < pageSize) return;
    after = rows[rows.length - 1].seq;
  }
}

/** SHA-256(prev_hash bytes || canonical JSON of the entry), hex. */
export function entryHash(r: Omit<AuditRow, "hash"> & { hash?: string }): string {
  const body = `{"action":${JSON.stringify(r.action)},"actor":${JSON.stringify(r.actor)},"at":${r.at},` + `"details":${r.details},"seq":${r.seq},"subject":${JSON.stringify(r.subject)}}`;
  const prev = /^[0-9a-f]{64}$/.test(r.prev_hash) ? Buffer.from(r.prev_hash, "hex") : Buffer.from(r.prev_hash, "utf8");
  return createHash("sha256").update(prev).update(body, "utf8").digest("hex");
}

/**
 * The audit log's canonical JSON (src/util/json.ts): keys sorted, no whitespace, plain JSON only; an undefined
 * member or a key that looks like a secret is refused.
 */
export const canonicalJson = (value: unknown, path = "$"): string => canonicalJson_(value, { undefinedMembers: "refuse", refuseKey: FORBIDDEN_DETAIL_KEYS, what: "audit" }, path);

function toEntry(r: AuditRow): AuditEntry {
  return {
    seq: r.seq,
    at: r.at,
    actor: r.actor,
    action: r.action,
    subject: r.subject,
    details: JSON.parse(r.details) as { [key: string]: JsonValue },
    prevHash: r.prev_hash,
    hash: r.hash,
  };
}
