// Transport keys of blank cards (issue 17 §3): the ISD keys (KVN 30) a card leaves the factory with, which the
// issuer uses for the one SCP03 session that replaces them with the card key Sk (personalisation, ST13-ST14).
//
//   default      per card: diversified from the card manufacturer's master key (KMC) and the card's key
//                diversification data (derivation.ts §3, EMV CPS adapted to AES), inside custody. The KMC enters
//                custody once, in a key ceremony (importKmc, `cardkms custody import-kmc`): 2 or 3 components,
//                each checked against its key check value, XORed here and handed to custody; only the KCV of the
//                combined key is ever shown. A recording of the relay then holds nothing a KMC-less party can
//                open: the session keys and the DEK that encrypts Sk come from keys only the factory and custody have.
//   development  the GlobalPlatform public test keys 40..4F (card.ts TRANSPORT_KEY_SET), only when asked for by
//                name (config insecure.publicTransportKeys, CARDKMS_INSECURE_PUBLIC_TRANSPORT_KEYS=1): anyone with
//                a recording of the personalisation relay computes the session keys and the DEK, and so Sk.
//
// Nothing here logs, and no error carries a key or a component; a component's KCV is named only as it was given.

import { randomBytes, timingSafeEqual } from "node:crypto";
import { TRANSPORT_KEY_SET, TRANSPORT_KVN } from "../card/card.ts";
import { keyDiversificationData } from "../protocol/derivation.ts";
import { keyCheckValue, parseInitUpdateResponse } from "../protocol/scp03/host.ts";
import { cryptogram, DERIVE, deriveSessionKeys } from "../protocol/scp03/kdf.ts";
import { toHex as hex } from "../util/bytes.ts";
import type { KeyCustody, KeySetRef, KmcKeySetRef, StoredKeySetRef } from "../custody/custody.ts";
import { DomainError } from "../util/errors.ts";

/** The custody label of the card manufacturer's master key, unless configured otherwise. */
export const KMC_LABEL = "transport-kmc";

/** The environment variable that turns on the development mode (the public test keys) where no config is read. */
export const INSECURE_PUBLIC_TRANSPORT_KEYS_ENV = "CARDKMS_INSECURE_PUBLIC_TRANSPORT_KEYS";

/** Where a card's transport keys come from. */
export interface TransportOptions {
  /** Custody label of the KMC (default KMC_LABEL). */
  kmc?: string;
  /** DEVELOPMENT ONLY: the GlobalPlatform public test keys instead of per-card keys. */
  insecurePublicTransportKeys?: boolean;
}

/** A refused transport key setting or key ceremony step (a DomainError refused, check "transport_key"); the message says what to do. */
export class TransportKeyError extends DomainError {
  override name = "TransportKeyError";

  constructor(message: string) {
    super("refused", "transport_key", message);
  }
}

/** One KMC component as a key custodian brings it: the value and the key check value written beside it. */
export interface KmcComponent {
  value: Uint8Array;
  /** GP key check value: the first 3 bytes of AES(component, 16 × 01), hex. */
  kcv: string;
}

const zero = (b: Uint8Array): boolean => b.every((x) => x === 0);

/**
 * The KMC from its 2 or 3 components (XOR), each checked against its KCV first. The caller wipes what it passed
 * and what it gets.
 */
export function combineKmcComponents(components: readonly KmcComponent[]): Uint8Array {
  if (!Array.isArray(components) || components.length < 2 || components.length > 3) throw new TransportKeyError("a KMC comes in 2 or 3 components");
  const len = components[0].value?.length;
  if (len !== 16 && len !== 32) throw new TransportKeyError("KMC components are AES-128 or AES-256 keys: 16 or 32 bytes (32 or 64 hex digits)");
  const kmc = new Uint8Array(len);
  components.forEach((c, i) => {
    const n = i + 1;
    if (!(c.value instanceof Uint8Array) || c.value.length !== len) throw new TransportKeyError(`component ${n} is not ${len} bytes like component 1`);
    if (typeof c.kcv !== "string" || !/^[0-9a-fA-F]{6}$/.test(c.kcv)) throw new TransportKeyError(`component ${n}: its key check value must be 6 hex digits`);
    if (zero(c.value)) throw new TransportKeyError(`component ${n} is all zeros`);
    if (!timingSafeEqual(keyCheckValue(c.value), Buffer.from(c.kcv, "hex")))
      throw new TransportKeyError(`component ${n} does not match its key check value ${c.kcv.toUpperCase()}: mistyped, or not the component that KCV belongs to`);
    for (let k = 0; k < len; k++) kmc[k] ^= c.value[k];
  });
  if (zero(kmc)) throw new TransportKeyError("the components cancel out (their XOR is all zeros): the same component given twice?");
  return kmc;
}

/**
 * The manufacturer's side of the ceremony (the card emulator's factory): `kmc` split into `n` (2 or 3) random
 * components whose XOR it is, each with its KCV, to hand to as many key custodians. The caller wipes them.
 */
export function splitKmc(kmc: Uint8Array, n: 2 | 3): KmcComponent[] {
  if (!(kmc instanceof Uint8Array) || (kmc.length !== 16 && kmc.length !== 32)) throw new TransportKeyError("a KMC is an AES-128 or AES-256 key: 16 or 32 bytes");
  if (n !== 2 && n !== 3) throw new TransportKeyError("a KMC comes in 2 or 3 components");
  const values = Array.from({ length: n - 1 }, () => new Uint8Array(randomBytes(kmc.length)));
  values.push(kmc.map((b, k) => values.reduce((x, v) => x ^ v[k], b)));
  return values.map((value) => ({ value, kcv: hex(keyCheckValue(value)).toUpperCase() }));
}

/**
 * The key ceremony: combines the components and imports the KMC into custody under `label`, never extractable,
 * usable only to derive the cards' transport keys. Returns the combined key's KCV for the custodians to compare
 * with the manufacturer's.
 */
export async function importKmc(custody: KeyCustody, components: readonly KmcComponent[], label = KMC_LABEL): Promise<{ label: string; bits: 128 | 256; kcv: string }> {
  const kmc = combineKmcComponents(components);
  try {
    const bits = (kmc.length * 8) as 128 | 256;
    const kcv = hex(keyCheckValue(kmc)).toUpperCase();
    await custody.importSecretKey(label, { type: "aes", bits, usage: ["derive"], extractable: "never" }, kmc);
    return { label, bits, kcv };
  } finally {
    kmc.fill(0);
  }
}

/** The custody reference of card `cardId`'s transport keys, diversified from the KMC labelled `kmc`. */
export function kmcTransportRef(kmc: string, cardId: string): KmcKeySetRef {
  return { kind: "kmc", kmc, kdd: hex(keyDiversificationData(cardId)), kvn: TRANSPORT_KVN };
}

/** DEVELOPMENT ONLY: the public test keys, imported into custody once (label prefix transport-gp-30). */
async function publicTestTransportKeys(custody: KeyCustody): Promise<StoredKeySetRef> {
  const prefix = "transport-gp-30";
  const t = TRANSPORT_KEY_SET;
  if (await custody.hasKey(`${prefix}.enc`)) return { kind: "stored", kvn: t.kvn, enc: `${prefix}.enc`, mac: `${prefix}.mac`, dek: `${prefix}.dek` };
  const k = (h: string): Uint8Array => new Uint8Array(Buffer.from(h, "hex"));
  return custody.importKeySet(prefix, { kvn: t.kvn, enc: k(t.enc), mac: k(t.mac), dek: k(t.dek) });
}

/**
 * The transport key set of card `cardId` in custody: per card from the KMC, or — only when `insecurePublicTransportKeys`
 * is set — the public test keys. Without a KMC in custody: TransportKeyError naming the ceremony.
 */
export async function transportKeysFor(custody: KeyCustody, cardId: string, o: TransportOptions = {}): Promise<KeySetRef> {
  if (o.insecurePublicTransportKeys === true) return publicTestTransportKeys(custody);
  const label = o.kmc ?? KMC_LABEL;
  if (!(await custody.hasKey(label)))
    throw new TransportKeyError(
      `no card manufacturer master key (KMC) labelled ${label} in custody: import it in a key ceremony (cardkms custody import-kmc). ` +
        `The GlobalPlatform public test keys are refused outside development mode (${INSECURE_PUBLIC_TRANSPORT_KEYS_ENV}=1): a recording of the personalisation would give the card's keys`,
    );
  return kmcTransportRef(label, cardId);
}

/**
 * Why a card did not prove the transport keys of `ref` (its card cryptogram was wrong), when the INITIALIZE UPDATE
 * response tells: another card's diversification data, or a card still carrying the public test keys. Undefined
 * when it does not tell (a card personalised already, a corrupt response).
 */
export function explainTransportMismatch(ref: KeySetRef, hostChallenge: Uint8Array, initUpdateResponse: Uint8Array): string | undefined {
  if (ref.kind !== "kmc") return undefined;
  let info;
  try {
    info = parseInitUpdateResponse(initUpdateResponse);
  } catch {
    return undefined;
  }
  const kdd = hex(info.diversificationData);
  if (kdd !== ref.kdd.toLowerCase()) return `the card answered with key diversification data ${kdd.toUpperCase()}, not ${ref.kdd.toUpperCase()}: it is not the card this session is for`;
  const t = TRANSPORT_KEY_SET;
  const context = Buffer.concat([hostChallenge, info.cardChallenge]);
  const sk = deriveSessionKeys(Buffer.from(t.enc, "hex"), Buffer.from(t.mac, "hex"), context);
  if (hex(cryptogram(sk.sMac, DERIVE.CARD_CRYPTOGRAM, context)) === hex(info.cardCryptogram))
    return (
      "this card carries the GlobalPlatform public test keys (40..4F) as its transport keys, which are refused outside development mode: " +
      "a recording of its personalisation would give its keys. Make it with the manufacturer's KMC (cardkms card create --kmc-file)"
    );
  return undefined;
}
