// The keystore file as a KeystoreBackend (keystore-backend.ts), safe for several processes on one machine
// (issue 16 §3): every change takes the lock file `<path>.lock` (file-lock.ts), re-reads the document on disk,
// applies this process's one change (insert or remove one label) to what it read and writes it atomically
// (keystore-file.ts writeAtomic), so that changes made by other processes since are kept, never overwritten.
// Reads go to the disk too: a parsed copy is reused only while the file's inode, size and mtime are unchanged.
// Processes on different machines must not share one file (a copy diverges; the server refuses it, see
// src/server/custody-binding.ts): they keep the keystore in the store instead.
//
// Never logs; errors name the file and the label, never a key.

import { existsSync, readFileSync, statSync } from "node:fs";
import { CustodyError } from "./custody.ts";
import { withFileLock } from "./file-lock.ts";
import type { Entry, KeystoreBackend, KeystoreHeader } from "./keystore-backend.ts";
import { FORMAT, newKeystoreId, parseKeystoreDoc, writeAtomic, type KeystoreDoc } from "./keystore-file.ts";

export class FileKeystoreBackend implements KeystoreBackend {
  readonly kind = "file";
  readonly where: string;
  private readonly lock: string;
  private cached: { stamp: string; doc: KeystoreDoc } | undefined;

  constructor(readonly path: string) {
    this.where = path;
    this.lock = `${path}.lock`;
  }

  /** The document on disk, or undefined when there is no file. */
  private read(): KeystoreDoc | undefined {
    let stamp: string;
    try {
      const st = statSync(this.path, { bigint: true });
      stamp = `${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw new CustodyError("UNAVAILABLE", `cannot read keystore ${this.path}: ${(e as NodeJS.ErrnoException).code ?? "error"}`);
    }
    if (this.cached?.stamp === stamp) return this.cached.doc;
    let text: string;
    try {
      text = readFileSync(this.path, "utf8");
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw new CustodyError("UNAVAILABLE", `cannot read keystore ${this.path}: ${(e as NodeJS.ErrnoException).code ?? "error"}`);
    }
    const doc = parseKeystoreDoc(text, this.path);
    this.cached = { stamp, doc };
    return doc;
  }

  /** Under the lock: the document as on disk now, `change` applied to a copy, written when it says so. */
  private change<T>(change: (doc: KeystoreDoc | undefined) => { write?: KeystoreDoc; result: T }): Promise<T> {
    return withFileLock(this.lock, () => {
      this.cached = undefined;
      const onDisk = this.read();
      const copy = onDisk && { ...onDisk, keys: { ...onDisk.keys } };
      const { write, result } = change(copy);
      if (write) {
        write.generation = (onDisk?.generation ?? 0) + 1;
        writeAtomic(this.path, write);
        this.cached = undefined;
      }
      return result;
    });
  }

  async readHeader(): Promise<KeystoreHeader | undefined> {
    if (!existsSync(this.path)) return undefined;
    let doc = this.read() as KeystoreDoc;
    // A file written before keystores had an identity gets one now (once: under the lock, whoever comes first).
    if (!doc.id)
      doc = await this.change((d) => {
        if (!d) throw new CustodyError("CORRUPT", `keystore ${this.path} is gone`);
        if (d.id) return { result: d };
        const w = { ...d, id: newKeystoreId() };
        return { write: w, result: w };
      });
    return { format: FORMAT, id: doc.id as string, kek: doc.kek, check: doc.check };
  }

  createHeader(h: KeystoreHeader): Promise<KeystoreHeader> {
    return this.change((d) => {
      if (d) return { result: { format: FORMAT, id: d.id as string, kek: d.kek, check: d.check } };
      return { write: { format: FORMAT, id: h.id, kek: h.kek, check: h.check, generation: 0, keys: {} }, result: h };
    });
  }

  /** The document of an open keystore: its file gone is UNAVAILABLE (not "every key deleted"). */
  private present(): KeystoreDoc {
    const doc = this.read();
    if (!doc) throw new CustodyError("UNAVAILABLE", `keystore ${this.path} is gone (moved or deleted while open)`);
    return doc;
  }

  async get(label: string): Promise<Entry | undefined> {
    const doc = this.present();
    return Object.hasOwn(doc.keys, label) ? doc.keys[label] : undefined;
  }

  async all(): Promise<Record<string, Entry>> {
    return { ...this.present().keys };
  }

  insert(label: string, entry: Entry): Promise<boolean> {
    return this.change((d) => {
      if (!d) throw new CustodyError("UNAVAILABLE", `keystore ${this.path} is gone (moved or deleted while open)`);
      if (Object.hasOwn(d.keys, label)) return { result: false };
      d.keys[label] = entry;
      return { write: d, result: true };
    });
  }

  remove(label: string): Promise<boolean> {
    return this.change((d) => {
      if (!d || !Object.hasOwn(d.keys, label)) return { result: false };
      delete d.keys[label];
      return { write: d, result: true };
    });
  }

  async close(): Promise<void> {
    this.cached = undefined;
  }
}
