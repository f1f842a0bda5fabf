// The card's EEPROM: one file per card, encrypted at rest, tear-safe.
//
// Layout: a 64-byte header, then two shadow slots A and B. Each slot holds a 32-byte commit record
// (magic, generation, length, GCM nonce) followed by the AES-256-GCM ciphertext of the whole card image.
// A commit writes the new image into the slot that does NOT hold the newest generation (write 1: body),
// then that slot's commit record (write 2). The GCM tag authenticates the body together with the record
// (AAD = slot, generation, length), so a power cut inside either write leaves that slot unreadable and the
// other slot, with the old image, wins on the next power-up: old state or new state, never in between.
// This is the shadow-copy-with-commit-record scheme Java Card transactions use, at image granularity.
//
// What a software card cannot protect: the file can be copied, and a copy can be replayed to roll the card
// back (including its PIN retry counter) by whoever holds the image key. See README "What a software card protects".
//
// The file itself (issue 15 §6): a new image is written to a fresh temporary name beside it (O_CREAT | O_EXCL |
// O_NOFOLLOW, 0600), fsynced, and then given its name by a hard link, which never replaces anything (a symlink or
// file planted at the name makes the create fail); an image is opened without following a symlink and its mode kept
// 0600; a directory other users may write is refused on both (src/util/files.ts). Commits write in place through the
// descriptor, exactly as before: the shadow slots and commit records are untouched by this.

import { closeSync, fdatasyncSync, fsyncSync, readSync, rmSync, writeSync } from "node:fs";
import { createCipheriv, createDecipheriv, hkdfSync, randomBytes, scryptSync } from "node:crypto";
import { dirname } from "node:path";
import { createPrivateTemp, fsyncDirectory, openPrivateFile, publishTemp } from "../util/files.ts";

const MAGIC = Buffer.from("CKMSCRD1");
const HEADER = 64;
const RECORD = 32;
const RECORD_MAGIC = 0x434d5431; // "CMT1"
const KDF_SCRYPT = 1;
const KDF_HKDF = 2;

/** Thrown by a fault-injection plan when the simulated power is cut. Represents the card losing power mid-write. */
export class PowerLoss extends Error {
  constructor(readonly writeIndex: number) {
    super(`power cut at EEPROM write ${writeIndex}`);
    this.name = "PowerLoss";
  }
}

/** Cuts the power during the `cutAtWrite`-th physical write (1-based), after `tornBytes` of it reached the file. */
export interface FaultPlan {
  cutAtWrite: number;
  /** Bytes of the cut write that land before the power goes; default: none. */
  tornBytes?: number;
}

export type Durability = "fsync" | "none";

/** Secret that protects a card image at rest: a passphrase (scrypt) or raw key bytes (HKDF). */
export type ImageSecret = string | Uint8Array;

export interface EepromOptions {
  /** "fsync": every commit is flushed to stable storage (fdatasync) before it returns; "none": left to the OS page cache. */
  durability?: Durability;
}

function deriveKey(secret: ImageSecret, kdf: number, salt: Uint8Array): Buffer {
  if (kdf === KDF_SCRYPT) {
    if (typeof secret !== "string") throw new Error("this card image is protected by a passphrase; a raw key was given");
    return scryptSync(secret, salt, 32, { N: 1 << 15, r: 8, p: 1, maxmem: 64 << 20 });
  }
  const raw = typeof secret === "string" ? Buffer.from(secret, "utf8") : Buffer.from(secret);
  if (raw.length < 16) throw new Error("a raw image key must be at least 16 bytes");
  return Buffer.from(hkdfSync("sha256", raw, salt, "cardkms card image", 32));
}

export class Eeprom {
  private fd: number;
  private gen: bigint;
  private newest: 0 | 1;
  /** Physical writes since the counter was last reset; the tearing tests enumerate these. */
  writes = 0;
  fault: FaultPlan | undefined;
  durability: Durability;

  private constructor(
    readonly path: string,
    private readonly key: Buffer,
    private readonly slotSize: number,
    fd: number,
    gen: bigint,
    newest: 0 | 1,
    opts: EepromOptions,
  ) {
    this.fd = fd;
    this.gen = gen;
    this.newest = newest;
    this.durability = opts.durability ?? "none";
  }

  /**
   * Creates a new image file holding `image` (refuses to overwrite: UnsafeFileError). Written to a fresh temporary
   * name and linked into place.
   */
  static create(path: string, secret: ImageSecret, image: Uint8Array, slotSize: number, opts: EepromOptions = {}): Eeprom {
    const kdf = typeof secret === "string" ? KDF_SCRYPT : KDF_HKDF;
    const salt = randomBytes(16);
    const key = deriveKey(secret, kdf, salt);
    const header = Buffer.alloc(HEADER);
    MAGIC.copy(header, 0);
    header.writeUInt8(kdf, 8);
    salt.copy(header, 9);
    header.writeUInt32BE(slotSize, 25);
    const { fd, tmp } = createPrivateTemp(path);
    let e: Eeprom;
    try {
      writeSync(fd, header, 0, HEADER, 0);
      e = new Eeprom(path, key, slotSize, fd, 0n, 1, opts);
      e.commit(image); // lands in slot 0 with generation 1
      fsyncSync(fd);
      publishTemp(tmp, path, true);
    } catch (err) {
      closeSync(fd);
      rmSync(tmp, { force: true });
      throw err;
    }
    if (e.durability === "fsync") fsyncDirectory(dirname(path));
    e.writes = 0;
    return e;
  }

  /** Opens an image and returns the newest intact image it holds. */
  static open(path: string, secret: ImageSecret, opts: EepromOptions = {}): { eeprom: Eeprom; image: Uint8Array } {
    const fd = openPrivateFile(path);
    try {
      const header = Buffer.alloc(HEADER);
      if (readSync(fd, header, 0, HEADER, 0) !== HEADER || !header.subarray(0, 8).equals(MAGIC)) throw new Error(`${path} is not a cardkms card image`);
      const kdf = header.readUInt8(8);
      const salt = header.subarray(9, 25);
      const slotSize = header.readUInt32BE(25);
      const key = deriveKey(secret, kdf, salt);
      let best: { gen: bigint; slot: 0 | 1; image: Uint8Array } | undefined;
      for (const slot of [0, 1] as const) {
        const got = readSlot(fd, key, slotSize, slot);
        if (got && (!best || got.gen > best.gen)) best = { ...got, slot };
      }
      if (!best) throw new Error(`cannot open ${path}: wrong image key, or the image is corrupted`);
      return { eeprom: new Eeprom(path, key, slotSize, fd, best.gen, best.slot, opts), image: best.image };
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  get capacity(): number {
    return this.slotSize - RECORD - 16;
  }

  /** Atomically replaces the stored image. Throws PowerLoss when a fault plan cuts the power. */
  commit(image: Uint8Array): void {
    if (image.length > this.capacity) throw new RangeError(`image of ${image.length} bytes exceeds the slot (${this.capacity})`);
    const slot = (this.newest ^ 1) as 0 | 1;
    const gen = this.gen + 1n;
    const nonce = randomBytes(12);
    const record = Buffer.alloc(RECORD);
    record.writeUInt32BE(RECORD_MAGIC, 0);
    record.writeBigUInt64BE(gen, 4);
    record.writeUInt32BE(image.length, 12);
    nonce.copy(record, 16);
    const c = createCipheriv("aes-256-gcm", this.key, nonce);
    c.setAAD(aad(slot, record));
    const body = Buffer.concat([c.update(image), c.final(), c.getAuthTag()]);
    const base = HEADER + slot * this.slotSize;
    this.write(body, base + RECORD);
    this.write(record, base);
    // One flush per commit is enough for atomicity: whatever part of body and record the OS had persisted
    // before a crash, the slot only validates when both landed whole, and the current image is in the other slot.
    if (this.durability === "fsync") fdatasyncSync(this.fd);
    this.gen = gen;
    this.newest = slot;
  }

  private write(buf: Buffer, pos: number): void {
    const n = ++this.writes;
    if (this.fault && this.fault.cutAtWrite === n) {
      const torn = Math.min(this.fault.tornBytes ?? 0, buf.length);
      if (torn > 0) writeSync(this.fd, buf, 0, torn, pos);
      this.fault = undefined;
      throw new PowerLoss(n);
    }
    writeSync(this.fd, buf, 0, buf.length, pos);
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}

function aad(slot: number, record: Buffer): Buffer {
  return Buffer.concat([Buffer.from([slot]), record.subarray(0, 16)]);
}

function readSlot(fd: number, key: Buffer, slotSize: number, slot: 0 | 1): { gen: bigint; image: Uint8Array } | undefined {
  const base = HEADER + slot * slotSize;
  const record = Buffer.alloc(RECORD);
  if (readSync(fd, record, 0, RECORD, base) !== RECORD) return undefined;
  if (record.readUInt32BE(0) !== RECORD_MAGIC) return undefined;
  const gen = record.readBigUInt64BE(4);
  const len = record.readUInt32BE(12);
  if (len > slotSize - RECORD - 16) return undefined;
  const body = Buffer.alloc(len + 16);
  if (readSync(fd, body, 0, body.length, base + RECORD) !== body.length) return undefined;
  try {
    const d = createDecipheriv("aes-256-gcm", key, record.subarray(16, 28));
    d.setAAD(aad(slot, record));
    d.setAuthTag(body.subarray(len));
    const image = Buffer.concat([d.update(body.subarray(0, len)), d.final()]);
    return { gen, image: new Uint8Array(image) };
  } catch {
    return undefined;
  }
}
