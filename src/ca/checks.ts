// Named refusals and the checks a certification center runs before it signs (seed 001, steps 421-432).
//
// Every refusal names the check that failed, so the requester (and the audit log) can tell tampering on the
// path ("csr-signature") from a registration mismatch ("personal-data") or a reused key
// ("duplicate-public-key"). Details name fields, never personal data values.
//
// A refusal is a DomainError (src/util/errors.ts): a refusal of kind refused, or not_found for a serial this CA
// never issued, answered as the CA protocol's problem (client.ts CaProblem: type urn:cardkms:ca:refused, `check`).

import { DomainError, type ProblemShape } from "../util/errors.ts";
import type { SubjectName } from "./name.ts";
import { subjectDifferences } from "./name.ts";
import type { CertificateProfile } from "./profile.ts";
import type { SubjectPublicKey } from "./spki.ts";

/** Check names the CA itself uses; extra checks add their own. */
export type BuiltInCheck =
  | "request" // malformed request (missing/extra fields, bad base64)
  | "profile" // unknown profile
  | "subject" // subject not acceptable
  | "public-key" // key type, size or value not acceptable (spki.ts: e.g. an EC point off the curve, e < 2^16+1)
  | "public-key-encoding" // the key is not written in its one DER encoding (e.g. an INTEGER with a leading 00)
  | "csr-format" // not a DER PKCS#10 request, or its subject has attributes the CA does not certify
  | "csr-signature" // the request's self-signature does not verify (tampered on the path)
  | "proof-of-possession" // a bare public key from a requester that does not hold it in custody (ca-routes.ts)
  | "duplicate-public-key" // the key (any encoding of it) was certified before
  | "unknown-serial" // revocation of a serial this CA never issued
  | "revocation-reason";

/** The problem type of a CA refusal on the wire (client.ts CaProblem). */
export const CA_REFUSED_TYPE = "urn:cardkms:ca:refused";

export class CaRefusal extends DomainError {
  constructor(
    override readonly check: BuiltInCheck | (string & {}),
    readonly detail: string,
  ) {
    super(check === "unknown-serial" ? "not_found" : "refused", check, `refused by check "${check}": ${detail}`);
    this.name = "CaRefusal";
  }

  override problem(): ProblemShape {
    return { type: CA_REFUSED_TYPE, title: "Refused by the certification authority", detail: this.detail };
  }
}

/** What a check sees: the request as the CA is about to certify it. */
export interface IssuanceContext {
  subject: SubjectName;
  publicKey: SubjectPublicKey;
  profile: CertificateProfile;
  /** The issuer's user ID the request is for, when given. */
  applicantId?: string;
  /** True when the request came as a PKCS#10 CSR whose signature verified. */
  fromCsr: boolean;
}

export type CheckOutcome = { ok: true } | { ok: false; detail: string };

/** An extra check run before signing; a failure becomes a CaRefusal named `name`. */
export interface IssuanceCheck {
  readonly name: string;
  check(ctx: IssuanceContext): Promise<CheckOutcome>;
}

/**
 * Step 423: the personal data in the request must match what the user registered directly with the center.
 * `registered` looks the applicant up in the registration records (the CA does not own them).
 */
export function personalDataCheck(registered: (applicantId: string) => Promise<SubjectName | undefined>): IssuanceCheck {
  return {
    name: "personal-data",
    async check(ctx) {
      if (!ctx.applicantId) return { ok: false, detail: "request names no applicant to compare with" };
      const reg = await registered(ctx.applicantId);
      if (!reg) return { ok: false, detail: "applicant has no registration at the certification center" };
      const diff = subjectDifferences(ctx.subject, reg);
      return diff.length ? { ok: false, detail: `request differs from registration in: ${diff.join(", ")}` } : { ok: true };
    },
  };
}
