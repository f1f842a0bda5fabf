// Issue 15 §6: the terminal's and the card's files are not written through symlinks planted in their directory, a
// directory other users may write is refused with a clear error, and the files are 0600. For each of them — the
// overflow store, the enciphered-data store, the terminal's state file, the card's EEPROM image, and the owner note of
// the virtual reader's lock (in /tmp) — a symlink is planted at the target's name and at the temporary name the code used to write first (a
// predictable `<name>.tmp` / `<name>.tmp-<pid>`), pointing at a victim file that must come through unchanged.
import { test } from "node:test";
import assert from "node:assert/strict";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { chmodSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createCard } from "../src/card/card.ts";
import { Eeprom } from "../src/card/eeprom.ts";
import { assemblePackage, packageHeaderBytes } from "../src/protocol/package.ts";
import { SoftwareCustody } from "../src/custody/software.ts";
import { personaliseFromTransport } from "../src/issuer/card-scripts.ts";
import { TerminalEncipheredStore } from "../src/terminal/backup.ts";
import { encipherForCard, recipientOf } from "../src/protocol/enciphered.ts";
import { OverflowStore } from "../src/terminal/overflow.ts";
import { TerminalError, UserTerminal } from "../src/terminal/terminal.ts";
import { acquireFileLock } from "../src/transport/lock.ts";
import { InProcessTransport } from "../src/transport/transport.ts";
import { checkPrivateDirectory, readFileNoFollow, UnsafeFileError, writeFileAtomic } from "../src/util/files.ts";
import { tempDir } from "./helpers.ts";
import { importTestKmc, TEST_KMC } from "./kmc.ts";

process.umask(0o022);

const mode = (p: string) => statSync(p).mode & 0o777;
const PRECIOUS = "precious: must not change\n";

/** A fresh owner-only directory and a victim file outside it that planted symlinks point at. */
function setting(name: string) {
  const root = tempDir(`cardkms-${name}-`);
  const dir = join(root, "files");
  mkdirSync(dir, { mode: 0o700 });
  const victim = join(root, "victim");
  writeFileSync(victim, PRECIOUS, { mode: 0o644 });
  const plant = (...names: string[]) => {
    for (const n of names) symlinkSync(victim, join(dir, n));
  };
  const intact = () => {
    assert.equal(readFileSync(victim, "utf8"), PRECIOUS, "the file a planted symlink points at is unchanged");
    assert.equal(mode(victim), 0o644);
  };
  return { root, dir, victim, plant, intact };
}

const unsafe = (re: RegExp) => (e: unknown) => e instanceof UnsafeFileError && re.test(e.message);
const othersMayWrite = unsafe(/writable by other users/);

/** chmods `dir` group- and then world-writable (and sticky, as /tmp is), running `attempt` each time: each must be refused. */
function refusedWhenOthersMayWrite(dir: string, attempt: () => unknown) {
  for (const m of [0o770, 0o707, 0o1777]) {
    chmodSync(dir, m);
    try {
      assert.throws(attempt, (e: unknown) => (e instanceof TerminalError ? /writable by other users/.test(e.message) : othersMayWrite(e)), `mode ${m.toString(8)}`);
    } finally {
      chmodSync(dir, 0o700);
    }
  }
}

test("writeFileAtomic: a symlink at the target is replaced, not followed; noClobber refuses; modes 0600; shared directories refused", () => {
  const s = setting("files");
  const target = join(s.dir, "out.bin");
  s.plant("out.bin");
  writeFileAtomic(target, "new content");
  s.intact();
  assert.ok(lstatSync(target).isFile() && !lstatSync(target).isSymbolicLink());
  assert.equal(readFileSync(target, "utf8"), "new content");
  assert.equal(mode(target), 0o600);
  writeFileAtomic(join(s.dir, "public.pem"), "cert", 0o644);
  assert.equal(mode(join(s.dir, "public.pem")), 0o644, "a public output may ask for 0644");

  s.plant("kept");
  assert.throws(() => writeFileAtomic(join(s.dir, "kept"), "x", 0o600, { noClobber: true }), unsafe(/already exists/));
  assert.throws(() => writeFileAtomic(target, "x", 0o600, { noClobber: true }), unsafe(/already exists/));
  s.intact();
  assert.throws(() => readFileNoFollow(join(s.dir, "kept")), unsafe(/symbolic link/));
  assert.equal(readFileNoFollow(join(s.dir, "absent")), undefined);
  assert.deepEqual(
    readdirSync(s.dir).filter((n) => n.endsWith(".tmp")),
    [],
    "no temporary file left behind",
  );

  refusedWhenOthersMayWrite(s.dir, () => writeFileAtomic(join(s.dir, "again"), "x"));
  assert.throws(() => checkPrivateDirectory(join(s.dir, "nope")), unsafe(/does not exist/));
  assert.throws(() => checkPrivateDirectory(target), unsafe(/not a directory/));
});

test("the overflow store: packages never written through a planted symlink, 0600, read without following one; a shared directory is refused", () => {
  const s = setting("overflow");
  const cardId = "0011223344556677";
  const pkg = assemblePackage(packageHeaderBytes("export", 1, cardId, "9a", 1), randomBytes(12), randomBytes(64));
  // at the package's name, and at the temporary name the store used to write first
  s.plant(`${cardId}-9a.pkg`, `${cardId}-9a.pkg.tmp`);
  const store = new OverflowStore(s.dir);
  store.put(pkg);
  s.intact();
  const f = join(s.dir, `${cardId}-9a.pkg`);
  assert.ok(!lstatSync(f).isSymbolicLink());
  assert.equal(mode(f), 0o600);
  assert.deepEqual(Buffer.from(store.get(cardId, "9a")!.bytes), Buffer.from(pkg));
  s.plant(`${cardId}-9c.pkg`);
  assert.throws(() => store.get(cardId, "9c"), unsafe(/symbolic link/));

  refusedWhenOthersMayWrite(s.dir, () => new OverflowStore(s.dir));
  refusedWhenOthersMayWrite(s.dir, () => store.put(pkg));
  const fresh = join(s.root, "new", "overflow");
  new OverflowStore(fresh);
  assert.equal(mode(fresh), 0o700, "created owner-only");
});

test("the terminal's enciphered-data store: the same", async () => {
  const s = setting("backup");
  const envelope = encipherForCard(recipientOf(generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey), Buffer.from("ledger"));
  s.plant("ledger.env", "ledger.env.tmp");
  const store = new TerminalEncipheredStore(s.dir);
  await store.put([{ objectId: "ledger", envelope }]);
  s.intact();
  assert.equal(mode(join(s.dir, "ledger.env")), 0o600);
  assert.deepEqual(Buffer.from((await store.get("ledger"))!), Buffer.from(envelope));
  s.plant("other.env");
  await assert.rejects(store.get("other"), unsafe(/symbolic link/));
  await assert.rejects(store.list(), unsafe(/symbolic link/));

  refusedWhenOthersMayWrite(s.dir, () => new TerminalEncipheredStore(s.dir));
  chmodSync(s.dir, 0o770);
  await assert.rejects(store.put([{ objectId: "again", envelope }]), othersMayWrite);
  chmodSync(s.dir, 0o700);
});

test("the card's EEPROM image: created through no symlink (not at its name, not at a temporary one), opened through none, kept 0600; shared directories refused", () => {
  const s = setting("eeprom");
  const key = randomBytes(32);
  const image = new Uint8Array(Buffer.from("card state"));
  // A symlink at the image's name: the create is refused, and nothing is written through it.
  s.plant("planted.card");
  assert.throws(() => Eeprom.create(join(s.dir, "planted.card"), key, image, 4096), unsafe(/already exists/));
  s.intact();
  // At the temporary name the card used to create first: not used any more, so never written through.
  const path = join(s.dir, "hanako.card");
  s.plant(`hanako.card.tmp-${process.pid}`);
  const e = Eeprom.create(path, key, image, 4096);
  e.commit(new Uint8Array(Buffer.from("card state 2")));
  e.close();
  s.intact();
  assert.equal(mode(path), 0o600);
  assert.deepEqual(readdirSync(s.dir).sort(), ["hanako.card", `hanako.card.tmp-${process.pid}`, "planted.card"], "no temporary file left behind");
  // Opened without following a symlink.
  assert.throws(() => Eeprom.open(join(s.dir, "planted.card"), key), unsafe(/symbolic link/));
  // An image whose mode was widened is narrowed back to 0600 when opened.
  chmodSync(path, 0o644);
  const opened = Eeprom.open(path, key);
  assert.equal(Buffer.from(opened.image).toString(), "card state 2");
  opened.eeprom.close();
  assert.equal(mode(path), 0o600);
  refusedWhenOthersMayWrite(s.dir, () => Eeprom.open(path, key));
  refusedWhenOthersMayWrite(s.dir, () => Eeprom.create(join(s.dir, "other.card"), key, image, 4096));
  assert.ok(!existsSync(join(s.dir, "other.card")));
});

test("the terminal's state file: written through no planted symlink, 0600; a shared directory is refused when the terminal opens", { timeout: 10 * 60_000 }, async () => {
  const s = setting("terminal");
  const cardId = "a1b2c3d4e5f60718";
  const custody = await SoftwareCustody.open({ path: join(s.root, "keystore.json"), key: randomBytes(32).toString("hex") });
  const card = createCard(join(s.root, "card.img"), randomBytes(32), { kmc: TEST_KMC, cardId: Buffer.from(cardId, "hex") });
  try {
    await importTestKmc(custody);
    await personaliseFromTransport((a) => card.transmit(a), custody, cardId);
    const stateFile = join(s.dir, `${cardId}.json`);
    s.plant(`${cardId}.json`, `${cardId}.json.tmp`);
    const transport = new InProcessTransport(card);
    // The planted symlink at the state file is refused on reading it ...
    await assert.rejects(UserTerminal.open({ transport, stateFile }), (e: unknown) => e instanceof TerminalError && /symbolic link/.test(e.message));
    // ... and when the terminal writes its state, it replaces the name, never following either symlink.
    const fresh = join(s.dir, "fresh.json");
    s.plant("fresh.json.tmp");
    const terminal = await UserTerminal.open({ transport, stateFile: fresh });
    terminal.touch("9a");
    s.intact();
    assert.equal(JSON.parse(readFileSync(fresh, "utf8")).cardId, cardId);
    assert.equal(mode(fresh), 0o600);
    for (const m of [0o770, 0o1777]) {
      chmodSync(s.dir, m);
      try {
        await assert.rejects(UserTerminal.open({ transport, stateFile: fresh }), (e: unknown) => e instanceof TerminalError && /writable by other users/.test(e.message));
        assert.throws(() => terminal.touch("9a"), othersMayWrite);
      } finally {
        chmodSync(s.dir, 0o700);
      }
    }
    s.intact();
  } finally {
    card.close();
  }
});

test("the virtual reader's lock in a shared directory: its owner note is not written through a planted symlink", { timeout: 10 * 60_000 }, async () => {
  const s = setting("lock");
  const lockPath = join(s.dir, "cardkms-vpcd-35963.lock");
  s.plant("cardkms-vpcd-35963.lock.owner");
  const lock = await acquireFileLock(lockPath, 5000, "pid 1 (test)");
  await lock.release();
  s.intact();
});
