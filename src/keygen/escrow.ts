// The key generation device's hook for seed 001 embodiment 3, step S3: "the personal portable device 1 with the
// secret key stored therein is issued ... while secret key partial data 7 obtained by dividing the secret key are
// distributed among designated arbitrators". The device calls it while the key pair still exists in custody —
// after the certificate is verified, before the key is written into the card and destroyed — with the card's
// secret ID read through SCP03 (FIG. 10 unit 24). src/recovery/service.ts implements it.
//
// The hook receives the custody label of the key, never the key: it wraps the key inside custody and splits the
// wrapped form. The device secret ID it receives is secret; the hook keeps a digest of it, and the device wipes
// the bytes once the hook returns.

import type { KeyPairAlg, KeySetRef } from "../custody/custody.ts";
import type { PivSlot } from "./card-io.ts";

export interface EscrowInput {
  /** The card record the escrow belongs to (the policy's card id; a reissued card keeps it). */
  cardId: string;
  /** The user as the center knows them. */
  applicantId: string;
  /** The key pair in custody, still present (extractable only wrapped). */
  keyLabel: string;
  alg: KeyPairAlg;
  slot: PivSlot;
  /** SubjectPublicKeyInfo DER of the key pair (FIG. 10 unit 23). */
  spki: Uint8Array;
  /** The certificate that will be written into the card with the key. */
  certificate: Uint8Array;
  serial: string;
  /** The inserted card's SCP03 key set in custody (a reference, not a key). */
  keySet: KeySetRef;
  /** The card's secret ID (GET DATA DF21 under R-ENCRYPTION). Secret: digest it, do not keep or log it. */
  deviceSecretId: Uint8Array;
}

export interface KeyEscrowHook {
  /** Step S3: escrows the key (and registers the device). Throws to stop the issue. */
  escrow(input: EscrowInput): Promise<{ escrowId: string }>;
  /** The issue did not complete after `escrow` (writing into the card failed): forget that escrow. */
  abandon(escrowId: string, reason: string): Promise<void>;
}
