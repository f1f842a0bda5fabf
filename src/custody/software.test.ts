import { test, after } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { spawn } from "node:child_process";
import { custodyContract, rejects } from "../../test/support/custody-contract.ts";
import { keystoreSharingSuite } from "../../test/support/keystore-sharing.ts";
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

// Issue 16 §3: processes on one machine share the file (a lock around each read-merge-write), never losing a key.
keystoreSharingSuite("one file", async (k) => {
  const d = mkdtempSync(join(tmpdir(), "cardkms-shared-"));
  const p = join(d, "shared.json");
  return {
    open: (o = {}) => SoftwareCustody.open({ path: p, key: k, ...o }),
    async cleanup() {
      assert.deepEqual(
        readdirSync(d).filter((f) => f !== "shared.json"),
        [],
        "no lock or temp file left",
      );
      rmSync(d, { recursive: true, force: true });
    },
  };
});

test("software: a file written before keystores had an id gets one, once, and keeps its keys", async () => {
  const p = join(dir, "old.json");
  const c = await SoftwareCustody.open({ path: p, key });
  await c.createSecretKey("m", { type: "aes", bits: 128 });
  await c.close();
  const doc = JSON.parse(readFileSync(p, "utf8"));
  delete doc.id;
  writeFileSync(p, JSON.stringify(doc));
  const [a, b] = await Promise.all([SoftwareCustody.open({ path: p, key }), SoftwareCustody.open({ path: p, key })]);
  assert.match(a.keystore.id, /^ks_/);
  assert.equal(a.keystore.id, b.keystore.id);
  assert.equal(JSON.parse(readFileSync(p, "utf8")).id, a.keystore.id);
  assert.equal(await b.hasKey("m"), true);
  await a.close();
  await b.close();
});

test("software: another process creating keys in the same file at the same time: both sets survive", async () => {
  const p = join(dir, "processes.json");
  const c = await SoftwareCustody.open({ path: p, key });
  const here = Array.from({ length: 15 }, (_, i) => `here-${i}`);
  const there = Array.from({ length: 15 }, (_, i) => `there-${i}`);
  const script = [
    `const { SoftwareCustody } = await import(${JSON.stringify(new URL("./software.ts", import.meta.url).href)});`,
    `const c = await SoftwareCustody.open({ path: ${JSON.stringify(p)}, key: ${JSON.stringify(key)} });`,
    `for (const l of ${JSON.stringify(there)}) await c.createSecretKey(l, { type: "aes", bits: 128 });`,
    `await c.close();`,
  ].join("\n");
  const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], { stdio: ["ignore", "inherit", "inherit"] });
  const exited = new Promise<number | null>((resolve) => child.on("exit", resolve));
  for (const l of here) await c.createSecretKey(l, { type: "aes", bits: 128 });
  assert.equal(await exited, 0, "the other process created its keys");
  for (const l of [...here, ...there]) assert.equal(await c.hasKey(l), true, l);
  assert.deepEqual(
    (await c.listKeys()).map((k) => k.label),
    [...here, ...there].sort(),
  );
  await c.close();
});

test("software: the keystore file gone while open is UNAVAILABLE, not every key deleted; keys known here stay usable", async () => {
  const p = join(dir, "gone.json");
  const c = await SoftwareCustody.open({ path: p, key, recheckMs: 0 });
  await c.importSecretKey("m", { type: "aes", bits: 128, usage: ["derive"] }, randomBytes(16));
  const ref = { kind: "derived", master: "m", cardId: "0102", kvn: 1 } as const;
  const kcvs = await c.keySetKcvs(ref);
  rmSync(p);
  assert.deepEqual(await c.keySetKcvs(ref), kcvs);
  await rejects(c.hasKey("other"), "UNAVAILABLE", /gone/);
  await rejects(c.createSecretKey("new", { type: "aes", bits: 128 }), "UNAVAILABLE", /gone/);
  await c.close();
});
