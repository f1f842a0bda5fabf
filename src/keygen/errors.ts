// Named refusals of the key generation flow (seed 001 embodiment 2: steps 414, 422-424 and 433).
//
// Whichever device refused, the caller sees one error type naming the check that failed and where it ran:
//   by "certification-center": "csr-signature" (422, the request was altered on the path), "personal-data" (423),
//     "duplicate-public-key" (424, checked again atomically when the certificate is recorded), or any other
//     CaRefusal check name ("request", "profile", "subject", "public-key", "csr-format");
//   by "device": "duplicate-public-key" (414, its own registry), and the step 433 checks on the certificate
//     that came back — "certificate-format", "certificate-signature", "certificate-chain", "certificate-validity",
//     "certificate-public-key", "certificate-subject" — and "card-write" (434); with an escrow (seed 001 step S3)
//     "device-secret-id" (the card's secret ID could not be read under SCP03) and "escrow" (the hook refused).
// Details name fields and reasons, never key material or personal data values.
//
// A refusal is a DomainError (src/util/errors.ts) of kind refused (422 "keygen-refused", naming `check` and
// `refusedBy`), except when the card left its active state mid-session: the card's state refusal that stopped the
// device (its cause, check card_state) is then the answer.

import { DomainError, type ProblemShape } from "../util/errors.ts";

export type DeviceCheck =
  | "duplicate-public-key"
  | "certificate-format"
  | "certificate-signature"
  | "certificate-chain"
  | "certificate-validity"
  | "certificate-public-key"
  | "certificate-subject"
  | "card-write"
  | "device-secret-id"
  | "escrow";

export type RefusedBy = "device" | "certification-center";

export class KeyGenerationRefusal extends DomainError {
  /** What was refused, once it exists (the device sets these; the audit entry "keygen.refused" records them): the SHA-256 of the generated public key ... */
  publicKeySha256?: string;
  /** ... and the serial of the certificate the center issued for it. */
  serial?: string;

  constructor(
    override readonly check: DeviceCheck | (string & {}),
    readonly by: RefusedBy,
    readonly detail: string,
    options?: { cause?: unknown },
  ) {
    super("refused", check, `${by === "device" ? "key generation device" : "certification center"} refused (check "${check}"): ${detail}`, { refusedBy: by }, options);
    this.name = "KeyGenerationRefusal";
  }

  override problem(): ProblemShape {
    return { type: "keygen-refused", title: `Refused: ${this.check}`, detail: this.detail };
  }

  /** The card's state refusal (check card_state) that stopped the device mid-session, when that is the cause; else this. */
  override answeredWith(): DomainError {
    return this.cause instanceof DomainError && this.cause.check === "card_state" ? this.cause.answeredWith() : this;
  }
}

/** A refusal by the device itself, at `check`. */
export const deviceRefusal = (check: DeviceCheck, detail: string, options?: { cause?: unknown }): KeyGenerationRefusal => new KeyGenerationRefusal(check, "device", detail, options);
