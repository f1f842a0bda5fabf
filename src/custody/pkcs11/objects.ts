// Keys by label on the PKCS#11 token: secret keys generated or imported with their role's template (stored,
// CKA_TOKEN), key sets imported as three such keys, and what a label holds — read back from the token's attributes,
// never from a record kept here.

import {
  importKeySetWith,
  checkLabel,
  checkSecretSpec,
  CustodyError,
  type Extractability,
  type KeyInfo,
  type KeyPairAlg,
  type SecretKeySpec,
  type SecretKeyUsage,
  type StoredKeySetRef,
} from "../custody.ts";
import { EC_CURVES, hex } from "../encoding.ts";
import type { Pkcs11Token } from "./token.ts";

export async function createSecretKey(hsm: Pkcs11Token, label: string, spec: SecretKeySpec): Promise<KeyInfo> {
  checkLabel(label);
  const s = checkSecretSpec(spec);
  if (hsm.exists(label)) throw new CustodyError("EXISTS", `a key labelled ${label} already exists`);
  const t = hsm.secretTemplate(label, s.usage, s.extractable, s.bits / 8);
  hsm.call("C_GenerateKey", label, () => hsm.mod.C_GenerateKey(hsm.session, { mechanism: hsm.p.CKM_AES_KEY_GEN }, t));
  return { label, kind: "secret", type: "aes", bits: s.bits, usage: s.usage, extractable: s.extractable };
}

export async function importSecretKey(hsm: Pkcs11Token, label: string, spec: SecretKeySpec, value: Uint8Array): Promise<KeyInfo> {
  checkLabel(label);
  const s = checkSecretSpec(spec);
  if (!(value instanceof Uint8Array) || value.length * 8 !== s.bits) throw new CustodyError("INVALID_ARGUMENT", `key value must be ${s.bits / 8} bytes`);
  if (hsm.exists(label)) throw new CustodyError("EXISTS", `a key labelled ${label} already exists`);
  const t = hsm.secretTemplate(label, s.usage, s.extractable);
  const v = Buffer.from(value);
  t.push({ type: hsm.p.CKA_VALUE, value: v });
  try {
    hsm.call("C_CreateObject", label, () => hsm.mod.C_CreateObject(hsm.session, t));
  } finally {
    v.fill(0);
  }
  return { label, kind: "secret", type: "aes", bits: s.bits, usage: s.usage, extractable: s.extractable };
}

export function importKeySet(
  hsm: Pkcs11Token,
  prefix: string,
  keys: { kvn: number; enc: Uint8Array; mac: Uint8Array; dek: Uint8Array },
  extractable: Extractability = "never",
): Promise<StoredKeySetRef> {
  return importKeySetWith((label, spec, value) => importSecretKey(hsm, label, spec, value), prefix, keys, extractable);
}

export async function hasKey(hsm: Pkcs11Token, label: string): Promise<boolean> {
  checkLabel(label);
  return hsm.exists(label);
}

export async function keyInfo(hsm: Pkcs11Token, label: string): Promise<KeyInfo | undefined> {
  checkLabel(label);
  const p = hsm.p;
  const s = hsm.object(label, p.CKO_SECRET_KEY);
  if (s) {
    const all = [p.CKA_VALUE_LEN, p.CKA_EXTRACTABLE, p.CKA_DERIVE, p.CKA_WRAP, p.CKA_ENCRYPT, p.CKA_SIGN];
    const a = hsm.attrs(s, all, label);
    const flag = (t: number): boolean => a.get(t)?.[0] === 1;
    const usage: SecretKeyUsage[] = [];
    if (flag(p.CKA_DERIVE)) usage.push("derive");
    if (flag(p.CKA_ENCRYPT)) usage.push("encrypt");
    if (flag(p.CKA_SIGN)) usage.push("mac");
    if (flag(p.CKA_WRAP)) usage.push("wrap");
    const len = a.get(p.CKA_VALUE_LEN) as Buffer;
    return { label, kind: "secret", type: "aes", bits: len.readUIntLE(0, Math.min(len.length, 6)) * 8, usage: usage.sort(), extractable: flag(p.CKA_EXTRACTABLE) ? "wrapped" : "never" };
  }
  const k = hsm.object(label, p.CKO_PRIVATE_KEY);
  if (!k) return undefined;
  const a = hsm.attrs(k, [p.CKA_EXTRACTABLE], label);
  return { label, kind: "keyPair", type: pairAlg(hsm, label), extractable: a.get(p.CKA_EXTRACTABLE)?.[0] === 1 ? "wrapped" : "never" };
}

export function pairAlg(hsm: Pkcs11Token, label: string): KeyPairAlg {
  const p = hsm.p;
  const pub = hsm.object(label, p.CKO_PUBLIC_KEY);
  if (!pub) throw new CustodyError("CORRUPT", `key pair ${label} has no public key object`);
  const type = hsm.attrs(pub, [p.CKA_KEY_TYPE], label).get(p.CKA_KEY_TYPE) as Buffer;
  const kt = type.readUIntLE(0, Math.min(type.length, 6));
  if (kt === p.CKK_EC) {
    const params = hex(hsm.attrs(pub, [p.CKA_EC_PARAMS], label).get(p.CKA_EC_PARAMS) as Buffer);
    if (params === EC_CURVES.P256.oid) return "P256";
    if (params === EC_CURVES.P384.oid) return "P384";
    throw new CustodyError("CORRUPT", `key pair ${label} is on a curve cardkms does not use`);
  }
  if (kt === p.CKK_RSA) {
    const n = hsm.attrs(pub, [p.CKA_MODULUS], label).get(p.CKA_MODULUS) as Buffer;
    const bits = n.length * 8;
    if (bits === 2048) return "RSA2048";
    if (bits === 3072) return "RSA3072";
    throw new CustodyError("CORRUPT", `key pair ${label} is RSA-${bits}, which cardkms does not use`);
  }
  throw new CustodyError("CORRUPT", `key pair ${label} has a key type cardkms does not use`);
}

export async function deleteKey(hsm: Pkcs11Token, label: string): Promise<boolean> {
  checkLabel(label);
  const hs = hsm.find([{ type: hsm.p.CKA_LABEL, value: label }]);
  for (const h of hs) hsm.call("C_DestroyObject", label, () => hsm.mod.C_DestroyObject(hsm.session, h));
  return hs.length > 0;
}

export async function listKeys(hsm: Pkcs11Token): Promise<KeyInfo[]> {
  const p = hsm.p;
  const labels = new Set<string>();
  for (const cls of [p.CKO_SECRET_KEY, p.CKO_PRIVATE_KEY]) {
    for (const h of hsm.find([{ type: p.CKA_CLASS, value: cls }], 100000)) {
      const l = hsm.attrs(h, [p.CKA_LABEL], "list keys").get(p.CKA_LABEL);
      if (l && l.length) labels.add(l.toString("utf8"));
    }
  }
  const out: KeyInfo[] = [];
  for (const l of [...labels].sort()) {
    const i = await keyInfo(hsm, l).catch(() => undefined);
    if (i) out.push(i);
  }
  return out;
}
