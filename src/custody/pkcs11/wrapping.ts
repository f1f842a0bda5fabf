// Private keys in and out of the PKCS#11 token, always wrapped (CKM_AES_KEY_WRAP_PAD, RFC 5649): under a card's
// private-key wrap key (purpose 0x50, derived from its DEK as a session object and destroyed after use) or under a
// stored KEK. Wrapping an extractable key, re-wrapping from one key to another (one key, or a batch) with the
// private key a session object only in between, and taking a wrapped key into custody (C_UnwrapKey with its role's
// template), checked against its public key before it is kept.

import { randomBytes, verify as nodeVerify } from "node:crypto";
import { PURPOSE } from "../../protocol/derivation.ts";
import { canonicalSpki, ecGenerator, ecPointsWithX } from "../asymmetric.ts";
import { checkKeyPairAlg, checkLabel, checkUnwrapUsage, CustodyError, type KeyInfo, type KeyPairAlg, type KeyPairOptions, type WrapTarget } from "../custody.ts";
import { EC_CURVES, ecPointToSpki, hex, isEc, rsaBits, rsaToSpki } from "../encoding.ts";
import { purposeKey } from "./card-keys.ts";
import { ecdh } from "./decipher.ts";
import { mapError, unwrapError } from "./errors.ts";
import { signWith } from "./key-pairs.ts";
import type { Handle } from "./module.ts";
import { ckrName, privateKeyTemplate, publicKeyTemplate, transitKeyTemplate, type Template } from "./templates.ts";
import type { Pkcs11Token } from "./token.ts";

/** The wrapping key for a target, and whether the caller must destroy it (a derived session object). */
function wrapKey(hsm: Pkcs11Token, to: WrapTarget): { h: Handle; derived: boolean } {
  const p = hsm.p;
  if ("card" in to) return { h: purposeKey(hsm, to.card, PURPOSE.privateKeyWrap, [p.CKA_WRAP, p.CKA_UNWRAP]), derived: true };
  if ("key" in to) {
    checkLabel(to.key);
    return { h: hsm.secretHandle(to.key, "wrap"), derived: false };
  }
  throw new CustodyError("INVALID_ARGUMENT", "wrap target must be {card: KeySetRef} or {key: label}");
}

export async function wrapPrivateKey(hsm: Pkcs11Token, label: string, to: WrapTarget): Promise<Uint8Array> {
  checkLabel(label);
  const h = hsm.privateHandle(label);
  if (hsm.attrs(h, [hsm.p.CKA_EXTRACTABLE], label).get(hsm.p.CKA_EXTRACTABLE)?.[0] !== 1) throw new CustodyError("NOT_PERMITTED", `key ${label} is not extractable: it cannot be wrapped`);
  const w = wrapKey(hsm, to);
  try {
    const out = hsm.call("C_WrapKey", `wrap ${label} (AES key wrap with padding)`, () => hsm.mod.C_WrapKey(hsm.session, { mechanism: hsm.p.CKM_AES_KEY_WRAP_PAD }, w.h, h, Buffer.alloc(8192)));
    return new Uint8Array(out);
  } finally {
    if (w.derived) hsm.destroy(w.h);
  }
}

export async function rewrapPrivateKey(hsm: Pkcs11Token, wrapped: Uint8Array, alg: KeyPairAlg, from: WrapTarget, to: WrapTarget): Promise<Uint8Array> {
  checkKeyPairAlg(alg);
  const p = hsm.p;
  const a = wrapKey(hsm, from);
  let key: Handle | undefined;
  try {
    const t = transitKeyTemplate(p, isEc(alg));
    try {
      key = hsm.mod.C_UnwrapKey(hsm.session, { mechanism: p.CKM_AES_KEY_WRAP_PAD }, a.h, Buffer.from(wrapped), t);
    } catch (e) {
      // SoftHSM2 reports a failed RFC 5649 integrity check as CKR_GENERAL_ERROR; the standard codes are
      // CKR_WRAPPED_KEY_INVALID / CKR_ENCRYPTED_DATA_INVALID.
      const ckr = ckrName(e);
      if (ckr === "CKR_GENERAL_ERROR" || ckr === "CKR_WRAPPED_KEY_INVALID" || ckr === "CKR_ENCRYPTED_DATA_INVALID" || ckr === "CKR_WRAPPED_KEY_LEN_RANGE")
        throw new CustodyError("WRONG_KEY", `PKCS#11 C_UnwrapKey (unwrap for re-wrap) failed: ${ckr} — the wrapped private key does not unwrap under the given key (wrong key or altered)`, {
          cause: e,
        });
      throw mapError(e, "C_UnwrapKey", "unwrap for re-wrap");
    }
  } finally {
    if (a.derived) hsm.destroy(a.h);
  }
  try {
    const b = wrapKey(hsm, to);
    try {
      const k = key;
      return new Uint8Array(hsm.call("C_WrapKey", "re-wrap", () => hsm.mod.C_WrapKey(hsm.session, { mechanism: p.CKM_AES_KEY_WRAP_PAD }, b.h, k, Buffer.alloc(8192))));
    } finally {
      if (b.derived) hsm.destroy(b.h);
    }
  } finally {
    hsm.destroy(key);
  }
}

export async function rewrapPrivateKeys(hsm: Pkcs11Token, items: readonly { wrapped: Uint8Array; alg: KeyPairAlg }[], from: WrapTarget, to: WrapTarget): Promise<Uint8Array[]> {
  for (const it of items) checkKeyPairAlg(it.alg);
  if (items.length === 0) return [];
  const p = hsm.p;
  // Both wrap keys derived once for the batch (two C_DeriveKey instead of two per key); each private key is
  // a session object only between its C_UnwrapKey and C_WrapKey.
  const a = wrapKey(hsm, from);
  let b: { h: Handle; derived: boolean } | undefined;
  try {
    b = wrapKey(hsm, to);
    const out: Uint8Array[] = [];
    for (let k = 0; k < items.length; k++) {
      const t = transitKeyTemplate(p, isEc(items[k].alg));
      let key: Handle;
      try {
        key = hsm.mod.C_UnwrapKey(hsm.session, { mechanism: p.CKM_AES_KEY_WRAP_PAD }, a.h, Buffer.from(items[k].wrapped), t);
      } catch (e) {
        const ckr = ckrName(e);
        if (ckr === "CKR_GENERAL_ERROR" || ckr === "CKR_WRAPPED_KEY_INVALID" || ckr === "CKR_ENCRYPTED_DATA_INVALID" || ckr === "CKR_WRAPPED_KEY_LEN_RANGE")
          throw new CustodyError("WRONG_KEY", `PKCS#11 C_UnwrapKey failed on item ${k} of the batch: ${ckr} — it does not unwrap under the given key (wrong key or altered)`, { cause: e });
        throw mapError(e, "C_UnwrapKey", `unwrap item ${k} for re-wrap`);
      }
      try {
        const wk = b.h;
        out.push(new Uint8Array(hsm.call("C_WrapKey", "re-wrap", () => hsm.mod.C_WrapKey(hsm.session, { mechanism: p.CKM_AES_KEY_WRAP_PAD }, wk, key, Buffer.alloc(8192)))));
      } finally {
        hsm.destroy(key);
      }
    }
    return out;
  } finally {
    if (a.derived) hsm.destroy(a.h);
    if (b?.derived) hsm.destroy(b.h);
  }
}

export async function unwrapPrivateKey(
  hsm: Pkcs11Token,
  label: string,
  wrapped: Uint8Array,
  alg: KeyPairAlg,
  from: WrapTarget,
  opts: KeyPairOptions & { expectSpki?: Uint8Array } = {},
): Promise<KeyInfo> {
  checkLabel(label);
  checkKeyPairAlg(alg);
  const extractable = opts.extractable ?? "never";
  if (extractable !== "never" && extractable !== "wrapped") throw new CustodyError("INVALID_ARGUMENT", 'extractable must be "never" or "wrapped"');
  if (!(wrapped instanceof Uint8Array)) throw new CustodyError("INVALID_ARGUMENT", "the wrapped private key must be bytes");
  const expect = opts.expectSpki === undefined ? undefined : canonicalSpki(opts.expectSpki, "expectSpki");
  if (hsm.exists(label)) throw new CustodyError("EXISTS", `a key labelled ${label} already exists`);
  const p = hsm.p;
  const token = opts.ephemeral !== true;
  // What the FIG. 10 key check needs: signing, and deciphering (ECDH for an EC key, decryption for an RSA key).
  const usage = checkUnwrapUsage(opts.usage);
  // Unwrapped where it will live (a copy to the token would need CKA_COPYABLE), checked, and destroyed when refused.
  const t: Template = [
    ...hsm.named(label),
    { type: p.CKA_CLASS, value: p.CKO_PRIVATE_KEY },
    { type: p.CKA_KEY_TYPE, value: isEc(alg) ? p.CKK_EC : p.CKK_RSA },
    ...privateKeyTemplate(p, { token, ec: isEc(alg), usage, extractable, features: hsm.features }),
  ];
  const a = wrapKey(hsm, from);
  let key: Handle | undefined;
  try {
    key = hsm.mod.C_UnwrapKey(hsm.session, { mechanism: p.CKM_AES_KEY_WRAP_PAD }, a.h, Buffer.from(wrapped), t);
  } catch (e) {
    throw unwrapError(e, `unwrap ${label}`, alg);
  } finally {
    if (a.derived) hsm.destroy(a.h);
  }
  let pub: Handle | undefined;
  try {
    const { spki, pubAttrs } = unwrappedPublic(hsm, key, alg, label);
    if (expect && !expect.equals(spki)) throw new CustodyError("WRONG_KEY", `the key unwrapped for ${label} is not the expected one: its public key differs`);
    pub = hsm.call("C_CreateObject", `public key of ${label}`, () =>
      hsm.mod.C_CreateObject(hsm.session, [...hsm.named(label), { type: p.CKA_CLASS, value: p.CKO_PUBLIC_KEY }, ...pubAttrs, ...publicKeyTemplate(p, { token, usage })]),
    );
    return { label, kind: "keyPair", type: alg, extractable };
  } catch (e) {
    hsm.destroy(pub, key);
    throw e;
  }
}

/**
 * The SPKI and public key object attributes of an unwrapped private key, after checking that it is an `alg` key
 * and that it signs for that public key (WRONG_KEY otherwise). RSA: CKA_MODULUS / CKA_PUBLIC_EXPONENT of the
 * private key. EC: a PKCS#11 private key has no public point, so its X coordinate is the ECDH secret with the base
 * point G (x(d·G)); of the two points with that X, the public key is the one a test signature verifies under.
 */
function unwrappedPublic(hsm: Pkcs11Token, h: Handle, alg: KeyPairAlg, label: string): { spki: Buffer; pubAttrs: Template } {
  const p = hsm.p;
  const probe = randomBytes(32);
  const verifies = (spki: Uint8Array, sig: Uint8Array): boolean => nodeVerify("sha256", probe, { key: Buffer.from(spki), format: "der", type: "spki" }, sig);
  if (isEc(alg)) {
    const params = hsm.attrs(h, [p.CKA_EC_PARAMS], label).get(p.CKA_EC_PARAMS) as Buffer;
    if (hex(params) !== EC_CURVES[alg].oid) throw new CustodyError("WRONG_KEY", `the key unwrapped for ${label} is not a ${alg} key`);
    const x = ecdh(hsm, h, ecGenerator(alg), EC_CURVES[alg].size, `public point of ${label}`);
    const sig = signWith(hsm, h, alg, "SHA-256", probe, label);
    for (const point of ecPointsWithX(alg, x)) {
      const spki = Buffer.from(ecPointToSpki(alg, point));
      if (verifies(spki, sig)) {
        // CKA_EC_POINT as the token writes it for generated keys: DER OCTET STRING of the uncompressed point
        const ecPoint = Buffer.concat([Buffer.of(0x04, point.length), point]);
        return {
          spki,
          pubAttrs: [
            { type: p.CKA_KEY_TYPE, value: p.CKK_EC },
            { type: p.CKA_EC_PARAMS, value: params },
            { type: p.CKA_EC_POINT, value: ecPoint },
          ],
        };
      }
    }
    throw new CustodyError("WRONG_KEY", `the key unwrapped for ${label} fails its pairwise check: it signs for neither point of its X coordinate`);
  }
  const a = hsm.attrs(h, [p.CKA_MODULUS, p.CKA_PUBLIC_EXPONENT], label);
  const n = a.get(p.CKA_MODULUS) as Buffer,
    e = a.get(p.CKA_PUBLIC_EXPONENT) as Buffer;
  if (n.length * 8 !== rsaBits(alg) || n[0] < 0x80) throw new CustodyError("WRONG_KEY", `the key unwrapped for ${label} is not a ${alg} key`);
  const spki = Buffer.from(rsaToSpki(n, e));
  if (!verifies(spki, signWith(hsm, h, alg, "SHA-256", probe, label)))
    throw new CustodyError("WRONG_KEY", `the key unwrapped for ${label} fails its pairwise check: its private and public halves differ`);
  return {
    spki,
    pubAttrs: [
      { type: p.CKA_KEY_TYPE, value: p.CKK_RSA },
      { type: p.CKA_MODULUS, value: n },
      { type: p.CKA_PUBLIC_EXPONENT, value: e },
    ],
  };
}
