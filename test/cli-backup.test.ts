// `cardkms backup ...` (src/cli/backup.ts) as child processes against a running issuer server (seed 001 FIG. 11-12,
// S10 / S12): the user enciphers files for the card's 9D key (read from the card, or from its certificate file),
// pushes the terminal's store with the card proving itself (no token), pushes again (unchanged), lists (also with
// an operator token and --card-id alone), deciphers with the card and the PIN; a store holding plaintext is
// refused and nothing is sent. Then the card is replaced by a new card of the same user with the same key pairs
// (an embodiment-3 rotation, in the server's process); its terminal restores from the server — only what its key
// opens — and the new card deciphers, byte-exact. The retired card's terminal is refused. --json everywhere;
// usage errors exit 2, refusals 1.
import { test } from "node:test";
import assert from "node:assert/strict";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { copyFileSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { toPem } from "../src/ca/pem.ts";
import { createCard, openCard } from "../src/card/card.ts";
import type { Issuer } from "../src/issuer/issuer.ts";
import { CardRotation } from "../src/issuer/rotation.ts";
import { PivClient } from "../src/protocol/piv/client.ts";
import { cliJson, runCli, tempDir } from "./helpers.ts";
import { startTestServer } from "./terminal-server.ts";
import { TEST_KMC } from "./kmc.ts";

const IMAGE_KEY = "55".repeat(32);
const imageKey = () => new Uint8Array(Buffer.from(IMAGE_KEY, "hex"));

/** The terminal's part of ST22-ST25, in this process: load the card's waiting packages and acknowledge them. */
async function syncPackages(issuer: Issuer, cardId: string, image: string): Promise<number> {
  const vc = openCard(image, imageKey());
  try {
    const piv = new PivClient((a) => vc.transmit(a));
    await piv.select();
    const pending = await issuer.packagesFor(cardId);
    for (const p of pending) {
      await piv.loadPackage(p.body);
      await issuer.acknowledgePackage(cardId, p.seq, "terminal");
    }
    return pending.length;
  } finally {
    vc.close();
  }
}

test("backup encipher / push / list / decipher / restore through the CLI, across a card replaced with the same key", { timeout: 10 * 60_000 }, async (t) => {
  const dir = tempDir("cardkms-cli-backup-");
  const srv = await startTestServer(dir);
  t.after(() => srv.close());
  const issuer = srv.server.issuer;
  const asTerminal = { CARDKMS_IMAGE_KEY: IMAGE_KEY, CARDKMS_SERVER: srv.url };
  const asOperator = { ...asTerminal, CARDKMS_TOKEN: srv.operatorToken };
  const run = (args: string[], env: Record<string, string> = asTerminal) => runCli(args, env);

  // ---- a personalised card with a 9D key pair (the issuer's side, in the server's process) -----------------------
  const user = await issuer.registerUser({ commonName: "Hanako Yamada" }, "olga");
  const { card } = await issuer.issueCard({ userId: user.id }, "olga");
  const oldImage = join(dir, "old.card");
  {
    const vc = createCard(oldImage, imageKey(), { kmc: TEST_KMC, cardId: Buffer.from(card.id, "hex") });
    try {
      await issuer.personaliseCard(card.id, (a) => vc.transmit(a), "olga");
    } finally {
      vc.close();
    }
  }
  const km = await issuer.requestCredential({ cardId: card.id, slot: "9d", alg: "P256" }, "olga");
  assert.equal(await syncPackages(issuer, card.id, oldImage), 1);

  const certFile = join(dir, "9d.pem");
  writeFileSync(certFile, toPem(km.certificate.der, "CERTIFICATE"));
  const otherKey = join(dir, "other.spki");
  writeFileSync(otherKey, generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey.export({ format: "der", type: "spki" }));
  const files: Record<string, Buffer> = {
    "bank-pins": Buffer.from(`bank A: 4711, bank B: 0815 — ${randomBytes(6).toString("hex")}`),
    "photo.bin": randomBytes(4000),
  };
  for (const [id, b] of Object.entries(files)) writeFileSync(join(dir, `${id}.plain`), b);
  const store = join(dir, "store");

  // ---- encipher: for the card's key (from the card; from its certificate file); one for another key ----------------
  const [byCard, byCert, forOther] = await Promise.all([
    run(["backup", "encipher", join(dir, "bank-pins.plain"), "--object", "bank-pins", "--card-image", oldImage, "--store", store, "--json"]),
    run(["backup", "encipher", join(dir, "photo.bin.plain"), "--object", "photo.bin", "--cert", certFile, "--store", store, "--json"]),
    run(["backup", "encipher", join(dir, "bank-pins.plain"), "--object", "elsewhere", "--cert", otherKey, "--store", store, "--json"]),
  ]);
  const enc = cliJson(byCard, "encipher bank-pins");
  assert.deepEqual([enc.objectId, enc.key, enc.kid], ["bank-pins", "P256", cliJson(byCert, "encipher photo.bin").kid]);
  assert.notEqual(cliJson(forOther, "encipher elsewhere").kid, enc.kid);
  assert.ok(!byCard.stdout.includes(files["bank-pins"].toString()), "no plaintext in the output");
  assert.equal(statSync(join(store, "bank-pins.env")).mode & 0o777, 0o600);

  // ---- S10: push with the card proving itself -------------------------------------------------------------------------
  const pushed = cliJson(await run(["backup", "push", "--card-image", oldImage, "--store", store, "--json"]), "push");
  assert.deepEqual([pushed.cardId, pushed.userId], [card.id, user.id]);
  assert.deepEqual(
    pushed.stored.map((s: { objectId: string; version: number }) => [s.objectId, s.version]),
    [
      ["bank-pins", 1],
      ["elsewhere", 1],
      ["photo.bin", 1],
    ],
  );

  const out = join(dir, "bank-pins.out");
  const [again, listed, noPin] = await Promise.all([
    run(["backup", "push", "--card-image", oldImage, "--store", store, "--json"]),
    run(["backup", "list", "--card-id", card.id, "--object", "bank-pins", "--json"], asOperator),
    run(["backup", "decipher", "bank-pins", "--card-image", oldImage, "--store", store, "--out", out]),
  ]);
  assert.deepEqual(cliJson(again, "push again").unchanged.length, 3, "a second push adds nothing");
  const l = cliJson(listed, "list --card-id");
  assert.deepEqual(
    l.backups.map((b: { objectId: string; version: number; cardId: string }) => [b.objectId, b.version, b.cardId]),
    [["bank-pins", 1, card.id]],
  );
  assert.ok(l.backups.every((b: Record<string, unknown>) => !("envelope" in b)));
  assert.equal(noPin.code, 2, noPin.stderr);
  assert.match(noPin.stderr, /PIN/);

  // ---- decipher with the card and the PIN; a store with plaintext in it is refused and nothing is sent --------------------
  const d = cliJson(await run(["backup", "decipher", "bank-pins", "--card-image", oldImage, "--store", store, "--out", out, "--pin", "123456", "--json"]), "decipher");
  assert.deepEqual([d.from, d.size], ["terminal", files["bank-pins"].length]);
  assert.deepEqual(readFileSync(out), files["bank-pins"]);
  assert.equal(statSync(out).mode & 0o777, 0o600);
  const leaky = join(dir, "leaky-store");
  mkdirSync(leaky);
  copyFileSync(join(store, "photo.bin.env"), join(leaky, "photo.bin.env"));
  writeFileSync(join(leaky, "diary.env"), "dear diary, my PIN is 4711");
  const refused = await run(["backup", "push", "--card-image", oldImage, "--store", leaky, "--json"]);
  assert.equal(refused.code, 1, refused.stderr);
  assert.match(refused.stderr, /only enciphered data/);
  assert.ok(!refused.stderr.includes("dear diary"), "the refusal does not echo the plaintext");

  // ---- S11: a new card of the same user with the same key pairs (embodiment-3 rotation; the old card is retired) ------------
  const rotations = new CardRotation(issuer);
  const r = await rotations.propose({ cardId: card.id, strategy: "embodiment3" }, "olga");
  await rotations.approve(r.id, "otto"); // four eyes: not its proposer
  const { card: fresh } = await rotations.issueNewCard(r.id, "olga");
  const newImage = join(dir, "new.card");
  {
    const vc = createCard(newImage, imageKey(), { kmc: TEST_KMC, cardId: Buffer.from(fresh.id, "hex") });
    try {
      await rotations.personaliseNewCard(r.id, (a) => vc.transmit(a), "olga");
    } finally {
      vc.close();
    }
  }
  await rotations.rewrap(r.id);
  await rotations.distribute(r.id, "olga");
  assert.ok((await syncPackages(issuer, fresh.id, newImage)) >= 1);

  // ---- S12: the new card's terminal restores what its key opens, into an empty store; the old card is refused ---------------
  const store2 = join(dir, "store-after");
  const [restoredRun, oldPush] = await Promise.all([
    run(["backup", "restore", "--card-image", newImage, "--store", store2, "--json"]),
    run(["backup", "push", "--card-image", oldImage, "--store", store, "--json"]),
  ]);
  const restored = cliJson(restoredRun, "restore");
  assert.deepEqual([restored.cardId, restored.userId], [fresh.id, user.id]);
  assert.deepEqual(
    restored.restored.map((x: { objectId: string }) => x.objectId),
    ["bank-pins", "photo.bin"],
  );
  assert.deepEqual(
    restored.skipped.map((x: { objectId: string }) => x.objectId),
    ["elsewhere"],
    "not for this card's key",
  );
  assert.equal(existsSync(join(store2, "elsewhere.env")), false);
  assert.equal(oldPush.code, 1, "the retired card's terminal no longer reaches the backups");
  // The public login answers a retired card as it answers an unknown one (issue 9 §7: no oracle of card IDs).
  assert.match(oldPush.stderr, /no active card with id/);

  for (const id of Object.keys(files)) {
    const o = join(dir, `${id}.new.out`);
    cliJson(await run(["backup", "decipher", id, "--card-image", newImage, "--store", store2, "--out", o, "--pin", "123456", "--json"]), `decipher ${id} on the new card`);
    assert.deepEqual(readFileSync(o), files[id], `${id}, byte-exact on the new card`);
  }
  const human = await run(["backup", "list", "--card-image", newImage]);
  assert.equal(human.code, 0, human.stderr);
  assert.match(human.stdout, new RegExp(`bank-pins  v1 .* via card ${card.id}`));
});
