// The cardkms card as shipped: the GlobalPlatform Issuer Security Domain (applets[0], default-selected) and the
// PIV credential applet, with SCP03 as the secure channel of every logical channel.

import { randomBytes } from "node:crypto";
import type { Applet } from "./applet.ts";
import { deriveTransportKeySet, keyDiversificationData } from "../protocol/derivation.ts";
import type { Durability, ImageSecret } from "./eeprom.ts";
import { IssuerSecurityDomain } from "./isd.ts";
import { PivApplet } from "./piv/applet.ts";
import { CardRuntime, type CreateCardOptions } from "./runtime.ts";
import { scp03Factory } from "./scp03/card-channel.ts";
import type { ScpKeySet } from "./state.ts";

/** The key version of a blank card's transport key set (the ISD keys it leaves the factory with). */
export const TRANSPORT_KVN = 0x30;

/**
 * The GlobalPlatform public test key (40..4F for ENC, MAC and DEK) under KVN 0x30: DEVELOPMENT ONLY. Anyone who
 * records the personalisation of a card carrying it computes the SCP03 session and the DEK, and from the PUT KEY
 * the card key Sk (issue 17 §3). Factory cards carry per-card transport keys diversified from the manufacturer's
 * KMC (createCard's `kmc`); the issuer refuses this key set outside its development mode.
 */
export const TRANSPORT_KEY_SET: ScpKeySet = Object.freeze({
  kvn: TRANSPORT_KVN,
  enc: "404142434445464748494a4b4c4d4e4f",
  mac: "404142434445464748494a4b4c4d4e4f",
  dek: "404142434445464748494a4b4c4d4e4f",
});

/**
 * The transport key set the factory gives the card `cardId`: ENC, MAC and DEK diversified from the card
 * manufacturer's master key `kmc` and the card's key diversification data (derivation.ts, EMV CPS adapted to AES).
 */
export function transportKeySet(kmc: Uint8Array, cardId: string | Uint8Array): ScpKeySet {
  const k = deriveTransportKeySet(kmc, keyDiversificationData(cardId));
  const hex = (b: Uint8Array): string => Buffer.from(b).toString("hex");
  return { kvn: TRANSPORT_KVN, enc: hex(k.enc), mac: hex(k.mac), dek: hex(k.dek) };
}

export function cardApplets(): Applet[] {
  return [new IssuerSecurityDomain(2), new PivApplet()];
}

export type CardOptions = Omit<CreateCardOptions, "applets" | "secureChannel" | "keySet"> & {
  /** The card's first key set as given (a card-level test's key, or TRANSPORT_KEY_SET for development). */
  keySet?: ScpKeySet;
  /** The card manufacturer's master key (AES-128 or -256): the card's transport keys are diversified from it. */
  kmc?: Uint8Array;
};

/**
 * The factory: creates a blank card image at `path` (refuses to overwrite). With `kmc` it carries per-card
 * transport keys (KVN 30) diversified from it and its card ID, as the issuer derives them in custody; with
 * `keySet`, that key set; with neither, a development sample: the public GlobalPlatform test key.
 */
export function createCard(path: string, secret: ImageSecret, opts: CardOptions = {}): CardRuntime {
  const { kmc, keySet, ...rest } = opts;
  if (kmc && keySet) throw new TypeError("a card is made with a key set or with transport keys from a KMC, not both");
  const cardId = rest.cardId ?? new Uint8Array(randomBytes(8));
  const first = kmc ? transportKeySet(kmc, cardId) : (keySet ?? { ...TRANSPORT_KEY_SET });
  return CardRuntime.create(path, secret, { ...rest, cardId, keySet: first, applets: cardApplets(), secureChannel: scp03Factory });
}

/** Powers up an existing card image. */
export function openCard(path: string, secret: ImageSecret, opts: { durability?: Durability } = {}): CardRuntime {
  return CardRuntime.open(path, secret, { ...opts, applets: cardApplets(), secureChannel: scp03Factory });
}
