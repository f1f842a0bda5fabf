// What the key generation device (and the reproduction device of embodiment 3, which writes exactly the same way)
// does to an inserted card, over SCP03 sessions whose keys stay in custody:
//   - readCardSecretId: GET DATA DF21 from the card's security domain — the card's secret ID, which the card gives
//     out only inside a session with R-ENCRYPTION (src/card/isd.ts), so it never crosses the terminal in clear.
//     Seed 001 FIG. 10 unit 24 registers it at issue and compares it before a reproduced key is written.
//   - writeKeyIntoCard: Sk[PRk] (the private key wrapped inside custody under the card's key set) by IMPORT KEY and
//     the certificate into its PIV object, in one session (seed 001 steps 319/434).
// Never: returns or logs a key; the secret ID is returned to the caller, who digests it and wipes it.

import type { KeyCustody, KeyPairAlg, KeySetRef } from "../custody/custody.ts";
import { deliveryScript, runScript, type CardScript } from "../issuer/card-scripts.ts";
import { ISD_AID } from "../protocol/scp03/sm.ts";
import { findTlv } from "../protocol/tlv.ts";
import { ApduError, type Transmit } from "../protocol/apdu-client.ts";

/** PIV key references the device writes (SP 800-73-4 Table 4b). */
export type PivSlot = "9a" | "9c" | "9d" | "9e";

/** The card inserted into the device (step 319/434): how to reach it, and its SCP03 key set in custody. */
export interface InsertedCard {
  transmit: Transmit;
  keySet: KeySetRef;
}

/** GP GET DATA (80 CA) of the card's secret ID, tag DF21. */
const GET_SECRET_ID = { cla: 0x80, ins: 0xca, p1: 0xdf, p2: 0x21, le: 256 } as const;

/**
 * Reads the card's secret ID through an SCP03 session at full protection (C-MAC, C-DECRYPTION, R-MAC,
 * R-ENCRYPTION) with the card's key set in custody. Throws when the session does not open (not this card's key
 * set) or the card does not give it. The caller owns the returned bytes and wipes them.
 */
export async function readCardSecretId(custody: KeyCustody, card: InsertedCard): Promise<Uint8Array> {
  let out: Uint8Array | undefined;
  const script: CardScript = {
    keys: { custody, ref: card.keySet },
    aid: ISD_AID,
    commands: [GET_SECRET_ID],
    check: (r) => {
      if (r[0].sw !== 0x9000) throw new ApduError(r[0].sw, "GET DATA secret ID");
      const v = findTlv(r[0].data, 0xdf21);
      if (v && v.length >= 8) out = Uint8Array.from(v);
      r[0].data.fill(0); // v is a view into it
      if (!out) throw new Error("the card's secret ID is missing or too short");
    },
  };
  await runScript(card.transmit, script);
  return out!;
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
    await runScript(card.transmit, deliveryScript({ custody, ref: card.keySet }, { keyRef: parseInt(key.slot, 16), alg: key.alg, skPrk, cert: key.certificate }));
  } finally {
    wrapped?.fill(0);
    skPrk?.fill(0);
  }
}
