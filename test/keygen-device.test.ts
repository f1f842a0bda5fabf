// Seed 001 embodiments 1-2 end to end, on both custody implementations: the key generation device generates a
// key pair inside custody, has the certification center (another site, reached over an untrusted path) certify
// it, verifies the certificate, writes key and certificate into a virtual card through SCP03, and destroys the
// key. Then everything an attacker on the path can do is refused by name, with nothing written into the card.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { generateKeyPairSync, randomBytes, verify, X509Certificate } from "node:crypto";
import { createRequire } from "node:module";
import { join } from "node:path";
import type * as Pkcs11Types from "pkcs11js";
import { CertificationAuthority } from "../src/ca/authority.ts";
import type { CaClient, CertifyRequest, CertifyResult } from "../src/ca/client.ts";
import type { RevocationReason } from "../src/ca/crl.ts";
import type { SubjectName } from "../src/ca/name.ts";
import { fromPem, toPem } from "../src/ca/pem.ts";
import { MemoryCaRepository } from "../src/ca/repository.ts";
import { nodeSigner } from "../src/ca/signer.ts";
import { createCard } from "../src/card/card.ts";
import { ALG_ID, CERT_OBJECT, pivCertObject } from "../src/protocol/package.ts";
import { concat, tlv } from "../src/protocol/tlv.ts";
import { CustodyError, type DerivedKeySetRef, type KeyCustody, type KeyPairAlg, type KeySetRef } from "../src/custody/custody.ts";
import { Pkcs11Custody } from "../src/custody/pkcs11.ts";
import { SoftwareCustody } from "../src/custody/software.ts";
import { deliveryScript, personaliseFromTransport, runScript } from "../src/issuer/card-scripts.ts";
import { CertificationCenter, MemoryRegistrationBook } from "../src/keygen/center.ts";
import { buildSignedCsr } from "../src/keygen/csr.ts";
import { KeyGenerationDevice, type PivSlot } from "../src/keygen/device.ts";
import { KeyGenerationRefusal } from "../src/keygen/errors.ts";
import { MemoryIssuedKeyRegistry } from "../src/keygen/registry.ts";
import { verifyIssuedCertificate } from "../src/keygen/verify.ts";
import { ApduClient, type Transmit } from "../src/protocol/apdu-client.ts";
import { readCardInfo, type CardInfo } from "../src/protocol/card-info.ts";
import { PivClient } from "../src/protocol/piv/client.ts";
import * as x509 from "../src/x509.ts";
import { tempDir } from "./helpers.ts";
import { importTestKmc, TEST_KMC } from "./kmc.ts";

const ROOT = join(import.meta.dirname, "..");
const dir = tempDir();
const HANAKO: SubjectName = { country: "JP", organization: "Example Bank", commonName: "Hanako Yamada", serialNumber: "P-1234567" };

// --- custody ------------------------------------------------------------------------------------------------------

interface Hsm {
  module: string;
  tokenLabel: string;
  pin: string;
}

/** A fresh SoftHSM2 token (scripts/softhsm-up.sh); the test FAILS when SoftHSM2 is missing. */
function softhsm(): Hsm {
  const out = execFileSync("bash", [join(ROOT, "scripts/softhsm-up.sh"), join(tempDir("cardkms-hsm-"), "hsm")], {
    encoding: "utf8",
    env: { ...process.env, CARDKMS_PKCS11_TOKEN: "", CARDKMS_PKCS11_PIN: "" },
  });
  const env: Record<string, string> = {};
  for (const m of out.matchAll(/^export (\w+)=(.*)$/gm)) env[m[1]] = m[2].replace(/^'(.*)'$/, "$1");
  process.env.SOFTHSM2_CONF = env.SOFTHSM2_CONF;
  return { module: env.CARDKMS_PKCS11_MODULE, tokenLabel: env.CARDKMS_PKCS11_TOKEN, pin: env.CARDKMS_PKCS11_PIN };
}

/**
 * Objects labelled `label` on the token, looked up straight through pkcs11js as any other application would
 * (C_FindObjects over token and session objects). The custody instance keeps the module initialised and the user
 * logged in, so this session sees what it sees.
 */
function objectsOnToken(hsm: Hsm, label: string): number {
  const p = createRequire(import.meta.url)("pkcs11js") as typeof Pkcs11Types;
  const mod = new p.PKCS11();
  mod.load(hsm.module);
  try {
    mod.C_Initialize();
    throw new Error("the module was not initialised: the custody instance must still be open");
  } catch (e) {
    if (!/CKR_CRYPTOKI_ALREADY_INITIALIZED/.test(String(e))) throw e;
  }
  const slot = mod.C_GetSlotList(true).find((s) => mod.C_GetTokenInfo(s).label.trim() === hsm.tokenLabel);
  assert.ok(slot, "the token is present");
  const s = mod.C_OpenSession(slot, p.CKF_SERIAL_SESSION);
  try {
    mod.C_FindObjectsInit(s, [{ type: p.CKA_LABEL, value: label }]);
    try {
      return mod.C_FindObjects(s, 10).length;
    } finally {
      mod.C_FindObjectsFinal(s);
    }
  } finally {
    mod.C_CloseSession(s);
  }
}

const hsm = softhsm();
const swDir = tempDir("cardkms-ks-");
const swKey = randomBytes(32).toString("hex");
const CUSTODIES: [string, () => Promise<KeyCustody>, Hsm | undefined][] = [
  ["software", () => SoftwareCustody.open({ path: join(swDir, "keystore.json"), key: swKey }), undefined],
  ["PKCS#11 (SoftHSM2)", () => Pkcs11Custody.open({ module: hsm.module, tokenLabel: hsm.tokenLabel, pin: hsm.pin }), hsm],
];

// --- the certification center at another site -------------------------------------------------------------------

interface CenterSite {
  root: CertificationAuthority;
  issuing: CertificationAuthority;
  book: MemoryRegistrationBook;
  center: CertificationCenter;
}

const ROOT_NAME: SubjectName = { country: "JP", organization: "Certification Center", commonName: "Center Root CA" };
const ISSUING_NAME: SubjectName = { country: "JP", organization: "Certification Center", commonName: "Center Issuing CA" };

/** A root and an issuing CA with their own keys; `center` is false for a rogue CA that copies the names. */
async function centerSite(): Promise<CenterSite> {
  const root = await CertificationAuthority.createRoot({
    signer: nodeSigner(generateKeyPairSync("ec", { namedCurve: "P-384" }).privateKey),
    subject: ROOT_NAME,
    validityDays: 3650,
    pathLength: 0,
    repository: new MemoryCaRepository(),
  });
  const signer = nodeSigner(generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey);
  const sub = await root.certifySubordinate({ subject: ISSUING_NAME, publicKey: signer.spki, validityDays: 1825 });
  const issuing = new CertificationAuthority({ signer, certificate: sub.certificate, issuerChain: [root.certificate], repository: new MemoryCaRepository() });
  const book = new MemoryRegistrationBook();
  book.register("user-1", HANAKO);
  return { root, issuing, book, center: new CertificationCenter({ authority: issuing, registrations: book }) };
}

/**
 * The communication path between device and center (the seed's telephone line, ISDN, LAN), held by an attacker:
 * it forwards to the real center unless told otherwise.
 */
class Path implements CaClient {
  certifyVia?: (req: CertifyRequest, center: CaClient) => Promise<CertifyResult>;
  chainVia?: (center: CaClient) => Promise<Uint8Array[]>;
  constructor(readonly center: CaClient) {}
  certify(req: CertifyRequest): Promise<CertifyResult> {
    return this.certifyVia ? this.certifyVia(req, this.center) : this.center.certify(req);
  }
  revoke(serial: string, reason: RevocationReason): Promise<void> {
    return this.center.revoke(serial, reason);
  }
  crl(): Promise<Uint8Array> {
    return this.center.crl();
  }
  caCertificates(): Promise<Uint8Array[]> {
    return this.chainVia ? this.chainVia(this.center) : this.center.caCertificates();
  }
}

// --- cards --------------------------------------------------------------------------------------------------------

interface Card {
  transmit: Transmit;
  keySet: DerivedKeySetRef;
  transport: KeySetRef;
  close(): void;
}

/** A blank virtual card, personalised with a card key set diversified in custody (as test/custody-card does). */
async function blankCard(custody: KeyCustody): Promise<Card> {
  const cardId = randomBytes(8).toString("hex");
  const card = createCard(join(dir, `${cardId}.card`), randomBytes(32), { kmc: TEST_KMC, cardId: Buffer.from(cardId, "hex") });
  const transmit: Transmit = (a) => card.transmit(a);
  await importTestKmc(custody);
  const { transport, keySet } = await personaliseFromTransport(transmit, custody, cardId);
  return { transmit, keySet, transport, close: () => card.close() };
}

/** The card's public state. The PIV applet writes its CHUID and CCC on its first SELECT: select it first. */
const info = async (transmit: Transmit): Promise<CardInfo> => {
  await new PivClient(transmit).select();
  const i = await readCardInfo(transmit);
  assert.ok("cardId" in i);
  return i;
};

/** The card signs with the key in `slot`, and the signature verifies with the certificate's public key. */
async function cardSignsFor(transmit: Transmit, slot: PivSlot, alg: KeyPairAlg, certificate: Uint8Array): Promise<boolean> {
  const piv = new PivClient(transmit);
  await piv.select();
  await piv.verifyPin("123456");
  const msg = randomBytes(48);
  const { signature, hash } = await piv.sign(parseInt(slot, 16), alg, msg);
  return verify(hash, msg, { key: new X509Certificate(certificate).publicKey, dsaEncoding: "der" }, signature);
}

const keygenLabels = async (custody: KeyCustody): Promise<string[]> => (await custody.listKeys()).map((k) => k.label).filter((l) => l.startsWith("keygen."));

const refusedBy = (check: string, by: "device" | "certification-center") => (e: unknown) => {
  assert.ok(e instanceof KeyGenerationRefusal, `a KeyGenerationRefusal, got ${String(e)}`);
  assert.equal(e.check, check);
  assert.equal(e.by, by);
  return true;
};

// --- the tests ----------------------------------------------------------------------------------------------------

for (const [name, open, token] of CUSTODIES) {
  test(`${name}: seed 001 embodiments 1-2 — key generation device, certification center, card`, { timeout: 10 * 60_000 }, async (t) => {
    const custody = await open();
    const site = await centerSite();
    const path = new Path(site.center);
    const registry = new MemoryIssuedKeyRegistry();
    const device = await KeyGenerationDevice.create({ custody, ca: path, registry, trustAnchors: [site.root.certificate] });
    const issueInto = (card: Card, over: Partial<{ personalData: SubjectName; alg: KeyPairAlg; slot: PivSlot; profile: string }> = {}) =>
      device.issue({
        applicantId: "user-1",
        personalData: over.personalData ?? HANAKO,
        alg: over.alg ?? "P256",
        profile: over.profile ?? "signature",
        slot: over.slot ?? "9c",
        card: { transmit: card.transmit, keySet: card.keySet },
      });

    /** After a refusal: the key is gone from custody and the card is exactly as it was. */
    const nothingWritten = async (card: Card, before: CardInfo) => {
      assert.deepEqual(await keygenLabels(custody), [], "no generated key is left in custody");
      const after = await info(card.transmit);
      assert.equal(after.freeBytes, before.freeBytes, "not one byte was written into the card");
      assert.deepEqual(after.certificates, []);
    };

    try {
      let issuedCard: Card | undefined;
      let issuedCert: Uint8Array | undefined;

      await t.test("steps 400-440: the card signs with a key nobody saw, under a certificate that names the user", async () => {
        if (token) {
          // control: the direct token lookup does see a session key pair of this custody
          await custody.generateKeyPair("keygen-control", "P256", { extractable: "wrapped", ephemeral: true });
          assert.equal(objectsOnToken(token, "keygen-control"), 2, "C_FindObjects finds the private and public key");
          await custody.deleteKey("keygen-control");
          assert.equal(objectsOnToken(token, "keygen-control"), 0);
        }
        for (const [slot, alg] of [
          ["9c", "P256"],
          ["9a", "RSA2048"],
        ] as const) {
          const card = await blankCard(custody);
          const before = await info(card.transmit);
          const r = await issueInto(card, { slot, alg, profile: slot === "9c" ? "signature" : "authentication" });
          assert.equal(r.slot, slot);

          // the certificate is the center's, for the user's registered data, written into the card
          const x = new X509Certificate(r.certificate);
          assert.ok(x.verify(new X509Certificate(site.issuing.certificate).publicKey));
          assert.match(x.subject, /CN=Hanako Yamada/);
          const piv = new PivClient(card.transmit);
          await piv.select();
          assert.deepEqual(await piv.readCertificate(parseInt(slot, 16)), r.certificate);
          assert.ok((await info(card.transmit)).freeBytes < before.freeBytes);
          assert.ok(await cardSignsFor(card.transmit, slot, alg, r.certificate), `the card signs with the ${alg} key in ${slot}`);

          // step 434: the secret key disappeared from the device
          await assert.rejects(custody.sign(r.keyLabel, new Uint8Array(32)), (e: unknown) => e instanceof CustodyError && e.code === "NOT_FOUND");
          await assert.rejects(custody.wrapPrivateKey(r.keyLabel, { card: card.keySet }), (e: unknown) => e instanceof CustodyError && e.code === "NOT_FOUND");
          await assert.rejects(custody.publicKey(r.keyLabel), (e: unknown) => e instanceof CustodyError && e.code === "NOT_FOUND");
          assert.equal(await custody.keyInfo(r.keyLabel), undefined);
          assert.equal(await custody.hasKey(r.keyLabel), false);
          assert.deepEqual(await keygenLabels(custody), []);
          if (token) assert.equal(objectsOnToken(token, r.keyLabel), 0, "no object with the key's label is left on the token");

          // step 415: the device remembers the public key; the center would refuse it again
          assert.equal((await registry.find(r.publicKeySha256))?.applicantId, "user-1");
          issuedCard ??= card;
          issuedCert ??= r.certificate;
        }
      });

      await t.test("step 422: the request altered between device and center is refused as csr-signature", async () => {
        const card = await blankCard(custody);
        const before = await info(card.transmit);
        path.certifyVia = (req, center) => {
          const der = Buffer.from(fromPem(req.csr!, "CERTIFICATE REQUEST"));
          const at = der.indexOf(Buffer.from("P-1234567"));
          assert.ok(at > 0);
          der[at + 8] = "8".charCodeAt(0); // the ID number, one digit changed
          return center.certify({ ...req, csr: toPem(new Uint8Array(der), "CERTIFICATE REQUEST") });
        };
        try {
          await assert.rejects(issueInto(card), refusedBy("csr-signature", "certification-center"));
        } finally {
          path.certifyVia = undefined;
        }
        await nothingWritten(card, before);
      });

      await t.test("step 423: personal data entered at the device that differ from the registration → personal-data", async () => {
        const card = await blankCard(custody);
        const before = await info(card.transmit);
        await assert.rejects(issueInto(card, { personalData: { ...HANAKO, commonName: "Hanako Yamda" } }), refusedBy("personal-data", "certification-center"));
        await nothingWritten(card, before);
      });

      await t.test("step 424: the request replayed to the center ahead of the device → duplicate-public-key", async () => {
        const card = await blankCard(custody);
        const before = await info(card.transmit);
        let stolen: CertifyResult | undefined;
        path.certifyVia = async (req, center) => {
          stolen = await center.certify(req); // the attacker's copy wins the race …
          return center.certify(req); // … the device's own request comes second
        };
        try {
          await assert.rejects(issueInto(card), refusedBy("duplicate-public-key", "certification-center"));
        } finally {
          path.certifyVia = undefined;
        }
        assert.ok(stolen, "the replay itself was certified: it is the same signed request");
        await nothingWritten(card, before);
      });

      await t.test("step 433: a genuine certificate for another key is refused before anything is written", async () => {
        const card = await blankCard(custody);
        const before = await info(card.transmit);
        // the attacker's own key, certified by the genuine center for the same (registered) person
        const attacker = await SoftwareCustody.open({ path: join(dir, `attacker-${randomBytes(4).toString("hex")}.json`), key: randomBytes(32).toString("hex") });
        try {
          await attacker.generateKeyPair("mine", "P256");
          const theirs = await buildSignedCsr(attacker, "mine", HANAKO);
          path.certifyVia = (req, center) => center.certify({ ...req, csr: theirs.pem });
          await assert.rejects(issueInto(card), refusedBy("certificate-public-key", "device"));
        } finally {
          path.certifyVia = undefined;
          await attacker.close();
        }
        await nothingWritten(card, before);
      });

      await t.test("step 433: a certificate from another CA (same names, other keys) is refused, with or without its chain", async () => {
        const rogue = await centerSite();
        const card = await blankCard(custody);
        const before = await info(card.transmit);
        path.certifyVia = (req) => rogue.center.certify(req);
        try {
          await assert.rejects(issueInto(card), refusedBy("certificate-signature", "device"));
          path.chainVia = () => rogue.center.caCertificates();
          await assert.rejects(issueInto(card), refusedBy("certificate-chain", "device"));
        } finally {
          path.certifyVia = undefined;
          path.chainVia = undefined;
        }
        await nothingWritten(card, before);
      });

      await t.test("step 434 on the wrong card: the secure channel does not open, nothing is written, the certificate is revoked", async () => {
        const card = await blankCard(custody);
        const before = await info(card.transmit);
        const crlBefore = new x509.X509Crl((await path.crl()).slice().buffer as ArrayBuffer).entries.length;
        const otherCardsKeys: DerivedKeySetRef = { ...card.keySet, cardId: randomBytes(8).toString("hex") };
        let serial = "";
        await assert.rejects(
          device.issue({ applicantId: "user-1", personalData: HANAKO, alg: "P256", profile: "signature", slot: "9c", card: { transmit: card.transmit, keySet: otherCardsKeys } }),
          (e: unknown) => {
            refusedBy("card-write", "device")(e);
            serial = /certificate ([0-9a-f]+) revoked/.exec((e as KeyGenerationRefusal).detail)?.[1] ?? "";
            return true;
          },
        );
        assert.ok(serial, "the refusal names the revoked certificate");
        const entries = new x509.X509Crl((await path.crl()).slice().buffer as ArrayBuffer).entries;
        assert.equal(entries.length, crlBefore + 1);
        assert.ok(
          entries.some((r) => r.serialNumber.toLowerCase().replace(/^0+/, "") === serial.replace(/^0+/, "")),
          "the CRL lists it",
        );
        await nothingWritten(card, before);
      });

      await t.test("a card taken out: anyone reads the certificate, nobody without the card keys writes key or certificate", async () => {
        assert.ok(issuedCard && issuedCert, "the first subtest issued a card");
        const card = issuedCard;
        const apdu = new ApduClient(card.transmit);
        const piv = new PivClient(card.transmit);
        await piv.select();
        // read: GET DATA of the certificate object needs no key and no PIN
        assert.deepEqual(await piv.readCertificate(0x9c), issuedCert);
        // write, in the clear: refused
        const forged = new Uint8Array(issuedCert);
        forged[forged.length - 1] ^= 1;
        const putData = { cla: 0x00, ins: 0xdb, p1: 0x3f, p2: 0xff, data: concat(tlv(0x5c, Buffer.from(CERT_OBJECT["9c"], "hex")), pivCertObject(forged)) };
        assert.equal((await apdu.send(putData)).sw, 0x6982, "PUT DATA certificate without SCP03");
        const pkcs8 = new Uint8Array(generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey.export({ format: "der", type: "pkcs8" }));
        const importKey = { cla: 0x80, ins: 0xf0, p1: 0, p2: 0x9c, data: concat(tlv(0x80, Uint8Array.of(ALG_ID.P256)), tlv(0x81, pkcs8)) };
        assert.equal((await apdu.send(importKey)).sw, 0x6982, "IMPORT KEY without SCP03");
        await piv.verifyPin("123456"); // the user's PIN does not authorise writing either
        assert.equal((await apdu.send(putData)).sw, 0x6982, "PUT DATA with the PIN only");
        // a secure channel with keys other than the card's own (its old transport keys) does not open
        await assert.rejects(runScript(card.transmit, deliveryScript({ custody, ref: card.transport }, { keyRef: 0x9c, alg: "P256", cert: forged })));
        assert.deepEqual(await piv.readCertificate(0x9c), issuedCert, "the certificate is unchanged");
        assert.ok(await cardSignsFor(card.transmit, "9c", "P256", issuedCert), "and so is the key");
      });
    } finally {
      await custody.close();
    }
  });
}

test("step 433 in detail: subject, validity and anchor checks of verifyIssuedCertificate", async () => {
  const site = await centerSite();
  const key = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const spki = new Uint8Array(key.publicKey.export({ format: "der", type: "spki" }));
  const chain = site.issuing.chain();
  const anchors = [site.root.certificate];
  const refused = (check: string, f: () => void) => assert.throws(f, refusedBy(check, "device"));

  // a center that certified the right key under another name
  const other = await site.issuing.issue({ subject: { ...HANAKO, commonName: "Taro Suzuki" }, publicKey: spki, profile: "signature" });
  refused("certificate-subject", () => verifyIssuedCertificate(other.certificate, chain, anchors, { spki, subject: HANAKO }));
  // the right one passes; then the same one outside its validity, with no chain, with an anchor not pinned
  const key2 = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const spki2 = new Uint8Array(key2.publicKey.export({ format: "der", type: "spki" }));
  const good = await site.issuing.issue({ subject: HANAKO, publicKey: spki2, profile: "signature" });
  verifyIssuedCertificate(good.certificate, chain, anchors, { spki: spki2, subject: HANAKO });
  refused("certificate-validity", () => verifyIssuedCertificate(good.certificate, chain, anchors, { spki: spki2, subject: HANAKO }, new Date(good.notAfter.getTime() + 1000)));
  refused("certificate-chain", () => verifyIssuedCertificate(good.certificate, [], anchors, { spki: spki2, subject: HANAKO }));
  const unpinned = (await centerSite()).root.certificate;
  refused("certificate-chain", () => verifyIssuedCertificate(good.certificate, chain, [unpinned], { spki: spki2, subject: HANAKO }));
  // the issuing CA alone, anchored by the pinned root that signed it, is enough
  verifyIssuedCertificate(good.certificate, [site.issuing.certificate], anchors, { spki: spki2, subject: HANAKO });
  refused("certificate-format", () => verifyIssuedCertificate(new Uint8Array([0x30, 0x03, 0x02, 0x01, 0x00]), chain, anchors, { spki: spki2, subject: HANAKO }));
  refused("certificate-format", () => verifyIssuedCertificate(site.issuing.certificate, [site.root.certificate], anchors, { spki: spki2, subject: HANAKO }));
});

test("KeyGenerationDevice.create pins the center's root when no anchor is given", async () => {
  const site = await centerSite();
  const custody = await CUSTODIES[0][1]();
  try {
    const device = await KeyGenerationDevice.create({ custody, ca: site.center, registry: new MemoryIssuedKeyRegistry() });
    const card = await blankCard(custody);
    const r = await device.issue({ applicantId: "user-1", personalData: HANAKO, alg: "P384", profile: "keyManagement", slot: "9d", card: { transmit: card.transmit, keySet: card.keySet } });
    assert.ok(await cardSignsFor(card.transmit, "9d", "P384", r.certificate));
    await assert.rejects(
      device.issue({ applicantId: "user-1", personalData: HANAKO, alg: "P384", profile: "keyManagement", slot: "9b" as PivSlot, card: { transmit: card.transmit, keySet: card.keySet } }),
      /slot must be one of/,
    );
    card.close();
  } finally {
    await custody.close();
  }
});
