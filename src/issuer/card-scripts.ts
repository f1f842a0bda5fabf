// Issuer-side APDU scripts over SCP03: what a server sends through the relaying terminal to personalise a card
// and to deliver keys online. Every command after the handshake is MACed (and, where it carries a secret,
// encrypted) under session keys derived from the card's static key set, so the terminal can only relay.
//
// The card's keys are reached either in clear (a ScpKeySet: tests, the demo, a software issuer) or through key
// custody (KeyCustody + KeySetRef): then the static keys never leave custody — session keys and cryptograms
// come from custody.scp03Session, PUT KEY data from custody.putKeyData, Sk[PRk] from custody.wrapPrivateKey.
// The commands that need neither (online delivery's) are built in protocol/card-scripts.ts.

import { PIV_AID } from "../protocol/piv/client.ts";
import { deliveryCommands, type OnlineCredential } from "../protocol/card-scripts.ts";
import type { Transmit } from "../protocol/apdu-client.ts";
import { ApduError } from "../protocol/apdu-client.ts";
import { checkPutKeyResponse, putKeyCommand, Scp03Error } from "../protocol/scp03/host.ts";
import type { ApduCommand } from "../protocol/apdu.ts";
import { RelaySession, runRelay, type RelayResult } from "./relay.ts";
import { inCustody, kvnOf, type CardKeys } from "./card-keys.ts";
export { LEVEL_FULL, openSession, type CardKeys } from "./card-keys.ts";
export type { OnlineCredential } from "../protocol/card-scripts.ts";
import { ISD_AID } from "../protocol/scp03/sm.ts";
import { cardLifecycleOf, getStatusCommand, keyOriginCommand } from "../card/isd.ts";
import type { ScpKeySet } from "../card/state.ts";
import type { DerivedKeySetRef, KeyCustody, KeySetRef } from "../custody/custody.ts";
import { transportKeysFor, type TransportOptions } from "./transport-keys.ts";

/** A script for one secure-channel session: the application, the commands, and how to judge the results. */
export interface CardScript {
  keys: CardKeys;
  aid: Uint8Array;
  commands: ApduCommand[];
  /** Throws when the card's answers mean the script failed. */
  check(results: RelayResult[]): void;
}

const expectOk = (what: string[]) => (results: RelayResult[]) => {
  results.forEach((r, i) => {
    if (r.sw !== 0x9000) throw new ApduError(r.sw, what[i] ?? "command");
  });
};

/** Runs a script on a card reachable from here, through the same relay engine a remote terminal uses. */
export async function runScript(transmit: Transmit, script: CardScript): Promise<RelayResult[]> {
  const results = await runRelay(new RelaySession(script.keys, script.aid, script.commands), transmit);
  script.check(results);
  return results;
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
  const origin = opts.predecessor === undefined ? [] : [keyOriginCommand(kvnOf(next), opts.predecessor)];
  return {
    keys: current,
    aid: ISD_AID,
    commands: [putKey, ...origin, { cla: 0x80, ins: 0xf0, p1: 0x80, p2: 0x0f }, getStatusCommand()],
    check: (r) => {
      if (r[0].sw !== 0x9000) throw new ApduError(r[0].sw, "PUT KEY");
      checkPutKey(r[0].data);
      if (origin.length && r[1].sw !== 0x9000) throw new ApduError(r[1].sw, "STORE DATA key set origin");
      // 6985: already SECURED (a rotation on a card in the field) — a hint only; GET STATUS says what the card is.
      const status = r[1 + origin.length];
      if (status.sw !== 0x9000 && status.sw !== 0x6985) throw new ApduError(status.sw, "SET STATUS SECURED");
      const confirmed = r[2 + origin.length];
      if (confirmed.sw !== 0x9000) throw new ApduError(confirmed.sw, "GET STATUS (the card's life cycle after SET STATUS)");
      let lifecycle: string;
      try {
        lifecycle = cardLifecycleOf(confirmed.data);
      } catch (e) {
        throw new Scp03Error(`GET STATUS: ${(e as Error).message}`);
      }
      if (lifecycle !== "SECURED") throw new Scp03Error(`SET STATUS: the card reports its life cycle ${lifecycle}, not SECURED (SET STATUS answered ${status.sw.toString(16).toUpperCase()})`);
    },
  };
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
  const { commands, what } = deliveryCommands(c);
  return { keys, aid: PIV_AID, commands, check: expectOk(what) };
}

export async function deliverOnline(transmit: Transmit, keys: CardKeys, c: OnlineCredential): Promise<void> {
  await runScript(transmit, deliveryScript(keys, c));
}
