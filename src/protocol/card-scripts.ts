// The APDU sequences of card scripts that need no key and no custody: what the issuer's scripts
// (src/issuer/card-scripts.ts) send inside their secure-channel sessions. Here: online delivery (seed 000
// ST22-ST25) — PIV IMPORT KEY with Sk[PRk] (or a PKCS#8) and the certificate object written with PUT DATA.
//
// Never: a session, a key set or custody (the issuer's script opens the session and wraps the commands); this file
// only builds commands and names them for the script's check.

import type { ApduCommand } from "./apdu.ts";
import { ALG_ID, CERT_OBJECT, pivCertObject } from "./package.ts";
import { PIV_INS } from "./piv/client.ts";
import { concat, tlv } from "./tlv.ts";
import type { KeyAlg } from "./types.ts";

export interface OnlineCredential {
  keyRef: number;
  alg: KeyAlg;
  /** Sk[PRk] as package.ts wrapForCard / KeyCustody.wrapPrivateKey make it (with its KVN byte in front). */
  skPrk?: Uint8Array;
  /** A PKCS#8 in clear; it crosses the terminal only inside C-DECRYPTION. Prefer skPrk. */
  pkcs8?: Uint8Array;
  cert?: Uint8Array;
}

/** Online delivery's commands on the PIV applet, each with the name a failed answer is reported by. */
export function deliveryCommands(c: OnlineCredential): { commands: ApduCommand[]; what: string[] } {
  const commands: ApduCommand[] = [];
  const what: string[] = [];
  if (c.skPrk || c.pkcs8) {
    const key = c.skPrk ? tlv(0x83, c.skPrk) : tlv(0x81, c.pkcs8!);
    commands.push({ cla: 0x80, ins: PIV_INS.IMPORT_KEY, p1: 0, p2: c.keyRef, data: concat(tlv(0x80, Uint8Array.of(ALG_ID[c.alg])), key) });
    what.push("IMPORT KEY");
  }
  if (c.cert) {
    const tag = CERT_OBJECT[c.keyRef.toString(16)];
    if (!tag) throw new RangeError(`no certificate object for key reference ${c.keyRef.toString(16)}`);
    commands.push({ cla: 0x00, ins: 0xdb, p1: 0x3f, p2: 0xff, data: concat(tlv(0x5c, Buffer.from(tag, "hex")), pivCertObject(c.cert)) });
    what.push("PUT DATA certificate");
  }
  return { commands, what };
}
