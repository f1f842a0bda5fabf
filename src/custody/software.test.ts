import { test, after } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { custodyContract, rejects } from "../../test/support/custody-contract.ts";
import { SoftwareCustody } from "./software.ts";

const dir = mkdtempSync(join(tmpdir(), "cardkms-keystore-"));
after(() => rmSync(dir, { recursive: true, force: true }));

const key = randomBytes(32).toString("hex");
const path = join(dir, "contract.json");
custodyContract("software keystore", () => SoftwareCustody.open({ path, key }));

test("software: the keystore key comes from CARDKMS_KEYSTORE_KEY; a wrong key is a clear error, not garbage", async () => {
  const p = join(dir, "env.json");
  const c = await SoftwareCustody.open({ path: p, env: { CARDKMS_KEYSTORE_KEY: key } });
  await c.createSecretKey("m", { type: "aes", bits: 128 });
  await c.close();
  const other = randomBytes(32).toString("hex");
  const e = await rejects(SoftwareCustody.open({ path: p, env: { CARDKMS_KEYSTORE_KEY: other } }), "WRONG_KEY", /does not open .*env\.json/);
  assert.ok(!e.message.includes(other) && !e.message.includes(key), "the message carries no key");
  await rejects(SoftwareCustody.open({ path: p, env: { CARDKMS_KEYSTORE_KEY: "a passphrase that is long" } }), "WRONG_KEY");
  await rejects(SoftwareCustody.open({ path: p, env: {} }), "INVALID_ARGUMENT", /CARDKMS_KEYSTORE_KEY/);
  const again = await SoftwareCustody.open({ path: p, env: { CARDKMS_KEYSTORE_KEY: key.toUpperCase() } });
  assert.equal(await again.hasKey("m"), true);
  await again.close();
});

test("software: a passphrase (scrypt) or a key file works; a short passphrase is refused", async () => {
  const p = join(dir, "pass.json");
  await rejects(SoftwareCustody.open({ path: p, key: "short" }), "INVALID_ARGUMENT", /at least 12/);
  const c = await SoftwareCustody.open({ path: p, key: "correct horse battery staple" });
  await c.createSecretKey("m", { type: "aes", bits: 256 });
  await c.close();
  const kf = join(dir, "pass.key");
  writeFileSync(kf, "correct horse battery staple\n", { mode: 0o600 });
  const again = await SoftwareCustody.open({ path: p, keyFile: kf });
  assert.equal(await again.hasKey("m"), true);
  await again.close();
  await rejects(SoftwareCustody.open({ path: p, key: "correct horse battery stapler" }), "WRONG_KEY");
  assert.equal(JSON.parse(readFileSync(p, "utf8")).kek.source, "scrypt");
});

test("software: no secret in the file in clear; entries are bound to their metadata; writes leave no temp files", async () => {
  const p = join(dir, "scan.json");
  const c = await SoftwareCustody.open({ path: p, key });
  const master = randomBytes(16);
  await c.importSecretKey("master", { type: "aes", bits: 128 }, master);
  await c.generateKeyPair("ca", "P256");
  await c.close();
  const file = readFileSync(p);
  for (const form of [master, Buffer.from(master.toString("hex")), Buffer.from(master.toString("base64")), Buffer.from(key)]) assert.equal(file.indexOf(form), -1, "no key material in clear");
  assert.deepEqual(
    readdirSync(dir).filter((f) => f.endsWith(".tmp")),
    [],
  );

  // Making the master "wrapped" (exportable) by editing the file breaks its authentication.
  const doc = JSON.parse(file.toString("utf8"));
  doc.keys.master.extractable = "wrapped";
  writeFileSync(p, JSON.stringify(doc));
  const t = await SoftwareCustody.open({ path: p, key });
  await rejects(t.keySetKcvs({ kind: "derived", master: "master", cardId: "0102", kvn: 1 }), "CORRUPT", /master/);
  await t.close();
});

test("software: a second writer on the same file is refused instead of losing changes", async () => {
  const p = join(dir, "two.json");
  const a = await SoftwareCustody.open({ path: p, key });
  const b = await SoftwareCustody.open({ path: p, key });
  await a.createSecretKey("a", { type: "aes", bits: 128 });
  await rejects(b.createSecretKey("b", { type: "aes", bits: 128 }), "UNAVAILABLE", /another writer/);
  assert.equal(await b.hasKey("b"), false);
  await a.close();
  await b.close();
});
