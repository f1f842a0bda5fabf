// Issuer-side APDU scripts over SCP03: what a server sends through the relaying terminal to personalise a card
// and to deliver keys online. Every command after the handshake is MACed (and, where it carries a secret,
// encrypted) under session keys derived from the card's static key set, so the terminal can only relay.
//
// The card's keys are reached either in clear (a ScpKeySet: tests, the demo, a software issuer) or through key
// custody (KeyCustody + KeySetRef): then the static keys never leave custody — session keys and cryptograms
// come from custody.scp03Session, PUT KEY data from custody.putKeyData, Sk[PRk] from custody.wrapPrivateKey.

import { PivClient, PIV_AID, PIV_INS } from "../terminal/piv-client.ts";
import type { Transmit } from "../terminal/apdu-client.ts";
import { ApduError } from "../terminal/apdu-client.ts";
import { checkPutKeyResponse, putKeyCommand, Scp03Client, Scp03Error, type SessionSource } from "../card/scp03/host.ts";
import { ISD_AID } from "../card/scp03/sm.ts";
import { ALG_ID, CERT_OBJECT, pivCertObject } from "../card/package.ts";
import type { KeyAlg, ScpKeySet } from "../card/state.ts";
import { tlv } from "../card/tlv.ts";
import type { KeyCustody, KeySetRef } from "../custody/custody.ts";

/** Full protection: C-MAC, C-DECRYPTION, R-MAC, R-ENCRYPTION. */
export const LEVEL_FULL = 0x33;

/** A card key set: in clear, or a reference into key custody. */
export type CardKeys = ScpKeySet | { custody: KeyCustody; ref: KeySetRef };

const inCustody = (k: CardKeys): k is { custody: KeyCustody; ref: KeySetRef } => "custody" in k;
const kvnOf = (k: CardKeys): number => (inCustody(k) ? k.ref.kvn : k.kvn);

function sessionKeys(k: CardKeys): ScpKeySet | SessionSource {
  if (!inCustody(k)) return k;
  return (hc, cc) => k.custody.scp03Session(k.ref, hc, cc);
}

/** Opens an SCP03 session with the selected application, at full protection. */
export async function openSession(transmit: Transmit, keys: CardKeys): Promise<Scp03Client> {
  return Scp03Client.open(transmit, sessionKeys(keys), { level: LEVEL_FULL, kvn: kvnOf(keys) });
}

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
 * Personalisation (seed 000 ST13-ST14) and card key rotation in place: over the card's current key set (the
 * transport key of a blank card), PUT KEY installs `next` — replacing the current key set, or added beside it
 * (`keep`, embodiments 4 and 5: a card holding Sk1 and Sk2) — and SET STATUS moves a new card to SECURED.
 */
export async function personalise(transmit: Transmit, current: CardKeys, next: CardKeys, opts: { keep?: boolean } = {}): Promise<void> {
  if (inCustody(current) !== inCustody(next)) throw new TypeError("current and next key sets must both be in custody or both in clear");
  await selectAid(transmit, ISD_AID, "ISD");
  const client = await openSession(transmit, current);
  const replace = opts.keep ? 0 : kvnOf(current);
  try {
    if (inCustody(current) && inCustody(next)) {
      const pk = await current.custody.putKeyData(current.ref, next.ref);
      const resp = await check(client, { cla: 0x80, ins: 0xd8, p1: replace, p2: 0x81, data: pk.data, le: 256 }, "PUT KEY");
      if (!Buffer.from(resp).equals(Buffer.from(pk.expectedResponse))) throw new Scp03Error("PUT KEY: the card's key check values differ from custody's");
    } else {
      const cur = current as ScpKeySet;
      const n = next as ScpKeySet;
      const newKeys = { kvn: n.kvn, enc: n.enc, mac: n.mac, dek: n.dek };
      checkPutKeyResponse(await check(client, putKeyCommand(cur.dek, newKeys, replace), "PUT KEY"), newKeys);
    }
    const st = await client.send({ cla: 0x80, ins: 0xf0, p1: 0x80, p2: 0x0f });
    // 6985: already SECURED (a rotation on a card in the field); anything else is a failure.
    if (st.sw !== 0x9000 && st.sw !== 0x6985) throw new ApduError(st.sw, "SET STATUS SECURED");
  } finally {
    client.close();
  }
}

export interface OnlineCredential {
  keyRef: number;
  alg: KeyAlg;
  /** Sk[PRk] as package.ts wrapForCard / KeyCustody.wrapPrivateKey make it (with its KVN byte in front). */
  skPrk?: Uint8Array;
  /** A PKCS#8 in clear; it crosses the terminal only inside C-DECRYPTION. Prefer skPrk. */
  pkcs8?: Uint8Array;
  cert?: Uint8Array;
}

/**
 * Online delivery (seed 000 ST22-ST25, the SCP03 path as Dogtag TPS does it): SELECT PIV, open an SCP03 session
 * with the card key Sk on the PIV applet, IMPORT KEY and write the certificate object.
 */
export async function deliverOnline(transmit: Transmit, keys: CardKeys, c: OnlineCredential): Promise<void> {
  await selectAid(transmit, PIV_AID, "PIV");
  const client = await openSession(transmit, keys);
  try {
    if (c.skPrk || c.pkcs8) {
      const key = c.skPrk ? tlv(0x83, c.skPrk) : tlv(0x81, c.pkcs8!);
      const data = Buffer.concat([tlv(0x80, Uint8Array.of(ALG_ID[c.alg])), key]);
      await check(client, { cla: 0x80, ins: PIV_INS.IMPORT_KEY, p1: 0, p2: c.keyRef, data }, "IMPORT KEY");
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
