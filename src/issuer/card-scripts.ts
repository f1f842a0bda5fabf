// Issuer-side APDU scripts over SCP03: what a server sends through the relaying terminal to personalise a card
// and to deliver keys online. Every command after the handshake is MACed (and, where it carries a secret,
// encrypted) under session keys derived from the card's static key set, so the terminal can only relay.

import { PivClient, PIV_AID, PIV_INS } from "../terminal/piv-client.ts";
import type { Transmit } from "../terminal/apdu-client.ts";
import { ApduError } from "../terminal/apdu-client.ts";
import { checkPutKeyResponse, putKeyCommand, Scp03Client, type Scp03Keys } from "../card/scp03/host.ts";
import { ISD_AID } from "../card/scp03/sm.ts";
import { ALG_ID, CERT_OBJECT, pivCertObject } from "../card/package.ts";
import type { KeyAlg, ScpKeySet } from "../card/state.ts";
import { tlv } from "../card/tlv.ts";

/** Full protection: C-MAC, C-DECRYPTION, R-MAC, R-ENCRYPTION. */
export const LEVEL_FULL = 0x33;

async function check(client: Scp03Client, cmd: Parameters<Scp03Client["send"]>[0], what: string): Promise<Uint8Array> {
  const r = await client.send(cmd);
  if (r.sw !== 0x9000) throw new ApduError(r.sw, what);
  return r.data;
}

async function selectAid(transmit: Transmit, aid: Uint8Array, what: string): Promise<void> {
  const p = new PivClient(transmit);
  await p.apdu.check({ cla: 0, ins: 0xa4, p1: 4, p2: 0, data: aid, le: 256 }, `SELECT ${what}`);
}

/**
 * Personalisation (seed 000 ST13-ST14): over the card's current key set (the transport key of a blank card),
 * PUT KEY replaces it with the card-unique key Sk and SET STATUS moves the card to SECURED.
 */
export async function personalise(transmit: Transmit, current: ScpKeySet, sk: ScpKeySet): Promise<void> {
  await selectAid(transmit, ISD_AID, "ISD");
  const client = await Scp03Client.open(transmit, current, { level: LEVEL_FULL, kvn: current.kvn });
  try {
    const newKeys: Scp03Keys & { kvn: number } = { kvn: sk.kvn, enc: sk.enc, mac: sk.mac, dek: sk.dek };
    const resp = await check(client, putKeyCommand(current.dek, newKeys, current.kvn), "PUT KEY");
    checkPutKeyResponse(resp, newKeys);
    await check(client, { cla: 0x80, ins: 0xf0, p1: 0x80, p2: 0x0f }, "SET STATUS SECURED");
  } finally {
    client.close();
  }
}

export interface OnlineCredential {
  keyRef: number;
  alg: KeyAlg;
  /** PKCS#8 DER; it crosses the terminal only inside C-DECRYPTION. */
  pkcs8?: Uint8Array;
  cert?: Uint8Array;
}

/**
 * Online delivery (seed 000 ST22-ST25, the SCP03 path as Dogtag TPS does it): SELECT PIV, open an SCP03 session
 * with the card key Sk on the PIV applet, IMPORT KEY under C-DECRYPTION and write the certificate object.
 */
export async function deliverOnline(transmit: Transmit, sk: ScpKeySet, c: OnlineCredential): Promise<void> {
  await selectAid(transmit, PIV_AID, "PIV");
  const client = await Scp03Client.open(transmit, sk, { level: LEVEL_FULL, kvn: sk.kvn });
  try {
    if (c.pkcs8) {
      const data = tlv(0x80, Uint8Array.of(ALG_ID[c.alg]));
      const key = tlv(0x81, c.pkcs8);
      await check(client, { cla: 0x80, ins: PIV_INS.IMPORT_KEY, p1: 0, p2: c.keyRef, data: Buffer.concat([data, key]) }, "IMPORT KEY");
    }
    if (c.cert) {
      const tag = CERT_OBJECT[c.keyRef.toString(16)];
      if (!tag) throw new RangeError(`no certificate object for key reference ${c.keyRef.toString(16)}`);
      const data = Buffer.concat([tlv(0x5c, Buffer.from(tag, "hex")), pivCertObject(c.cert)]);
      await check(client, { cla: 0x00, ins: 0xdb, p1: 0x3f, p2: 0xff, data }, "PUT DATA certificate");
    }
  } finally {
    client.close();
  }
}
