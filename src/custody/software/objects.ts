// Keys by label in the software keystore: secret keys generated or imported (sealed into the keystore file at once),
// key sets imported as three such keys, what a label holds, deleting (wiping what is in memory) and listing.

import { randomBytes } from "node:crypto";
import { importKeySetWith, checkLabel, checkSecretSpec, CustodyError, type Extractability, type KeyInfo, type SecretKeySpec, type StoredKeySetRef } from "../custody.ts";
import type { EntryMeta } from "../keystore-file.ts";
import type { Keystore } from "./keystore.ts";

export async function createSecretKey(ks: Keystore, label: string, spec: SecretKeySpec): Promise<KeyInfo> {
  return importSecretKey(ks, label, spec, randomBytes(spec?.bits / 8 || 0));
}

export async function importSecretKey(ks: Keystore, label: string, spec: SecretKeySpec, value: Uint8Array): Promise<KeyInfo> {
  ks.live();
  checkLabel(label);
  const s = checkSecretSpec(spec);
  if (!(value instanceof Uint8Array) || value.length * 8 !== s.bits) throw new CustodyError("INVALID_ARGUMENT", `key value must be ${s.bits / 8} bytes`);
  const meta: EntryMeta = { kind: "secret", type: "aes", bits: s.bits, usage: s.usage, extractable: s.extractable, created: new Date().toISOString() };
  await ks.add(label, meta, Buffer.from(value));
  return ks.info(label, meta);
}

export function importKeySet(ks: Keystore, prefix: string, keys: { kvn: number; enc: Uint8Array; mac: Uint8Array; dek: Uint8Array }, extractable: Extractability = "never"): Promise<StoredKeySetRef> {
  return importKeySetWith((label, spec, value) => importSecretKey(ks, label, spec, value), prefix, keys, extractable);
}

export async function hasKey(ks: Keystore, label: string): Promise<boolean> {
  ks.live();
  return ks.meta(label) !== undefined;
}

export async function keyInfo(ks: Keystore, label: string): Promise<KeyInfo | undefined> {
  ks.live();
  const m = ks.meta(label);
  return m && ks.info(label, m);
}

export async function deleteKey(ks: Keystore, label: string): Promise<boolean> {
  ks.live();
  const l = ks.loaded.get(label);
  const stored = Object.hasOwn(ks.doc.keys, label) ? ks.doc.keys[label] : undefined;
  if (!l && !stored) return false;
  if (l?.pkcs8) l.pkcs8.fill(0);
  else if (l && Buffer.isBuffer(l.secret)) l.secret.fill(0);
  ks.loaded.delete(label);
  if (!l?.ephemeral) ks.forgetDerived();
  if (stored) {
    delete ks.doc.keys[label];
    await ks.persist();
  }
  return true;
}

export async function listKeys(ks: Keystore): Promise<KeyInfo[]> {
  ks.live();
  const labels = new Set([...Object.keys(ks.doc.keys), ...ks.loaded.keys()]);
  return [...labels].sort().map((l) => ks.info(l, ks.meta(l) as EntryMeta));
}
