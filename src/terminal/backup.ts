// Backup and restore of the user's enciphered data (seed 001 claims 41, 48; FIG. 11-12): step S10, the user
// backs up the personal enciphered data to the back-up device 8; after the card is destroyed (S5') and reissued
// with the same secret key (S11), the data is restored (S12) and the new card opens what was written before.
//
// Where enciphered objects live on the user's side (EncipheredStore):
//   - TerminalEncipheredStore: files in a directory of the terminal (one envelope per object);
//   - CardEncipheredStore: a PIV data object on the card itself, for small objects (the seed: "also effective
//     when the enciphered information ... is stored ... within the personal portable device"). Anyone reads it
//     with GET DATA; the card takes PUT DATA only under the issuer's secure channel, so writing goes through a
//     writer the caller injects (an SCP03 session of the issuer, e.g. when it reissues the card).
// The back-up device is a BackupTarget: src/store/backup-repository.ts on the server (src/backup/ its domain), or any uploader with the
// same two methods (an HTTP client, say). Everything that crosses any of these is an envelope
// (src/protocol/enciphered.ts) — ciphertext — and every store refuses anything else.

import { readdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { concat, findTlv, parseTlvs, tlv } from "../protocol/tlv.ts";
import { ensurePrivateDirectory, readFileNoFollow, writeFileAtomic } from "../util/files.ts";
import { cardKid, EncipheredError, parseEnvelope } from "../protocol/enciphered.ts";
import type { PivClient } from "../protocol/piv/client.ts";
import { OBJECT_ID } from "../backup/objects.ts";

/** One enciphered object: the user's name for it and its envelope. */
export interface EncipheredObject {
  objectId: string;
  envelope: Uint8Array;
}

/** A place on the user's side that keeps enciphered objects. */
export interface EncipheredStore {
  /** For reports: "terminal", "card". */
  readonly name: string;
  list(): Promise<EncipheredObject[]>;
  get(objectId: string): Promise<Uint8Array | undefined>;
  /** Adds or replaces the given objects (all or none, where the store can). */
  put(objects: EncipheredObject[]): Promise<void>;
  remove(objectId: string): Promise<void>;
}

/**
 * What a store on the user's side refuses or cannot do (not an envelope, a bad object ID, a full or read-only card
 * store). The server's refusals are src/backup/errors.ts BackupError.
 */
export class EncipheredStoreError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "EncipheredStoreError";
  }
}

/** Object IDs: the server's rule (src/backup/objects.ts), also a safe file name. */
export { OBJECT_ID };

export function checkObjectId(objectId: string): string {
  if (typeof objectId !== "string" || !OBJECT_ID.test(objectId)) throw new EncipheredStoreError("object ID must be 1-128 of A-Z a-z 0-9 . _ : @ -, starting with a letter or digit");
  return objectId;
}

/** Refuses what is not an envelope: only ciphertext is kept or sent anywhere. */
function checkEnvelope(o: EncipheredObject): void {
  checkObjectId(o.objectId);
  try {
    parseEnvelope(o.envelope);
  } catch (e) {
    if (e instanceof EncipheredError) throw new EncipheredStoreError(`object ${o.objectId}: only enciphered data is kept (${e.message})`);
    throw e;
  }
}

const same = (a: Uint8Array, b: Uint8Array): boolean => Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));

// --- the terminal's store --------------------------------------------------------------------------------------

/**
 * Envelopes as files `<objectId>.env` in a directory of the terminal: the directory 0700 and refused when other users
 * may write it, files 0600, each written to a fresh temporary name (O_EXCL | O_NOFOLLOW) and renamed into place, read
 * without following a symlink (issue 15 §6, src/util/files.ts).
 */
export class TerminalEncipheredStore implements EncipheredStore {
  readonly name = "terminal";
  constructor(readonly dir: string) {
    ensurePrivateDirectory(dir);
  }

  private file(objectId: string): string {
    return join(this.dir, `${checkObjectId(objectId)}.env`);
  }

  async list(): Promise<EncipheredObject[]> {
    const out: EncipheredObject[] = [];
    for (const n of readdirSync(this.dir).sort()) {
      if (!n.endsWith(".env")) continue;
      const objectId = n.slice(0, -4);
      if (!OBJECT_ID.test(objectId)) continue;
      const bytes = readFileNoFollow(join(this.dir, n));
      if (bytes) out.push({ objectId, envelope: new Uint8Array(bytes) });
    }
    return out;
  }

  async get(objectId: string): Promise<Uint8Array | undefined> {
    const bytes = readFileNoFollow(this.file(objectId));
    return bytes && new Uint8Array(bytes);
  }

  async put(objects: EncipheredObject[]): Promise<void> {
    for (const o of objects) checkEnvelope(o);
    for (const o of objects) writeFileAtomic(this.file(o.objectId), o.envelope);
  }

  async remove(objectId: string): Promise<void> {
    rmSync(this.file(objectId), { force: true });
  }
}

// --- the card's own memory -------------------------------------------------------------------------------------

/**
 * The data object that keeps enciphered objects on the card: 5FC104, which SP 800-73-4 (Part 1, Table 3) leaves
 * unassigned within the PIV object range — not a certificate, not CHUID / CCC / Security Object / Key History,
 * and readable without the PIN (its content is ciphertext).
 */
export const CARD_OBJECT_TAG = 0x5fc104;
/** Default budget for enciphered objects on the card, container included. */
export const CARD_STORE_MAX_BYTES = 4096;

// Container (the content of the data object's 53 template): 80 01 version | E1 { 80 object ID, 81 envelope } ...
const T_VERSION = 0x80;
const T_ENTRY = 0xe1;
const T_ID = 0x80;
const T_ENVELOPE = 0x81;
const CONTAINER_VERSION = 1;

export function encodeCardContainer(objects: EncipheredObject[]): Uint8Array {
  const entries = [...objects].sort((a, b) => (a.objectId < b.objectId ? -1 : a.objectId > b.objectId ? 1 : 0));
  return concat(tlv(T_VERSION, Uint8Array.of(CONTAINER_VERSION)), ...entries.map((o) => tlv(T_ENTRY, tlv(T_ID, Buffer.from(o.objectId, "utf8")), tlv(T_ENVELOPE, o.envelope))));
}

export function decodeCardContainer(content: Uint8Array): EncipheredObject[] {
  try {
    const tlvs = parseTlvs(content);
    const v = findTlv(tlvs, T_VERSION);
    if (!v || v.length !== 1 || v[0] !== CONTAINER_VERSION) throw new EncipheredStoreError(`the card's enciphered-data object is not container version ${CONTAINER_VERSION}`);
    return tlvs
      .filter((t) => t.tag === T_ENTRY)
      .map((t) => {
        const id = findTlv(t.value, T_ID);
        const env = findTlv(t.value, T_ENVELOPE);
        if (!id || !env) throw new EncipheredStoreError("the card's enciphered-data object has an entry without ID or envelope");
        return { objectId: checkObjectId(Buffer.from(id).toString("utf8")), envelope: Uint8Array.from(env) };
      });
  } catch (e) {
    if (e instanceof EncipheredStoreError) throw e;
    throw new EncipheredStoreError(`the card's enciphered-data object is malformed: ${(e as Error).message}`);
  }
}

/** Writes a data object under the issuer's secure channel (PUT DATA, piv-client.ts putDataCommand); an empty value deletes it. */
export type CardObjectWriter = (tag: number, value: Uint8Array) => Promise<void>;

export interface CardEncipheredStoreOptions {
  /** Reads the object (GET DATA; the PIV application selected). */
  piv: PivClient;
  /** Writes it; without a writer the store is read-only (what a user's terminal alone can do). */
  write?: CardObjectWriter;
  tag?: number;
  /** Budget for the whole container (default CARD_STORE_MAX_BYTES); the card's own memory may be less (6A84). */
  maxBytes?: number;
}

/** Enciphered objects kept on the card itself, in one PIV data object. For small objects only. */
export class CardEncipheredStore implements EncipheredStore {
  readonly name = "card";
  readonly tag: number;
  readonly maxBytes: number;
  constructor(private readonly o: CardEncipheredStoreOptions) {
    this.tag = o.tag ?? CARD_OBJECT_TAG;
    this.maxBytes = o.maxBytes ?? CARD_STORE_MAX_BYTES;
  }

  async list(): Promise<EncipheredObject[]> {
    const content = await this.o.piv.getData(this.tag);
    return content ? decodeCardContainer(content) : [];
  }

  async get(objectId: string): Promise<Uint8Array | undefined> {
    checkObjectId(objectId);
    return (await this.list()).find((o) => o.objectId === objectId)?.envelope;
  }

  /** Whether the store can write (it was given the issuer's writer). */
  get writable(): boolean {
    return this.o.write !== undefined;
  }

  /** Whether `objects` would fit beside what the card holds. */
  async fits(objects: EncipheredObject[]): Promise<boolean> {
    return this.merged(await this.list(), objects).length <= this.maxBytes;
  }

  private merged(current: EncipheredObject[], objects: EncipheredObject[]): Uint8Array {
    const byId = new Map(current.map((o) => [o.objectId, o]));
    for (const o of objects) byId.set(o.objectId, o);
    return encodeCardContainer([...byId.values()]);
  }

  async put(objects: EncipheredObject[]): Promise<void> {
    for (const o of objects) checkEnvelope(o);
    const value = this.merged(await this.list(), objects);
    if (value.length > this.maxBytes)
      throw new EncipheredStoreError(`the card keeps at most ${this.maxBytes} bytes of enciphered data; ${value.length} would not fit: keep the larger objects in the terminal's store`);
    await this.write(value);
  }

  async remove(objectId: string): Promise<void> {
    checkObjectId(objectId);
    const current = await this.list();
    const rest = current.filter((o) => o.objectId !== objectId);
    if (rest.length === current.length) return;
    await this.write(rest.length ? encodeCardContainer(rest) : new Uint8Array(0));
  }

  private async write(value: Uint8Array): Promise<void> {
    if (!this.o.write) throw new EncipheredStoreError("this card store is read-only: the card takes PUT DATA only under the issuer's secure channel");
    await this.o.write(this.tag, value);
  }
}

// --- the back-up device ----------------------------------------------------------------------------------------

/** The back-up device 8: src/store/backup-repository.ts's BackupRepository, or an uploader with the same methods. */
export interface BackupTarget {
  /** Stores a new version of the object (or nothing, when it is the latest version already). */
  put(input: { userId: string; cardId?: string | null; objectId: string; envelope: Uint8Array }): Promise<{ backup: { objectId: string; version: number }; created: boolean }>;
  /** The latest version of each of the user's objects. */
  latestAll(userId: string): Promise<{ objectId: string; version: number; envelope: Uint8Array }[]>;
}

export interface BackupReport {
  /** New versions stored. */
  stored: { objectId: string; version: number; from: string }[];
  /** Objects whose latest backup already is what the store holds. */
  unchanged: { objectId: string; version: number; from: string }[];
  /** Objects two stores hold differently; not backed up until the user settles which is current. */
  conflicts: { objectId: string; stores: string[] }[];
}

/**
 * Step S10: backs up every object of the given stores to the back-up device. Each object is sent as it is (an
 * envelope, already enciphered for the card); the target keeps versions. An object two stores hold with different
 * envelopes is reported as a conflict and not sent.
 */
export async function backup(o: { userId: string; cardId?: string | null; from: EncipheredStore[]; to: BackupTarget }): Promise<BackupReport> {
  const found = new Map<string, { envelope: Uint8Array; stores: string[]; differs: boolean }>();
  for (const store of o.from) {
    for (const obj of await store.list()) {
      checkEnvelope(obj);
      const seen = found.get(obj.objectId);
      if (!seen) found.set(obj.objectId, { envelope: obj.envelope, stores: [store.name], differs: false });
      else {
        seen.stores.push(store.name);
        if (!same(seen.envelope, obj.envelope)) seen.differs = true;
      }
    }
  }
  const report: BackupReport = { stored: [], unchanged: [], conflicts: [] };
  for (const [objectId, f] of [...found].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    if (f.differs) {
      report.conflicts.push({ objectId, stores: f.stores });
      continue;
    }
    const r = await o.to.put({ userId: o.userId, cardId: o.cardId ?? null, objectId, envelope: f.envelope });
    (r.created ? report.stored : report.unchanged).push({ objectId, version: r.backup.version, from: f.stores.join("+") });
  }
  return report;
}

export interface RestoreOptions {
  userId: string;
  /** The back-up device. */
  from: Pick<BackupTarget, "latestAll">;
  /** Where restored objects go: one store, or a choice per object (see `preferCard`). */
  into: EncipheredStore | ((obj: EncipheredObject) => EncipheredStore | Promise<EncipheredStore>);
  /**
   * Only envelopes this card's key opens: those whose kid is the key in `slot`'s (from its certificate). Others
   * (made for another key) are reported and left out. Recommended: the reissued card and slot 9D.
   */
  forCard?: { piv: PivClient; slot: number };
  /** Only these objects (default all). */
  objectIds?: string[];
}

export interface RestoreReport {
  restored: { objectId: string; version: number; into: string }[];
  /** Already in place, byte for byte. */
  present: { objectId: string; version: number; into: string }[];
  skipped: { objectId: string; version: number; reason: string }[];
}

/**
 * Step S12: brings the latest backed-up version of each object back into the user's stores — the reissued
 * card's memory and/or the terminal's store. Nothing is deciphered here: the envelopes go back as they were, and
 * only the card holding the key opens them (decipherWithCard).
 */
export async function restore(o: RestoreOptions): Promise<RestoreReport> {
  const report: RestoreReport = { restored: [], present: [], skipped: [] };
  let kid: string | undefined;
  if (o.forCard) {
    kid = await cardKid(o.forCard.piv, o.forCard.slot);
    if (!kid) throw new EncipheredStoreError(`the card has no certificate in slot ${o.forCard.slot.toString(16).toUpperCase()}: cannot tell which envelopes are for it`);
  }
  const wanted = o.objectIds ? new Set(o.objectIds.map(checkObjectId)) : undefined;
  const batches = new Map<EncipheredStore, { obj: EncipheredObject; version: number }[]>();
  const backedUp = new Set<string>();
  for (const b of await o.from.latestAll(o.userId)) {
    backedUp.add(b.objectId);
    if (wanted && !wanted.has(b.objectId)) continue;
    let envKid: string;
    try {
      envKid = parseEnvelope(b.envelope).kid;
    } catch (e) {
      if (!(e instanceof EncipheredError)) throw e;
      report.skipped.push({ objectId: b.objectId, version: b.version, reason: `not an envelope this terminal reads: ${e.message}` });
      continue;
    }
    if (kid !== undefined && envKid !== kid) {
      report.skipped.push({ objectId: b.objectId, version: b.version, reason: `enciphered for key ${envKid.slice(0, 16)}…, not this card's key ${kid.slice(0, 16)}…` });
      continue;
    }
    const obj = { objectId: b.objectId, envelope: b.envelope };
    const store = typeof o.into === "function" ? await o.into(obj) : o.into;
    const here = await store.get(b.objectId);
    if (here && same(here, b.envelope)) {
      report.present.push({ objectId: b.objectId, version: b.version, into: store.name });
      continue;
    }
    const batch = batches.get(store) ?? [];
    batch.push({ obj, version: b.version });
    batches.set(store, batch);
  }
  for (const id of wanted ?? []) if (!backedUp.has(id)) report.skipped.push({ objectId: id, version: 0, reason: "no backup of this object" });
  for (const [store, batch] of batches) {
    await store.put(batch.map((x) => x.obj));
    for (const x of batch) report.restored.push({ objectId: x.obj.objectId, version: x.version, into: store.name });
  }
  return report;
}

/**
 * A placement for restore: objects whose envelope is at most `maxObjectBytes` go to the card's store (when one is
 * given and writable), the rest to the terminal's.
 */
export function preferCard(card: CardEncipheredStore | undefined, terminal: EncipheredStore, maxObjectBytes = 1024): (obj: EncipheredObject) => EncipheredStore {
  return (obj) => (card?.writable && obj.envelope.length <= maxObjectBytes ? card : terminal);
}
