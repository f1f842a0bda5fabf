// The cardkms card as shipped: the GlobalPlatform Issuer Security Domain (applets[0], default-selected) and the
// PIV credential applet, with SCP03 as the secure channel of every logical channel.

import type { Applet } from "./applet.ts";
import type { Durability, ImageSecret } from "./eeprom.ts";
import { IssuerSecurityDomain } from "./isd.ts";
import { PivApplet } from "./piv/applet.ts";
import { CardRuntime, type CreateCardOptions } from "./runtime.ts";
import { scp03Factory } from "./scp03/card-channel.ts";
import type { ScpKeySet } from "./state.ts";

/**
 * The GlobalPlatform test key (40..4F for ENC, MAC and DEK) that blank cards ship with as their transport key,
 * under KVN 0x30. Personalisation replaces it with the card-unique key Sk (seed 000 ST13-ST14).
 */
export const TRANSPORT_KEY_SET: ScpKeySet = Object.freeze({
  kvn: 0x30,
  enc: "404142434445464748494a4b4c4d4e4f",
  mac: "404142434445464748494a4b4c4d4e4f",
  dek: "404142434445464748494a4b4c4d4e4f",
});

export function cardApplets(): Applet[] {
  return [new IssuerSecurityDomain(2), new PivApplet()];
}

export type CardOptions = Omit<CreateCardOptions, "applets" | "secureChannel" | "keySet"> & { keySet?: ScpKeySet };

/** Creates a blank card image at `path` (refuses to overwrite). Without a key set it carries the transport key. */
export function createCard(path: string, secret: ImageSecret, opts: CardOptions = {}): CardRuntime {
  return CardRuntime.create(path, secret, { ...opts, keySet: opts.keySet ?? { ...TRANSPORT_KEY_SET }, applets: cardApplets(), secureChannel: scp03Factory });
}

/** Powers up an existing card image. */
export function openCard(path: string, secret: ImageSecret, opts: { durability?: Durability } = {}): CardRuntime {
  return CardRuntime.open(path, secret, { ...opts, applets: cardApplets(), secureChannel: scp03Factory });
}
