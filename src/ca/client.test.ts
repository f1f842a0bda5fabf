import { test } from "node:test";
import assert from "node:assert/strict";
import { X509Certificate, generateKeyPairSync } from "node:crypto";
import * as x509 from "../x509.ts";
import { CaRefusal } from "./checks.ts";
import { decodeCertifyResponse, encodeCertifyResponse, LocalCaClient, problemToRefusal, refusalToProblem, type CaClient, type CertifyRequest } from "./client.ts";
import { toPem } from "./pem.ts";
import { hierarchy, opensslCsr, spkiOf, workDir, ab } from "../../test/support/ca-testing.ts";

/** Sends a value through JSON, as the HTTP transport will. */
const wire = <T>(v: T): T => JSON.parse(JSON.stringify(v)) as T;

test("the issuer certifies, revokes and fetches the CRL and chain through CaClient (ST19-ST21)", async () => {
  const { root, issuing } = await hierarchy();
  const client: CaClient = new LocalCaClient(issuing);
  const kp = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const req: CertifyRequest = wire({
    profile: "signature",
    applicantId: "u1",
    subject: { commonName: "Jiro", serialNumber: "CARD-7" },
    publicKey: Buffer.from(spkiOf(kp.publicKey)).toString("base64"),
  });
  const res = decodeCertifyResponse(wire(encodeCertifyResponse(await client.certify(req))));
  const x = new X509Certificate(res.certificate);
  assert.equal(x.serialNumber.toLowerCase(), res.serial);
  assert.equal(new Date(x.validTo).getTime(), res.notAfter.getTime());

  const chain = await client.caCertificates();
  assert.equal(chain.length, 2);
  assert.deepEqual(chain[1], root.certificate);
  assert.ok(x.verify(new X509Certificate(chain[0]).publicKey));

  const csr = opensslCsr(workDir(), generateKeyPairSync("ec", { namedCurve: "P-384" }).privateKey, "/CN=Jiro/serialNumber=CARD-7");
  const byCsr = await client.certify(wire({ profile: "authentication", csr: toPem(csr, "CERTIFICATE REQUEST") }));
  assert.ok(byCsr.serial);

  await client.revoke(res.serial, "keyCompromise");
  const crl = new x509.X509Crl(ab(await client.crl()));
  assert.deepEqual(
    crl.entries.map((e) => e.serialNumber.toLowerCase()),
    [res.serial],
  );
});

test("malformed requests are refused as 'request'; refusals survive the wire as problem+json", async () => {
  const { issuing } = await hierarchy();
  const client = new LocalCaClient(issuing);
  const spki = Buffer.from(spkiOf(generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey)).toString("base64");
  const bad: unknown[] = [
    { profile: "signature" },
    { profile: "signature", subject: { commonName: "A" } },
    { profile: "signature", subject: { commonName: "A" }, publicKey: spki, csr: "x" },
    { profile: "signature", subject: { commonName: "A" }, publicKey: "not base64!" },
    { profile: "signature", subject: { commonName: "A" }, publicKey: spki, extra: 1 },
    { subject: { commonName: "A" }, publicKey: spki },
    null,
  ];
  for (const b of bad) await assert.rejects(client.certify(b as CertifyRequest), (e: CaRefusal) => e.check === "request", JSON.stringify(b));
  await assert.rejects(client.revoke("00ff", "nope" as never), (e: CaRefusal) => e.check === "revocation-reason");

  const refusal = await client.certify({ profile: "signature", csr: "-----BEGIN CERTIFICATE REQUEST-----\nMAMCAQA=\n-----END CERTIFICATE REQUEST-----\n" }).catch((e: unknown) => e);
  assert.ok(refusal instanceof CaRefusal);
  const problem = wire(refusalToProblem(refusal));
  assert.deepEqual({ status: problem.status, check: problem.check, type: problem.type }, { status: 422, check: "csr-format", type: "urn:cardkms:ca:refused" });
  const back = problemToRefusal(problem);
  assert.equal(back.check, "csr-format");
  assert.equal(back.detail, refusal.detail);
  assert.equal(refusalToProblem(new CaRefusal("unknown-serial", "x")).status, 404);
});
