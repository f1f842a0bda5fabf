// Certificate profiles: what an end-entity certificate of a given purpose looks like — policy as data.
//
// A profile is plain JSON (name, purpose, validity, optional extended key usages) so that operators can
// configure it; `validateProfile` gives the error that says which field is wrong.

import { DomainError } from "../util/errors.ts";
import { EKU, KeyUsageFlags } from "./extensions.ts";

/** The card key's role, as the issuing service distributes them (signature, authentication, key management). */
export type KeyPurpose = "signature" | "authentication" | "keyManagement";
export const KEY_PURPOSES: readonly KeyPurpose[] = ["signature", "authentication", "keyManagement"];

export interface CertificateProfile {
  name: string;
  purpose: KeyPurpose;
  /** notAfter − notBefore, in days (clamped so a certificate never outlives its CA). */
  validityDays: number;
  /** notBefore is set this many seconds in the past, to tolerate relying parties with slow clocks. Default 300. */
  backdateSeconds?: number;
  /** Extended key usage OIDs; omitted means no EKU extension. */
  extendedKeyUsage?: string[];
}

/** A certificate profile that is not one (a DomainError invalid, check "profile"). */
export class InvalidProfileError extends DomainError {
  constructor(message: string) {
    super("invalid", "profile", message);
    this.name = "InvalidProfileError";
  }
}

export function validateProfile(p: CertificateProfile): void {
  const where = `profile ${JSON.stringify(p?.name ?? "?")}`;
  if (typeof p !== "object" || p === null) throw new InvalidProfileError("profile must be an object");
  if (typeof p.name !== "string" || !/^[A-Za-z0-9_.-]{1,64}$/.test(p.name)) throw new InvalidProfileError(`${where}: name must be 1-64 of A-Z a-z 0-9 _ . -`);
  if (!KEY_PURPOSES.includes(p.purpose)) throw new InvalidProfileError(`${where}: purpose must be one of ${KEY_PURPOSES.join(", ")}`);
  if (!Number.isInteger(p.validityDays) || p.validityDays < 1 || p.validityDays > 3650) throw new InvalidProfileError(`${where}: validityDays must be an integer 1..3650`);
  if (p.backdateSeconds !== undefined && (!Number.isInteger(p.backdateSeconds) || p.backdateSeconds < 0 || p.backdateSeconds > 86400)) {
    throw new InvalidProfileError(`${where}: backdateSeconds must be an integer 0..86400`);
  }
  if (p.extendedKeyUsage !== undefined) {
    if (!Array.isArray(p.extendedKeyUsage) || p.extendedKeyUsage.length === 0) throw new InvalidProfileError(`${where}: extendedKeyUsage must be a non-empty array of OIDs`);
    for (const o of p.extendedKeyUsage) if (typeof o !== "string" || !/^[0-2](\.\d+)+$/.test(o)) throw new InvalidProfileError(`${where}: extendedKeyUsage: "${o}" is not a dotted OID`);
  }
}

/**
 * keyUsage bits for a purpose (RFC 5280 §4.2.1.3). Key management depends on the key: an RSA key is used to
 * transport keys (keyEncipherment), an EC key to agree them (keyAgreement).
 */
export function keyUsageFor(purpose: KeyPurpose, ecKey: boolean): number {
  switch (purpose) {
    case "signature":
      return KeyUsageFlags.digitalSignature | KeyUsageFlags.nonRepudiation;
    case "authentication":
      return KeyUsageFlags.digitalSignature;
    case "keyManagement":
      return ecKey ? KeyUsageFlags.keyAgreement : KeyUsageFlags.keyEncipherment;
  }
}

/** The three card-key profiles the issuing service uses unless configured otherwise. */
export const DEFAULT_PROFILES: readonly CertificateProfile[] = [
  { name: "signature", purpose: "signature", validityDays: 730, extendedKeyUsage: [EKU.emailProtection] },
  { name: "authentication", purpose: "authentication", validityDays: 730, extendedKeyUsage: [EKU.clientAuth, EKU.smartcardLogon] },
  { name: "keyManagement", purpose: "keyManagement", validityDays: 730, extendedKeyUsage: [EKU.emailProtection] },
];
