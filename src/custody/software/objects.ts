// Keys by label in the software keystore: secret keys generated or imported (sealed into the keystore at once),
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
  await ks.fetch(label);
  return ks.meta(label) !== undefined;
}

export async function keyInfo(ks: Keystore, label: string): Promise<KeyInfo | undefined> {
  await ks.fetch(label);
  const m = ks.meta(label);
  return m && ks.info(label, m);
}

/** Deletes the key here and where it is kept; other processes stop using it within RECHECK_MS (keystore.ts). */
export async function deleteKey(ks: Keystore, label: string): Promise<boolean> {
  ks.live();
  const l = ks.loaded.get(label);
  if (l?.ephemeral) {
    if (l.pkcs8) l.pkcs8.fill(0);
    else if (Buffer.isBuffer(l.secret)) l.secret.fill(0);
    ks.loaded.delete(label);
    return true;
  }
  ks.drop(label);
  return ks.track(ks.backend.remove(label));
}

/** Every key kept in the backend (whoever made it) and this process's ephemeral key pairs. */
export async function listKeys(ks: Keystore): Promise<KeyInfo[]> {
  ks.live();
  const stored = await ks.track(ks.backend.all());
  const metas = new Map<string, EntryMeta>(Object.entries(stored));
  for (const [label, l] of ks.loaded) if (l.ephemeral) metas.set(label, l.meta);
  return [...metas.keys()].sort().map((l) => ks.info(l, metas.get(l) as EntryMeta));
}
