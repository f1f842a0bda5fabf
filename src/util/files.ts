// Writing a file so that nobody else can read it or redirect it (issue 15 §6): a fresh temporary file in the same
// directory, created with O_CREAT | O_EXCL | O_NOFOLLOW and mode 0600 (a planted file or symlink of that name makes
// the open fail instead of being written through), written, fsynced and renamed over the target, which replaces a
// symlink planted there rather than following it. A directory writable by other users is refused: whoever can
// write it could swap the file after the rename. So is a directory another user owns (root excepted): its owner
// could do the same.
//
// What this does not check: the directories above the one written to. A user who can rename one of them can move the
// whole directory away; keep the terminal's and the card's files under a home directory (or another path only their
// owner can change), not directly in a shared one such as /tmp (which is refused: it is world-writable).
//
// The helpers:
//   checkPrivateDirectory(dir)      refuses a directory others may write or another user owns (UnsafeFileError)
//   ensurePrivateDirectory(dir)     creates it 0700 when missing (parents too), then checks it
//   writeFileAtomic(path, data)     the write above; { noClobber: true } refuses to replace an existing name
//   readFileNoFollow(path)          reads a regular file, refusing a symlink in its place (undefined when absent)
//   openPrivateFile(path)           opens an existing regular file read-write without following a symlink, in a
//                                   checked directory, and narrows its mode to 0600 (the card's EEPROM image)
//   createPrivateTemp(path)         a fresh O_EXCL | O_NOFOLLOW 0600 file beside `path`, for a caller that writes it
//                                   through the descriptor and then calls publishTemp (the EEPROM's create)
//   publishTemp(tmp, path)          gives the temporary file its final name without replacing anything there
//   fsyncDirectory(dir)             makes a rename or link in `dir` durable

import { randomBytes } from "node:crypto";
import { closeSync, constants, fchmodSync, fstatSync, fsyncSync, linkSync, lstatSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, statSync, unlinkSync, writeSync } from "node:fs";
import { basename, dirname, join } from "node:path";

export class UnsafeFileError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UnsafeFileError";
  }
}

const uid = (): number | undefined => (typeof process.getuid === "function" ? process.getuid() : undefined);

/** Refuses a directory other users may write (world- or group-writable, sticky or not) or that another user owns. */
export function checkPrivateDirectory(dir: string): void {
  let st;
  try {
    st = statSync(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") throw new UnsafeFileError(`${dir} does not exist`);
    throw e;
  }
  if (!st.isDirectory()) throw new UnsafeFileError(`${dir} is not a directory`);
  if ((st.mode & 0o022) !== 0)
    throw new UnsafeFileError(`${dir} is writable by other users (mode ${(st.mode & 0o777).toString(8)}): files are not written there; chmod go-w it, or use a directory only you can write`);
  const me = uid();
  if (me !== undefined && st.uid !== me && st.uid !== 0) throw new UnsafeFileError(`${dir} belongs to another user (uid ${st.uid}): files are not written there`);
}

/** Creates `dir` owner-only (0700, with its missing parents) when it does not exist, then checks it. */
export function ensurePrivateDirectory(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  checkPrivateDirectory(dir);
}

const NOFOLLOW_CREATE = constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;

/** A fresh, unpredictable temporary name beside `path`. */
function tempName(path: string): string {
  return join(dirname(path), `.${basename(path)}.${randomBytes(8).toString("hex")}.tmp`);
}

/**
 * Creates a fresh temporary file beside `path` (in a checked directory), O_EXCL | O_NOFOLLOW, mode `mode`, open for
 * reading and writing. The caller writes it through `fd` and then calls publishTemp (or removes it).
 */
export function createPrivateTemp(path: string, mode = 0o600): { fd: number; tmp: string } {
  checkPrivateDirectory(dirname(path));
  const tmp = tempName(path);
  const fd = openSync(tmp, NOFOLLOW_CREATE | constants.O_RDWR, mode);
  // the umask may have narrowed the mode further; it never widens it
  return { fd, tmp };
}

/**
 * Gives a written temporary file its final name. `noClobber`: refused (UnsafeFileError) when the name exists, as a
 * file or as a symlink — a hard link never replaces anything; else renamed over it (replacing, never following, a
 * symlink). The temporary name is gone afterwards either way.
 */
export function publishTemp(tmp: string, path: string, noClobber = false): void {
  if (!noClobber) {
    try {
      renameSync(tmp, path);
    } catch (e) {
      rmSync(tmp, { force: true });
      throw e;
    }
    return;
  }
  try {
    linkSync(tmp, path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "EEXIST") {
      rmSync(tmp, { force: true });
      throw new UnsafeFileError(`${path} already exists: it is not replaced`);
    }
    if (code !== "EPERM" && code !== "ENOTSUP" && code !== "EOPNOTSUPP" && code !== "EMLINK") {
      rmSync(tmp, { force: true });
      throw e;
    }
    // A file system without hard links: in a private directory (checked) nobody else can create `path` between
    // this check and the rename.
    if (lexists(path)) {
      rmSync(tmp, { force: true });
      throw new UnsafeFileError(`${path} already exists: it is not replaced`);
    }
    renameSync(tmp, path);
    return;
  }
  unlinkSync(tmp);
}

function lexists(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

/** fsync of a directory: a rename or link in it survives a power cut. */
export function fsyncDirectory(dir: string): void {
  const d = openSync(dir, "r");
  try {
    fsyncSync(d);
  } finally {
    closeSync(d);
  }
}

export interface WriteFileOptions {
  /** Refuse (UnsafeFileError) when `path` exists, rather than replace it. */
  noClobber?: boolean;
}

/** Replaces `path` with `data`, owner-only (0600 unless `mode` says otherwise), atomically and durably, through no symlink. */
export function writeFileAtomic(path: string, data: string | Uint8Array, mode = 0o600, options: WriteFileOptions = {}): void {
  const { fd, tmp } = createPrivateTemp(path, mode);
  try {
    const buf = typeof data === "string" ? Buffer.from(data, "utf8") : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    for (let off = 0; off < buf.length;) off += writeSync(fd, buf, off);
    fchmodSync(fd, mode);
    fsyncSync(fd);
  } catch (e) {
    closeSync(fd);
    rmSync(tmp, { force: true });
    throw e;
  }
  closeSync(fd);
  publishTemp(tmp, path, options.noClobber === true);
  fsyncDirectory(dirname(path));
}

/** The bytes of the regular file at `path`, undefined when there is none; a symlink (or anything else) there is refused. */
export function readFileNoFollow(path: string): Buffer | undefined {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return undefined;
    if (code === "ELOOP") throw new UnsafeFileError(`${path} is a symbolic link: it is not followed`);
    throw e;
  }
  try {
    if (!fstatSync(fd).isFile()) throw new UnsafeFileError(`${path} is not a regular file`);
    return readFileSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * Opens the existing regular file `path` for reading and writing in place: its directory checked, a symlink in its
 * place refused, its mode narrowed to 0600 when it was broader.
 */
export function openPrivateFile(path: string): number {
  checkPrivateDirectory(dirname(path));
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDWR | constants.O_NOFOLLOW);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ELOOP") throw new UnsafeFileError(`${path} is a symbolic link: it is not followed`);
    throw e;
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new UnsafeFileError(`${path} is not a regular file`);
    if ((st.mode & 0o077) !== 0) fchmodSync(fd, 0o600);
    return fd;
  } catch (e) {
    closeSync(fd);
    throw e;
  }
}
