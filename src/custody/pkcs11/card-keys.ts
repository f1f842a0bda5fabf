// Card key sets in the HSM (GlobalPlatform SCP03, Amendment D; derivation.ts): a card's ENC/MAC/DEK derived from
// its master (or a blank card's transport keys from the KMC) as session objects destroyed after use, or stored
// keys; their KCVs (CKM_AES_ECB), PUT KEY cryptograms (C_WrapKey CKM_AES_CBC, zero IV, under the current DEK), the
// SCP03 session keys (the KDF's CMAC computed by C_Sign CKM_AES_CMAC), purpose keys derived from the DEK, and
// package sealing (CKM_AES_GCM).

import type * as Pkcs11Types from "pkcs11js";
import { cryptogram, DERIVE } from "../../protocol/scp03/kdf.ts";
import { cardKeyData, PURPOSE, purposeKeyData, transportKeyData, type CardKeyName } from "../../protocol/derivation.ts";
import { checkChallenge, checkKeySetRef, CustodyError, type KeySetKcvs, type KeySetRef, type PutKeyData, type Scp03SessionMaterial, type SealedForCard, type SecretKeyUsage } from "../custody.ts";
import { hex, putKeyDataField, type PutKeyComponent } from "../encoding.ts";
import type { Handle } from "./module.ts";
import { aesKeyTemplate } from "./templates.ts";
import type { Pkcs11Token } from "./token.ts";

/**
 * CKM_AES_CBC_ENCRYPT_DATA (zero IV): a session key object, sensitive, with exactly the usage attributes `attrs`
 * (templates.ts aesKeyTemplate).
 */
function derive(hsm: Pkcs11Token, base: Handle, data: Uint8Array, attrs: number[], extractable: boolean, what: string): Handle {
  const p = hsm.p;
  const t = aesKeyTemplate(p, { token: false, on: new Set(attrs), extractable, features: hsm.features, bytes: data.length });
  const parameter: Pkcs11Types.AesCBC = { type: p.CK_PARAMS_AES_CBC, iv: Buffer.alloc(16), data: Buffer.from(data) };
  const mech = { mechanism: p.CKM_AES_CBC_ENCRYPT_DATA, parameter };
  return hsm.call("C_DeriveKey", what, () => hsm.mod.C_DeriveKey(hsm.session, mech, base, t));
}

/** Handles of a key set: derived session objects (destroyed by the returned release) or stored keys. */
function keySet(hsm: Pkcs11Token, ref: KeySetRef): { enc: Handle; mac: Handle; dek: Handle; extractable: boolean; release: () => void } {
  checkKeySetRef(ref);
  const p = hsm.p;
  if (ref.kind === "derived") {
    const master = hsm.secretHandle(ref.master, "derive");
    const bits = ref.bits ?? 128;
    const made: Handle[] = [];
    try {
      const one = (name: CardKeyName, attrs: number[]): Handle => {
        const h = derive(hsm, master, cardKeyData(ref.cardId, ref.kvn, name, bits), attrs, true, `derive ${name.toUpperCase()} of card ${ref.cardId} from ${ref.master}`);
        made.push(h);
        return h;
      };
      const enc = one("enc", [p.CKA_ENCRYPT, p.CKA_SIGN]);
      const mac = one("mac", [p.CKA_ENCRYPT, p.CKA_SIGN]);
      const dek = one("dek", [p.CKA_ENCRYPT, p.CKA_WRAP, p.CKA_DERIVE]);
      return { enc, mac, dek, extractable: true, release: () => hsm.destroy(...made) };
    } catch (e) {
      hsm.destroy(...made);
      throw e;
    }
  }
  if (ref.kind === "kmc") {
    // A blank card's transport keys (derivation.ts §3, EMV CPS adapted to AES): one AES block of derivation data
    // each under the KMC, which CKM_AES_CBC_ENCRYPT_DATA with its zero IV computes as ECB does. They only open
    // the personalisation session and wrap the card's keys for PUT KEY: never extractable, ENC and MAC encrypt
    // (KCV) and sign (the CMAC KDF), the DEK encrypts (KCV) and wraps (PUT KEY cryptograms).
    const kmc = hsm.secretHandle(ref.kmc, "derive");
    const attrs: Record<CardKeyName, number[]> = { enc: [p.CKA_ENCRYPT, p.CKA_SIGN], mac: [p.CKA_ENCRYPT, p.CKA_SIGN], dek: [p.CKA_ENCRYPT, p.CKA_WRAP] };
    const made: Handle[] = [];
    try {
      for (const name of ["enc", "mac", "dek"] as const)
        made.push(derive(hsm, kmc, transportKeyData(ref.kdd, name), attrs[name], false, `derive transport ${name.toUpperCase()} for KDD ${ref.kdd} from ${ref.kmc}`));
    } catch (e) {
      hsm.destroy(...made);
      throw e;
    }
    return { enc: made[0], mac: made[1], dek: made[2], extractable: false, release: () => hsm.destroy(...made) };
  }
  const enc = hsm.secretHandle(ref.enc),
    mac = hsm.secretHandle(ref.mac),
    dek = hsm.secretHandle(ref.dek);
  const ex = [enc, mac, dek].every((h) => hsm.attrs(h, [p.CKA_EXTRACTABLE], "key set").get(p.CKA_EXTRACTABLE)?.[0] === 1);
  return { enc, mac, dek, extractable: ex, release: () => undefined };
}

function checkUsage(hsm: Pkcs11Token, ref: KeySetRef, need: Partial<Record<"enc" | "mac" | "dek", SecretKeyUsage>>): void {
  if (ref.kind !== "stored") return;
  for (const [k, u] of Object.entries(need) as ["enc" | "mac" | "dek", SecretKeyUsage][]) hsm.secretHandle(ref[k], u);
}

function ecb(hsm: Pkcs11Token, key: Handle, block: Uint8Array, what: string): Buffer {
  return hsm.call("C_Encrypt", what, () => {
    hsm.mod.C_EncryptInit(hsm.session, { mechanism: hsm.p.CKM_AES_ECB }, key);
    return hsm.mod.C_Encrypt(hsm.session, Buffer.from(block), Buffer.alloc(block.length));
  });
}

function kcv(hsm: Pkcs11Token, key: Handle, what: string): Buffer {
  return ecb(hsm, key, new Uint8Array(16).fill(1), `KCV of ${what}`).subarray(0, 3);
}

function keyLength(hsm: Pkcs11Token, h: Handle, what: string): number {
  const v = hsm.attrs(h, [hsm.p.CKA_VALUE_LEN], what).get(hsm.p.CKA_VALUE_LEN) as Buffer;
  return v.readUIntLE(0, Math.min(v.length, 6));
}

export async function keySetKcvs(hsm: Pkcs11Token, ref: KeySetRef): Promise<KeySetKcvs> {
  checkUsage(hsm, ref, { enc: "encrypt", mac: "encrypt", dek: "encrypt" });
  const k = keySet(hsm, ref);
  try {
    return { kvn: ref.kvn, enc: hex(kcv(hsm, k.enc, "ENC")), mac: hex(kcv(hsm, k.mac, "MAC")), dek: hex(kcv(hsm, k.dek, "DEK")) };
  } finally {
    k.release();
  }
}

export async function putKeyData(hsm: Pkcs11Token, current: KeySetRef, next: KeySetRef): Promise<PutKeyData> {
  checkUsage(hsm, current, { dek: "wrap" });
  checkUsage(hsm, next, { enc: "encrypt", mac: "encrypt", dek: "encrypt" });
  const cur = keySet(hsm, current);
  try {
    const nxt = keySet(hsm, next);
    try {
      if (!nxt.extractable) throw new CustodyError("NOT_PERMITTED", 'the new key set is not extractable ("never"): it cannot be sent to a card');
      const part = (h: Handle, name: string): PutKeyComponent => ({
        keyLength: keyLength(hsm, h, name),
        // GP Amendment D §7.2: AES-CBC, zero ICV, of the key under the current static DEK.
        cryptogram: hsm.call("C_WrapKey", `PUT KEY cryptogram of ${name}`, () =>
          hsm.mod.C_WrapKey(hsm.session, { mechanism: hsm.p.CKM_AES_CBC, parameter: Buffer.alloc(16) }, cur.dek, h, Buffer.alloc(64)),
        ),
        kcv: kcv(hsm, h, name),
      });
      const parts: [PutKeyComponent, PutKeyComponent, PutKeyComponent] = [part(nxt.enc, "ENC"), part(nxt.mac, "MAC"), part(nxt.dek, "DEK")];
      const { data, expectedResponse } = putKeyDataField(next.kvn, parts);
      return { data, expectedResponse, kcvs: { kvn: next.kvn, enc: hex(parts[0].kcv), mac: hex(parts[1].kcv), dek: hex(parts[2].kcv) } };
    } finally {
      nxt.release();
    }
  } finally {
    cur.release();
  }
}

/** SCP03 KDF (kdf.ts layout) with the CMAC computed by the HSM under `key`. */
function kdf(hsm: Pkcs11Token, key: Handle, constant: number, context: Uint8Array, bits: number): Uint8Array {
  const input = Buffer.alloc(16 + context.length);
  input[11] = constant;
  input[13] = bits >> 8;
  input[14] = bits & 0xff;
  Buffer.from(context).copy(input, 16);
  const blocks = Math.ceil(bits / 128);
  const out = Buffer.alloc(blocks * 16);
  for (let i = 1; i <= blocks; i++) {
    input[15] = i;
    const mac = hsm.call("C_Sign", "SCP03 session key derivation (CMAC)", () => {
      hsm.mod.C_SignInit(hsm.session, { mechanism: hsm.p.CKM_AES_CMAC }, key);
      return hsm.mod.C_Sign(hsm.session, input, Buffer.alloc(16));
    });
    mac.copy(out, (i - 1) * 16);
  }
  return new Uint8Array(out.subarray(0, bits / 8));
}

export async function scp03Session(hsm: Pkcs11Token, ref: KeySetRef, hostChallenge: Uint8Array, cardChallenge: Uint8Array): Promise<Scp03SessionMaterial> {
  checkChallenge(hostChallenge, "host challenge");
  checkChallenge(cardChallenge, "card challenge");
  checkUsage(hsm, ref, { enc: "mac", mac: "mac" });
  const k = keySet(hsm, ref);
  try {
    const context = Buffer.concat([hostChallenge, cardChallenge]);
    const len = keyLength(hsm, k.enc, "ENC");
    const sEnc = kdf(hsm, k.enc, DERIVE.S_ENC, context, len * 8);
    const sMac = kdf(hsm, k.mac, DERIVE.S_MAC, context, len * 8);
    const sRmac = kdf(hsm, k.mac, DERIVE.S_RMAC, context, len * 8);
    return { sEnc, sMac, sRmac, cardCryptogram: cryptogram(sMac, DERIVE.CARD_CRYPTOGRAM, context), hostCryptogram: cryptogram(sMac, DERIVE.HOST_CRYPTOGRAM, context) };
  } finally {
    k.release();
  }
}

/** A purpose key (derivation.ts) under the card's DEK, as a session object; the caller destroys it. */
export function purposeKey(hsm: Pkcs11Token, ref: KeySetRef, purpose: number, attrs: number[]): Handle {
  checkUsage(hsm, ref, { dek: "derive" });
  const cardId = ref.cardId;
  if (!cardId) throw new CustodyError("INVALID_ARGUMENT", "a stored key set needs cardId for keys derived from its DEK");
  const k = keySet(hsm, ref);
  try {
    return derive(hsm, k.dek, purposeKeyData(cardId, ref.kvn, purpose), attrs, false, `purpose key ${purpose.toString(16)} of card ${cardId}`);
  } finally {
    k.release();
  }
}

export async function sealForCard(hsm: Pkcs11Token, ref: KeySetRef, purpose: number, aad: Uint8Array, plaintext: Uint8Array): Promise<SealedForCard> {
  if (!Number.isInteger(purpose) || purpose < 0x40 || purpose > 0xff || purpose === PURPOSE.privateKeyWrap)
    throw new CustodyError("INVALID_ARGUMENT", "seal purpose must be 0x40..0xff and not the private-key wrap purpose");
  const p = hsm.p;
  const key = purposeKey(hsm, ref, purpose, [p.CKA_ENCRYPT]);
  try {
    const nonce = Buffer.from(hsm.call("C_GenerateRandom", "GCM nonce", () => hsm.mod.C_GenerateRandom(hsm.session, Buffer.alloc(12))));
    const ciphertext = hsm.call("C_Encrypt", "seal for card (AES-GCM)", () => {
      const parameter: Pkcs11Types.GcmParams = { type: p.CK_PARAMS_AES_GCM, iv: nonce, aad: Buffer.from(aad), ivBits: 96, tagBits: 128 };
      hsm.mod.C_EncryptInit(hsm.session, { mechanism: p.CKM_AES_GCM, parameter }, key);
      return hsm.mod.C_Encrypt(hsm.session, Buffer.from(plaintext), Buffer.alloc(plaintext.length + 16));
    });
    return { nonce: new Uint8Array(nonce), ciphertext: new Uint8Array(ciphertext) };
  } finally {
    hsm.destroy(key);
  }
}
