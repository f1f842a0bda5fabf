// OpenSC's PIV driver against the applet over real PC/SC (pcscd + vsmartcard vpcd): pkcs11-tool with
// opensc-pkcs11.so lists the certificates the issuer wrote through SCP03 and signs with the card's keys; the
// signatures are verified with Node against the certificates. Like src/transport/vpcd.test.ts, this needs
// pcscd with the vpcd reader (scripts/pcsc-up.sh sets it up) and fails rather than skips without it.
import "reflect-metadata";
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, createPublicKey, randomBytes, verify, webcrypto, X509Certificate, type KeyObject } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import * as x509 from "@peculiar/x509";
import { encodeCommand, parseResponse } from "../../protocol/apdu.ts";
import { isd } from "../isd.ts";
import { CardRuntime } from "../runtime.ts";
import { scp03Factory } from "../scp03/card-channel.ts";
import { Scp03Client } from "../../protocol/scp03/host.ts";
import type { ScpKeySet } from "../state.ts";
import { findTlv, parseTlvs, tlv } from "../../protocol/tlv.ts";
import { OPENSC_PKCS11, run, withAttachedCard } from "../../transport/pcsc.ts";
import { tempDir } from "../../../test/helpers.ts";
import { PivApplet } from "./applet.ts";
import { PIV_AID } from "../../protocol/piv/objects.ts";

x509.cryptoProvider.set(webcrypto as unknown as Crypto);

async function issue(pub: KeyObject, cn: string): Promise<Uint8Array> {
  const ca = await webcrypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"]);
  const rsa = pub.asymmetricKeyType === "rsa";
  const params = rsa ? { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" } : { name: "ECDSA", namedCurve: "P-256" };
  const key = await webcrypto.subtle.importKey("spki", pub.export({ format: "der", type: "spki" }), params, true, ["verify"]);
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: randomBytes(8).toString("hex"),
    subject: `CN=${cn}`,
    issuer: "CN=cardkms test CA",
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 86_400_000),
    signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
    publicKey: key as unknown as CryptoKey,
    signingKey: ca.privateKey as unknown as CryptoKey,
    extensions: [new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true)],
  });
  return new Uint8Array(cert.rawData);
}

function publicFrom7f49(data: Uint8Array): KeyObject {
  const v = parseTlvs(data)[0].value;
  const b64 = (b: Uint8Array) => Buffer.from(b).toString("base64url");
  const pt = findTlv(v, 0x86);
  if (pt) return createPublicKey({ key: { kty: "EC", crv: "P-256", x: b64(pt.subarray(1, 33)), y: b64(pt.subarray(33)) }, format: "jwk" });
  return createPublicKey({ key: { kty: "RSA", n: b64(findTlv(v, 0x81)!), e: b64(findTlv(v, 0x82)!) }, format: "jwk" });
}

test("OpenSC pkcs11-tool lists the PIV certificates and signs with P-256 (9A) and RSA-2048 (9C)", { timeout: 10 * 60_000 }, async () => {
  const dir = tempDir("cardkms-piv-opensc-");
  const keySet: ScpKeySet = { kvn: 0x30, enc: randomBytes(16).toString("hex"), mac: randomBytes(16).toString("hex"), dek: randomBytes(16).toString("hex") };
  const card = CardRuntime.create(join(dir, "card.img"), randomBytes(32), { applets: [isd, new PivApplet()], secureChannel: scp03Factory, keySet });
  const transmit = (a: Uint8Array) => card.transmit(a);
  assert.equal(parseResponse(transmit(encodeCommand({ cla: 0, ins: 0xa4, p1: 4, p2: 0, data: PIV_AID }))).sw, 0x9000);
  const s = await Scp03Client.open(transmit, keySet, { level: 0x01 });
  const certs: Record<string, Uint8Array> = {};
  for (const [ref, alg, tag, cn] of [
    [0x9a, 0x11, [0x5f, 0xc1, 0x05], "piv-auth-p256"],
    [0x9c, 0x07, [0x5f, 0xc1, 0x0a], "signature-rsa2048"],
  ] as const) {
    const g = await s.send({ cla: 0, ins: 0x47, p1: 0, p2: ref, data: tlv(0xac, tlv(0x80, Uint8Array.of(alg))) });
    assert.equal(g.sw, 0x9000);
    certs[cn] = await issue(publicFrom7f49(g.data), cn);
    const value = Buffer.concat([tlv(0x70, certs[cn]), tlv(0x71, Uint8Array.of(0)), tlv(0xfe)]);
    const p = await s.send({ cla: 0, ins: 0xdb, p1: 0x3f, p2: 0xff, data: Buffer.concat([tlv(0x5c, Uint8Array.from(tag)), tlv(0x53, value)]) });
    assert.equal(p.sw, 0x9000);
  }
  s.close();
  card.reset();

  await withAttachedCard(card, async () => {
    const tool = (args: string[]) => run("pkcs11-tool", ["--module", OPENSC_PKCS11, ...args], { timeoutMs: 60_000 });
    const listed = await tool(["--list-objects", "--type", "cert"]);
    assert.equal(listed.code, 0, listed.stderr);
    assert.match(listed.stdout, /piv-auth-p256/);
    assert.match(listed.stdout, /signature-rsa2048/);
    // Read a certificate back through OpenSC and compare with what the issuer wrote.
    const certFile = join(dir, "cert.der");
    const read = await tool(["--read-object", "--type", "cert", "--id", "01", "--output-file", certFile]);
    assert.equal(read.code, 0, read.stderr);
    assert.deepEqual(new Uint8Array(readFileSync(certFile)), certs["piv-auth-p256"]);

    const msg = randomBytes(100);
    const input = join(dir, "msg.bin");
    writeFileSync(input, msg);
    // ECDSA: OpenSC hashes (ECDSA-SHA256) and sends the digest in GENERAL AUTHENTICATE.
    const ecSig = join(dir, "ec.sig");
    const ec = await tool(["--login", "--pin", "123456", "--sign", "--id", "01", "--mechanism", "ECDSA-SHA256", "--signature-format", "openssl", "--input-file", input, "--output-file", ecSig]);
    assert.equal(ec.code, 0, ec.stderr + ec.stdout);
    const ecPub = new X509Certificate(certs["piv-auth-p256"]).publicKey;
    assert.ok(verify("sha256", msg, ecPub, readFileSync(ecSig)), "P-256 signature made through OpenSC verifies");
    // RSA PKCS#1 v1.5 with the "PIN always" key 9C (pkcs11-tool logs in again, context-specific).
    const rsaSig = join(dir, "rsa.sig");
    const rsa = await tool(["--login", "--pin", "123456", "--sign", "--id", "02", "--mechanism", "SHA256-RSA-PKCS", "--input-file", input, "--output-file", rsaSig]);
    assert.equal(rsa.code, 0, rsa.stderr + rsa.stdout);
    const rsaPub = new X509Certificate(certs["signature-rsa2048"]).publicKey;
    assert.ok(verify("sha256", msg, rsaPub, readFileSync(rsaSig)), "RSA signature made through OpenSC verifies");
    assert.ok(!verify("sha256", createHash("sha256").update(msg).digest(), rsaPub, readFileSync(rsaSig)));
    // pkcs11-tool's own self-test: random numbers (GENERAL AUTHENTICATE 9B, 81 challenge), digests, and for the RSA
    // key signatures with every mechanism, verification and decryption.
    const self = await tool(["--test", "--login", "--pin", "123456"]);
    assert.equal(self.code, 0, self.stderr + self.stdout);
    assert.match(self.stdout, /C_GenerateRandom\(\):\s+seeding \(C_SeedRandom\) not supported\s+seems to be OK/);
    assert.match(self.stdout, /No errors/, self.stdout + self.stderr);
    assert.doesNotMatch(self.stdout + self.stderr, /ERR:/);
  });
  card.close();
});
