// Writing a file so that nobody else can read it or redirect it (issue 15 §6): a fresh temporary file in the same
// directory, created with O_CREAT | O_EXCL | O_NOFOLLOW and mode 0600 (a planted file or symlink of that name makes
// the open fail instead of being written through), written, fsynced and renamed over the target, which replaces a
// symlink planted there rather than following it. A directory writable by other users is refused: whoever can
// write it could swap the file after the rename.

import { randomBytes } from "node:crypto";
import { closeSync, constants, fsyncSync, openSync, renameSync, rmSync, statSync, writeSync } from "node:fs";
import { basename, dirname, join } from "node:path";

export class UnsafeFileError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UnsafeFileError";
  }
}

/** Refuses a directory other users may write (world- or group-writable, sticky or not). */
export function checkPrivateDirectory(dir: string): void {
  const st = statSync(dir);
  if (!st.isDirectory()) throw new UnsafeFileError(`${dir} is not a directory`);
  if ((st.mode & 0o022) !== 0) throw new UnsafeFileError(`${dir} is writable by other users (mode ${(st.mode & 0o777).toString(8)}): files are not written there`);
}

/** Replaces `path` with `data`, owner-only (0600), atomically and durably, through no symlink. */
export function writeFileAtomic(path: string, data: string | Uint8Array, mode = 0o600): void {
  const dir = dirname(path);
  checkPrivateDirectory(dir);
  const tmp = join(dir, `.${basename(path)}.${randomBytes(6).toString("hex")}.tmp`);
  const fd = openSync(tmp, constants.O_CREAT | constants.O_EXCL | constants.O_WRONLY | constants.O_NOFOLLOW, mode);
  try {
    const buf = typeof data === "string" ? Buffer.from(data, "utf8") : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    for (let off = 0; off < buf.length; ) off += writeSync(fd, buf, off);
    fsyncSync(fd);
  } catch (e) {
    closeSync(fd);
    rmSync(tmp, { force: true });
    throw e;
  }
  closeSync(fd);
  try {
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
  const d = openSync(dir, "r");
  try {
    fsyncSync(d);
  } finally {
    closeSync(d);
  }
}
