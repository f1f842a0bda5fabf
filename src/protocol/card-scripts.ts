// Card scripts: one SCP03 session's application, commands and the check of the card's answers, and runScript,
// which runs one on a card reachable from here through the relay engine (relay.ts) a remote terminal uses. The
// APDU sequences that need no key: online delivery (seed 000 ST22-ST25) — PIV IMPORT KEY with Sk[PRk] (or a
// PKCS#8) and the certificate object written with PUT DATA — and personalisation's (ST13-ST14) around a PUT KEY
// the caller builds (in clear, or by key custody: src/issuer/card-scripts.ts).
//
// Never: custody or a key store. A script's session keys are ScriptKeys (relay.ts): static keys, or a SessionSource
// the issuer or key generation side builds from key custody.

import type { ApduCommand } from "./apdu.ts";
import { ApduError, type Transmit } from "./apdu-client.ts";
import { cardLifecycleOf, getStatusCommand, keyOriginCommand } from "./isd.ts";
import { PIV_AID } from "./piv/client.ts";
import { runRelay, ScriptRelaySession, type RelayResult, type ScriptKeys } from "./relay.ts";
import { Scp03Error } from "./scp03/host.ts";
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

/** A script for one secure-channel session: the application, the commands, and how to judge the results. */
export interface CardScript<K = ScriptKeys> {
  keys: K;
  aid: Uint8Array;
  commands: ApduCommand[];
  /** Throws when the card's answers mean the script failed. */
  check(results: RelayResult[]): void;
}

/** A check that every answer is 9000, naming the failed command by `what`. */
export const expectOk = (what: string[]) => (results: RelayResult[]) => {
  results.forEach((r, i) => {
    if (r.sw !== 0x9000) throw new ApduError(r.sw, what[i] ?? "command");
  });
};

/** Runs a script on a card reachable from here, through the same relay engine a remote terminal uses. */
export async function runScript(transmit: Transmit, script: CardScript): Promise<RelayResult[]> {
  const results = await runRelay(new ScriptRelaySession(script.keys, script.aid, script.commands), transmit);
  script.check(results);
  return results;
}

/**
 * Online delivery (seed 000 ST22-ST25, the SCP03 path as Dogtag TPS does it): an SCP03 session with the card key
 * Sk on the PIV applet, IMPORT KEY and the certificate object written under it.
 */
export function deliveryScript<K>(keys: K, c: OnlineCredential): CardScript<K> {
  const { commands, what } = deliveryCommands(c);
  return { keys, aid: PIV_AID, commands, check: expectOk(what) };
}

/**
 * Personalisation's commands on the ISD around `putKey` (the caller's PUT KEY, with `checkPutKey` judging the
 * card's key check values): STORE DATA key set origin binding key set `origin.kvn` to the predecessor card (when
 * given), SET STATUS SECURED and GET STATUS. The check passes only when the card itself confirms SECURED: GET STATUS,
 * answered under the session's R-MAC, so a relaying terminal cannot forge it (see issuer/card-scripts.ts).
 */
export function personalisationCommands(
  putKey: ApduCommand,
  checkPutKey: (data: Uint8Array) => void,
  origin?: { kvn: number; predecessor: string },
): { commands: ApduCommand[]; check: (r: RelayResult[]) => void } {
  const originCmds = origin === undefined ? [] : [keyOriginCommand(origin.kvn, origin.predecessor)];
  return {
    commands: [putKey, ...originCmds, { cla: 0x80, ins: 0xf0, p1: 0x80, p2: 0x0f }, getStatusCommand()],
    check: (r) => {
      if (r[0].sw !== 0x9000) throw new ApduError(r[0].sw, "PUT KEY");
      checkPutKey(r[0].data);
      if (originCmds.length && r[1].sw !== 0x9000) throw new ApduError(r[1].sw, "STORE DATA key set origin");
      // 6985: already SECURED (a rotation on a card in the field) — a hint only; GET STATUS says what the card is.
      const status = r[1 + originCmds.length];
      if (status.sw !== 0x9000 && status.sw !== 0x6985) throw new ApduError(status.sw, "SET STATUS SECURED");
      const confirmed = r[2 + originCmds.length];
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
