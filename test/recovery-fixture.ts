// Shared by the key reproduction API and CLI tests: the certification center the key generation device talks to,
// the escrow step (S1-S3: there is no route that issues a card key with escrow, so the key generation device runs
// here, in the server's process, on the server's custody and recovery service), and the card-side checks.
import assert from "node:assert/strict";
import { generateKeyPairSync, randomBytes, verify, X509Certificate } from "node:crypto";
import { CertificationAuthority } from "../src/ca/authority.ts";
import type { SubjectName } from "../src/ca/name.ts";
import { MemoryCaRepository } from "../src/ca/repository.ts";
import { nodeSigner } from "../src/ca/signer.ts";
import type { KeyPairAlg } from "../src/custody/custody.ts";
import { inCustody } from "../src/issuer/card-keys.ts";
import { CertificationCenter, MemoryRegistrationBook } from "../src/keygen/center.ts";
import { KeyGenerationDevice, type IssuedCard, type PivSlot } from "../src/keygen/device.ts";
import { MemoryIssuedKeyRegistry } from "../src/keygen/registry.ts";
import type { IssuerServer } from "../src/server/main.ts";
import type { Transmit } from "../src/terminal/apdu-client.ts";
import { PivClient } from "../src/terminal/piv-client.ts";

export const HANAKO: SubjectName = { country: "JP", organization: "Example Bank", commonName: "Hanako Yamada", serialNumber: "P-1234567" };

async function center(): Promise<{ center: CertificationCenter; root: Uint8Array }> {
  const root = await CertificationAuthority.createRoot({
    signer: nodeSigner(generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey),
    subject: { country: "JP", organization: "Certification Center", commonName: "Center Root CA" },
    validityDays: 3650,
    pathLength: 0,
    repository: new MemoryCaRepository(),
  });
  const book = new MemoryRegistrationBook();
  book.register("user-1", HANAKO);
  return { center: new CertificationCenter({ authority: root, registrations: book }), root: root.certificate };
}

/**
 * Seed 001 S3: the key generation device generates a key pair in the server's custody, has it certified, escrows
 * it under the card's policy (the server's recovery service) and writes it into the card through SCP03 with the
 * card's current key set (the issuer's record of card `cardId`).
 */
export async function issueEscrowed(server: Pick<IssuerServer, "custody" | "issuer" | "recovery">, cardId: string, transmit: Transmit, alg: KeyPairAlg = "P256", slot: PivSlot = "9c"): Promise<IssuedCard> {
  const site = await center();
  const device = await KeyGenerationDevice.create({
    custody: server.custody,
    ca: site.center,
    registry: new MemoryIssuedKeyRegistry(),
    trustAnchors: [site.root],
    escrow: server.recovery.escrowHook("keygen-device"),
  });
  const keys = server.issuer.keysOf(await server.issuer.currentKeySet(await server.issuer.card(cardId)));
  assert.ok(inCustody(keys));
  return device.issue({ applicantId: "user-1", personalData: HANAKO, alg, profile: slot === "9c" ? "signature" : "authentication", slot, card: { transmit, keySet: keys.ref }, escrow: { cardId } });
}

/** The card signs with the key in `slot`, verified with the certificate's public key; false when it cannot. */
export async function cardSignsFor(transmit: Transmit, slot: PivSlot, alg: KeyPairAlg, certificate: Uint8Array): Promise<boolean> {
  const piv = new PivClient(transmit);
  await piv.select();
  await piv.verifyPin("123456");
  const msg = randomBytes(48);
  try {
    const { signature, hash } = await piv.sign(parseInt(slot, 16), alg, msg);
    return verify(hash, msg, { key: new X509Certificate(certificate).publicKey, dsaEncoding: "der" }, signature);
  } catch {
    return false;
  }
}

/** The key is lost from the card (step S5): DELETE KEY with the user's PIN. */
export async function loseKey(transmit: Transmit, slot: PivSlot): Promise<void> {
  const piv = new PivClient(transmit);
  await piv.select();
  await piv.verifyPin("123456");
  const r = await piv.apdu.send({ cla: 0x80, ins: 0xf6, p1: 0, p2: parseInt(slot, 16) });
  assert.equal(r.sw, 0x9000, "DELETE KEY");
}

/** The FIG. 9 policy (testing.ts) for the API: user and credit company indispensable, the credit company after the user. */
export { fig9Policy, FIG9_ARBITRATORS, makeArbitrators } from "../src/recovery/testing.ts";
