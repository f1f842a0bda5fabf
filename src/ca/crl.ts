// Certificate revocation lists, version 2 (RFC 5280 §5), signed by a CaSigner.
//
// Entries carry a reasonCode extension (§5.3.1) except for "unspecified", which RFC 5280 says SHOULD be
// absent, and an invalidityDate (§5.3.2) when the revoker knows when the key became unsafe.

import * as der from "./der.ts";
import { authorityKeyIdentifier, crlNumber, invalidityDate, reasonCode } from "./extensions.ts";
import { serialFromHex, signToBeSigned, type SignOptions } from "./certificate.ts";
import { signatureAlgorithm, type CaSigner } from "./signer.ts";

/** CRLReason (RFC 5280 §5.3.1). removeFromCRL (8) belongs to delta CRLs, which this CA does not issue. */
export const REVOCATION_REASONS = {
  unspecified: 0,
  keyCompromise: 1,
  cACompromise: 2,
  affiliationChanged: 3,
  superseded: 4,
  cessationOfOperation: 5,
  certificateHold: 6,
  privilegeWithdrawn: 9,
  aACompromise: 10,
} as const;
export type RevocationReason = keyof typeof REVOCATION_REASONS;

export function isRevocationReason(r: unknown): r is RevocationReason {
  return typeof r === "string" && Object.prototype.hasOwnProperty.call(REVOCATION_REASONS, r);
}

export interface CrlEntry {
  /** Serial in hex. */
  serial: string;
  revokedAt: Date;
  reason: RevocationReason;
  invalidityDate?: Date;
}

export interface CrlFields {
  /** DER Name of the issuer (the CA certificate's subject). */
  issuer: Uint8Array;
  /** The CA's key identifier, for the AuthorityKeyIdentifier extension (§5.2.1, MUST). */
  authorityKeyId: Uint8Array;
  thisUpdate: Date;
  nextUpdate: Date;
  /** cRLNumber (§5.2.3, MUST), monotonically increasing per CA. */
  number: number;
  entries: readonly CrlEntry[];
}

const V2 = Uint8Array.of(der.TAG.INTEGER, 1, 1);

export function encodeTbsCertList(f: CrlFields, signatureAlgorithmId: Uint8Array): Uint8Array {
  const parts = [V2, signatureAlgorithmId, f.issuer, der.time(f.thisUpdate), der.time(f.nextUpdate)];
  if (f.entries.length) {
    parts.push(
      der.sequence(
        ...f.entries.map((e) => {
          const exts: Uint8Array[] = [];
          if (e.reason !== "unspecified") exts.push(reasonCode(REVOCATION_REASONS[e.reason]));
          if (e.invalidityDate) exts.push(invalidityDate(e.invalidityDate));
          const fields = [der.unsignedInteger(serialFromHex(e.serial)), der.time(e.revokedAt)];
          if (exts.length) fields.push(der.sequence(...exts));
          return der.sequence(...fields);
        }),
      ),
    );
  }
  parts.push(der.explicit(0, der.sequence(authorityKeyIdentifier(f.authorityKeyId), crlNumber(f.number))));
  return der.sequence(...parts);
}

/** Builds and signs a CRL; returns its DER. */
export async function signCrl(f: CrlFields, signer: CaSigner, opts?: SignOptions): Promise<Uint8Array> {
  if (!(f.nextUpdate.getTime() > f.thisUpdate.getTime())) throw new Error("CRL nextUpdate must be after thisUpdate");
  return signToBeSigned(encodeTbsCertList(f, signatureAlgorithm(signer.alg).algorithmIdentifier), signer, opts);
}
