// Cross-process exclusive locks, held by a `flock` child process (util-linux, Essential on Debian).
// The kernel drops the lock when the holder's stdin closes — on release() and also when this process dies,
// so a crashed test never leaves a stale lock behind (unlike pid files).

import { spawn } from "node:child_process";
import { closeSync, constants, openSync, writeSync } from "node:fs";
import { readFileNoFollow } from "../util/files.ts";

export interface FileLock {
  readonly path: string;
  release(): Promise<void>;
}

export class LockTimeoutError extends Error {
  constructor(path: string, timeoutMs: number, owner: string | undefined) {
    super(`timed out after ${timeoutMs} ms waiting for lock ${path}${owner ? ` (held by ${owner})` : ""}`);
    this.name = "LockTimeoutError";
  }
}

/** Waits up to timeoutMs for an exclusive lock on `path` (created if absent). */
export function acquireFileLock(path: string, timeoutMs: number, owner = `pid ${process.pid}`): Promise<FileLock> {
  const waitSecs = Math.max(1, Math.ceil(timeoutMs / 1000));
  const child = spawn("flock", ["-x", "-w", String(waitSecs), path, "sh", "-c", "echo locked; exec cat >/dev/null"], {
    stdio: ["pipe", "pipe", "pipe"],
  });
  return new Promise<FileLock>((resolve, reject) => {
    let out = "";
    let err = "";
    let settled = false;
    const fail = (e: Error) => {
      if (settled) return;
      settled = true;
      child.stdin.destroy();
      reject(e);
    };
    child.on("error", (e) => fail(new Error(`cannot run flock for ${path}: ${e.message}`)));
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    child.on("exit", (code) => {
      if (settled) return;
      if (code === 1 && !err) fail(new LockTimeoutError(path, timeoutMs, readOwner(path)));
      else fail(new Error(`flock ${path} exited with ${code}: ${err.trim()}`));
    });
    child.stdout.on("data", (d: Buffer) => {
      out += d.toString();
      if (settled || !out.includes("locked")) return;
      settled = true;
      try {
        // beside a lock in a shared directory (/tmp): never written (nor read, below) through a planted symlink (issue 15 §6)
        const fd = openSync(`${path}.owner`, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_NOFOLLOW, 0o644);
        try {
          writeSync(fd, `${owner}\n`);
        } finally {
          closeSync(fd);
        }
      } catch {
        // diagnostics only
      }
      // The lock alone must not keep the event loop alive; whoever uses it holds its own handles.
      child.unref();
      for (const s of [child.stdin, child.stdout, child.stderr]) (s as unknown as { unref?: () => void }).unref?.();
      let released: Promise<void> | undefined;
      resolve({
        path,
        release: () =>
          (released ??= new Promise<void>((done) => {
            if (child.exitCode !== null || child.signalCode !== null) return done();
            child.once("exit", () => done());
            child.ref(); // keep the loop alive until the lock is really gone
            child.stdin.end();
          })),
      });
    });
  });
}

function readOwner(path: string): string | undefined {
  try {
    return readFileNoFollow(`${path}.owner`)?.toString("utf8").slice(0, 200).trim() || undefined;
  } catch {
    return undefined;
  }
}
