// Issuer-side APDU scripts over SCP03: what a server sends through the relaying terminal to personalise a card
// and to deliver keys online. Every command after the handshake is MACed (and, where it carries a secret,
// encrypted) under session keys derived from the card's static key set, so the terminal can only relay.
//
// The card's keys are reached either in clear (a ScpKeySet: tests, the demo, a software issuer) or through key
// custody (KeyCustody + KeySetRef): then the static keys never leave custody — session keys and cryptograms
// come from custody.scp03Session, PUT KEY data from custody.putKeyData, Sk[PRk] from custody.wrapPrivateKey.
// The script type, runScript's engine and the commands that need neither (online delivery's, personalisation's
// around PUT KEY) are in protocol/card-scripts.ts; here the issuer's key sets become the protocol's ScriptKeys.

import { deliveryScript as deliveryScriptOf, personalisationCommands, runScript as runScriptHere, type CardScript as ProtocolCardScript, type OnlineCredential } from "../protocol/card-scripts.ts";
import type { Transmit } from "../protocol/apdu-client.ts";
import { checkPutKeyResponse, putKeyCommand, Scp03Error } from "../protocol/scp03/host.ts";
import type { ApduCommand } from "../protocol/apdu.ts";
import type { RelayResult } from "./relay.ts";
import { inCustody, kvnOf, scriptKeys, type CardKeys } from "./card-keys.ts";
export { LEVEL_FULL, openSession, type CardKeys } from "./card-keys.ts";
export type { OnlineCredential } from "../protocol/card-scripts.ts";
import { ISD_AID } from "../protocol/scp03/sm.ts";
import type { ScpKeySet } from "../card/state.ts";
import type { DerivedKeySetRef, KeyCustody, KeySetRef } from "../custody/custody.ts";
import { transportKeysFor, type TransportOptions } from "./transport-keys.ts";

/** A card script (protocol/card-scripts.ts) whose key set is in clear or in key custody. */
export type CardScript = ProtocolCardScript<CardKeys>;

/** Runs a script on a card reachable from here (protocol/card-scripts.ts), its keys reached through custody when there. */
export async function runScript(transmit: Transmit, script: CardScript): Promise<RelayResult[]> {
  return runScriptHere(transmit, { ...script, keys: scriptKeys(script.keys) });
}

/**
 * Personalisation (seed 000 ST13-ST14) and card key rotation in place: over the card's current key set (the
 * transport key of a blank card), PUT KEY installs `next` — replacing the current key set, or added beside it
 * (`keep`, embodiments 4 and 5: a card holding Sk1 and Sk2) — and SET STATUS moves a new card to SECURED. The
 * script succeeds only when the card itself confirms SECURED: GET STATUS, answered under the session's R-MAC, so a
 * relaying terminal cannot forge it. SET STATUS's own answer is not enough: a card already SECURED (a rotation in
 * the field) refuses it with 6985, and an error status word carries no MAC, so a terminal could answer 6985 for a
 * card that never got the command (the next command's C-MAC then fails at the card, and GET STATUS with it).
 * `predecessor` (with `keep`): the card ID `next` was diversified for — the old card whose Sk1 the new card
 * holds — bound to it by STORE DATA key set origin right after PUT KEY, in the same session (isd.ts).
 */
export async function personalisationScript(current: CardKeys, next: CardKeys, opts: { keep?: boolean; predecessor?: string } = {}): Promise<CardScript> {
  if (inCustody(current) !== inCustody(next)) throw new TypeError("current and next key sets must both be in custody or both in clear");
  if (opts.predecessor !== undefined && !opts.keep) throw new TypeError("a predecessor key set is added beside the card's own (keep)");
  const replace = opts.keep ? 0 : kvnOf(current);
  let putKey: ApduCommand;
  let checkPutKey: (data: Uint8Array) => void;
  if (inCustody(current) && inCustody(next)) {
    const pk = await current.custody.putKeyData(current.ref, next.ref);
    putKey = { cla: 0x80, ins: 0xd8, p1: replace, p2: 0x81, data: pk.data, le: 256 };
    checkPutKey = (d) => {
      if (!Buffer.from(d).equals(Buffer.from(pk.expectedResponse))) throw new Scp03Error("PUT KEY: the card's key check values differ from custody's");
    };
  } else {
    const cur = current as ScpKeySet;
    const n = next as ScpKeySet;
    const newKeys = { kvn: n.kvn, enc: n.enc, mac: n.mac, dek: n.dek };
    putKey = putKeyCommand(cur.dek, newKeys, replace);
    checkPutKey = (d) => checkPutKeyResponse(d, newKeys);
  }
  const origin = opts.predecessor === undefined ? undefined : { kvn: kvnOf(next), predecessor: opts.predecessor };
  return { keys: current, aid: ISD_AID, ...personalisationCommands(putKey, checkPutKey, origin) };
}

export async function personalise(transmit: Transmit, current: CardKeys, next: CardKeys, opts: { keep?: boolean; predecessor?: string } = {}): Promise<void> {
  await runScript(transmit, await personalisationScript(current, next, opts));
}

/**
 * A blank card personalised with a key set diversified in custody from `master` (created on first use) for
 * `cardId`, as the key generation device and the reproduction device meet cards outside the issuer's records. The
 * card's transport keys are diversified in custody from the card manufacturer's KMC (transport-keys.ts; the
 * GlobalPlatform public test keys only with `insecurePublicTransportKeys`, development): without a KMC in custody,
 * a TransportKeyError. Returns both references.
 */
export async function personaliseFromTransport(
  transmit: Transmit,
  custody: KeyCustody,
  cardId: string,
  master = "card-master",
  transportOptions: TransportOptions = {},
): Promise<{ transport: KeySetRef; keySet: DerivedKeySetRef }> {
  const transport = await transportKeysFor(custody, cardId, transportOptions);
  if (!(await custody.hasKey(master))) await custody.createSecretKey(master, { type: "aes", bits: 256 });
  const keySet: DerivedKeySetRef = { kind: "derived", master, cardId, kvn: 1 };
  await personalise(transmit, { custody, ref: transport }, { custody, ref: keySet });
  return { transport, keySet };
}

/**
 * Online delivery (seed 000 ST22-ST25, the SCP03 path as Dogtag TPS does it): an SCP03 session with the card key
 * Sk on the PIV applet, IMPORT KEY and the certificate object written under it (the commands: protocol/card-scripts.ts).
 */
export function deliveryScript(keys: CardKeys, c: OnlineCredential): CardScript {
  return deliveryScriptOf(keys, c);
}

export async function deliverOnline(transmit: Transmit, keys: CardKeys, c: OnlineCredential): Promise<void> {
  await runScript(transmit, deliveryScript(keys, c));
}
