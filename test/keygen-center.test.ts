// Seed 001 steps 414-424 without a card: the PKCS#10 request the key generation device builds and signs inside
// custody (both custody implementations, all four key algorithms, checked by the CA's parser and by openssl), the
// certification center's named checks, and the atomic "never certified before" rule under concurrency.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, generateKeyPairSync, randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { CertificationAuthority } from "../src/ca/authority.ts";
import { CaRefusal } from "../src/ca/checks.ts";
import { verifyCsr } from "../src/ca/csr.ts";
import { encodeName, type SubjectName } from "../src/ca/name.ts";
import { fromPem, toPem } from "../src/ca/pem.ts";
import { MemoryCaRepository } from "../src/ca/repository.ts";
import { nodeSigner } from "../src/ca/signer.ts";
import { openssl } from "./support/ca-testing.ts";
import { KEY_PAIR_ALGS, type KeyCustody } from "../src/custody/custody.ts";
import { CertificationCenter, centerChecks, MemoryRegistrationBook } from "../src/keygen/center.ts";
import { buildSignedCsr, subjectToName } from "../src/keygen/csr.ts";
import { MemoryIssuedKeyRegistry } from "../src/keygen/registry.ts";
import * as x509 from "../src/x509.ts";
import { AsnConvert } from "@peculiar/asn1-schema";
import { softhsmCustody, softwareCustody } from "./custody-env.ts";
import { tempDir } from "./helpers.ts";

const dir = tempDir();
const HANAKO: SubjectName = { country: "JP", organization: "Example Bank", commonName: "Hanako Yamada", serialNumber: "P-1234567", email: "hanako@example.test" };

/** Changes one letter of the commonName inside a DER request: still well-formed, no longer what was signed. */
function alterOnPath(pem: string): string {
  const der = Buffer.from(fromPem(pem, "CERTIFICATE REQUEST"));
  const at = der.indexOf(Buffer.from("Hanako"));
  assert.ok(at > 0, "the request carries the name");
  der[at + 5] = "a".charCodeAt(0); // Hanako → Hanaka
  return toPem(new Uint8Array(der), "CERTIFICATE REQUEST");
}

async function newRoot(): Promise<CertificationAuthority> {
  return CertificationAuthority.createRoot({
    signer: nodeSigner(generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey),
    subject: { country: "JP", organization: "Certification Center", commonName: "Center Root" },
    validityDays: 3650,
    repository: new MemoryCaRepository(),
  });
}

for (const [name, make] of [
  ["software", softwareCustody()],
  ["PKCS#11 (SoftHSM2)", softhsmCustody()],
] as const) {
  test(`${name}: step 417 — a PKCS#10 request signed inside custody, for every key algorithm`, { timeout: 10 * 60_000 }, async () => {
    const custody: KeyCustody = await make();
    try {
      for (const alg of KEY_PAIR_ALGS) {
        const label = `csr-${alg}-${randomBytes(4).toString("hex")}`;
        await custody.generateKeyPair(label, alg, { extractable: "wrapped", ephemeral: true });
        const csr = await buildSignedCsr(custody, label, HANAKO);
        assert.deepEqual(csr.spki, await custody.publicKey(label));

        // the center's parser: signature verifies, subject and key come back as sent
        const v = verifyCsr(csr.pem);
        assert.equal(v.publicKey.type, alg);
        assert.deepEqual(v.subject, HANAKO);
        assert.deepEqual(Buffer.from(v.publicKey.spki), Buffer.from(csr.spki));
        // an independent implementation agrees
        const file = join(dir, `${name.replace(/\W/g, "")}-${alg}.csr`);
        writeFileSync(file, csr.pem);
        const o = openssl(["req", "-in", file, "-verify", "-noout"]);
        assert.equal(o.status, 0, `openssl req -verify (${alg}): ${o.out}`);
        assert.match(o.out, /verify OK/i);
        const parsed = new x509.Pkcs10CertificateRequest(csr.der.slice().buffer as ArrayBuffer);
        assert.ok(await parsed.verify(), `@peculiar/x509 verifies the ${alg} request`);
        // and an altered request is refused as tampering on the path
        assert.throws(
          () => verifyCsr(alterOnPath(csr.pem)),
          (e: unknown) => e instanceof CaRefusal && e.check === "csr-signature",
        );
        await custody.deleteKey(label);
      }
    } finally {
      await custody.close();
    }
  });
}

test("the request's Name is the CA's own encoding of the same personal data", () => {
  const withOus: SubjectName = { ...HANAKO, organizationalUnit: ["Retail", "Tokyo"], locality: "Chiyoda", userId: "u-42" };
  for (const s of [HANAKO, withOus]) assert.deepEqual(Buffer.from(AsnConvert.serialize(subjectToName(s))), Buffer.from(encodeName(s)));
  assert.throws(() => subjectToName({ country: "Japan" }), /country/);
});

test("steps 422-424: the center's named refusals", async () => {
  const authority = await newRoot();
  const book = new MemoryRegistrationBook();
  book.register("user-1", HANAKO);
  const center = new CertificationCenter({ authority, registrations: book });
  const custody = await softwareCustody()();
  try {
    const csrFor = async (subject: SubjectName) => {
      const label = `k-${randomBytes(4).toString("hex")}`;
      await custody.generateKeyPair(label, "P256", { extractable: "wrapped", ephemeral: true });
      return (await buildSignedCsr(custody, label, subject)).pem;
    };
    const refused = async (p: Promise<unknown>, check: string) => assert.rejects(p, (e: unknown) => e instanceof CaRefusal && e.check === check, `refused by "${check}"`);

    // 422: altered on the path
    await refused(center.certify({ csr: alterOnPath(await csrFor(HANAKO)), profile: "signature", applicantId: "user-1" }), "csr-signature");
    // an unsigned {subject, publicKey} request is not accepted at all
    const { publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    await refused(center.certify({ subject: HANAKO, publicKey: publicKey.export({ format: "der", type: "spki" }).toString("base64"), profile: "signature", applicantId: "user-1" }), "csr-signature");
    // 423: the device's data differ from what the user gave the center; an unknown or missing applicant
    await refused(center.certify({ csr: await csrFor({ ...HANAKO, serialNumber: "P-7654321" }), profile: "signature", applicantId: "user-1" }), "personal-data");
    await refused(center.certify({ csr: await csrFor(HANAKO), profile: "signature", applicantId: "user-2" }), "personal-data");
    await refused(center.certify({ csr: await csrFor(HANAKO), profile: "signature" }), "personal-data");
    // whitespace and e-mail case are not differences
    const ok = await center.certify({ csr: await csrFor({ ...HANAKO, email: "Hanako@Example.test" }), profile: "signature", applicantId: "user-1" });
    assert.ok(ok.serial);
    // 424: the same key again
    const csr = await csrFor(HANAKO);
    await center.certify({ csr, profile: "signature", applicantId: "user-1" });
    await refused(center.certify({ csr, profile: "authentication", applicantId: "user-1" }), "duplicate-public-key");
    // the refusal names fields, never the personal data itself
    await assert.rejects(center.certify({ csr: await csrFor({ ...HANAKO, commonName: "Taro Suzuki" }), profile: "signature", applicantId: "user-1" }), (e: unknown) => {
      assert.ok(e instanceof CaRefusal && e.check === "personal-data");
      assert.match(e.detail, /commonName/);
      assert.doesNotMatch(e.message, /Taro|Hanako/);
      return true;
    });
  } finally {
    await custody.close();
  }
});

test("step 424 under concurrency: 8 parallel certifications of one key — exactly one succeeds", async () => {
  const authority = await newRoot();
  const book = new MemoryRegistrationBook();
  book.register("user-1", HANAKO);
  const center = new CertificationCenter({ authority, registrations: book });
  const custody = await softwareCustody()();
  try {
    await custody.generateKeyPair("k-race", "P256", { extractable: "wrapped", ephemeral: true });
    const csr = (await buildSignedCsr(custody, "k-race", HANAKO)).pem;
    const results = await Promise.allSettled(Array.from({ length: 8 }, (_, i) => center.certify({ csr, profile: i % 2 ? "signature" : "authentication", applicantId: "user-1" })));
    const won = results.filter((r) => r.status === "fulfilled");
    const lost = results.filter((r): r is PromiseRejectedResult => r.status === "rejected");
    assert.equal(won.length, 1, "exactly one certificate for the key");
    assert.equal(lost.length, 7);
    for (const r of lost) assert.ok(r.reason instanceof CaRefusal && r.reason.check === "duplicate-public-key", String(r.reason));
    // and any later request for the key is refused as well
    await assert.rejects(center.certify({ csr, profile: "signature", applicantId: "user-1" }), (e: unknown) => e instanceof CaRefusal && e.check === "duplicate-public-key");
  } finally {
    await custody.close();
  }
});

test("centerChecks: the same steps 422-423 on a CertificationAuthority served elsewhere", async () => {
  const book = new MemoryRegistrationBook();
  book.register("user-1", HANAKO);
  const root = await newRoot();
  const key = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const ca = new CertificationAuthority({ signer: root.signer, certificate: root.certificate, repository: new MemoryCaRepository(), checks: centerChecks(book) });
  await assert.rejects(
    ca.issue({ subject: HANAKO, publicKey: new Uint8Array(key.publicKey.export({ format: "der", type: "spki" })), profile: "signature", applicantId: "user-1" }),
    (e: unknown) => e instanceof CaRefusal && e.check === "csr-signature",
  );
  const custody = await softwareCustody()();
  try {
    await custody.generateKeyPair("k1", "P384", { extractable: "wrapped", ephemeral: true });
    await assert.rejects(
      ca.issueFromCsr({ csr: (await buildSignedCsr(custody, "k1", { ...HANAKO, organization: "Other Bank" })).pem, profile: "signature", applicantId: "user-1" }),
      (e: unknown) => e instanceof CaRefusal && e.check === "personal-data",
    );
    assert.ok((await ca.issueFromCsr({ csr: (await buildSignedCsr(custody, "k1", HANAKO)).der, profile: "signature", applicantId: "user-1" })).serial);
  } finally {
    await custody.close();
  }
});

test("steps 414-415: the device's registry records a key once, atomically", async () => {
  const reg = new MemoryIssuedKeyRegistry();
  const h = createHash("sha256").update("spki").digest("hex");
  const rec = { publicKeySha256: h, applicantId: "user-1", alg: "P256" as const, generatedAt: new Date() };
  const results = await Promise.all(Array.from({ length: 8 }, () => reg.register(rec)));
  assert.equal(results.filter(Boolean).length, 1);
  assert.equal((await reg.find(h))?.applicantId, "user-1");
  assert.equal(await reg.find(createHash("sha256").update("other").digest("hex")), undefined);
  await assert.rejects(reg.register({ ...rec, publicKeySha256: "ABC" }), /64 lowercase hex/);
});
