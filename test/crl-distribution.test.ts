// Issue 9 §8: certificates point relying parties at a CRL that exists. A real server listens on a loopback port with
// crlUrl http://127.0.0.1:<port>/crl (the default's path); a freshly issued certificate names that URL as its CRL
// distribution point, the URL answers with the CA's DER CRL, and `openssl verify -crl_check` — fed the CRL fetched
// from the certificate's own distribution point, and once more downloading it itself (-crl_download) — refuses the
// revoked certificate and accepts the live one. A crlUrl the server cannot serve stops the start, naming why.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { createServer, type AddressInfo } from "node:net";
import { join } from "node:path";
import { Writable } from "node:stream";
import { fromPem, toPem } from "../src/ca/pem.ts";
import { openssl } from "./support/ca-testing.ts";
import { DEFAULT_CONFIG, type IssuerConfig } from "../src/server/config.ts";
import { createOperatorToken, startIssuerServer } from "../src/server/main.ts";
import { run } from "../src/transport/pcsc.ts";
import * as x509 from "../src/x509.ts";
import { tempDir } from "./helpers.ts";
import { importTestKmc } from "./kmc.ts";

const env = { CARDKMS_KEYSTORE_KEY: randomBytes(32).toString("hex") };

function config(dir: string, port: number, crlUrl: string): IssuerConfig {
  return {
    ...structuredClone(DEFAULT_CONFIG),
    listen: { host: "127.0.0.1", port },
    database: join(dir, "issuer.db"),
    custody: { kind: "software", keystore: join(dir, "keystore.json") },
    crlUrl,
    logLevel: "silent",
  };
}

/** A loopback port free at this moment. */
async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, "127.0.0.1", resolve));
  const { port } = s.address() as AddressInfo;
  await new Promise((r) => s.close(r));
  return port;
}

test("a fresh certificate's CRL distribution point serves the CRL; openssl verify -crl_check refuses the revoked one, accepts the live one", { timeout: 10 * 60_000 }, async () => {
  const dir = tempDir("cardkms-crl-");
  const port = await freePort();
  const crlUrl = `http://127.0.0.1:${port}/crl`;
  const server = await startIssuerServer(config(dir, port, crlUrl), { env, handleSignals: false });
  try {
    assert.equal(server.url, `http://127.0.0.1:${port}`);
    await importTestKmc(server.custody);
    const { token } = await createOperatorToken(server.store, "olga", ["operator"]);
    const call = async (method: string, path: string, body?: unknown) => {
      const r = await fetch(server.url + path, {
        method,
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      assert.ok(r.ok, `${method} ${path}: ${r.status} ${await r.clone().text()}`);
      return r.json() as Promise<Record<string, unknown>>;
    };
    const user = await call("POST", "/v1/users", { personalData: { commonName: "Hanako Yamada", country: "JP" } });
    const card = ((await call("POST", "/v1/cards", { userId: user.id })) as { card: { id: string } }).card.id;
    const live = (await call("POST", `/v1/cards/${card}/credentials`, { slot: "9a", alg: "P256" })) as { serial: string; certificate: string };
    const revoked = (await call("POST", `/v1/cards/${card}/credentials`, { slot: "9c", alg: "P256" })) as { serial: string; certificate: string };
    await call("POST", `/v1/certificates/${revoked.serial}/revoke`, { reason: "keyCompromise" });
    const ca = ((await call("GET", "/v1/ca/certificates")) as { certificates: string[] }).certificates;

    const files = { ca: join(dir, "ca.pem"), live: join(dir, "live.pem"), revoked: join(dir, "revoked.pem"), crl: join(dir, "crl.pem") };
    writeFileSync(files.ca, ca.join(""));
    writeFileSync(files.live, live.certificate);
    writeFileSync(files.revoked, revoked.certificate);
    for (const pem of [live.certificate, revoked.certificate]) {
      // the relying party's way: the URL the certificate names, nothing else
      const cdp = new x509.X509Certificate(fromPem(pem, "CERTIFICATE").slice().buffer as ArrayBuffer).getExtension(x509.CRLDistributionPointsExtension);
      const uris = Array.from(cdp?.distributionPoints ?? []).flatMap((d) => Array.from(d.distributionPoint?.fullName ?? [], (n) => n.uniformResourceIdentifier));
      assert.deepEqual(uris, [crlUrl], "the certificate names the configured CRL URL");
      const r = await fetch(uris[0]!);
      assert.equal(r.status, 200, `GET ${uris[0]}`);
      assert.equal(r.headers.get("content-type"), "application/pkix-crl");
      const crl = new Uint8Array(await r.arrayBuffer());
      assert.deepEqual(crl, new Uint8Array(await (await fetch(`${server.url}/v1/crl`)).arrayBuffer()), "the same CRL as the API's");
      writeFileSync(files.crl, toPem(crl, "X509 CRL"));
    }
    const ok = openssl(["verify", "-crl_check", "-CAfile", files.ca, "-CRLfile", files.crl, files.live]);
    assert.equal(ok.status, 0, ok.out);
    assert.match(ok.out, /live\.pem: OK/);
    const bad = openssl(["verify", "-crl_check", "-CAfile", files.ca, "-CRLfile", files.crl, files.revoked]);
    assert.notEqual(bad.status, 0, bad.out);
    assert.match(bad.out, /certificate revoked/);
    // openssl following the distribution point by itself (asynchronously: the server answering it is this process)
    const downloaded = await run("openssl", ["verify", "-crl_check", "-crl_download", "-CAfile", files.ca, files.live], { timeoutMs: 30_000 });
    assert.equal(downloaded.code, 0, downloaded.stdout + downloaded.stderr);
    const downloadedBad = await run("openssl", ["verify", "-crl_check", "-crl_download", "-CAfile", files.ca, files.revoked], { timeoutMs: 30_000 });
    assert.match(downloadedBad.stdout + downloadedBad.stderr, /certificate revoked/);
    assert.notEqual(downloadedBad.code, 0);
  } finally {
    await server.close();
  }
});

test("a crlUrl the server cannot serve stops the start, naming why; one pointing at another port is warned about", { timeout: 10 * 60_000 }, async () => {
  const dir = tempDir("cardkms-crl-bad-");
  for (const [url, why] of [
    ["http://127.0.0.1:8443/healthz", /already the server's route GET \/healthz/],
    ["http://127.0.0.1:8443/v1/users", /paths under \/v1\/ belong to the API/],
    ["http://127.0.0.1:8443/crl?x=1", /no query or fragment/],
    ["http://user:pw@127.0.0.1:8443/crl", /no credentials/],
    ["http://127.0.0.1:8443/", /the path must be a plain one/],
    ["http://127.0.0.1:8443/c:id", /the path must be a plain one/],
    ["ftp://127.0.0.1/crl", /over http/],
  ] as const) {
    await assert.rejects(startIssuerServer(config(join(dir, String(Math.random()).slice(2)), 0, url), { env, listen: false }), (e: Error) => why.test(e.message), url);
  }
  // the API's own paths and any plain path of its own are fine
  for (const url of ["http://pki.example.test/v1/crl", "http://pki.example.test/v1/ca/crl", "http://pki.example.test/pki/cardkms.crl"]) {
    const s = await startIssuerServer(config(join(dir, String(Math.random()).slice(2)), 0, url), { env, listen: false });
    const path = new URL(url).pathname;
    const r = await s.app.inject({ method: "GET", url: path });
    assert.equal(r.statusCode, 200, path);
    assert.equal(r.headers["content-type"], "application/pkix-crl");
    await s.close();
  }
  // the default crlUrl names port 8443: a server listening elsewhere says so
  const lines: string[] = [];
  const logStream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(chunk.toString("utf8"));
      cb();
    },
  });
  const s = await startIssuerServer({ ...config(join(dir, "default"), 0, DEFAULT_CONFIG.crlUrl), logLevel: "warn" }, { env, handleSignals: false, logStream });
  await s.close();
  assert.match(lines.join(""), /certificates name the CRL distribution point http:\/\/127\.0\.0\.1:8443\/crl, but this server listens on http:\/\/127\.0\.0\.1:\d+/);
});
