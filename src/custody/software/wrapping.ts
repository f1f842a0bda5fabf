// Private keys in and out of the software custody, always wrapped (AES key wrap with padding, RFC 5649) as the PKCS#11
// custody wraps them: under a card's private-key wrap key (purpose 0x50, derived from its DEK) or under a stored KEK.
// Wrapping an extractable key, re-wrapping from one key to another (one key, or a batch: kwp-batch.ts), and taking a
// wrapped key into custody, checked against its public key before it is kept. Key material is wiped after use.

import { createPrivateKey, createPublicKey, randomBytes, sign as nodeSign, verify as nodeVerify, type KeyObject } from "node:crypto";
import { aesKeyUnwrapPad, aesKeyWrapPad, PURPOSE } from "../../protocol/derivation.ts";
import { canonicalSpki, NODE_CURVE } from "../asymmetric.ts";
import { checkKeyPairAlg, checkLabel, checkUnwrapUsage, CustodyError, type KeyInfo, type KeyPairAlg, type KeyPairOptions, type WrapTarget } from "../custody.ts";
import { isEc, rsaBits } from "../encoding.ts";
import type { EntryMeta } from "../keystore-file.ts";
import { aesKeyRewrapPadBatch, UnwrapError } from "../kwp-batch.ts";
import { purposeKey } from "./card-keys.ts";
import type { Keystore } from "./keystore.ts";

function wrapKey(ks: Keystore, to: WrapTarget): Buffer {
  if ("card" in to) return purposeKey(ks, to.card, PURPOSE.privateKeyWrap);
  if ("key" in to) return Buffer.from(ks.secretKey(to.key, "wrap"));
  throw new CustodyError("INVALID_ARGUMENT", "wrap target must be {card: KeySetRef} or {key: label}");
}

export async function wrapPrivateKey(ks: Keystore, label: string, to: WrapTarget): Promise<Uint8Array> {
  await ks.fetch(label);
  await ks.fetchTarget(to);
  const l = ks.load(label);
  if (l.meta.kind !== "keyPair") throw new CustodyError("INVALID_ARGUMENT", `${label} is not a key pair`);
  if (l.meta.extractable !== "wrapped") throw new CustodyError("NOT_PERMITTED", `key ${label} is not extractable: it cannot be wrapped`);
  const kek = wrapKey(ks, to);
  // A fresh ephemeral key pair still has the PKCS#8 it was generated as; others are encoded now.
  const pkcs8 = l.pkcs8 ?? (ks.privateKey(label).key.export({ format: "der", type: "pkcs8" }) as Buffer);
  try {
    return aesKeyWrapPad(kek, pkcs8);
  } finally {
    if (pkcs8 !== l.pkcs8) pkcs8.fill(0);
    kek.fill(0);
  }
}

export async function rewrapPrivateKey(ks: Keystore, wrapped: Uint8Array, alg: KeyPairAlg, from: WrapTarget, to: WrapTarget): Promise<Uint8Array> {
  checkKeyPairAlg(alg);
  await ks.fetchTarget(from);
  await ks.fetchTarget(to);
  const a = wrapKey(ks, from);
  let pkcs8: Uint8Array;
  try {
    pkcs8 = aesKeyUnwrapPad(a, wrapped);
  } catch {
    throw new CustodyError("WRONG_KEY", "the wrapped private key does not unwrap under the given key (wrong key or altered)");
  } finally {
    a.fill(0);
  }
  const b = wrapKey(ks, to);
  try {
    return aesKeyWrapPad(b, pkcs8);
  } finally {
    pkcs8.fill(0);
    b.fill(0);
  }
}

export async function rewrapPrivateKeys(ks: Keystore, items: readonly { wrapped: Uint8Array; alg: KeyPairAlg }[], from: WrapTarget, to: WrapTarget): Promise<Uint8Array[]> {
  for (const it of items) checkKeyPairAlg(it.alg);
  if (items.length === 0) return [];
  await ks.fetchTarget(from);
  await ks.fetchTarget(to);
  const a = wrapKey(ks, from);
  let b: Buffer | undefined;
  try {
    b = wrapKey(ks, to);
    return aesKeyRewrapPadBatch(
      a,
      b,
      items.map((it) => it.wrapped),
    );
  } catch (e) {
    if (e instanceof UnwrapError) throw new CustodyError("WRONG_KEY", `wrapped private key ${e.index} of the batch does not unwrap under the given key (wrong key or altered)`);
    throw e;
  } finally {
    a.fill(0);
    b?.fill(0);
  }
}

export async function unwrapPrivateKey(ks: Keystore, label: string, wrapped: Uint8Array, alg: KeyPairAlg, from: WrapTarget, opts: KeyPairOptions & { expectSpki?: Uint8Array } = {}): Promise<KeyInfo> {
  ks.live();
  checkLabel(label);
  checkKeyPairAlg(alg);
  const extractable = opts.extractable ?? "never";
  if (extractable !== "never" && extractable !== "wrapped") throw new CustodyError("INVALID_ARGUMENT", 'extractable must be "never" or "wrapped"');
  if (!(wrapped instanceof Uint8Array)) throw new CustodyError("INVALID_ARGUMENT", "the wrapped private key must be bytes");
  const pairUsage = checkUnwrapUsage(opts.usage);
  const expect = opts.expectSpki === undefined ? undefined : canonicalSpki(opts.expectSpki, "expectSpki");
  await ks.fetch(label);
  await ks.fetchTarget(from);
  if (ks.meta(label)) throw new CustodyError("EXISTS", `a key labelled ${label} already exists`);
  const kek = wrapKey(ks, from);
  let pkcs8: Buffer;
  try {
    const plain = aesKeyUnwrapPad(kek, wrapped);
    pkcs8 = Buffer.from(plain.buffer, plain.byteOffset, plain.byteLength); // a view: wiping it wipes the plaintext
  } catch {
    throw new CustodyError("WRONG_KEY", `the wrapped private key for ${label} does not unwrap under the given key (wrong key or altered)`);
  } finally {
    kek.fill(0);
  }
  let key: KeyObject;
  let spki: Buffer;
  try {
    try {
      key = createPrivateKey({ key: pkcs8, format: "der", type: "pkcs8" });
    } catch {
      throw new CustodyError("WRONG_KEY", `the key unwrapped for ${label} is not a PKCS#8 private key`);
    }
    const d = key.asymmetricKeyDetails;
    const is = isEc(alg) ? key.asymmetricKeyType === "ec" && d?.namedCurve === NODE_CURVE[alg] : key.asymmetricKeyType === "rsa" && d?.modulusLength === rsaBits(alg);
    if (!is) throw new CustodyError("WRONG_KEY", `the key unwrapped for ${label} is not a ${alg} key`);
    spki = createPublicKey(key).export({ format: "der", type: "spki" });
    // Pairwise check: the private half signs for the public half (a PKCS#8 carries both and they could differ).
    const probe = randomBytes(32);
    const sig = nodeSign("sha256", probe, key);
    if (!nodeVerify("sha256", probe, { key: spki, format: "der", type: "spki" }, sig))
      throw new CustodyError("WRONG_KEY", `the key unwrapped for ${label} fails its pairwise check: its private and public halves differ`);
    if (expect && !expect.equals(spki)) throw new CustodyError("WRONG_KEY", `the key unwrapped for ${label} is not the expected one: its public key differs`);
  } catch (e) {
    pkcs8.fill(0);
    throw e;
  }
  const meta: EntryMeta = { kind: "keyPair", type: alg, extractable, pairUsage, spki: spki.toString("base64"), created: new Date().toISOString() };
  if (opts.ephemeral === true) {
    // Never written; it keeps the PKCS#8 it came as, for wrapping again without re-encoding (wiped on delete).
    ks.loaded.set(label, { meta, ephemeral: true, pkcs8, secret: key });
  } else {
    pkcs8.fill(0);
    await ks.add(label, meta, key);
  }
  return ks.info(label, meta);
}
