// Scripts the issuer runs on a card through an untrusted relay (the user terminal), as Dogtag's TPS does: the
// engine is protocol/relay.ts (two round trips, the terminal only forwards MACed and encrypted APDUs); here its
// session takes the issuer's card keys, in clear or in key custody (card-keys.ts).
//
// Between round trips a session is kept as RelaySessionState (no key; issue 16 §1) and restored over the same card
// keys with restoreRelaySession, on whichever server takes the next round.
//
// Never: wraps or checks an APDU itself.

import { ScriptRelaySession, type RelaySessionState } from "../protocol/relay.ts";
import type { ApduCommand } from "../protocol/apdu.ts";
import { scriptKeys, type CardKeys } from "./card-keys.ts";

export { RelayError, runRelay, type RelayResult, type RelaySessionState } from "../protocol/relay.ts";

/** A relay session (protocol/relay.ts) over the issuer's card keys. */
export class RelaySession extends ScriptRelaySession {
  constructor(keys: CardKeys, aid: Uint8Array, script: ApduCommand[], opts: { level?: number; channel?: number } = {}) {
    super(scriptKeys(keys), aid, script, opts);
  }
}

/** A relay session restored from its state (protocol/relay.ts), over the issuer's card keys, the same script. */
export function restoreRelaySession(keys: CardKeys, aid: Uint8Array, script: ApduCommand[], state: RelaySessionState): ScriptRelaySession {
  return ScriptRelaySession.restore(scriptKeys(keys), aid, script, state);
}
