// Card key sets in the software custody (GlobalPlatform SCP03, Amendment D; derivation.ts), computed exactly as the
// PKCS#11 custody asks its HSM to: a card's ENC/MAC/DEK derived from its master (or a blank card's transport keys
// from the KMC) and wiped after use, or stored keys; their KCVs, PUT KEY cryptograms, the SCP03 session keys,
// purpose keys derived from the DEK (the DEK and purpose keys of a derived key set cached briefly), and package
// sealing (AES-256-GCM).

import { createCipheriv, randomBytes } from "node:crypto";
import { keyCheckValue, encryptKeyComponent } from "../../protocol/scp03/host.ts";
import { cryptogram, DERIVE, deriveSessionKeys } from "../../protocol/scp03/kdf.ts";
import { cardKeyData, derivePurposeKey, deriveTransportKeySet, encryptData, PURPOSE } from "../../protocol/derivation.ts";
import {
  checkChallenge,
  checkKeySetRef,
  CustodyError,
  type Extractability,
  type KeySetKcvs,
  type KeySetRef,
  type PutKeyData,
  type Scp03SessionMaterial,
  type SealedForCard,
  type SecretKeyUsage,
} from "../custody.ts";
import { hex, putKeyDataField, type PutKeyComponent } from "../encoding.ts";
import type { Keystore } from "./keystore.ts";

type KeySetKeys = { enc: Buffer; mac: Buffer; dek: Buffer; extractable: Extractability; cardId?: string; kvn: number };

function keySet(ks: Keystore, ref: KeySetRef, need: { enc?: SecretKeyUsage; mac?: SecretKeyUsage; dek?: SecretKeyUsage }): KeySetKeys {
  checkKeySetRef(ref);
  if (ref.kind === "derived") {
    const master = ks.secretKey(ref.master, "derive");
    const bits = ref.bits ?? 128;
    return {
      enc: Buffer.from(encryptData(master, cardKeyData(ref.cardId, ref.kvn, "enc", bits))),
      mac: Buffer.from(encryptData(master, cardKeyData(ref.cardId, ref.kvn, "mac", bits))),
      dek: Buffer.from(encryptData(master, cardKeyData(ref.cardId, ref.kvn, "dek", bits))),
      extractable: "wrapped",
      cardId: ref.cardId,
      kvn: ref.kvn,
    };
  }
  if (ref.kind === "kmc") {
    // views, not copies: wipeDerived wipes the derived keys themselves
    const k = deriveTransportKeySet(ks.secretKey(ref.kmc, "derive"), ref.kdd);
    const view = (b: Uint8Array): Buffer => Buffer.from(b.buffer, b.byteOffset, b.byteLength);
    return { enc: view(k.enc), mac: view(k.mac), dek: view(k.dek), extractable: "never", cardId: ref.cardId, kvn: ref.kvn };
  }
  const get = (label: string, usage: SecretKeyUsage | undefined): Buffer => {
    if (usage) return ks.secretKey(label, usage);
    const l = ks.load(label);
    if (!Buffer.isBuffer(l.secret)) throw new CustodyError("INVALID_ARGUMENT", `${label} is not a secret key`);
    return l.secret;
  };
  const enc = get(ref.enc, need.enc),
    mac = get(ref.mac, need.mac),
    dek = get(ref.dek, need.dek);
  if (mac.length !== enc.length || dek.length !== enc.length) throw new CustodyError("INVALID_ARGUMENT", "the keys of a key set must have the same length");
  const all = [ref.enc, ref.mac, ref.dek].map((l) => ks.load(l).meta.extractable);
  return { enc, mac, dek, extractable: all.every((x) => x === "wrapped") ? "wrapped" : "never", kvn: ref.kvn };
}

function wipeDerived(ks: Keystore, ref: KeySetRef, k: KeySetKeys): void {
  if (ref.kind === "stored") return;
  k.enc.fill(0);
  k.mac.fill(0);
  k.dek.fill(0);
}

export async function keySetKcvs(ks: Keystore, ref: KeySetRef): Promise<KeySetKcvs> {
  await ks.fetchKeySet(ref);
  const k = keySet(ks, ref, { enc: "encrypt", mac: "encrypt", dek: "encrypt" });
  try {
    return { kvn: ref.kvn, enc: hex(keyCheckValue(k.enc)), mac: hex(keyCheckValue(k.mac)), dek: hex(keyCheckValue(k.dek)) };
  } finally {
    wipeDerived(ks, ref, k);
  }
}

export async function putKeyData(ks: Keystore, current: KeySetRef, next: KeySetRef): Promise<PutKeyData> {
  await ks.fetchKeySet(current);
  await ks.fetchKeySet(next);
  const cur = keySet(ks, current, { dek: "wrap" });
  const nxt = keySet(ks, next, { enc: "encrypt", mac: "encrypt", dek: "encrypt" });
  try {
    if (nxt.extractable !== "wrapped") throw new CustodyError("NOT_PERMITTED", 'the new key set is not extractable ("never"): it cannot be sent to a card');
    const part = (key: Buffer): PutKeyComponent => ({ keyLength: key.length, cryptogram: encryptKeyComponent(cur.dek, key), kcv: keyCheckValue(key) });
    const parts: [PutKeyComponent, PutKeyComponent, PutKeyComponent] = [part(nxt.enc), part(nxt.mac), part(nxt.dek)];
    const { data, expectedResponse } = putKeyDataField(next.kvn, parts);
    return { data, expectedResponse, kcvs: { kvn: next.kvn, enc: hex(parts[0].kcv), mac: hex(parts[1].kcv), dek: hex(parts[2].kcv) } };
  } finally {
    wipeDerived(ks, current, cur);
    wipeDerived(ks, next, nxt);
  }
}

export async function scp03Session(ks: Keystore, ref: KeySetRef, hostChallenge: Uint8Array, cardChallenge: Uint8Array): Promise<Scp03SessionMaterial> {
  checkChallenge(hostChallenge, "host challenge");
  checkChallenge(cardChallenge, "card challenge");
  await ks.fetchKeySet(ref);
  const k = keySet(ks, ref, { enc: "mac", mac: "mac" });
  try {
    const context = Buffer.concat([hostChallenge, cardChallenge]);
    const sk = deriveSessionKeys(k.enc, k.mac, context);
    return { ...sk, cardCryptogram: cryptogram(sk.sMac, DERIVE.CARD_CRYPTOGRAM, context), hostCryptogram: cryptogram(sk.sMac, DERIVE.HOST_CRYPTOGRAM, context) };
  } finally {
    wipeDerived(ks, ref, k);
  }
}

export function purposeKey(ks: Keystore, ref: KeySetRef, purpose: number): Buffer {
  if (ref.kind === "derived") {
    // Only the DEK is needed: derive it alone (not ENC and MAC), and keep it and the purpose key briefly.
    checkKeySetRef(ref);
    const bits = ref.bits ?? 128;
    const base = `${ref.master}\u0000${ref.cardId.toLowerCase()}\u0000${ref.kvn}\u0000${bits}`;
    return ks.cachedDerived(`${base}\u0000${purpose}`, () => {
      const dek = ks.cachedDerived(base, () => Buffer.from(encryptData(ks.secretKey(ref.master, "derive"), cardKeyData(ref.cardId, ref.kvn, "dek", bits))));
      try {
        return Buffer.from(derivePurposeKey(dek, ref.cardId, ref.kvn, purpose));
      } finally {
        dek.fill(0);
      }
    });
  }
  const k = keySet(ks, ref, { dek: "derive" });
  try {
    const cardId = ref.cardId;
    if (!cardId) throw new CustodyError("INVALID_ARGUMENT", "a stored key set needs cardId for keys derived from its DEK");
    return Buffer.from(derivePurposeKey(k.dek, cardId, ref.kvn, purpose));
  } finally {
    wipeDerived(ks, ref, k);
  }
}

export async function sealForCard(ks: Keystore, ref: KeySetRef, purpose: number, aad: Uint8Array, plaintext: Uint8Array): Promise<SealedForCard> {
  if (!Number.isInteger(purpose) || purpose < 0x40 || purpose > 0xff || purpose === PURPOSE.privateKeyWrap)
    throw new CustodyError("INVALID_ARGUMENT", "seal purpose must be 0x40..0xff and not the private-key wrap purpose");
  await ks.fetchKeySet(ref);
  const key = purposeKey(ks, ref, purpose);
  try {
    const nonce = randomBytes(12);
    const c = createCipheriv("aes-256-gcm", key, nonce);
    c.setAAD(aad);
    const ciphertext = Buffer.concat([c.update(plaintext), c.final(), c.getAuthTag()]);
    return { nonce: new Uint8Array(nonce), ciphertext: new Uint8Array(ciphertext) };
  } finally {
    key.fill(0);
  }
}
