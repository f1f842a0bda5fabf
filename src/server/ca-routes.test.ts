// The CA at another site (seed 000 ST19-ST21): the same behavioural suite runs against LocalCaClient in-process
// and against HttpCaClient talking to the real server (caRoutes) on 127.0.0.1, so the issuer cannot tell them
// apart. Then what only HTTP has: roles, schemas, problem+json, content types, the OpenAPI document.

import assert from "node:assert/strict";
import { generateKeyPairSync, X509Certificate } from "node:crypto";
import { after, before, describe, test } from "node:test";
import type { FastifyInstance } from "fastify";
import * as x509 from "../x509.ts";
import type { CertificationAuthority } from "../ca/authority.ts";
import { CaRefusal } from "../ca/checks.ts";
import { LocalCaClient, type CaClient } from "../ca/client.ts";
import { CaTransportError, HttpCaClient } from "../ca/http-client.ts";
import { toPem } from "../ca/pem.ts";
import { ab, hierarchy, openssl, opensslCsr, spkiOf, workDir, writePem } from "../../test/support/ca-testing.ts";
import { buildServer } from "./app.ts";
import { hashToken, installAuth, type Principal } from "./auth.ts";
import { caRoutes } from "./ca-routes.ts";

const ISSUER = "ckms_issuer-service-token-0000000";
const OPERATOR = "ckms_operator-token-of-a-person-00";
const ADMIN = "ckms_admin-token-of-a-person-00000";
const AUDITOR = "ckms_auditor-token-read-only-0000";

interface Site {
  client: CaClient;
  root: Uint8Array;
  issuing: CertificationAuthority;
  close(): Promise<void>;
}

/** The CA's server: buildServer + bearer auth + caRoutes over the CA's LocalCaClient, on an ephemeral port. */
async function caServer(ca: CertificationAuthority): Promise<{ app: FastifyInstance; url: string }> {
  const { app } = await buildServer();
  const principals = new Map<string, Principal>([
    [hashToken(ISSUER), { name: "issuer", roles: ["issuer"] }],
    [hashToken(OPERATOR), { name: "olga", roles: ["operator"] }],
    [hashToken(ADMIN), { name: "ada", roles: ["admin"] }],
    [hashToken(AUDITOR), { name: "auditor", roles: ["auditor"] }],
  ]);
  installAuth(app, async (h) => principals.get(h));
  await app.register(caRoutes, { client: new LocalCaClient(ca) });
  const url = await app.listen({ port: 0, host: "127.0.0.1" });
  return { app, url };
}

const local = async (): Promise<Site> => {
  const { root, issuing } = await hierarchy();
  return { client: new LocalCaClient(issuing), root: root.certificate, issuing, close: async () => {} };
};

const overHttp = async (): Promise<Site> => {
  const { root, issuing } = await hierarchy();
  const { app, url } = await caServer(issuing);
  return { client: new HttpCaClient({ baseUrl: url + "/ca", token: ISSUER }), root: root.certificate, issuing, close: () => app.close() };
};

const spkiB64 = () => Buffer.from(spkiOf(generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey)).toString("base64");
const refusedBy = (check: string) => (e: unknown) => {
  assert.ok(e instanceof CaRefusal, `expected a CaRefusal, got ${String(e)}`);
  assert.equal(e.check, check, e.detail);
  return true;
};

function caClientBehaviour(name: string, setup: () => Promise<Site>): void {
  describe(`CaClient behaviour: ${name}`, () => {
    let site: Site;
    before(async () => {
      site = await setup();
    });
    after(() => site?.close());

    test("certifies a public key for the registered subject; openssl verifies it up to the root", async () => {
      const r = await site.client.certify({ profile: "signature", applicantId: "u-1", subject: { commonName: "Hanako Yamada", serialNumber: "CARD-1" }, publicKey: spkiB64() });
      const x = new X509Certificate(r.certificate);
      assert.equal(x.serialNumber.toLowerCase(), r.serial);
      assert.match(x.subject, /CN=Hanako Yamada/);
      assert.equal(new Date(x.validTo).getTime(), r.notAfter.getTime());
      const chain = await site.client.caCertificates();
      assert.equal(chain.length, 2);
      assert.deepEqual(chain[1], site.root, "root last");
      assert.ok(x.verify(new X509Certificate(chain[0]).publicKey), "issued by the first certificate of the chain");
      const dir = workDir();
      const v = openssl(["verify", "-x509_strict", "-CAfile", writePem(dir, "root.pem", [chain[1]]), "-untrusted", writePem(dir, "issuing.pem", [chain[0]]), writePem(dir, "ee.pem", [r.certificate])]);
      assert.equal(v.status, 0, v.out);
    });

    test("certifies a PKCS#10 request made by openssl; the subject is the request's", async () => {
      const csr = opensslCsr(workDir(), generateKeyPairSync("ec", { namedCurve: "P-384" }).privateKey, "/CN=Taro Suzuki/serialNumber=CARD-2");
      const r = await site.client.certify({ profile: "authentication", csr: toPem(csr, "CERTIFICATE REQUEST") });
      const x = new X509Certificate(r.certificate);
      assert.match(x.subject, /CN=Taro Suzuki/);
      assert.match(x.subject, /serialNumber=CARD-2/);
      assert.equal(x.publicKey.asymmetricKeyDetails?.namedCurve, "secp384r1");
    });

    test("a refusal names the check that failed", async () => {
      const key = spkiB64();
      await assert.rejects(site.client.certify({ profile: "no-such-profile", subject: { commonName: "A" }, publicKey: key }), refusedBy("profile"));
      await site.client.certify({ profile: "signature", subject: { commonName: "A" }, publicKey: key });
      await assert.rejects(site.client.certify({ profile: "signature", subject: { commonName: "B" }, publicKey: key }), refusedBy("duplicate-public-key"));
      const csr = opensslCsr(workDir(), generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey, "/CN=Tampered");
      csr[csr.length - 1] ^= 0x01;
      await assert.rejects(site.client.certify({ profile: "signature", csr: toPem(csr, "CERTIFICATE REQUEST") }), refusedBy("csr-signature"));
      await assert.rejects(site.client.certify({ profile: "signature", subject: { commonName: "A" } }), refusedBy("request"));
      await assert.rejects(site.client.revoke("00ff", "nope" as never), refusedBy("revocation-reason"));
    });

    test("a revoked certificate is in the next CRL with its reason; revoking again keeps the first", async () => {
      const r = await site.client.certify({ profile: "signature", subject: { commonName: "To Revoke" }, publicKey: spkiB64() });
      const kept = await site.client.certify({ profile: "signature", subject: { commonName: "To Keep" }, publicKey: spkiB64() });
      await site.client.revoke(r.serial, "keyCompromise");
      await site.client.revoke(r.serial, "superseded");
      const der = await site.client.crl();
      const crl = new x509.X509Crl(ab(der));
      const chain = await site.client.caCertificates();
      assert.ok(await crl.verify({ publicKey: new x509.X509Certificate(ab(chain[0])).publicKey }));
      const entry = crl.entries.find((e) => e.serialNumber.toLowerCase() === r.serial);
      assert.ok(entry, "revoked serial listed");
      assert.equal(entry.reason, x509.X509CrlReason.keyCompromise);
      assert.ok(!crl.entries.some((e) => e.serialNumber.toLowerCase() === kept.serial));

      const dir = workDir();
      const v = openssl([
        "verify",
        "-crl_check",
        "-CAfile",
        writePem(dir, "root.pem", [chain[1]]),
        "-untrusted",
        writePem(dir, "issuing.pem", [chain[0]]),
        "-CRLfile",
        writePem(dir, "crl.pem", [der], "X509 CRL"),
        writePem(dir, "ee.pem", [r.certificate]),
      ]);
      assert.notEqual(v.status, 0);
      assert.match(v.out, /certificate revoked/);
    });

    test("an unknown serial is refused as unknown-serial", async () => {
      await assert.rejects(site.client.revoke("0123456789abcdef", "unspecified"), refusedBy("unknown-serial"));
      await assert.rejects(site.client.revoke("not hex", "unspecified"), refusedBy("unknown-serial"));
    });
  });
}

caClientBehaviour("LocalCaClient (in-process)", local);
caClientBehaviour("HttpCaClient (over HTTP)", overHttp);

describe("CA routes over HTTP", () => {
  let app: FastifyInstance;
  let url: string;
  let issuing: CertificationAuthority;
  before(async () => {
    ({ issuing } = await hierarchy());
    ({ app, url } = await caServer(issuing));
  });
  after(() => app?.close());

  const post = (path: string, body: unknown, token?: string) =>
    fetch(url + path, { method: "POST", headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) }, body: JSON.stringify(body) });
  const problem = async (r: Response, status: number) => {
    assert.equal(r.status, status);
    assert.match(r.headers.get("content-type") ?? "", /^application\/problem\+json/);
    const p = (await r.json()) as Record<string, unknown>;
    assert.equal(p.status, status);
    return p;
  };

  test("certify and revoke need the issuer or the operator role; 401 without a token, 403 with another role", async () => {
    const body = { profile: "signature", subject: { commonName: "A" }, publicKey: spkiB64() };
    await problem(await post("/ca/certify", body), 401);
    await problem(await post("/ca/certify", body, AUDITOR), 403);
    await problem(await post("/ca/revoke", { serial: "00ff", reason: "unspecified" }, AUDITOR), 403);
    assert.equal((await post("/ca/certify", body, ISSUER)).status, 200);
    await assert.rejects(
      new HttpCaClient({ baseUrl: url + "/ca", token: AUDITOR }).certify({ ...body, publicKey: spkiB64() }),
      (e: unknown) => e instanceof CaTransportError && e.status === 403 && /role/.test(e.message),
    );
  });

  test("proof of possession: a bare public key only for the issuing service's credential; everyone else sends a CSR", async () => {
    // an operator (or an admin) could otherwise certify anybody's public key — copied from their certificate —
    // under a name of their choosing: refused, naming the check, and nothing is certified
    const victim = spkiB64();
    for (const token of [OPERATOR, ADMIN]) {
      const p = await problem(await post("/ca/certify", { profile: "signature", subject: { commonName: "Mallory" }, publicKey: victim }, token), 422);
      assert.deepEqual({ type: p.type, check: p.check }, { type: "urn:cardkms:ca:refused", check: "proof-of-possession" });
      assert.match(String(p.detail), /csr/i);
    }
    // the key was not claimed by the refused requests: the issuing service certifies it once
    assert.equal((await post("/ca/certify", { profile: "signature", subject: { commonName: "Victim" }, publicKey: victim }, ISSUER)).status, 200);
    // a CSR proves possession: operators and admins may send one
    for (const token of [OPERATOR, ADMIN]) {
      const csr = opensslCsr(workDir(), generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey, "/CN=Olga");
      assert.equal((await post("/ca/certify", { profile: "signature", csr: toPem(csr, "CERTIFICATE REQUEST") }, token)).status, 200);
    }
    // the operator may revoke, as before
    const r = (await (await post("/ca/certify", { profile: "signature", subject: { commonName: "B" }, publicKey: spkiB64() }, ISSUER)).json()) as { serial: string };
    assert.equal((await post("/ca/revoke", { serial: r.serial, reason: "superseded" }, OPERATOR)).status, 204);
  });

  test("a refusal is problem+json 422 carrying the check; an unknown serial is 404", async () => {
    const p = await problem(await post("/ca/certify", { profile: "nope", subject: { commonName: "A" }, publicKey: spkiB64() }, ISSUER), 422);
    assert.deepEqual({ type: p.type, check: p.check, instance: p.instance }, { type: "urn:cardkms:ca:refused", check: "profile", instance: "/ca/certify" });
    assert.match(String(p.detail), /unknown profile "nope"/);
    const q = await problem(await post("/ca/revoke", { serial: "0badc0de", reason: "superseded" }, OPERATOR), 404);
    assert.equal(q.check, "unknown-serial");
    // through the server's one error handler: counted like every other error
    const metrics = await (await fetch(url + "/metrics", { headers: { authorization: `Bearer ${AUDITOR}` } })).text();
    assert.match(metrics, /cardkms_http_errors_total\{status="422"\} [1-9]/);
    assert.match(metrics, /cardkms_http_errors_total\{status="404"\} [1-9]/);
  });

  test("the schemas refuse malformed bodies as 400 problem+json, never a 500", async () => {
    const spki = spkiB64();
    for (const body of [
      { profile: "signature" },
      { profile: "signature", subject: { commonName: "A" }, publicKey: spki, extra: 1 },
      { profile: "signature", subject: { commonName: "A" }, publicKey: spki, csr: "x" },
      { profile: "signature", subject: { commonName: 5 }, publicKey: spki },
      { profile: "signature", subject: { commonName: "A" }, publicKey: "not base64!" },
    ]) {
      const p = await problem(await post("/ca/certify", body, ISSUER), 400);
      assert.equal(p.check, undefined);
    }
    await problem(await post("/ca/revoke", { serial: "xyz", reason: "superseded" }, OPERATOR), 400);
    await problem(await post("/ca/revoke", { serial: "00ff", reason: "nope" }, OPERATOR), 400);
    await problem(await fetch(url + "/ca/certify", { method: "POST", headers: { "content-type": "application/json", authorization: `Bearer ${OPERATOR}` }, body: "{not json" }), 400);
  });

  test("the CRL and the chain are public: DER as application/pkix-crl, PEM certificates", async () => {
    const crl = await fetch(url + "/ca/crl");
    assert.equal(crl.status, 200);
    assert.equal(crl.headers.get("content-type"), "application/pkix-crl");
    const der = new Uint8Array(await crl.arrayBuffer());
    assert.ok(await new x509.X509Crl(ab(der)).verify({ publicKey: new x509.X509Certificate(ab(issuing.certificate)).publicKey }));
    const chain = (await (await fetch(url + "/ca/certificates")).json()) as { certificates: string[] };
    assert.deepEqual(
      chain.certificates,
      issuing.chain().map((d) => toPem(d, "CERTIFICATE")),
    );
    const pem = await fetch(url + "/ca/certificates", { headers: { accept: "application/pem-certificate-chain" } });
    assert.equal(pem.headers.get("content-type"), "application/pem-certificate-chain");
    assert.equal(await pem.text(), chain.certificates.join(""));
  });

  test("every CA route is in the OpenAPI document with its schema", async () => {
    const doc = (await (await fetch(url + "/openapi.json")).json()) as { paths: Record<string, Record<string, { requestBody?: unknown; responses: Record<string, unknown> }>> };
    assert.ok(doc.paths["/ca/certify"].post.requestBody);
    assert.ok(doc.paths["/ca/certify"].post.responses["422"]);
    assert.ok(doc.paths["/ca/revoke"].post.responses["404"]);
    assert.ok(doc.paths["/ca/crl"].get.responses["200"]);
    assert.ok(doc.paths["/ca/certificates"].get.responses["200"]);
  });
});

test("mounted under a prefix, the client's base URL is the prefix plus /ca", async () => {
  const { issuing } = await hierarchy();
  const { app } = await buildServer();
  await app.register(caRoutes, { prefix: "/v1", client: new LocalCaClient(issuing) });
  const url = await app.listen({ port: 0, host: "127.0.0.1" });
  try {
    assert.deepEqual(await new HttpCaClient({ baseUrl: `${url}/v1/ca` }).caCertificates(), issuing.chain());
    assert.equal((await fetch(`${url}/v1/ca/crl`)).headers.get("content-type"), "application/pkix-crl");
  } finally {
    await app.close();
  }
});
