// The newcomer's demo (npm run demo): a blank virtual card is personalised over SCP03 with a card-unique key Sk,
// receives one key and certificate online through an SCP03 session with C-DECRYPTION (slot 9A) and one offline
// as a sealed package that the terminal relays (slot 9C), then signs with both; each signature is verified
// against its certificate. Everything runs in-process on the embedded defaults: no services needed.

import { createPublicKey, generateKeyPairSync, randomBytes, verify, X509Certificate } from "node:crypto";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createCard, transportKeySet } from "../card/card.ts";
import type { CardRuntime } from "../card/runtime.ts";
import { sealPackage } from "../protocol/package.ts";
import type { ScpKeySet } from "../card/state.ts";
import { createCertificateAuthority, issueCertificate } from "../ca/x509-issuer.ts";
import { deliverOnline, personalise } from "../issuer/card-scripts.ts";
import { InProcessTransport } from "../transport/transport.ts";
import { readCardInfo, type CardInfo } from "../protocol/card-info.ts";
import { PivClient, SLOT } from "../protocol/piv/client.ts";

export interface DemoOptions {
  dir: string;
  log?: (line: string) => void;
  pin?: string;
}

export interface DemoResult {
  card: CardRuntime;
  cardPath: string;
  imageKeyPath: string;
  /** The issuer's copy of the card key Sk (a real issuer keeps it in key custody). */
  sk: ScpKeySet;
  caCertPem: string;
  info: CardInfo;
  signatures: { slot: string; verified: boolean }[];
}

function newKeySet(kvn: number): ScpKeySet {
  const k = () => randomBytes(16).toString("hex");
  return { kvn, enc: k(), mac: k(), dek: k() };
}

export async function runDemo(o: DemoOptions): Promise<DemoResult> {
  const log = o.log ?? (() => {});
  const pin = o.pin ?? "123456";
  mkdirSync(o.dir, { recursive: true });
  const cardPath = join(o.dir, "demo.card");
  const imageKeyPath = join(o.dir, "demo.image-key");
  rmSync(cardPath, { force: true });
  const imageKey = randomBytes(32);
  writeFileSync(imageKeyPath, imageKey.toString("hex") + "\n", { mode: 0o600 });

  // ST11-ST15: the factory makes a blank card with its own transport keys, diversified from the manufacturer's
  // master key (KMC) and the card ID; the card issuing machine, which has the KMC too, writes Sk into it.
  const kmc = new Uint8Array(randomBytes(16));
  const factoryCardId = new Uint8Array(randomBytes(8));
  const card = createCard(cardPath, imageKey, { kmc, cardId: factoryCardId });
  const terminal = new InProcessTransport(card);
  const transmit = (a: Uint8Array) => terminal.transmit(a);
  log(`1. blank card created: ${cardPath} (encrypted at rest; image key in ${imageKeyPath}), transport keys of its own from the manufacturer's KMC`);
  const sk = newKeySet(0x01);
  await personalise(transmit, transportKeySet(kmc, factoryCardId), sk);
  kmc.fill(0);
  log("2. personalised over SCP03: transport keys 0x30 replaced by the card-unique key Sk (KVN 01), card SECURED");

  // ST16-ST21: the issuer generates key pairs and has the CA certify them.
  const ca = await createCertificateAuthority("CN=cardkms demo CA");
  const info0 = await readCardInfo(transmit);
  if (!("cardId" in info0)) throw new Error("card terminated during the demo");
  const cardId = info0.cardId;
  const online = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const onlineCert = await issueCertificate(ca, { subject: `CN=Demo User (auth), 2.5.4.5=${cardId}`, publicKey: online.publicKey, usage: "authentication" });
  const offline = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const offlineCert = await issueCertificate(ca, { subject: `CN=Demo User (signature), 2.5.4.5=${cardId}`, publicKey: offline.publicKey, usage: "signature" });

  // ST22-ST25, online: an SCP03 session the server drives, key under C-DECRYPTION.
  await deliverOnline(transmit, sk, {
    keyRef: SLOT.authentication,
    alg: "P256",
    pkcs8: new Uint8Array(online.privateKey.export({ format: "der", type: "pkcs8" })),
    cert: new Uint8Array(onlineCert.rawData),
  });
  log("3. slot 9A: P-256 key + certificate delivered online through SCP03 (C-MAC, C-DECRYPTION, R-MAC, R-ENCRYPTION)");

  // ST22-ST25, offline: a sealed package that can sit on the terminal until the user loads it.
  const pkg = sealPackage(sk, {
    cardId,
    keyRef: "9c",
    seq: 1,
    alg: "P256",
    pkcs8: new Uint8Array(offline.privateKey.export({ format: "der", type: "pkcs8" })),
    cert: new Uint8Array(offlineCert.rawData),
  });
  writeFileSync(join(o.dir, "slot-9c.package"), pkg);
  const piv = new PivClient(transmit);
  await piv.select();
  await piv.loadPackage(pkg);
  log(`4. slot 9C: sealed package (${pkg.length} bytes, bound to card ${cardId}, sequence 1) relayed by the terminal and loaded`);

  // The card signs; the signatures verify against the certificates the CA issued.
  const message = Buffer.from(`cardkms demo ${new Date().toISOString()}`);
  const signatures: DemoResult["signatures"] = [];
  for (const ref of [SLOT.authentication, SLOT.signature]) {
    await piv.verifyPin(pin); // 9C has the "PIN always" rule: VERIFY right before each signature
    const { signature } = await piv.sign(ref, "P256", message);
    const der = await piv.readCertificate(ref);
    if (!der) throw new Error(`no certificate in slot ${ref.toString(16)}`);
    const cert = new X509Certificate(der);
    const ok = verify("sha256", message, { key: createPublicKey(cert.publicKey.export({ format: "pem", type: "spki" })), dsaEncoding: "der" }, signature);
    const chained = cert.verify(createPublicKey(ca.cert.toString("pem")));
    signatures.push({ slot: ref.toString(16), verified: ok && chained });
    log(
      `5. slot ${ref.toString(16).toUpperCase()} signed "${message}" -> signature ${ok ? "VERIFIES" : "DOES NOT VERIFY"} against ${cert.subject.replace(/\n/g, ", ")} (issued by the demo CA: ${chained})`,
    );
  }
  const info = await readCardInfo(transmit);
  if (!("cardId" in info)) throw new Error("card terminated during the demo");
  writeFileSync(join(o.dir, "ca.pem"), ca.cert.toString("pem") + "\n");
  return { card, cardPath, imageKeyPath, sk, caCertPem: ca.cert.toString("pem"), info, signatures };
}
