// The key generation device's (and the reproduction device's) card I/O with the card's SCP03 key set in custody:
// the glue that asks custody for the session keys and for Sk[PRk], then sends through protocol/card-io.ts
// (readCardSecretId: GET DATA DF21 under R-ENCRYPTION, seed 001 FIG. 10 unit 24; writeKeyIntoCard: IMPORT KEY and
// the certificate, seed 001 steps 319/434).
// Never: returns or logs a key; the secret ID is returned to the caller, who digests it and wipes it.

import type { KeyCustody, KeyPairAlg, KeySetRef } from "../custody/custody.ts";
import { scriptKeys } from "../issuer/card-keys.ts";
import { readCardSecretId as readSecretId, writeKeyIntoCard as writeKey, type PivSlot } from "../protocol/card-io.ts";
import type { Transmit } from "../protocol/apdu-client.ts";

export type { PivSlot } from "../protocol/card-io.ts";

/** The card inserted into the device (step 319/434): how to reach it, and its SCP03 key set in custody. */
export interface InsertedCard {
  transmit: Transmit;
  keySet: KeySetRef;
}

/**
 * Reads the card's secret ID through an SCP03 session at full protection (C-MAC, C-DECRYPTION, R-MAC,
 * R-ENCRYPTION) with the card's key set in custody. Throws when the session does not open (not this card's key
 * set) or the card does not give it. The caller owns the returned bytes and wipes them.
 */
export async function readCardSecretId(custody: KeyCustody, card: InsertedCard): Promise<Uint8Array> {
  return readSecretId(card.transmit, scriptKeys({ custody, ref: card.keySet }));
}

/**
 * Steps 319/434: wraps the key pair `label` inside custody under the card's key set (Sk[PRk], with its key
 * version in front as the card's IMPORT KEY expects) and writes it and the certificate into `slot` through SCP03.
 */
export async function writeKeyIntoCard(custody: KeyCustody, card: InsertedCard, key: { label: string; slot: PivSlot; alg: KeyPairAlg; certificate: Uint8Array }): Promise<void> {
  let wrapped: Uint8Array | undefined;
  let skPrk: Uint8Array | undefined;
  try {
    wrapped = await custody.wrapPrivateKey(key.label, { card: card.keySet });
    skPrk = Uint8Array.from([card.keySet.kvn, ...wrapped]);
    await writeKey(card.transmit, scriptKeys({ custody, ref: card.keySet }), { slot: key.slot, alg: key.alg, skPrk, certificate: key.certificate });
  } finally {
    wrapped?.fill(0);
    skPrk?.fill(0);
  }
}
