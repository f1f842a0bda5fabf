// The open software keystore: its document and keystore key (keystore-file.ts), the entries unsealed on first use and
// held in memory, ephemeral key pairs that are never written, the short-lived cache of derived card keys, and the
// coalesced writes of the whole document. Every operation of the software custody reaches its keys through here;
// everything here is wiped when the custody closes.

import { createPrivateKey, type KeyObject } from "node:crypto";
import { CustodyError, type KeyInfo, type PairUsage, type SecretKeyUsage } from "../custody.ts";
import { entryAad, seal, unseal, writeNext, type Entry, type EntryMeta, type KeystoreDoc } from "../keystore-file.ts";

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

export class Keystore {
  readonly loaded = new Map<string, Loaded>();
  /** Derived card keys (DEK, purpose keys) by master/card/kvn/bits/purpose, kept DERIVED_TTL_MS; wiped on eviction. */
  readonly derived = new Map<string, { key: Buffer; until: number }>();
  chain: Promise<void> = Promise.resolve();
  queued: Promise<void> | undefined;
  closed = false;

  constructor(
    readonly path: string,
    readonly doc: KeystoreDoc,
    readonly kek: Buffer,
  ) {}

  // --- persistence -------------------------------------------------------------------------------------------

  /** Coalesces concurrent changes into one atomic write of the whole document. */
  persist(): Promise<void> {
    if (this.queued) return this.queued;
    const p = this.chain.then(() => {
      this.queued = undefined;
      writeNext(this.path, this.doc);
    });
    this.queued = p;
    this.chain = p.catch(() => undefined);
    return p;
  }

  live(): void {
    if (this.closed) throw new CustodyError("UNAVAILABLE", "custody is closed");
  }

  meta(label: string): EntryMeta | undefined {
    return this.loaded.get(label)?.meta ?? this.doc.keys[label];
  }

  load(label: string): Loaded {
    this.live();
    const hit = this.loaded.get(label);
    if (hit) return hit;
    const e: Entry | undefined = Object.hasOwn(this.doc.keys, label) ? this.doc.keys[label] : undefined;
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

  async add(label: string, meta: EntryMeta, value: Buffer | KeyObject, ephemeral = false): Promise<void> {
    if (this.meta(label)) throw new CustodyError("EXISTS", `a key labelled ${label} already exists`);
    this.loaded.set(label, { meta, secret: value, ephemeral });
    if (ephemeral) return;
    const plain = Buffer.isBuffer(value) ? value : (value.export({ format: "der", type: "pkcs8" }) as Buffer);
    this.doc.keys[label] = { ...meta, secret: seal(this.kek, plain, entryAad(label, meta)) };
    if (!Buffer.isBuffer(value)) plain.fill(0);
    try {
      await this.persist();
    } catch (e) {
      delete this.doc.keys[label];
      this.loaded.delete(label);
      throw e;
    }
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

  /** Waits for the last write, then wipes every key held in memory and the keystore key. */
  async close(): Promise<void> {
    if (this.closed) return;
    await this.chain;
    this.closed = true;
    for (const l of this.loaded.values()) {
      if (l.pkcs8) l.pkcs8.fill(0);
      else if (Buffer.isBuffer(l.secret)) l.secret.fill(0);
    }
    this.loaded.clear();
    this.forgetDerived();
    this.kek.fill(0);
  }
}
