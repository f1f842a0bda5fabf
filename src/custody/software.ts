// Software key custody (the default): keys live in an encrypted keystore file (keystore-file.ts) and are used with
// Node's crypto. It computes exactly what pkcs11.ts asks an HSM for — same derivations (derivation.ts), same
// wrapping (RFC 5649), same encodings — so a deployment can move from one to the other by importing its masters.
//
// Secrets are in this process's memory while it runs (that is what a software keystore is); they never appear in
// logs or errors. Ephemeral key pairs (credential keys wrapped for a card and then destroyed) are never written.

import { generateKeyPair as generateKeyPairCb, createPrivateKey, createPublicKey, randomBytes, sign as nodeSign, createCipheriv, type KeyObject } from "node:crypto";
import { keyCheckValue, encryptKeyComponent } from "../card/scp03/host.ts";
import { cryptogram, DERIVE, deriveSessionKeys } from "../card/scp03/kdf.ts";
import {
  checkChallenge,
  checkHash,
  checkKeyPairAlg,
  checkKeySetRef,
  checkLabel,
  checkSecretSpec,
  CustodyError,
  defaultHash,
  KEY_SET_USAGE,
  type Extractability,
  type HashAlg,
  type KeyCustody,
  type KeyInfo,
  type KeyPairAlg,
  type KeyPairOptions,
  type KeySetKcvs,
  type KeySetRef,
  type PutKeyData,
  type Scp03SessionMaterial,
  type SealedForCard,
  type SecretKeySpec,
  type SecretKeyUsage,
  type Signer,
  type StoredKeySetRef,
  type WrapTarget,
} from "./custody.ts";
import { aesKeyUnwrapPad, aesKeyWrapPad, cardKeyData, derivePurposeKey, encryptData, PURPOSE } from "../card/derivation.ts";
import { hex, isEc, putKeyDataField, rsaBits, type PutKeyComponent } from "./encoding.ts";
import { entryAad, openKeystore, seal, unseal, writeNext, type Entry, type EntryMeta, type KeystoreDoc, type KeystoreKeySource } from "./keystore-file.ts";

export interface SoftwareCustodyOptions extends KeystoreKeySource {
  /** Keystore file; created (with its directory's permissions) when missing. */
  path: string;
}

interface Loaded {
  meta: EntryMeta;
  /** AES key value, or the private key. */
  secret: Buffer | KeyObject;
  ephemeral: boolean;
}

type KeySetKeys = { enc: Buffer; mac: Buffer; dek: Buffer; extractable: Extractability; cardId?: string; kvn: number };

const HASH_NODE: Record<HashAlg, string> = { "SHA-256": "sha256", "SHA-384": "sha384", "SHA-512": "sha512" };

function genKeyPair(alg: KeyPairAlg): Promise<KeyObject> {
  return new Promise((resolve, reject) => {
    const done = (e: Error | null, _pub: KeyObject, priv: KeyObject): void => (e ? reject(e) : resolve(priv));
    if (isEc(alg)) generateKeyPairCb("ec", { namedCurve: alg === "P256" ? "prime256v1" : "secp384r1" }, done);
    else generateKeyPairCb("rsa", { modulusLength: rsaBits(alg), publicExponent: 0x10001 }, done);
  });
}

export class SoftwareCustody implements KeyCustody {
  readonly kind = "software";
  private readonly loaded = new Map<string, Loaded>();
  private chain: Promise<void> = Promise.resolve();
  private queued: Promise<void> | undefined;
  private closed = false;

  private constructor(
    readonly path: string,
    private readonly doc: KeystoreDoc,
    private readonly kek: Buffer,
  ) {}

  /** Opens the keystore at opts.path, creating it when missing. Throws WRONG_KEY when the key does not open it. */
  static async open(opts: SoftwareCustodyOptions): Promise<SoftwareCustody> {
    const { doc, kek } = await openKeystore(opts.path, opts);
    return new SoftwareCustody(opts.path, doc, kek);
  }

  // --- persistence -------------------------------------------------------------------------------------------

  /** Coalesces concurrent changes into one atomic write of the whole document. */
  private persist(): Promise<void> {
    if (this.queued) return this.queued;
    const p = this.chain.then(() => {
      this.queued = undefined;
      writeNext(this.path, this.doc);
    });
    this.queued = p;
    this.chain = p.catch(() => undefined);
    return p;
  }

  private live(): void {
    if (this.closed) throw new CustodyError("UNAVAILABLE", "custody is closed");
  }

  private meta(label: string): EntryMeta | undefined {
    return this.loaded.get(label)?.meta ?? this.doc.keys[label];
  }

  private load(label: string): Loaded {
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

  private async add(label: string, meta: EntryMeta, value: Buffer | KeyObject, ephemeral = false): Promise<void> {
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

  private secretKey(label: string, usage: SecretKeyUsage): Buffer {
    const l = this.load(label);
    if (l.meta.kind !== "secret" || !Buffer.isBuffer(l.secret)) throw new CustodyError("INVALID_ARGUMENT", `${label} is not a secret key`);
    if (!l.meta.usage?.includes(usage)) throw new CustodyError("NOT_PERMITTED", `key ${label} is not allowed to ${usage}`);
    return l.secret;
  }

  private privateKey(label: string): { key: KeyObject; meta: EntryMeta } {
    const l = this.load(label);
    if (l.meta.kind !== "keyPair" || Buffer.isBuffer(l.secret)) throw new CustodyError("INVALID_ARGUMENT", `${label} is not a key pair`);
    return { key: l.secret, meta: l.meta };
  }

  private info(label: string, m: EntryMeta): KeyInfo {
    const i: KeyInfo = { label, kind: m.kind, type: m.type, extractable: m.extractable };
    if (m.bits !== undefined) i.bits = m.bits;
    if (m.usage) i.usage = [...m.usage];
    return i;
  }

  // --- keys by label -----------------------------------------------------------------------------------------

  async createSecretKey(label: string, spec: SecretKeySpec): Promise<KeyInfo> {
    return this.importSecretKey(label, spec, randomBytes(spec?.bits / 8 || 0));
  }

  async importSecretKey(label: string, spec: SecretKeySpec, value: Uint8Array): Promise<KeyInfo> {
    this.live();
    checkLabel(label);
    const s = checkSecretSpec(spec);
    if (!(value instanceof Uint8Array) || value.length * 8 !== s.bits) throw new CustodyError("INVALID_ARGUMENT", `key value must be ${s.bits / 8} bytes`);
    const meta: EntryMeta = { kind: "secret", type: "aes", bits: s.bits, usage: s.usage, extractable: s.extractable, created: new Date().toISOString() };
    await this.add(label, meta, Buffer.from(value));
    return this.info(label, meta);
  }

  async importKeySet(prefix: string, keys: { kvn: number; enc: Uint8Array; mac: Uint8Array; dek: Uint8Array }, extractable: Extractability = "never"): Promise<StoredKeySetRef> {
    const ref: StoredKeySetRef = { kind: "stored", kvn: keys.kvn, enc: `${prefix}.enc`, mac: `${prefix}.mac`, dek: `${prefix}.dek` };
    checkKeySetRef(ref);
    for (const name of ["enc", "mac", "dek"] as const) {
      const v = keys[name];
      await this.importSecretKey(ref[name], { type: "aes", bits: (v.length * 8) as 128 | 256, usage: KEY_SET_USAGE[name], extractable }, v);
    }
    return ref;
  }

  async hasKey(label: string): Promise<boolean> {
    this.live();
    return this.meta(label) !== undefined;
  }

  async keyInfo(label: string): Promise<KeyInfo | undefined> {
    this.live();
    const m = this.meta(label);
    return m && this.info(label, m);
  }

  async deleteKey(label: string): Promise<boolean> {
    this.live();
    const l = this.loaded.get(label);
    const stored = Object.hasOwn(this.doc.keys, label) ? this.doc.keys[label] : undefined;
    if (!l && !stored) return false;
    if (l && Buffer.isBuffer(l.secret)) l.secret.fill(0);
    this.loaded.delete(label);
    if (stored) {
      delete this.doc.keys[label];
      await this.persist();
    }
    return true;
  }

  async listKeys(): Promise<KeyInfo[]> {
    this.live();
    const labels = new Set([...Object.keys(this.doc.keys), ...this.loaded.keys()]);
    return [...labels].sort().map((l) => this.info(l, this.meta(l) as EntryMeta));
  }

  // --- card key sets -----------------------------------------------------------------------------------------

  private keySet(ref: KeySetRef, need: { enc?: SecretKeyUsage; mac?: SecretKeyUsage; dek?: SecretKeyUsage }): KeySetKeys {
    checkKeySetRef(ref);
    if (ref.kind === "derived") {
      const master = this.secretKey(ref.master, "derive");
      const bits = ref.bits ?? 128;
      return {
        enc: Buffer.from(encryptData(master, cardKeyData(ref.cardId, ref.kvn, "enc", bits))),
        mac: Buffer.from(encryptData(master, cardKeyData(ref.cardId, ref.kvn, "mac", bits))),
        dek: Buffer.from(encryptData(master, cardKeyData(ref.cardId, ref.kvn, "dek", bits))),
        extractable: "wrapped",
        cardId: ref.cardId,
        kvn: ref.kvn,
      };
    }
    const get = (label: string, usage: SecretKeyUsage | undefined): Buffer => {
      if (usage) return this.secretKey(label, usage);
      const l = this.load(label);
      if (!Buffer.isBuffer(l.secret)) throw new CustodyError("INVALID_ARGUMENT", `${label} is not a secret key`);
      return l.secret;
    };
    const enc = get(ref.enc, need.enc), mac = get(ref.mac, need.mac), dek = get(ref.dek, need.dek);
    if (mac.length !== enc.length || dek.length !== enc.length) throw new CustodyError("INVALID_ARGUMENT", "the keys of a key set must have the same length");
    const all = [ref.enc, ref.mac, ref.dek].map((l) => this.load(l).meta.extractable);
    return { enc, mac, dek, extractable: all.every((x) => x === "wrapped") ? "wrapped" : "never", kvn: ref.kvn };
  }

  private wipeDerived(ref: KeySetRef, k: KeySetKeys): void {
    if (ref.kind !== "derived") return;
    k.enc.fill(0);
    k.mac.fill(0);
    k.dek.fill(0);
  }

  async keySetKcvs(ref: KeySetRef): Promise<KeySetKcvs> {
    const k = this.keySet(ref, { enc: "encrypt", mac: "encrypt", dek: "encrypt" });
    try {
      return { kvn: ref.kvn, enc: hex(keyCheckValue(k.enc)), mac: hex(keyCheckValue(k.mac)), dek: hex(keyCheckValue(k.dek)) };
    } finally {
      this.wipeDerived(ref, k);
    }
  }

  async putKeyData(current: KeySetRef, next: KeySetRef): Promise<PutKeyData> {
    const cur = this.keySet(current, { dek: "wrap" });
    const nxt = this.keySet(next, { enc: "encrypt", mac: "encrypt", dek: "encrypt" });
    try {
      if (nxt.extractable !== "wrapped") throw new CustodyError("NOT_PERMITTED", "the new key set is not extractable (\"never\"): it cannot be sent to a card");
      const part = (key: Buffer): PutKeyComponent => ({ keyLength: key.length, cryptogram: encryptKeyComponent(cur.dek, key), kcv: keyCheckValue(key) });
      const parts: [PutKeyComponent, PutKeyComponent, PutKeyComponent] = [part(nxt.enc), part(nxt.mac), part(nxt.dek)];
      const { data, expectedResponse } = putKeyDataField(next.kvn, parts);
      return { data, expectedResponse, kcvs: { kvn: next.kvn, enc: hex(parts[0].kcv), mac: hex(parts[1].kcv), dek: hex(parts[2].kcv) } };
    } finally {
      this.wipeDerived(current, cur);
      this.wipeDerived(next, nxt);
    }
  }

  async scp03Session(ref: KeySetRef, hostChallenge: Uint8Array, cardChallenge: Uint8Array): Promise<Scp03SessionMaterial> {
    checkChallenge(hostChallenge, "host challenge");
    checkChallenge(cardChallenge, "card challenge");
    const k = this.keySet(ref, { enc: "mac", mac: "mac" });
    try {
      const context = Buffer.concat([hostChallenge, cardChallenge]);
      const sk = deriveSessionKeys(k.enc, k.mac, context);
      return { ...sk, cardCryptogram: cryptogram(sk.sMac, DERIVE.CARD_CRYPTOGRAM, context), hostCryptogram: cryptogram(sk.sMac, DERIVE.HOST_CRYPTOGRAM, context) };
    } finally {
      this.wipeDerived(ref, k);
    }
  }

  private purposeKey(ref: KeySetRef, purpose: number): Buffer {
    const k = this.keySet(ref, { dek: "derive" });
    try {
      const cardId = ref.cardId;
      if (!cardId) throw new CustodyError("INVALID_ARGUMENT", "a stored key set needs cardId for keys derived from its DEK");
      return Buffer.from(derivePurposeKey(k.dek, cardId, ref.kvn, purpose));
    } finally {
      this.wipeDerived(ref, k);
    }
  }

  async sealForCard(ref: KeySetRef, purpose: number, aad: Uint8Array, plaintext: Uint8Array): Promise<SealedForCard> {
    if (!Number.isInteger(purpose) || purpose < 0x40 || purpose > 0xff || purpose === PURPOSE.privateKeyWrap)
      throw new CustodyError("INVALID_ARGUMENT", "seal purpose must be 0x40..0xff and not the private-key wrap purpose");
    const key = this.purposeKey(ref, purpose);
    try {
      const nonce = randomBytes(12);
      const c = createCipheriv("aes-256-gcm", key, nonce);
      c.setAAD(aad);
      const ciphertext = Buffer.concat([c.update(plaintext), c.final(), c.getAuthTag()]);
      return { nonce: new Uint8Array(nonce), ciphertext: new Uint8Array(ciphertext) };
    } finally {
      key.fill(0);
    }
  }

  // --- key pairs ---------------------------------------------------------------------------------------------

  async generateKeyPair(label: string, alg: KeyPairAlg, opts: KeyPairOptions = {}): Promise<KeyInfo> {
    this.live();
    checkLabel(label);
    checkKeyPairAlg(alg);
    const extractable = opts.extractable ?? "never";
    if (extractable !== "never" && extractable !== "wrapped") throw new CustodyError("INVALID_ARGUMENT", "extractable must be \"never\" or \"wrapped\"");
    if (this.meta(label)) throw new CustodyError("EXISTS", `a key labelled ${label} already exists`);
    const priv = await genKeyPair(alg);
    const spki = createPublicKey(priv).export({ format: "der", type: "spki" }).toString("base64");
    const meta: EntryMeta = { kind: "keyPair", type: alg, extractable, spki, created: new Date().toISOString() };
    await this.add(label, meta, priv, opts.ephemeral === true);
    return this.info(label, meta);
  }

  async publicKey(label: string): Promise<Uint8Array> {
    const { meta } = this.privateKey(label);
    return new Uint8Array(Buffer.from(meta.spki as string, "base64"));
  }

  async sign(label: string, data: Uint8Array, opts: { hash?: HashAlg } = {}): Promise<Uint8Array> {
    const { key, meta } = this.privateKey(label);
    const alg = meta.type as KeyPairAlg;
    const hash = opts.hash ?? defaultHash(alg);
    checkHash(hash);
    const sig = isEc(alg) ? nodeSign(HASH_NODE[hash], data, { key, dsaEncoding: "der" }) : nodeSign(HASH_NODE[hash], data, key);
    return new Uint8Array(sig);
  }

  private wrapKey(to: WrapTarget): Buffer {
    if ("card" in to) return this.purposeKey(to.card, PURPOSE.privateKeyWrap);
    if ("key" in to) return Buffer.from(this.secretKey(to.key, "wrap"));
    throw new CustodyError("INVALID_ARGUMENT", "wrap target must be {card: KeySetRef} or {key: label}");
  }

  async wrapPrivateKey(label: string, to: WrapTarget): Promise<Uint8Array> {
    const { key, meta } = this.privateKey(label);
    if (meta.extractable !== "wrapped") throw new CustodyError("NOT_PERMITTED", `key ${label} is not extractable: it cannot be wrapped`);
    const kek = this.wrapKey(to);
    const pkcs8 = key.export({ format: "der", type: "pkcs8" }) as Buffer;
    try {
      return aesKeyWrapPad(kek, pkcs8);
    } finally {
      pkcs8.fill(0);
      kek.fill(0);
    }
  }

  async rewrapPrivateKey(wrapped: Uint8Array, alg: KeyPairAlg, from: WrapTarget, to: WrapTarget): Promise<Uint8Array> {
    checkKeyPairAlg(alg);
    const a = this.wrapKey(from);
    let pkcs8: Uint8Array;
    try {
      pkcs8 = aesKeyUnwrapPad(a, wrapped);
    } catch {
      throw new CustodyError("WRONG_KEY", "the wrapped private key does not unwrap under the given key (wrong key or altered)");
    } finally {
      a.fill(0);
    }
    const b = this.wrapKey(to);
    try {
      return aesKeyWrapPad(b, pkcs8);
    } finally {
      pkcs8.fill(0);
      b.fill(0);
    }
  }

  async signer(label: string): Promise<Signer> {
    const { meta } = this.privateKey(label);
    const alg = meta.type as KeyPairAlg;
    const spki = await this.publicKey(label);
    return { label, alg, hash: defaultHash(alg), spki, sign: (data) => this.sign(label, data) };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    await this.chain;
    this.closed = true;
    for (const l of this.loaded.values()) if (Buffer.isBuffer(l.secret)) l.secret.fill(0);
    this.loaded.clear();
    this.kek.fill(0);
  }
}
