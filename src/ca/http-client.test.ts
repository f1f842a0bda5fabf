// HttpCaClient against HTTP servers that misbehave (stand-ins for a CA site that is down, slow or wrong): every
// failure is a CaTransportError saying which, and never carries the token. The client's behaviour against the
// real CA routes is src/server/ca-routes.test.ts.

import assert from "node:assert/strict";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { after, test } from "node:test";
import { CaRefusal } from "./checks.ts";
import { CaTransportError, HttpCaClient } from "./http-client.ts";

const TOKEN = "ckms_secret-token-never-in-errors";
const servers: Server[] = [];
after(async () => {
  for (const s of servers) {
    s.closeAllConnections();
    await new Promise((r) => s.close(r));
  }
});

async function serve(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<string> {
  const s = createServer(handler);
  servers.push(s);
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  return `http://127.0.0.1:${(s.address() as AddressInfo).port}`;
}

const transport = (re: RegExp, status?: number) => (e: unknown) => {
  assert.ok(e instanceof CaTransportError, `expected CaTransportError, got ${String(e)}`);
  assert.match(e.message, re);
  assert.equal(e.status, status);
  assert.ok(!e.message.includes(TOKEN), "the token never appears in an error");
  return true;
};

const request = { profile: "signature", subject: { commonName: "A" }, publicKey: "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE" };

test("a CA that never answers: a timeout error naming the URL", async () => {
  const url = await serve(() => {
    /* accepts the request and never answers */
  });
  const c = new HttpCaClient({ baseUrl: url + "/ca", token: TOKEN, timeoutMs: 200 });
  await assert.rejects(c.certify(request), transport(/did not answer within 200 ms/));
  await assert.rejects(c.crl(), transport(new RegExp(`${url}/ca/crl did not answer`)));
});

test("a CA that is not there: 'cannot reach' with the system's reason", async () => {
  const url = await serve(() => {});
  const s = servers.pop()!;
  await new Promise((r) => s.close(r));
  await assert.rejects(new HttpCaClient({ baseUrl: url + "/ca", token: TOKEN }).caCertificates(), transport(/cannot reach the CA at .*ECONNREFUSED/));
});

test("server errors and malformed answers are transport errors, not refusals", async () => {
  const url = await serve((req, res) => {
    if (req.url === "/ca/certify") {
      res.writeHead(500, { "content-type": "application/problem+json" }).end(JSON.stringify({ type: "x", title: "Internal error", status: 500, detail: "see the log" }));
    } else if (req.url === "/ca/crl") {
      res.writeHead(200, { "content-type": "text/html" }).end("<html>");
    } else if (req.url === "/ca/certificates") {
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ certificates: ["not pem"] }));
    } else if (req.url === "/ca/revoke") {
      res.writeHead(401, { "content-type": "application/problem+json" }).end(JSON.stringify({ type: "x", title: "Authentication required", status: 401, detail: "unknown or revoked token" }));
    } else res.writeHead(404).end();
  });
  const c = new HttpCaClient({ baseUrl: url + "/ca/", token: TOKEN });
  await assert.rejects(c.certify(request), transport(/answered certify with HTTP 500: see the log/, 500));
  await assert.rejects(c.crl(), transport(/content-type "text\/html", not application\/pkix-crl/, 200));
  await assert.rejects(c.caCertificates(), transport(/malformed body: each entry must be one PEM CERTIFICATE/, 200));
  await assert.rejects(c.revoke("00ff", "superseded"), transport(/HTTP 401: unknown or revoked token \(is the API token right\?\)/, 401));
});

test("a 200 certify answer that is not a CertifyResponseJson is refused", async () => {
  const url = await serve((_req, res) => res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ certificate: "x", serial: "00" })));
  await assert.rejects(new HttpCaClient({ baseUrl: url + "/ca", token: TOKEN }).certify(request), transport(/malformed body/, 200));
});

test("an answer larger than the limit is refused, declared or streamed", async () => {
  const big = Buffer.alloc(64 * 1024, 0x30);
  const url = await serve((req, res) => {
    if (req.url === "/ca/crl") res.writeHead(200, { "content-type": "application/pkix-crl", "content-length": String(big.length) }).end(big);
    else {
      res.writeHead(200, { "content-type": "application/json" });
      res.write(big);
      res.end(big);
    }
  });
  const c = new HttpCaClient({ baseUrl: url + "/ca", maxResponseBytes: 1000 });
  await assert.rejects(c.crl(), transport(/65536 bytes, more than the 1000 accepted/, 200));
  await assert.rejects(c.caCertificates(), transport(/more than the 1000 bytes accepted/, 200));
});

test("a problem with a check is a CaRefusal only on 404/422; a schema rejection is the 'request' check", async () => {
  const url = await serve((req, res) => {
    const status = req.url === "/ca/certify" ? 422 : 400;
    const body =
      status === 422
        ? { type: "urn:cardkms:ca:refused", title: "Refused", status, check: "personal-data", detail: "request differs from registration in: commonName" }
        : { type: "v", title: "Request does not match the schema", status, errors: [{ pointer: "body/serial", detail: "must match pattern" }] };
    res.writeHead(status, { "content-type": "application/problem+json" }).end(JSON.stringify(body));
  });
  const c = new HttpCaClient({ baseUrl: url + "/ca", token: TOKEN });
  await assert.rejects(c.certify(request), (e: unknown) => e instanceof CaRefusal && e.check === "personal-data" && /commonName/.test(e.detail));
  await assert.rejects(c.revoke("00ff", "superseded"), (e: unknown) => e instanceof CaRefusal && e.check === "request" && /body\/serial: must match pattern/.test(e.detail));
});

test("constructor: an http(s) base URL without credentials, a sane token and timeout", () => {
  assert.throws(() => new HttpCaClient({ baseUrl: "ca.example.org" }), /absolute http\(s\) URL/);
  assert.throws(() => new HttpCaClient({ baseUrl: "ftp://ca.example.org" }), /http\(s\)/);
  assert.throws(() => new HttpCaClient({ baseUrl: "https://u:p@ca.example.org" }), /no credentials/);
  assert.throws(() => new HttpCaClient({ baseUrl: "https://ca.example.org", token: "a b" }), /token/);
  assert.throws(() => new HttpCaClient({ baseUrl: "https://ca.example.org", timeoutMs: 0 }), /timeoutMs/);
});
