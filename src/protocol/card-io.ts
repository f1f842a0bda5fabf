// What the key generation device (and the reproduction device of embodiment 3, which writes exactly the same way)
// sends an inserted card, over an SCP03 session whose keys are ScriptKeys (relay.ts: in clear, or a SessionSource
// onto key custody built by src/keygen/card-io.ts):
//   - readCardSecretId: GET DATA DF21 from the card's security domain — the card's secret ID, which the card gives
//     out only inside a session with R-ENCRYPTION (src/card/isd.ts), so it never crosses the terminal in clear.
//     Seed 001 FIG. 10 unit 24 registers it at issue and compares it before a reproduced key is written.
//   - writeKeyIntoCard: Sk[PRk] (the private key already wrapped under the card's key set, its KVN byte in front) by
//     IMPORT KEY and the certificate into its PIV object, in one session (seed 001 steps 319/434).
// Never: custody, a key store, or logging a key; the caller owns (and wipes) Sk[PRk] and the secret ID.

import { deliveryScript, runScript, type CardScript } from "./card-scripts.ts";
import type { ScriptKeys } from "./relay.ts";
import { ISD_AID } from "./scp03/sm.ts";
import { findTlv } from "./tlv.ts";
import { ApduError, type Transmit } from "./apdu-client.ts";
import type { KeyAlg } from "./types.ts";

/** PIV key references the device writes (SP 800-73-4 Table 4b). */
export type PivSlot = "9a" | "9c" | "9d" | "9e";

/** GP GET DATA (80 CA) of the card's secret ID, tag DF21. */
const GET_SECRET_ID = { cla: 0x80, ins: 0xca, p1: 0xdf, p2: 0x21, le: 256 } as const;

/**
 * Reads the card's secret ID through an SCP03 session at full protection (C-MAC, C-DECRYPTION, R-MAC,
 * R-ENCRYPTION) under `keys`. Throws when the session does not open (not this card's key set) or the card does
 * not give it. The caller owns the returned bytes and wipes them.
 */
export async function readCardSecretId(transmit: Transmit, keys: ScriptKeys): Promise<Uint8Array> {
  let out: Uint8Array | undefined;
  const script: CardScript = {
    keys,
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
  await runScript(transmit, script);
  return out!;
}

/** Steps 319/434: writes Sk[PRk] (KVN byte in front, as IMPORT KEY expects) and the certificate into `slot` through SCP03. */
export async function writeKeyIntoCard(transmit: Transmit, keys: ScriptKeys, key: { slot: PivSlot; alg: KeyAlg; skPrk: Uint8Array; certificate: Uint8Array }): Promise<void> {
  await runScript(transmit, deliveryScript(keys, { keyRef: parseInt(key.slot, 16), alg: key.alg, skPrk: key.skPrk, cert: key.certificate }));
}
