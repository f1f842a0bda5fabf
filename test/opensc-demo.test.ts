// The PC/SC acceptance test: the demo card (keys loaded through SCP03 and a sealed package) attached to
// pcscd through vpcd; OpenSC's pkcs11-tool lists its certificates and signs, openssl verifies the signature
// against the certificate and the certificate against the CA; pkcs11-tool --test (C_GenerateRandom included) passes.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { runDemo } from "../src/demo/demo.ts";
import { demoThroughPcsc } from "../src/demo/pcsc-demo.ts";
import { PivClient, SLOT } from "../src/protocol/piv/client.ts";
import { tempDir } from "./helpers.ts";

test("OpenSC over real PC/SC signs with an SCP03-delivered key; openssl verifies it", { timeout: 10 * 60_000 }, async () => {
  const dir = tempDir("cardkms-opensc-demo-");
  const demo = await runDemo({ dir });
  const piv = new PivClient((a) => demo.card.transmit(a));
  await piv.select();
  const loaded = await piv.readCertificate(SLOT.authentication);
  try {
    const r = await demoThroughPcsc(demo, dir);
    assert.equal(r.certificates.length, 2, "both certificates listed");
    assert.ok(r.signatureVerified, "openssl dgst -verify accepts the signature");
    assert.ok(r.chainVerified, "openssl verify accepts the certificate under the demo CA");
    assert.ok(r.selfTestPassed, "pkcs11-tool --test reports no errors (the card answers C_GenerateRandom)");
    assert.deepEqual(new Uint8Array(readFileSync(join(dir, "pcsc-9a.der"))), loaded, "OpenSC read back the certificate the issuer wrote");
  } finally {
    demo.card.close();
  }
});
