// The software keystore's format: every secret sealed on its own with AES-256-GCM under the keystore key
// (KEK), its metadata (label, kind, type, usage, extractability) bound in as associated data so that editing the
// file cannot relabel a key or make a "never" key exportable. The KEK comes from a key file or the environment
// (CARDKMS_KEYSTORE_KEY): 64 hex digits are a raw 256-bit key, anything else is a passphrase stretched with
// scrypt (salt and cost in the file). A check value sealed under the KEK tells a wrong key from a corrupt entry.
// Where it is kept is a KeystoreBackend (keystore-backend.ts): a JSON file (keystore-file-backend.ts; writes atomic:
// a temporary file in the same directory, fsync, rename, fsync of the directory) or the server's store (issue 16 §3).
//
// Never logs; errors name the file and the label, never a key.

import { createCipheriv, createDecipheriv, randomBytes, scrypt as scryptCb, type ScryptOptions } from "node:crypto";
import { closeSync, fsyncSync, openSync, readFileSync, renameSync, rmSync, writeSync } from "node:fs";
import { dirname, basename, join } from "node:path";
import { CustodyError } from "./custody.ts";
import type { Entry, EntryMeta, KekInfo, KeystoreBackend, KeystoreHeader, Sealed } from "./keystore-backend.ts";

export type { Entry, EntryMeta, KekInfo, KeystoreBackend, KeystoreHeader, Sealed };

export const FORMAT = "cardkms-keystore/1";
const CHECK_TEXT = Buffer.from("cardkms keystore key check v1");
const SCRYPT = { N: 1 << 15, r: 8, p: 1 } as const;

/** The keystore file (keystore-file-backend.ts): the header and every entry. */
export interface KeystoreDoc extends Omit<KeystoreHeader, "id"> {
  id?: string;
  /** Incremented on every write. */
  generation: number;
  keys: Record<string, Entry>;
}

export interface KeystoreKeySource {
  /** The key itself: 64 hex digits (raw) or a passphrase; or 32 raw bytes. */
  key?: string | Uint8Array;
  /** A file holding the key (hex or passphrase; surrounding whitespace ignored). */
  keyFile?: string;
  /** Where CARDKMS_KEYSTORE_KEY / CARDKMS_KEYSTORE_KEY_FILE are read; default process.env. */
  env?: Record<string, string | undefined>;
}

const MIN_PASSPHRASE = 12;

function scrypt(pass: string, salt: Buffer, o: ScryptOptions): Promise<Buffer> {
  return new Promise((resolve, reject) => scryptCb(pass, salt, 32, { ...o, maxmem: 256 * 1024 * 1024 }, (e, k) => (e ? reject(e) : resolve(k))));
}

/** The key material the operator configured: text (hex or passphrase) or raw bytes, and where it came from. */
export function readKeySource(src: KeystoreKeySource): { text?: string; bytes?: Buffer; from: string } {
  const env = src.env ?? process.env;
  if (src.key !== undefined) {
    if (typeof src.key === "string") return { text: src.key.trim(), from: "the key option" };
    if (src.key.length !== 32) throw new CustodyError("INVALID_ARGUMENT", `a raw keystore key is 32 bytes, not ${src.key.length}`);
    return { bytes: Buffer.from(src.key), from: "the key option" };
  }
  if (src.keyFile) return { text: readKeyFile(src.keyFile).trim(), from: `key file ${src.keyFile}` };
  if (env.CARDKMS_KEYSTORE_KEY) return { text: env.CARDKMS_KEYSTORE_KEY.trim(), from: "CARDKMS_KEYSTORE_KEY" };
  if (env.CARDKMS_KEYSTORE_KEY_FILE) return { text: readKeyFile(env.CARDKMS_KEYSTORE_KEY_FILE).trim(), from: `key file ${env.CARDKMS_KEYSTORE_KEY_FILE}` };
  throw new CustodyError("INVALID_ARGUMENT", "no keystore key: set CARDKMS_KEYSTORE_KEY (64 hex digits, or a passphrase of at least 12 characters) or CARDKMS_KEYSTORE_KEY_FILE");
}

const isRawHex = (t: string): boolean => /^[0-9a-fA-F]{64}$/.test(t);

function readKeyFile(path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (e) {
    throw new CustodyError("INVALID_ARGUMENT", `cannot read keystore key file ${path}: ${(e as NodeJS.ErrnoException).code ?? "error"}`);
  }
}

export function seal(kek: Uint8Array, plain: Uint8Array, aad: Uint8Array): Sealed {
  const iv = randomBytes(12);
  const c = createCipheriv("aes-256-gcm", kek, iv);
  c.setAAD(aad);
  const ct = Buffer.concat([c.update(plain), c.final(), c.getAuthTag()]);
  return { iv: iv.toString("base64"), ct: ct.toString("base64") };
}

/** Opens a sealed value; undefined when authentication fails. */
export function unseal(kek: Uint8Array, s: Sealed, aad: Uint8Array): Buffer | undefined {
  try {
    const ct = Buffer.from(s.ct, "base64");
    if (ct.length < 16) return undefined;
    const d = createDecipheriv("aes-256-gcm", kek, Buffer.from(s.iv, "base64"));
    d.setAAD(aad);
    d.setAuthTag(ct.subarray(ct.length - 16));
    return Buffer.concat([d.update(ct.subarray(0, ct.length - 16)), d.final()]);
  } catch {
    return undefined;
  }
}

/** Associated data of an entry: its label and metadata, in a fixed order. */
export function entryAad(label: string, m: EntryMeta): Buffer {
  const bound: unknown[] = [FORMAT, label, m.kind, m.type, m.bits ?? null, m.usage ?? null, m.extractable, m.spki ?? null];
  // Appended only when present, so that entries written before key pair usage existed still open.
  if (m.pairUsage) bound.push(m.pairUsage);
  return Buffer.from(JSON.stringify(bound));
}

/** Derives the KEK for a new keystore from the configured key source: a raw key as is, a passphrase through scrypt. */
async function newKek(m: ReturnType<typeof readKeySource>): Promise<{ kek: Buffer; info: KekInfo }> {
  if (m.bytes || isRawHex(m.text ?? "")) return { kek: m.bytes ?? Buffer.from(m.text as string, "hex"), info: { source: "raw" } };
  const pass = m.text ?? "";
  if (pass.length < MIN_PASSPHRASE) throw new CustodyError("INVALID_ARGUMENT", `keystore key from ${m.from} is neither 64 hex digits nor a passphrase of at least ${MIN_PASSPHRASE} characters`);
  const salt = randomBytes(16);
  return { kek: await scrypt(pass, salt, SCRYPT), info: { source: "scrypt", salt: salt.toString("base64"), ...SCRYPT } };
}

/**
 * Opens (or creates, when it holds no keystore yet) the keystore kept by `backend` (a file or the store,
 * keystore-backend.ts); returns its header and KEK. When two processes create one at once, the backend keeps the
 * first header and the other opens it with its key (WRONG_KEY if that key differs).
 */
export async function openKeystore(backend: KeystoreBackend, src: KeystoreKeySource): Promise<{ header: KeystoreHeader; kek: Buffer; created: boolean }> {
  const m = readKeySource(src);
  let header = await backend.readHeader();
  if (!header) {
    const { kek, info } = await newKek(m);
    const mine: KeystoreHeader = { format: FORMAT, id: newKeystoreId(), kek: info, check: seal(kek, CHECK_TEXT, Buffer.from("check")) };
    header = await backend.createHeader(mine);
    if (header.id === mine.id) return { header, kek, created: true };
    kek.fill(0);
  }
  const where = backend.where;
  const wrong = `the keystore key (${m.from}) does not open ${where}: wrong CARDKMS_KEYSTORE_KEY or key file`;
  let kek: Buffer;
  if (header.kek.source === "raw") {
    if (!m.bytes && !isRawHex(m.text ?? "")) throw new CustodyError("WRONG_KEY", `${wrong} (this keystore takes a raw key of 64 hex digits, a passphrase was given)`);
    kek = m.bytes ?? Buffer.from(m.text as string, "hex");
  } else {
    // The keystore decides: under a passphrase keystore even a 64-hex string is taken as the passphrase.
    if (m.text === undefined) throw new CustodyError("WRONG_KEY", `${wrong} (this keystore takes a passphrase, raw bytes were given)`);
    const { salt, N, r, p } = header.kek;
    kek = await scrypt(m.text, Buffer.from(salt, "base64"), { N, r, p });
  }
  const check = unseal(kek, header.check, Buffer.from("check"));
  if (!check || !check.equals(CHECK_TEXT)) throw new CustodyError("WRONG_KEY", wrong);
  return { header, kek, created: false };
}

/** A keystore's identity (issue 16 §3): random, recorded in the database the keystore's card keys belong to. */
export function newKeystoreId(): string {
  return `ks_${randomBytes(16).toString("hex")}`;
}

/** Parses a keystore document, naming the file when it is not one. */
export function parseKeystoreDoc(text: string, path: string): KeystoreDoc {
  let doc: KeystoreDoc;
  try {
    doc = JSON.parse(text) as KeystoreDoc;
  } catch (e) {
    throw new CustodyError("CORRUPT", `keystore ${path} is not readable JSON (${(e as Error).name})`);
  }
  if (doc?.format !== FORMAT || !doc.kek || !doc.check || typeof doc.keys !== "object" || doc.keys === null) throw new CustodyError("CORRUPT", `${path} is not a ${FORMAT} keystore`);
  return doc;
}

/** Writes the document atomically: temp file (0600) + fsync + rename + directory fsync. */
export function writeAtomic(path: string, doc: KeystoreDoc): void {
  const dir = dirname(path);
  const tmp = join(dir, `.${basename(path)}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`);
  const data = Buffer.from(JSON.stringify(doc, null, 1) + "\n");
  let fd: number | undefined;
  try {
    fd = openSync(tmp, "wx", 0o600);
    let o = 0;
    while (o < data.length) o += writeSync(fd, data, o);
    fsyncSync(fd);
    closeSync(fd);
    fd = undefined;
    renameSync(tmp, path);
  } catch (e) {
    if (fd !== undefined) closeSync(fd);
    rmSync(tmp, { force: true });
    throw new CustodyError("UNAVAILABLE", `cannot write keystore ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  try {
    const dfd = openSync(dir, "r");
    try {
      fsyncSync(dfd);
    } finally {
      closeSync(dfd);
    }
  } catch {
    // Some filesystems refuse fsync on a directory; the rename itself is still atomic.
  }
}
