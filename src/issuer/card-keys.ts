// How the issuer reaches a card's static SCP03 keys: in clear (a ScpKeySet: tests, the demo, a software issuer)
// or through key custody (KeyCustody + KeySetRef), where they never leave custody.

import { Scp03Client, type SessionSource } from "../protocol/scp03/host.ts";
import type { ScpKeySet } from "../card/state.ts";
import type { KeyCustody, KeySetRef } from "../custody/custody.ts";
import type { Transmit } from "../protocol/apdu-client.ts";
import { LEVEL_FULL, type ScriptKeys } from "../protocol/relay.ts";
import { explainTransportMismatch } from "./transport-keys.ts";

export { LEVEL_FULL } from "../protocol/relay.ts";

/** A card key set: in clear, or a reference into key custody. */
export type CardKeys = ScpKeySet | { custody: KeyCustody; ref: KeySetRef };

export const inCustody = (k: CardKeys): k is { custody: KeyCustody; ref: KeySetRef } => "custody" in k;
export const kvnOf = (k: CardKeys): number => (inCustody(k) ? k.ref.kvn : k.kvn);

export function sessionKeys(k: CardKeys): ScpKeySet | SessionSource {
  if (!inCustody(k)) return k;
  return (hc, cc) => k.custody.scp03Session(k.ref, hc, cc);
}

/** Opens an SCP03 session with the selected application, at full protection. */
export async function openSession(transmit: Transmit, keys: CardKeys): Promise<Scp03Client> {
  return Scp03Client.open(transmit, sessionKeys(keys), { level: LEVEL_FULL, kvn: kvnOf(keys) });
}

/** The keys a protocol script's session takes (protocol/relay.ts): in clear, or custody's session source. */
export function scriptKeys(k: CardKeys): ScriptKeys {
  if (!inCustody(k)) return { kvn: k.kvn, keys: k };
  return { kvn: k.ref.kvn, keys: sessionKeys(k), explainMismatch: (hc, iu) => explainTransportMismatch(k.ref, hc, iu) };
}
