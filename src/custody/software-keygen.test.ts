// The software keystore encodes EC key pairs itself (OpenSSL 3.0's encoders are slow): every generated PKCS#8 and
// SPKI must be exactly what OpenSSL would write and read back as the same key — including private scalars with
// leading zero bytes (1 in 256 keys), which is why many keys are generated here. Ephemeral keys are never written.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { createPrivateKey, createPublicKey, randomBytes, verify } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { aesKeyUnwrapPad } from "../protocol/derivation.ts";
import { SoftwareCustody } from "./software.ts";

const dir = mkdtempSync(join(tmpdir(), "cardkms-keygen-"));
after(() => rmSync(dir, { recursive: true, force: true }));

test("software: generated EC key pairs are well-formed DER, OpenSSL's own encoding", async () => {
  const path = join(dir, "ks.json");
  const c = await SoftwareCustody.open({ path, key: randomBytes(32).toString("hex") });
  try {
    const kekValue = randomBytes(32);
    await c.importSecretKey("storage", { type: "aes", bits: 256, usage: ["wrap"] }, kekValue);
    const before = readFileSync(path, "utf8");
    for (const [alg, n] of [
      ["P256", 1200],
      ["P384", 200],
    ] as const) {
      for (let i = 0; i < n; i++) {
        const label = `k-${alg}-${i}`;
        await c.generateKeyPair(label, alg, { extractable: "wrapped", ephemeral: true });
        const spki = Buffer.from(await c.publicKey(label));
        const pkcs8 = Buffer.from(aesKeyUnwrapPad(kekValue, await c.wrapPrivateKey(label, { key: "storage" })));
        const priv = createPrivateKey({ key: pkcs8, format: "der", type: "pkcs8" });
        assert.deepEqual(priv.export({ format: "der", type: "pkcs8" }), pkcs8, "PKCS#8 as OpenSSL writes it");
        assert.deepEqual(createPublicKey(priv).export({ format: "der", type: "spki" }), spki, "SPKI of the same key");
        if (i < 5) {
          const sig = await c.sign(label, Buffer.from("hello"));
          const pub = createPublicKey({ key: spki, format: "der", type: "spki" });
          assert.ok(verify(alg === "P256" ? "sha256" : "sha384", Buffer.from("hello"), { key: pub, dsaEncoding: "der" }, sig), "custody signs with the key it generated");
        }
        await c.deleteKey(label);
      }
    }
    assert.equal(readFileSync(path, "utf8"), before, "ephemeral key pairs are never written to the keystore");
    // a persistent key pair is written, and reads back after reopening
    await c.generateKeyPair("ca", "P256");
    assert.notEqual(readFileSync(path, "utf8"), before);
  } finally {
    await c.close();
  }
});
