// The software keystore kept in the system DB (issue 16 §3; tables: migrations/0017_custody_keystore.ts), one code
// path for SQLite and PostgreSQL, and the record of which keystore the database's card keys live in.
//
//   StoreKeystoreBackend   src/custody/keystore-backend.ts KeystoreBackend: the header row and one row per key.
//                          A key is one INSERT (the label's primary key refuses a second one, from any server: the
//                          insert does nothing and reports false, the custody says EXISTS) or one DELETE; there is no
//                          whole-keystore write. Every read goes to the database (the custody keeps what it read for
//                          its RECHECK_MS, src/custody/software/keystore.ts).
//   SqlCustodyBindings     src/custody/binding.ts CustodyBindings: the one custody_binding row.
//
// Never sees a key in clear or the KEK: entries arrive sealed (src/custody/keystore-file.ts) and are kept as JSON.

import type { Kysely } from "kysely";
import type { CustodyBinding, CustodyBindings } from "../custody/binding.ts";
import type { Entry, KeystoreBackend, KeystoreHeader } from "../custody/keystore-backend.ts";
import { CustodyError } from "../custody/custody.ts";
import type { CustodyConfig } from "../custody/index.ts";
import type { Db } from "./db.ts";

export interface CustodyKeystoreTable {
  slot: string;
  keystore_id: string;
  header: string;
  created_at: number;
}

export interface CustodyKeystoreEntriesTable {
  label: string;
  entry: string;
  created_at: number;
}

export interface CustodyBindingTable {
  slot: string;
  keystore_id: string;
  kind: string;
  token: string | null;
  host: string | null;
  path: string | null;
  recorded_at: number;
}

// a type alias, not an interface: Kysely's withTables wants an index-signature-compatible record
export type CustodyKeystoreTables = { custody_keystore: CustodyKeystoreTable; custody_keystore_entries: CustodyKeystoreEntriesTable; custody_binding: CustodyBindingTable };

type CustodyDb = Kysely<CustodyKeystoreTables>;

const tables = (db: Db | Kysely<unknown>): CustodyDb => (db as Db).withTables<CustodyKeystoreTables>() as unknown as CustodyDb;

function parse<T>(text: string, what: string): T {
  try {
    return JSON.parse(text) as T;
  } catch {
    throw new CustodyError("CORRUPT", `the store's ${what} is not readable JSON`);
  }
}

export class StoreKeystoreBackend implements KeystoreBackend {
  readonly kind = "store";
  readonly where = "the store";
  private readonly db: CustodyDb;
  private readonly now: () => number;

  /** @param db the system DB, migrated (0017_custody_keystore); it stays the caller's to close */
  constructor(db: Db | Kysely<unknown>, opts: { now?: () => number } = {}) {
    this.db = tables(db);
    this.now = opts.now ?? Date.now;
  }

  async readHeader(): Promise<KeystoreHeader | undefined> {
    const r = await this.db.selectFrom("custody_keystore").selectAll().where("slot", "=", "keystore").executeTakeFirst();
    if (!r) return undefined;
    const h = parse<Omit<KeystoreHeader, "id">>(r.header, "keystore header");
    return { format: h.format, id: r.keystore_id, kek: h.kek, check: h.check };
  }

  async createHeader(h: KeystoreHeader): Promise<KeystoreHeader> {
    const header = JSON.stringify({ format: h.format, kek: h.kek, check: h.check });
    await this.db
      .insertInto("custody_keystore")
      .values({ slot: "keystore", keystore_id: h.id, header, created_at: this.now() })
      .onConflict((oc) => oc.column("slot").doNothing())
      .execute();
    const now = await this.readHeader();
    if (!now) throw new CustodyError("UNAVAILABLE", "the store's keystore header was not written");
    return now;
  }

  async get(label: string): Promise<Entry | undefined> {
    const r = await this.db.selectFrom("custody_keystore_entries").select("entry").where("label", "=", label).executeTakeFirst();
    return r && parse<Entry>(r.entry, `keystore entry ${label}`);
  }

  async all(): Promise<Record<string, Entry>> {
    const rows = await this.db.selectFrom("custody_keystore_entries").select(["label", "entry"]).orderBy("label").execute();
    const out: Record<string, Entry> = {};
    for (const r of rows) out[r.label] = parse<Entry>(r.entry, `keystore entry ${r.label}`);
    return out;
  }

  async insert(label: string, entry: Entry): Promise<boolean> {
    const r = await this.db
      .insertInto("custody_keystore_entries")
      .values({ label, entry: JSON.stringify(entry), created_at: this.now() })
      .onConflict((oc) => oc.column("label").doNothing())
      .executeTakeFirst();
    return Number(r.numInsertedOrUpdatedRows ?? 0n) === 1;
  }

  async remove(label: string): Promise<boolean> {
    const r = await this.db.deleteFrom("custody_keystore_entries").where("label", "=", label).executeTakeFirst();
    return Number(r.numDeletedRows) > 0;
  }

  async close(): Promise<void> {}
}

const toBinding = (r: CustodyBindingTable): CustodyBinding => {
  const b: CustodyBinding = { keystoreId: r.keystore_id, kind: r.kind as CustodyBinding["kind"] };
  if (r.token !== null) b.token = r.token;
  if (r.host !== null) b.host = r.host;
  if (r.path !== null) b.path = r.path;
  return b;
};

export class SqlCustodyBindings implements CustodyBindings {
  private readonly db: CustodyDb;
  private readonly now: () => number;

  /** @param db the system DB, migrated (0017_custody_keystore) */
  constructor(db: Db | Kysely<unknown>, opts: { now?: () => number } = {}) {
    this.db = tables(db);
    this.now = opts.now ?? Date.now;
  }

  async get(): Promise<CustodyBinding | undefined> {
    const r = await this.db.selectFrom("custody_binding").selectAll().where("slot", "=", "custody").executeTakeFirst();
    return r && toBinding(r);
  }

  private row(b: CustodyBinding): CustodyBindingTable {
    return { slot: "custody", keystore_id: b.keystoreId, kind: b.kind, token: b.token ?? null, host: b.host ?? null, path: b.path ?? null, recorded_at: this.now() };
  }

  async recordFirst(b: CustodyBinding): Promise<CustodyBinding> {
    await this.db
      .insertInto("custody_binding")
      .values(this.row(b))
      .onConflict((oc) => oc.column("slot").doNothing())
      .execute();
    return (await this.get()) as CustodyBinding;
  }

  async replace(b: CustodyBinding): Promise<void> {
    const row = this.row(b);
    await this.db
      .insertInto("custody_binding")
      .values(row)
      .onConflict((oc) => oc.column("slot").doUpdateSet({ keystore_id: row.keystore_id, kind: row.kind, token: row.token, host: row.host, path: row.path, recorded_at: row.recorded_at }))
      .execute();
  }
}

/** The custody configuration with the keystore in the store filled in when it names the store (issue 16 §3). */
export function custodyOnStore(config: CustodyConfig, db: Db | Kysely<unknown>): CustodyConfig {
  return config.kind === "software" && config.keystoreBackend === "store" && !config.backend ? { ...config, backend: new StoreKeystoreBackend(db) } : config;
}

export interface KeystoreCopy {
  /** The keystore id, the same in the file and in the store (it is one keystore, moved). */
  keystoreId: string;
  copied: string[];
  /** Already in the store with the same sealed entry (a copy run again). */
  present: string[];
}

/**
 * Copies a keystore file's entries into the store (issue 16 §3 migration path): the header (the KEK's making and the
 * check value, and the id) and every entry as it is, sealed — no key is opened, the KEK is not needed. Refuses when
 * the store holds another keystore, or a label with a different entry; running it again copies what is missing.
 * Records the store as where this database's card keys live (the file must not be used by a server afterwards).
 */
export async function copyKeystoreToStore(file: KeystoreBackend, db: Db | Kysely<unknown>): Promise<KeystoreCopy> {
  const header = await file.readHeader();
  if (!header) throw new CustodyError("NOT_FOUND", `no keystore at ${file.where}`);
  const target = new StoreKeystoreBackend(db);
  const inForce = await target.createHeader(header);
  if (inForce.id !== header.id || JSON.stringify(inForce.kek) !== JSON.stringify(header.kek) || JSON.stringify(inForce.check) !== JSON.stringify(header.check))
    throw new CustodyError("EXISTS", `the store already holds another keystore (id ${inForce.id}), not ${file.where} (id ${header.id}): nothing copied`);
  const out: KeystoreCopy = { keystoreId: header.id, copied: [], present: [] };
  const differ: string[] = [];
  for (const [label, entry] of Object.entries(await file.all())) {
    if (await target.insert(label, entry)) out.copied.push(label);
    else if (JSON.stringify(await target.get(label)) === JSON.stringify(entry)) out.present.push(label);
    else differ.push(label);
  }
  if (differ.length) throw new CustodyError("EXISTS", `the store holds other keys under the labels ${differ.join(", ")}; copied ${out.copied.length}, left those`);
  await new SqlCustodyBindings(db).replace({ keystoreId: header.id, kind: "store" });
  return out;
}
