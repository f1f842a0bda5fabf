// An exclusive lock between processes on one machine (issue 16 §3): a lock file created with O_EXCL ("wx") that
// holds its owner's pid and host. A process that finds the lock held waits (short sleeps, up to a bound) and then
// fails UNAVAILABLE naming the holder; a lock whose owner is gone (same host, pid no longer alive) is stale and taken
// over. The lock is held only around a synchronous read-merge-write, never across an await, so one process never
// waits on itself.
//
// Never holds a secret; the lock file holds a pid, a host name and a random nonce.

import { randomBytes } from "node:crypto";
import { closeSync, openSync, readFileSync, rmSync, writeSync } from "node:fs";
import { hostname } from "node:os";
import { setTimeout as sleep } from "node:timers/promises";
import { CustodyError } from "./custody.ts";

/** How long a process waits for another's lock before giving up (a read-merge-write takes milliseconds). */
export const LOCK_WAIT_MS = 10_000;

interface Owner {
  pid: number;
  host: string;
  nonce: string;
}

function readOwner(lock: string): Owner | undefined {
  try {
    const o = JSON.parse(readFileSync(lock, "utf8")) as Owner;
    return typeof o?.pid === "number" && typeof o.host === "string" ? o : undefined;
  } catch {
    return undefined;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Creates the lock file; false when it exists. */
function tryCreate(lock: string, me: Owner): boolean {
  let fd: number;
  try {
    fd = openSync(lock, "wx", 0o600);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw new CustodyError("UNAVAILABLE", `cannot create lock file ${lock}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  try {
    writeSync(fd, JSON.stringify(me));
  } finally {
    closeSync(fd);
  }
  return true;
}

/**
 * Runs `fn` (synchronous) holding the lock file `lock`. A stale lock (its pid gone on this host, or unreadable for
 * longer than the wait) is removed once its content is checked again, so a fresh lock taken meanwhile is left alone.
 */
export async function withFileLock<T>(lock: string, fn: () => T, waitMs = LOCK_WAIT_MS): Promise<T> {
  const me: Owner = { pid: process.pid, host: hostname(), nonce: randomBytes(8).toString("hex") };
  const until = Date.now() + waitMs;
  let pause = 2;
  for (;;) {
    if (tryCreate(lock, me)) break;
    const o = readOwner(lock);
    // This process never holds the lock across an await, so a lock with its own pid is a dead predecessor's too.
    if (o && o.host === me.host && (o.pid === me.pid || !alive(o.pid))) {
      const again = readOwner(lock);
      if (again?.nonce === o.nonce) rmSync(lock, { force: true });
      continue;
    }
    if (Date.now() > until) {
      if (!o) {
        // Unreadable (a holder died between create and write, or garbage) for the whole wait: stale.
        rmSync(lock, { force: true });
        continue;
      }
      throw new CustodyError("UNAVAILABLE", `lock file ${lock} is held by process ${o.pid} on ${o.host}; if no such process runs, remove the lock file`);
    }
    await sleep(pause);
    pause = Math.min(pause * 2, 50);
  }
  try {
    return fn();
  } finally {
    if (readOwner(lock)?.nonce === me.nonce) rmSync(lock, { force: true });
  }
}
