// Step 433: the key generation device checks the certificate the center sent back before it writes anything into
// the card (seed 001 embodiment 2; claims 22 and 33: "verifying the signed certification … such that the secret
// key and the certification are stored only when the signed certification is verified").
//
// The path from the center is not trusted (the seed's telephone line, ISDN, LAN): the certificate must
//   - be signed by the center's issuing CA, whose chain leads to a trust anchor pinned in the device
//     (not to whatever root the path offers) — "certificate-signature", "certificate-chain";
//   - be valid now — "certificate-validity";
//   - certify exactly the public key the device generated, byte for byte — "certificate-public-key";
//   - name exactly the personal data the device put into the request — "certificate-subject".
// Signatures are verified with Node's crypto (X509Certificate.verify); fields are read with @peculiar/x509.
// Path-length and name constraints are not evaluated: the chain is the center's own, pinned at commissioning.

import { X509Certificate as NodeCertificate } from "node:crypto";
import * as x509 from "../x509.ts";
import { InvalidSubjectError, parseName, subjectDifferences, type SubjectName } from "../ca/name.ts";
import { deviceRefusal } from "./errors.ts";

export interface CertificateExpectation {
  /** The SubjectPublicKeyInfo (DER) of the key the device generated. */
  spki: Uint8Array;
  /** The personal data the request named. */
  subject: SubjectName;
}

interface Parsed {
  node: NodeCertificate;
  fields: x509.X509Certificate;
  der: Uint8Array;
}

function parse(der: Uint8Array): Parsed {
  return { node: new NodeCertificate(Buffer.from(der)), fields: new x509.X509Certificate(der.slice().buffer as ArrayBuffer), der };
}

const sameBytes = (a: Uint8Array, b: Uint8Array): boolean => a.length === b.length && Buffer.from(a).equals(Buffer.from(b));

/** True when `child` names `parent` as its issuer and `parent`'s key verifies its signature. */
function signedBy(child: Parsed, parent: Parsed): boolean {
  try {
    return child.node.checkIssued(parent.node) && child.node.verify(parent.node.publicKey);
  } catch {
    return false;
  }
}

const within = (c: Parsed, now: Date): boolean => c.fields.notBefore.getTime() <= now.getTime() && now.getTime() <= c.fields.notAfter.getTime();

/**
 * Checks `certificate` (DER) against the center's `chain` (issuing CA first, root last, as CaClient.caCertificates
 * returns it) and the device's pinned `trustAnchors` (DER root certificates). Throws KeyGenerationRefusal naming
 * the first check that fails; returns nothing when all pass.
 */
export function verifyIssuedCertificate(certificate: Uint8Array, chain: readonly Uint8Array[], trustAnchors: readonly Uint8Array[], expect: CertificateExpectation, now: Date = new Date()): void {
  let leaf: Parsed;
  try {
    leaf = parse(certificate);
  } catch (e) {
    throw deviceRefusal("certificate-format", `the center's answer is not a DER X.509 certificate: ${(e as Error).message}`);
  }
  if (leaf.node.ca) throw deviceRefusal("certificate-format", "the certificate is a CA certificate, not an end-entity certificate");

  let cas: Parsed[];
  let anchors: Parsed[];
  try {
    cas = chain.map(parse);
    anchors = trustAnchors.map(parse);
  } catch (e) {
    throw deviceRefusal("certificate-chain", `a CA certificate does not parse: ${(e as Error).message}`);
  }
  if (cas.length === 0) throw deviceRefusal("certificate-chain", "the center sent no CA certificates");
  if (!signedBy(leaf, cas[0])) throw deviceRefusal("certificate-signature", "the certificate is not signed by the center's issuing CA");
  for (let i = 0; i < cas.length; i++) {
    if (!cas[i].node.ca) throw deviceRefusal("certificate-chain", `CA certificate ${i} is not a CA (basicConstraints)`);
    if (!within(cas[i], now)) throw deviceRefusal("certificate-chain", `CA certificate ${i} is not valid now`);
    if (i + 1 < cas.length && !signedBy(cas[i], cas[i + 1])) throw deviceRefusal("certificate-chain", `CA certificate ${i} is not signed by CA certificate ${i + 1}`);
  }
  const top = cas[cas.length - 1];
  const anchored = anchors.some((a) => sameBytes(a.der, top.der) || (a.node.ca && within(a, now) && signedBy(top, a)));
  if (!anchored) throw deviceRefusal("certificate-chain", "the chain does not lead to a trust anchor pinned in this device");
  if (!within(leaf, now)) throw deviceRefusal("certificate-validity", `the certificate is not valid now (${leaf.fields.notBefore.toISOString()} … ${leaf.fields.notAfter.toISOString()})`);

  if (!sameBytes(new Uint8Array(leaf.fields.publicKey.rawData), expect.spki)) throw deviceRefusal("certificate-public-key", "the certificate certifies another public key than the one generated here");
  let subject: SubjectName;
  try {
    subject = parseName(new Uint8Array(leaf.fields.subjectName.toArrayBuffer()));
  } catch (e) {
    if (e instanceof InvalidSubjectError) throw deviceRefusal("certificate-subject", e.message);
    throw e;
  }
  const diff = subjectDifferences(subject, expect.subject);
  if (diff.length) throw deviceRefusal("certificate-subject", `the certificate's subject differs from the request in: ${diff.join(", ")}`);
}
