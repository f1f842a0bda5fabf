// The keystore file's lock between processes (issue 16 §3): a lock whose process is gone is taken over, one held by
// a live process is waited for and then refused naming its holder, and the lock is gone once the change is written.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { CustodyError } from "./custody.ts";
import { withFileLock } from "./file-lock.ts";

const dir = mkdtempSync(join(tmpdir(), "cardkms-lock-"));
after(() => rmSync(dir, { recursive: true, force: true }));

test("a lock left by a process that is gone is taken over; the lock is removed afterwards", async () => {
  const lock = join(dir, "stale.lock");
  const gone = spawnSync(process.execPath, ["-e", "0"]).pid as number;
  writeFileSync(lock, JSON.stringify({ pid: gone, host: hostname(), nonce: "dead" }));
  assert.equal(await withFileLock(lock, () => "ran", 200), "ran");
  assert.equal(existsSync(lock), false);
});

test("a lock held by a live process is waited for, then refused naming the holder; another host's lock is never taken over", async () => {
  const lock = join(dir, "held.lock");
  writeFileSync(lock, JSON.stringify({ pid: process.ppid, host: hostname(), nonce: "live" }));
  let ran = false;
  await assert.rejects(
    withFileLock(lock, () => (ran = true), 100),
    (e: unknown) => e instanceof CustodyError && e.code === "UNAVAILABLE" && e.message.includes(`process ${process.ppid}`),
  );
  assert.equal(ran, false);
  assert.equal(existsSync(lock), true, "a live holder's lock is left alone");
  writeFileSync(lock, JSON.stringify({ pid: 1 << 22, host: "another-host", nonce: "far" }));
  await assert.rejects(
    withFileLock(lock, () => (ran = true), 100),
    /another-host/,
  );
  assert.equal(ran, false);
});

test("calls in one process never wait on each other (the lock is held only around a synchronous change)", async () => {
  const lock = join(dir, "same.lock");
  const order: number[] = [];
  await Promise.all([1, 2, 3].map((i) => withFileLock(lock, () => order.push(i), 100)));
  assert.deepEqual(order.sort(), [1, 2, 3]);
  assert.equal(existsSync(lock), false);
});
