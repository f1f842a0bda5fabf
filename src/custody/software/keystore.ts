// The open software keystore: its header and keystore key (keystore-file.ts), where its entries are kept (a file or
// the store: keystore-backend.ts), the entries read from there and unsealed on first use and held in memory,
// ephemeral key pairs that are never written, the short-lived cache of derived card keys. Every operation of the
// software custody fetches the labels it names (read again after RECHECK_MS, looked up when not known here: another
// process may have made or deleted them, issue 16 §3), then reaches its keys through here; writes are one key at a
// time. Everything here is wiped when the custody closes.

import { createPrivateKey, type KeyObject } from "node:crypto";
import { CustodyError, type KeyInfo, type KeySetRef, type PairUsage, type SecretKeyUsage, type WrapTarget } from "../custody.ts";
import type { KeystoreBackend } from "../keystore-backend.ts";
import { entryAad, seal, unseal, type Entry, type EntryMeta, type KeystoreHeader } from "../keystore-file.ts";

export interface Loaded {
  meta: EntryMeta;
  /** AES key value, or the private key (of an ephemeral key pair: made from `pkcs8` on first use). */
  secret: Buffer | KeyObject;
  ephemeral: boolean;
  /** An ephemeral key pair's PKCS#8 DER as generated, for wrapping without re-encoding; wiped on delete. */
  pkcs8?: Buffer;
}

/** How long a card's derived DEK and purpose keys stay cached (issuing several credentials to one card). */
const DERIVED_TTL_MS = 2000;
const DERIVED_MAX = 4096;

/**
 * How long an entry read from the backend is trusted before it is read again (issue 16 §3): a key deleted by another
 * process (or server, with the store backend) stops working here at most this long after (the derived card keys
 * made from it are dropped at the same time), provided the backend answers: while it does not (database down, file
 * gone), keys known here stay usable and are read again at each use. A label not known here is always looked up
 * before NOT_FOUND.
 */
export const RECHECK_MS = 5000;

export interface KeystoreOptions {
  /** RECHECK_MS unless given; 0 reads the backend before every use. */
  recheckMs?: number;
}

/** The same entry: same sealed value and metadata (anything changed is read and authenticated again). */
const sameEntry = (a: Entry, b: Entry): boolean => JSON.stringify(a) === JSON.stringify(b);

export class Keystore {
  readonly loaded = new Map<string, Loaded>();
  /** Sealed entries as last read from (or written to) the backend, and when: read again after recheckMs. */
  readonly entries = new Map<string, { entry: Entry; checked: number }>();
  /** Derived card keys (DEK, purpose keys) by master/card/kvn/bits/purpose, kept DERIVED_TTL_MS; wiped on eviction. */
  readonly derived = new Map<string, { key: Buffer; until: number }>();
  /** Backend calls in flight; close waits for them. */
  private readonly pending = new Set<Promise<unknown>>();
  private readonly recheckMs: number;
  closed = false;

  constructor(
    readonly backend: KeystoreBackend,
    readonly header: KeystoreHeader,
    readonly kek: Buffer,
    opts: KeystoreOptions = {},
  ) {
    this.recheckMs = opts.recheckMs ?? RECHECK_MS;
  }

  /** The keystore's identity (issue 16 §3). */
  get id(): string {
    return this.header.id;
  }

  // --- the backend -------------------------------------------------------------------------------------------

  /** A backend call, waited for by close. */
  track<T>(p: Promise<T>): Promise<T> {
    this.pending.add(p);
    const done = (): void => void this.pending.delete(p);
    p.then(done, done);
    return p;
  }

  /**
   * Brings the labels' entries up to date before a (synchronous) use: one not known here, or known for longer than
   * recheckMs, is read from the backend. Gone there: forgotten and wiped here; a different key under the label now
   * (deleted and made again elsewhere) or an altered entry: the old one wiped, the new one authenticated at use. Ephemeral key pairs are this process's own.
   */
  async fetch(...labels: string[]): Promise<void> {
    this.live();
    for (const label of labels) {
      if (typeof label !== "string" || this.loaded.get(label)?.ephemeral) continue;
      const known = this.entries.get(label);
      if (known && Date.now() - known.checked < this.recheckMs) continue;
      const checked = Date.now();
      let fresh: Entry | undefined;
      try {
        fresh = await this.track(this.backend.get(label));
      } catch (e) {
        // The backend does not answer (database down, file gone): a key known here stays usable, read again at the
        // next use; one not known here is an error. A deletion is seen once the backend answers.
        if (known) continue;
        throw e;
      }
      this.live();
      if (known && fresh && sameEntry(known.entry, fresh)) {
        known.checked = checked;
        continue;
      }
      if (known) this.drop(label);
      if (fresh) this.entries.set(label, { entry: fresh, checked });
    }
  }

  /** The labels a key set names (its master or KMC, or its three stored keys). */
  async fetchKeySet(ref: KeySetRef): Promise<void> {
    if (ref?.kind === "derived") return this.fetch(ref.master);
    if (ref?.kind === "kmc") return this.fetch(ref.kmc);
    if (ref?.kind === "stored") return this.fetch(ref.enc, ref.mac, ref.dek);
  }

  /** The labels a wrap target names. */
  fetchTarget(t: WrapTarget): Promise<void> {
    if (t && "card" in t) return this.fetchKeySet(t.card);
    if (t && "key" in t) return this.fetch(t.key);
    return Promise.resolve();
  }

  /** Forgets a stored key here (wiping it), and the card keys derived from any master. */
  drop(label: string): void {
    const l = this.loaded.get(label);
    if (l && !l.ephemeral) {
      if (Buffer.isBuffer(l.secret)) l.secret.fill(0);
      this.loaded.delete(label);
    }
    this.entries.delete(label);
    this.forgetDerived();
  }

  live(): void {
    if (this.closed) throw new CustodyError("UNAVAILABLE", "custody is closed");
  }

  meta(label: string): EntryMeta | undefined {
    return this.loaded.get(label)?.meta ?? this.entries.get(label)?.entry;
  }

  /** A key as fetched (fetch, above): unsealed on first use. */
  load(label: string): Loaded {
    this.live();
    const hit = this.loaded.get(label);
    if (hit) return hit;
    const e = this.entries.get(label)?.entry;
    if (!e) throw new CustodyError("NOT_FOUND", `no key labelled ${label}`);
    const { secret: sealed, ...meta } = e;
    const plain = unseal(this.kek, sealed, entryAad(label, meta));
    if (!plain) throw new CustodyError("CORRUPT", `keystore entry ${label} does not authenticate under the keystore key (altered or corrupt)`);
    let secret: Buffer | KeyObject = plain;
    if (meta.kind === "keyPair") {
      secret = createPrivateKey({ key: plain, format: "der", type: "pkcs8" });
      plain.fill(0);
    }
    const l: Loaded = { meta, secret, ephemeral: false };
    this.loaded.set(label, l);
    return l;
  }

  /** Keeps a new key: sealed and inserted into the backend (EXISTS when the label is taken there), or ephemeral. */
  async add(label: string, meta: EntryMeta, value: Buffer | KeyObject, ephemeral = false): Promise<void> {
    if (this.meta(label)) throw new CustodyError("EXISTS", `a key labelled ${label} already exists`);
    if (ephemeral) {
      this.loaded.set(label, { meta, secret: value, ephemeral });
      return;
    }
    const plain = Buffer.isBuffer(value) ? value : (value.export({ format: "der", type: "pkcs8" }) as Buffer);
    const entry: Entry = { ...meta, secret: seal(this.kek, plain, entryAad(label, meta)) };
    if (!Buffer.isBuffer(value)) plain.fill(0);
    const inserted = await this.track(this.backend.insert(label, entry));
    if (!inserted) throw new CustodyError("EXISTS", `a key labelled ${label} already exists`);
    this.drop(label);
    this.entries.set(label, { entry, checked: Date.now() });
    this.loaded.set(label, { meta, secret: value, ephemeral });
  }

  secretKey(label: string, usage: SecretKeyUsage): Buffer {
    const l = this.load(label);
    if (l.meta.kind !== "secret" || !Buffer.isBuffer(l.secret)) throw new CustodyError("INVALID_ARGUMENT", `${label} is not a secret key`);
    if (!l.meta.usage?.includes(usage)) throw new CustodyError("NOT_PERMITTED", `key ${label} is not allowed to ${usage}`);
    return l.secret;
  }

  /** A key pair's private half, for `use` when given (entries made before key pair usage may do both). */
  privateKey(label: string, use?: PairUsage): { key: KeyObject; meta: EntryMeta } {
    const l = this.load(label);
    if (l.meta.kind !== "keyPair" || Buffer.isBuffer(l.secret)) throw new CustodyError("INVALID_ARGUMENT", `${label} is not a key pair`);
    if (use && l.meta.pairUsage && !l.meta.pairUsage.includes(use))
      throw new CustodyError("NOT_PERMITTED", `key ${label} is not allowed to ${use === "sign" ? "sign" : "decipher (ECDH / decryption)"}: its usage is ${l.meta.pairUsage.join(", ")}`);
    return { key: l.secret, meta: l.meta };
  }

  info(label: string, m: EntryMeta): KeyInfo {
    const i: KeyInfo = { label, kind: m.kind, type: m.type, extractable: m.extractable };
    if (m.bits !== undefined) i.bits = m.bits;
    if (m.usage) i.usage = [...m.usage];
    return i;
  }

  // --- the derived card keys' cache ---------------------------------------------------------------------------

  /** Drops every cached derived key (a master key was deleted, or custody closes). */
  forgetDerived(): void {
    for (const d of this.derived.values()) d.key.fill(0);
    this.derived.clear();
  }

  /** A cached derived key (a copy: callers wipe what they get), or `make()`'s, cached for DERIVED_TTL_MS. */
  cachedDerived(id: string, make: () => Buffer): Buffer {
    const now = Date.now();
    const hit = this.derived.get(id);
    if (hit && hit.until > now) return Buffer.from(hit.key);
    if (hit) {
      hit.key.fill(0);
      this.derived.delete(id);
    }
    if (this.derived.size >= DERIVED_MAX) {
      for (const [k, d] of this.derived) {
        if (d.until > now && this.derived.size < DERIVED_MAX) break;
        d.key.fill(0);
        this.derived.delete(k);
      }
    }
    const key = make();
    this.derived.set(id, { key: Buffer.from(key), until: now + DERIVED_TTL_MS });
    return key;
  }

  /** Waits for the backend calls in flight, then wipes every key held in memory and the keystore key. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.allSettled([...this.pending]);
    await this.backend.close();
    for (const l of this.loaded.values()) {
      if (l.pkcs8) l.pkcs8.fill(0);
      else if (Buffer.isBuffer(l.secret)) l.secret.fill(0);
    }
    this.loaded.clear();
    this.forgetDerived();
    this.kek.fill(0);
  }
}
