// Issue 15 §6: a refusal of the key generation device says what it refused — the SHA-256 of the public key it had
// generated and, once the center had certified it, the certificate's serial — so that the audit entry keygen.refused
// (src/server/keygen-routes.ts) carries them. Before the key exists (nothing generated) there is nothing to name.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import type { CaClient } from "../src/ca/client.ts";
import { CaRefusal } from "../src/ca/checks.ts";
import type { SubjectName } from "../src/ca/name.ts";
import { SoftwareCustody } from "../src/custody/software.ts";
import type { KeySetRef } from "../src/custody/custody.ts";
import { KeyGenerationDevice } from "../src/keygen/device.ts";
import { KeyGenerationRefusal } from "../src/keygen/errors.ts";
import { MemoryIssuedKeyRegistry } from "../src/keygen/registry.ts";
import { tempDir } from "./helpers.ts";

const HANAKO: SubjectName = { country: "JP", organization: "Example Bank", commonName: "Hanako Yamada" };

/** A center that refuses (certify throws `refuse`) or answers with `answer`; it records what it revoked. */
function center(o: { refuse?: CaRefusal; answer?: { certificate: Uint8Array; serial: string } }) {
  const revoked: string[] = [];
  const ca: CaClient = {
    async certify() {
      if (o.refuse) throw o.refuse;
      return { ...o.answer!, notBefore: new Date(), notAfter: new Date(Date.now() + 86_400_000) };
    },
    async revoke(serial) {
      revoked.push(serial);
    },
    async crl() {
      return new Uint8Array();
    },
    async caCertificates() {
      return [new Uint8Array([0x30, 0x00])];
    },
  };
  return { ca, revoked };
}

test("a refusal names the generated key's hash, and the certificate's serial once there is one", { timeout: 10 * 60_000 }, async () => {
  const custody = await SoftwareCustody.open({ path: join(tempDir("cardkms-keygen-refused-"), "keystore.json"), key: randomBytes(32).toString("hex") });
  const registry = new MemoryIssuedKeyRegistry();
  const card = { transmit: async (): Promise<Uint8Array> => assert.fail("nothing reaches the card"), keySet: { label: "card-keys" } as unknown as KeySetRef };
  const issue = async (ca: CaClient) => {
    const device = await KeyGenerationDevice.create({ custody, ca, registry, trustAnchors: [new Uint8Array([0x30, 0x00])] });
    try {
      await device.issue({ applicantId: "user-1", personalData: HANAKO, alg: "P256", profile: "signature", slot: "9c", card });
    } catch (e) {
      if (e instanceof KeyGenerationRefusal) return e;
      throw e;
    }
    return assert.fail("refused");
  };

  // The center refuses (step 423): the key existed, no certificate did.
  const byCenter = await issue(center({ refuse: new CaRefusal("personal-data", "commonName differs from the registration") }).ca);
  assert.equal(byCenter.check, "personal-data");
  assert.match(byCenter.publicKeySha256 ?? "", /^[0-9a-f]{64}$/);
  assert.equal(byCenter.serial, undefined);

  // The center certified, the device refused what came back (step 433): both are named.
  const byDevice = await issue(center({ answer: { certificate: new Uint8Array([1, 2, 3]), serial: "0a1b2c" } }).ca);
  assert.equal(byDevice.check, "certificate-format");
  assert.equal(byDevice.serial, "0a1b2c");
  assert.match(byDevice.publicKeySha256 ?? "", /^[0-9a-f]{64}$/);
  assert.notEqual(byDevice.publicKeySha256, byCenter.publicKeySha256, "each names its own key");
  // The registry knows the hashes named: an auditor can find the key by them.
  assert.equal(await registry.register({ publicKeySha256: byDevice.publicKeySha256!, applicantId: "x", alg: "P256", generatedAt: new Date() }), false);
  assert.deepEqual(await custody.listKeys(), [], "the keys themselves are gone");
});
