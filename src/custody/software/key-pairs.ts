// Key pairs in the software custody: generated (ephemeral ones never written, their PKCS#8 kept for wrapping), their
// public keys, signing (ECDSA DER, RSA PKCS#1 v1.5) and deciphering (ECDH, RSA-OAEP SHA-256) with Node's crypto, each
// only where the key pair's usage allows it.

import { constants as cryptoConstants, createPrivateKey, diffieHellman, privateDecrypt, sign as nodeSign, type KeyObject } from "node:crypto";
import { ecPeer } from "../asymmetric.ts";
import { checkHash, checkKeyPairAlg, checkLabel, checkPairUsage, CustodyError, defaultHash, type HashAlg, type KeyInfo, type KeyPairAlg, type KeyPairOptions, type Signer } from "../custody.ts";
import { isEc, rsaBits } from "../encoding.ts";
import type { EntryMeta } from "../keystore-file.ts";
import { genKeyPair } from "./keygen.ts";
import type { Keystore } from "./keystore.ts";

const HASH_NODE: Record<HashAlg, string> = { "SHA-256": "sha256", "SHA-384": "sha384", "SHA-512": "sha512" };

export async function generateKeyPair(ks: Keystore, label: string, alg: KeyPairAlg, opts: KeyPairOptions = {}): Promise<KeyInfo> {
  ks.live();
  checkLabel(label);
  checkKeyPairAlg(alg);
  const extractable = opts.extractable ?? "never";
  if (extractable !== "never" && extractable !== "wrapped") throw new CustodyError("INVALID_ARGUMENT", 'extractable must be "never" or "wrapped"');
  if (ks.meta(label)) throw new CustodyError("EXISTS", `a key labelled ${label} already exists`);
  const pairUsage = checkPairUsage(opts.usage, ["sign"]);
  await ks.fetch(label);
  if (ks.meta(label)) throw new CustodyError("EXISTS", `a key labelled ${label} already exists`);
  const { spki, pkcs8 } = await genKeyPair(alg);
  const meta: EntryMeta = { kind: "keyPair", type: alg, extractable, pairUsage, spki: spki.toString("base64"), created: new Date().toISOString() };
  if (opts.ephemeral === true) {
    // Never written; the KeyObject is made only if the key signs (an issued credential is only wrapped).
    if (ks.meta(label)) throw new CustodyError("EXISTS", `a key labelled ${label} already exists`);
    let key: KeyObject | undefined;
    ks.loaded.set(label, {
      meta,
      ephemeral: true,
      pkcs8,
      get secret(): KeyObject {
        return (key ??= createPrivateKey({ key: pkcs8, format: "der", type: "pkcs8" }));
      },
    });
  } else {
    const priv = createPrivateKey({ key: pkcs8, format: "der", type: "pkcs8" });
    pkcs8.fill(0);
    await ks.add(label, meta, priv);
  }
  return ks.info(label, meta);
}

export async function publicKey(ks: Keystore, label: string): Promise<Uint8Array> {
  await ks.fetch(label);
  const { meta } = ks.load(label);
  if (meta.kind !== "keyPair") throw new CustodyError("INVALID_ARGUMENT", `${label} is not a key pair`);
  return new Uint8Array(Buffer.from(meta.spki as string, "base64"));
}

export async function sign(ks: Keystore, label: string, data: Uint8Array, opts: { hash?: HashAlg } = {}): Promise<Uint8Array> {
  await ks.fetch(label);
  const { key, meta } = ks.privateKey(label, "sign");
  const alg = meta.type as KeyPairAlg;
  const hash = opts.hash ?? defaultHash(alg);
  checkHash(hash);
  const sig = isEc(alg) ? nodeSign(HASH_NODE[hash], data, { key, dsaEncoding: "der" }) : nodeSign(HASH_NODE[hash], data, key);
  return new Uint8Array(sig);
}

export async function decipher(ks: Keystore, label: string, input: Uint8Array): Promise<Uint8Array> {
  await ks.fetch(label);
  const { key, meta } = ks.privateKey(label, "decipher");
  const alg = meta.type as KeyPairAlg;
  if (!(input instanceof Uint8Array)) throw new CustodyError("INVALID_ARGUMENT", "decipher input must be bytes");
  if (isEc(alg)) {
    const peer = ecPeer(alg, input);
    return new Uint8Array(diffieHellman({ privateKey: key, publicKey: peer.key }));
  }
  const k = rsaBits(alg) / 8;
  if (input.length !== k) throw new CustodyError("INVALID_ARGUMENT", `an RSA-OAEP ciphertext for ${label} is ${k} bytes, not ${input.length}`);
  try {
    return new Uint8Array(privateDecrypt({ key, padding: cryptoConstants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256" }, input));
  } catch {
    throw new CustodyError("WRONG_KEY", `the input does not decrypt under ${label} (RSA-OAEP SHA-256): not encrypted for this key, or altered`);
  }
}

export async function signer(ks: Keystore, label: string): Promise<Signer> {
  await ks.fetch(label);
  const { meta } = ks.privateKey(label);
  const alg = meta.type as KeyPairAlg;
  const spki = await publicKey(ks, label);
  return { label, alg, hash: defaultHash(alg), spki, sign: (data) => sign(ks, label, data) };
}
