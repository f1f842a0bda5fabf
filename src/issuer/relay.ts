// Scripts the issuer runs on a card through an untrusted relay (the user terminal), as Dogtag's TPS does: the
// engine is protocol/relay.ts (two round trips, the terminal only forwards MACed and encrypted APDUs); here its
// session takes the issuer's card keys, in clear or in key custody (card-keys.ts).
//
// Never: wraps or checks an APDU itself.

import { ScriptRelaySession } from "../protocol/relay.ts";
import type { ApduCommand } from "../protocol/apdu.ts";
import { scriptKeys, type CardKeys } from "./card-keys.ts";

export { RelayError, runRelay, type RelayResult } from "../protocol/relay.ts";

/** A relay session (protocol/relay.ts) over the issuer's card keys. */
export class RelaySession extends ScriptRelaySession {
  constructor(keys: CardKeys, aid: Uint8Array, script: ApduCommand[], opts: { level?: number; channel?: number } = {}) {
    super(scriptKeys(keys), aid, script, opts);
  }
}
