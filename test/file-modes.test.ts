// Issue 9 §6: the files that hold the issuer's data are the owner's alone. A fresh server creates its data directory
// 0700 and the SQLite DB, -wal and -shm 0600 (they hold personal data, wrapped keys, escrows and share releases); a
// server started on a pre-existing DB (or directory) that others can read says so at start-up, naming the file and
// its mode. The keystore and card images stay 0600. The umask is the usual 022, so nothing here depends on the
// environment's: what is owner-only is made so by the code.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { Writable } from "node:stream";
import { createCard, openCard } from "../src/card/card.ts";
import { DEFAULT_CONFIG, type IssuerConfig } from "../src/server/config.ts";
import { createOperatorToken, startIssuerServer } from "../src/server/main.ts";
import { Store } from "../src/store/store.ts";
import { tempDir } from "./helpers.ts";

process.umask(0o022);

const mode = (p: string) => `0${(statSync(p).mode & 0o777).toString(8)}`;

function config(dir: string): IssuerConfig {
  return {
    ...structuredClone(DEFAULT_CONFIG),
    listen: { host: "127.0.0.1", port: 0 },
    database: join(dir, "issuer.db"),
    custody: { kind: "software", keystore: join(dir, "keystore.json") },
    logLevel: "info",
  };
}

function logSink(): { lines: () => Record<string, unknown>[]; stream: Writable } {
  const raw: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      raw.push(chunk.toString("utf8"));
      cb();
    },
  });
  return {
    stream,
    lines: () =>
      raw
        .join("")
        .split("\n")
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Record<string, unknown>),
  };
}

const env = { CARDKMS_KEYSTORE_KEY: randomBytes(32).toString("hex") };

test("a fresh server: data directory 0700, DB, -wal and -shm 0600, keystore and card images 0600, no warning", { timeout: 10 * 60_000 }, async () => {
  const data = join(tempDir("cardkms-modes-"), "data", "issuer");
  const log = logSink();
  const server = await startIssuerServer(config(data), { env, listen: false, logStream: log.stream });
  try {
    await createOperatorToken(server.store, "olga", ["operator"]); // a write: the WAL is in use
    const db = join(data, "issuer.db");
    assert.ok(existsSync(`${db}-wal`) && existsSync(`${db}-shm`), "WAL mode: the server holds -wal and -shm open");
    assert.deepEqual(
      { dir: mode(data), db: mode(db), wal: mode(`${db}-wal`), shm: mode(`${db}-shm`), keystore: mode(join(data, "keystore.json")) },
      { dir: "0700", db: "0600", wal: "0600", shm: "0600", keystore: "0600" },
    );
    assert.deepEqual(
      log.lines().filter((l) => l.file !== undefined),
      [],
      "nothing to warn about",
    );
  } finally {
    await server.close();
  }
  // and a card image, also after the card rewrote its EEPROM
  const card = join(data, "a.card");
  const key = randomBytes(32);
  createCard(card, key).close();
  const again = openCard(card, key);
  again.transmit(Uint8Array.from(Buffer.from("00A4040009A00000030800001000", "hex"))); // SELECT PIV: writes CHUID and CCC
  again.transmit(Uint8Array.from(Buffer.from("0020008008313131313131FFFF", "hex"))); // a wrong PIN: the retry counter is committed
  again.close();
  assert.equal(mode(card), "0600");
});

test("a pre-existing DB readable by others: the server warns at start-up, naming each file and its mode", { timeout: 10 * 60_000 }, async () => {
  const data = join(tempDir("cardkms-modes-"), "shared");
  mkdirSync(data, { mode: 0o755 });
  chmodSync(data, 0o755);
  const db = join(data, "issuer.db");
  // a DB made before the fix (or copied in by hand), world-readable
  const old = await Store.open(db);
  await old.close();
  chmodSync(db, 0o644);
  const log = logSink();
  const server = await startIssuerServer(config(data), { env, listen: false, logStream: log.stream });
  try {
    const warned = log.lines().filter((l) => l.level === 40 && typeof l.file === "string");
    const byFile = Object.fromEntries(warned.map((l) => [l.file, l.mode]));
    assert.equal(byFile[db], "0644", JSON.stringify(warned));
    assert.equal(byFile[data], "0755", "the directory too");
    assert.equal(byFile[`${db}-wal`], "0644", "SQLite gave the WAL the DB's mode");
    for (const l of warned) assert.match(String(l.msg), new RegExp(`^${l.file} has mode ${l.mode}: .*owner-only`));
    assert.equal(mode(db), "0644", "warned about, not changed behind the operator's back");
  } finally {
    await server.close();
  }
});
