// Key pairs on the PKCS#11 token: generated with their role's templates (CKM_EC_KEY_PAIR_GEN, CKM_RSA_PKCS_KEY_PAIR_GEN),
// their public keys as SubjectPublicKeyInfo, and signing — CKM_ECDSA over a digest computed here (the signature
// DER-encoded here), or CKM_SHA*_RSA_PKCS.

import { createHash } from "node:crypto";
import { checkHash, checkKeyPairAlg, checkLabel, checkPairUsage, CustodyError, defaultHash, type HashAlg, type KeyInfo, type KeyPairAlg, type KeyPairOptions, type Signer } from "../custody.ts";
import { EC_CURVES, ecdsaRawToDer, ecPointToSpki, isEc, rsaBits, rsaToSpki } from "../encoding.ts";
import type { Handle, P11 } from "./module.ts";
import { pairAlg } from "./objects.ts";
import { privateKeyTemplate, publicKeyTemplate, type Template } from "./templates.ts";
import type { Pkcs11Token } from "./token.ts";

const SIGN_MECH: Record<HashAlg, (p: P11) => number> = {
  "SHA-256": (p) => p.CKM_SHA256_RSA_PKCS,
  "SHA-384": (p) => p.CKM_SHA384_RSA_PKCS,
  "SHA-512": (p) => p.CKM_SHA512_RSA_PKCS,
};
const HASH_NODE: Record<HashAlg, string> = { "SHA-256": "sha256", "SHA-384": "sha384", "SHA-512": "sha512" };

export async function generateKeyPair(hsm: Pkcs11Token, label: string, alg: KeyPairAlg, opts: KeyPairOptions = {}): Promise<KeyInfo> {
  checkLabel(label);
  checkKeyPairAlg(alg);
  const extractable = opts.extractable ?? "never";
  if (extractable !== "never" && extractable !== "wrapped") throw new CustodyError("INVALID_ARGUMENT", 'extractable must be "never" or "wrapped"');
  if (hsm.exists(label)) throw new CustodyError("EXISTS", `a key labelled ${label} already exists`);
  const p = hsm.p;
  const token = opts.ephemeral !== true;
  const usage = checkPairUsage(opts.usage, ["sign"]);
  const pub: Template = [...hsm.named(label), { type: p.CKA_CLASS, value: p.CKO_PUBLIC_KEY }, ...publicKeyTemplate(p, { token, usage })];
  const priv: Template = [...hsm.named(label), { type: p.CKA_CLASS, value: p.CKO_PRIVATE_KEY }, ...privateKeyTemplate(p, { token, ec: isEc(alg), usage, extractable, features: hsm.features })];
  let mechanism: number;
  if (isEc(alg)) {
    mechanism = p.CKM_EC_KEY_PAIR_GEN;
    pub.push({ type: p.CKA_EC_PARAMS, value: Buffer.from(EC_CURVES[alg].oid, "hex") });
  } else {
    mechanism = p.CKM_RSA_PKCS_KEY_PAIR_GEN;
    pub.push({ type: p.CKA_MODULUS_BITS, value: rsaBits(alg) }, { type: p.CKA_PUBLIC_EXPONENT, value: Buffer.from([1, 0, 1]) });
  }
  hsm.call("C_GenerateKeyPair", `${alg} key pair ${label}`, () => hsm.mod.C_GenerateKeyPair(hsm.session, { mechanism }, pub, priv));
  return { label, kind: "keyPair", type: alg, extractable };
}

export async function publicKey(hsm: Pkcs11Token, label: string): Promise<Uint8Array> {
  checkLabel(label);
  hsm.privateHandle(label);
  const alg = pairAlg(hsm, label);
  const p = hsm.p;
  const pub = hsm.object(label, p.CKO_PUBLIC_KEY) as Handle;
  if (isEc(alg)) return ecPointToSpki(alg, hsm.attrs(pub, [p.CKA_EC_POINT], label).get(p.CKA_EC_POINT) as Buffer);
  const a = hsm.attrs(pub, [p.CKA_MODULUS, p.CKA_PUBLIC_EXPONENT], label);
  return rsaToSpki(a.get(p.CKA_MODULUS) as Buffer, a.get(p.CKA_PUBLIC_EXPONENT) as Buffer);
}

export async function sign(hsm: Pkcs11Token, label: string, data: Uint8Array, opts: { hash?: HashAlg } = {}): Promise<Uint8Array> {
  checkLabel(label);
  const h = hsm.privateHandle(label);
  const alg = pairAlg(hsm, label);
  const hash = opts.hash ?? defaultHash(alg);
  checkHash(hash);
  return signWith(hsm, h, alg, hash, data, label);
}

/** ECDSA (DER) or RSA PKCS#1 v1.5 with the private key `h`. */
export function signWith(hsm: Pkcs11Token, h: Handle, alg: KeyPairAlg, hash: HashAlg, data: Uint8Array, label: string): Uint8Array {
  const p = hsm.p;
  if (isEc(alg)) {
    const digest = createHash(HASH_NODE[hash]).update(data).digest();
    const raw = hsm.call("C_Sign", `ECDSA with ${label}`, () => {
      hsm.mod.C_SignInit(hsm.session, { mechanism: p.CKM_ECDSA }, h);
      return hsm.mod.C_Sign(hsm.session, digest, Buffer.alloc(2 * EC_CURVES[alg].size));
    });
    return ecdsaRawToDer(raw);
  }
  const sig = hsm.call("C_Sign", `RSA PKCS#1 v1.5 with ${label}`, () => {
    hsm.mod.C_SignInit(hsm.session, { mechanism: SIGN_MECH[hash](p) }, h);
    return hsm.mod.C_Sign(hsm.session, Buffer.from(data), Buffer.alloc(rsaBits(alg) / 8));
  });
  return new Uint8Array(sig);
}

export async function signer(hsm: Pkcs11Token, label: string): Promise<Signer> {
  const spki = await publicKey(hsm, label);
  const alg = pairAlg(hsm, label);
  return { label, alg, hash: defaultHash(alg), spki, sign: (data) => sign(hsm, label, data) };
}
