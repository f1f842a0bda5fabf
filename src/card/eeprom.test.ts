import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { copyFileSync } from "node:fs";
import { join } from "node:path";
import { Eeprom, PowerLoss } from "./eeprom.ts";
import { tempDir } from "../../test/helpers.ts";

const dir = tempDir();
const key = randomBytes(32);
const img = (s: string) => new Uint8Array(Buffer.from(s));

test("reopens the newest committed image", () => {
  const p = join(dir, "a.card");
  const e = Eeprom.create(p, key, img("one"), 4096);
  e.commit(img("two"));
  e.commit(img("three"));
  e.close();
  const { image } = Eeprom.open(p, key);
  assert.equal(Buffer.from(image).toString(), "three");
});

test("wrong key or garbage file is refused with a clear error", () => {
  const p = join(dir, "b.card");
  Eeprom.create(p, key, img("x"), 4096).close();
  assert.throws(() => Eeprom.open(p, randomBytes(32)), /wrong image key, or the image is corrupted/);
  assert.throws(() => Eeprom.open(p, "a passphrase"), /at least 16 bytes/);
  const q = join(dir, "pass.card");
  Eeprom.create(q, "correct horse", img("y"), 4096).close();
  assert.equal(Buffer.from(Eeprom.open(q, "correct horse").image).toString(), "y");
  assert.throws(() => Eeprom.open(q, "wrong horse"), /wrong image key/);
});

test("a power cut at every write point, torn at every size class, leaves the old or the new image", () => {
  const base = join(dir, "c.card");
  const e0 = Eeprom.create(base, key, img("old-".repeat(100)), 8192);
  e0.close();
  const next = img("new-".repeat(150));
  let cases = 0;
  for (const cut of [1, 2]) {
    for (const torn of [0, 1, 7, 16, 31, 200, 10_000]) {
      const p = join(dir, `c-${cut}-${torn}.card`);
      copyFileSync(base, p);
      const { eeprom } = Eeprom.open(p, key);
      eeprom.fault = { cutAtWrite: cut, tornBytes: torn };
      assert.throws(() => eeprom.commit(next), PowerLoss);
      eeprom.close();
      const after = Buffer.from(Eeprom.open(p, key).image).toString();
      // The commit record is the second write: only once its 28 meaningful bytes (magic, generation, length,
      // nonce) landed is the new image visible.
      const expectNew = cut === 2 && torn >= 28;
      assert.equal(after, expectNew ? Buffer.from(next).toString() : "old-".repeat(100), `cut ${cut} torn ${torn}`);
      cases++;
    }
  }
  assert.equal(cases, 14);
});
