// The key policy of the PKCS#11 custody (issue 17 §1): one attribute template per key role, every flag stated, so
// nothing rests on a token's defaults (SoftHSM2 gives an RSA key CKA_DECRYPT and CKA_UNWRAP unless told otherwise),
// and the least usage each role needs. As SunPKCS11 configurations and EJBCA's per-HSM files state the template of
// every key they make, and as AWS CloudHSM documents attribute by attribute what may change after creation.
//
// What every key gets:
//   CKA_MODIFIABLE=false  no C_SetAttributeValue: usage flags cannot be switched on later (CKA_ENCRYPT on the
//                         card master, CKA_DECRYPT on the escrow KEK)
//   CKA_COPYABLE=false    no C_CopyObject into a copy with other attributes
//   CKA_SENSITIVE=true    (secret and private keys) CKA_VALUE is never readable; it cannot be switched off
//   CKA_EXTRACTABLE       true only where the key must leave custody wrapped (card keys for PUT KEY, credential
//                         keys for Sk[PRk]); it cannot be switched on
//   every usage flag      ENCRYPT, DECRYPT, WRAP, UNWRAP, SIGN, VERIFY, DERIVE (and SIGN_RECOVER, VERIFY_RECOVER
//                         for key pairs) explicitly true or false
//   CKA_UNWRAP_TEMPLATE   on every key that unwraps: whatever it unwraps is sensitive, whatever template the caller
//                         gives (C_UnwrapKey of an escrow blob into CKA_SENSITIVE=false is refused)
//   CKA_DERIVE_TEMPLATE   on every key that derives, where the token supports it (PKCS#11 3.0; SoftHSM2 2.6 does
//                         not): whatever it derives is sensitive
//
// SoftHSM2 2.6 applies a derive or unwrap template in order and treats every attribute after CKA_MODIFIABLE=false
// as a modification of a read-only object (CKR_ATTRIBUTE_READ_ONLY): `finish` puts it last.
//
// CKA_WRAP_WITH_TRUSTED is set on every key that may never leave custody (a second lock beside CKA_EXTRACTABLE);
// the keys that must leave wrapped cannot carry it, because the keys that legitimately wrap them are per card,
// derived at run time (the purpose-0x50 wrap key of Sk, the card's DEK for PUT KEY), and PKCS#11 lets only the
// security officer mark a key CKA_TRUSTED. What protects those keys instead is in the README's security section.

import type * as Pkcs11Types from "pkcs11js";
import type { TokenFeatures } from "../self-test.ts";

export type { TokenFeatures } from "../self-test.ts";
import type { Extractability, PairUsage, SecretKeyUsage } from "../custody.ts";

type P11 = typeof Pkcs11Types;
export type Template = Pkcs11Types.Template;

/** Template attributes (PKCS#11 2.40 §4.4): CKF_ARRAY_ATTRIBUTE | 0x211..0x213. pkcs11js exports no constants. */
export const CKA_WRAP_TEMPLATE = 0x40000211;
export const CKA_UNWRAP_TEMPLATE = 0x40000212;
export const CKA_DERIVE_TEMPLATE = 0x40000213;
/**
 * The CKR_ name in a pkcs11js error message. pkcs11js 2.1.7 knows PKCS#11 2.40's codes only and prints others as
 * CKR_VENDOR_DEFINED:<n>; 0x1B is PKCS#11 3.0's CKR_ACTION_PROHIBITED, what SoftHSM2 answers a change of a
 * non-modifiable or a copy of a non-copyable object.
 */
export function ckrName(e: unknown): string | undefined {
  const m = e instanceof Error ? /CKR_[A-Z0-9_]+(:\d+)?/.exec(e.message) : null;
  if (!m) return undefined;
  return m[0] === "CKR_VENDOR_DEFINED:27" ? "CKR_ACTION_PROHIBITED" : m[0].replace(/:\d+$/, "");
}

/** What whatever a key unwraps or derives is forced to be: unreadable. */
export function lockedTemplate(p: P11): Template {
  return [{ type: p.CKA_SENSITIVE, value: true }];
}

/** Puts CKA_MODIFIABLE last (see the file comment) and refuses a template that states one attribute twice. */
export function finish(t: Template, p: P11): Template {
  const seen = new Set<number>();
  for (const a of t) {
    if (seen.has(a.type)) throw new Error(`attribute 0x${a.type.toString(16)} stated twice in a key template`);
    seen.add(a.type);
  }
  return [...t.filter((a) => a.type !== p.CKA_MODIFIABLE), ...t.filter((a) => a.type === p.CKA_MODIFIABLE)];
}

const flags = (p: P11, on: Set<number>, all: number[]): Template => all.map((type) => ({ type, value: on.has(type) }));

/** The usage flags of a secret key: derive → DERIVE; wrap → WRAP + UNWRAP; encrypt → ENCRYPT; mac → SIGN (CMAC). */
export function secretUsageFlags(p: P11, usage: readonly SecretKeyUsage[]): Set<number> {
  const on = new Set<number>();
  for (const u of usage) {
    if (u === "derive") on.add(p.CKA_DERIVE);
    if (u === "wrap") on.add(p.CKA_WRAP).add(p.CKA_UNWRAP);
    if (u === "encrypt") on.add(p.CKA_ENCRYPT);
    if (u === "mac") on.add(p.CKA_SIGN);
  }
  return on;
}

const SECRET_USAGES = (p: P11): number[] => [p.CKA_ENCRYPT, p.CKA_DECRYPT, p.CKA_WRAP, p.CKA_UNWRAP, p.CKA_SIGN, p.CKA_VERIFY, p.CKA_DERIVE];

/**
 * An AES key: stored (CKA_TOKEN) for masters, KEKs and imported key sets; a session object for keys derived from
 * them. `on` is the set of usage attributes that are true (secretUsageFlags, or a derived key's own set).
 */
export function aesKeyTemplate(p: P11, o: { token: boolean; on: Set<number>; extractable: boolean; features: TokenFeatures; bytes?: number }): Template {
  const t: Template = [
    { type: p.CKA_CLASS, value: p.CKO_SECRET_KEY },
    { type: p.CKA_KEY_TYPE, value: p.CKK_AES },
    { type: p.CKA_TOKEN, value: o.token },
    { type: p.CKA_PRIVATE, value: true },
    { type: p.CKA_SENSITIVE, value: true },
    { type: p.CKA_EXTRACTABLE, value: o.extractable },
    { type: p.CKA_WRAP_WITH_TRUSTED, value: !o.extractable },
    { type: p.CKA_TRUSTED, value: false },
    { type: p.CKA_COPYABLE, value: false },
    { type: p.CKA_DESTROYABLE, value: true },
    ...flags(p, o.on, SECRET_USAGES(p)),
    { type: p.CKA_MODIFIABLE, value: false },
  ];
  if (o.bytes !== undefined) t.push({ type: p.CKA_VALUE_LEN, value: o.bytes });
  if (o.on.has(p.CKA_UNWRAP) && o.features.unwrapTemplate) t.push({ type: CKA_UNWRAP_TEMPLATE, value: lockedTemplate(p) });
  if (o.on.has(p.CKA_DERIVE) && o.features.deriveTemplate) t.push({ type: CKA_DERIVE_TEMPLATE, value: lockedTemplate(p) });
  return finish(t, p);
}

const PRIVATE_USAGES = (p: P11): number[] => [p.CKA_SIGN, p.CKA_SIGN_RECOVER, p.CKA_DECRYPT, p.CKA_UNWRAP, p.CKA_DERIVE];
const PUBLIC_USAGES = (p: P11): number[] => [p.CKA_VERIFY, p.CKA_VERIFY_RECOVER, p.CKA_ENCRYPT, p.CKA_WRAP, p.CKA_DERIVE];

/**
 * A private key: the CA key, webhook-root and the reproduction device key (never extractable, stored), credential
 * and reproduced keys (extractable only wrapped, session objects). Without label, class and key type, which the
 * caller states (C_GenerateKeyPair takes them from the mechanism).
 */
export function privateKeyTemplate(p: P11, o: { token: boolean; ec: boolean; usage: readonly PairUsage[]; extractable: Extractability; features: TokenFeatures }): Template {
  const on = new Set<number>();
  if (o.usage.includes("sign")) on.add(p.CKA_SIGN);
  if (o.usage.includes("decipher")) on.add(o.ec ? p.CKA_DERIVE : p.CKA_DECRYPT);
  const wrapped = o.extractable === "wrapped";
  return finish(
    [
      { type: p.CKA_TOKEN, value: o.token },
      { type: p.CKA_PRIVATE, value: true },
      { type: p.CKA_SENSITIVE, value: true },
      { type: p.CKA_EXTRACTABLE, value: wrapped },
      { type: p.CKA_WRAP_WITH_TRUSTED, value: !wrapped },
      { type: p.CKA_ALWAYS_AUTHENTICATE, value: false },
      { type: p.CKA_COPYABLE, value: false },
      { type: p.CKA_DESTROYABLE, value: true },
      ...flags(p, on, PRIVATE_USAGES(p)),
      { type: p.CKA_MODIFIABLE, value: false },
    ],
    p,
  );
}

/** The public half: verifies (when the pair signs), nothing else. */
export function publicKeyTemplate(p: P11, o: { token: boolean; usage: readonly PairUsage[] }): Template {
  const on = new Set<number>(o.usage.includes("sign") ? [p.CKA_VERIFY] : []);
  return finish(
    [
      { type: p.CKA_TOKEN, value: o.token },
      { type: p.CKA_PRIVATE, value: false },
      { type: p.CKA_TRUSTED, value: false },
      { type: p.CKA_COPYABLE, value: false },
      { type: p.CKA_DESTROYABLE, value: true },
      ...flags(p, on, PUBLIC_USAGES(p)),
      { type: p.CKA_MODIFIABLE, value: false },
    ],
    p,
  );
}

/**
 * A private key unwrapped only to be wrapped again (card-key rotation, Sk1[PRk] → Sk2[PRk]): sensitive,
 * extractable, no usage at all.
 */
export function transitKeyTemplate(p: P11, ec: boolean): Template {
  return finish(
    [
      { type: p.CKA_CLASS, value: p.CKO_PRIVATE_KEY },
      { type: p.CKA_KEY_TYPE, value: ec ? p.CKK_EC : p.CKK_RSA },
      { type: p.CKA_TOKEN, value: false },
      { type: p.CKA_PRIVATE, value: true },
      { type: p.CKA_SENSITIVE, value: true },
      { type: p.CKA_EXTRACTABLE, value: true },
      { type: p.CKA_WRAP_WITH_TRUSTED, value: false },
      { type: p.CKA_COPYABLE, value: false },
      { type: p.CKA_DESTROYABLE, value: true },
      ...flags(p, new Set(), PRIVATE_USAGES(p)),
      { type: p.CKA_MODIFIABLE, value: false },
    ],
    p,
  );
}

/**
 * The ECDH shared secret (CKM_ECDH1_DERIVE, no KDF) as a session CKK_GENERIC_SECRET: readable by design — it is the
 * input of the host-side KDF of ECIES (share releases, the FIG. 10 key check), which no PKCS#11 2.40 token can run.
 * Destroyed as soon as it is read.
 */
export function ecdhSecretTemplate(p: P11, size: number): Template {
  return finish(
    [
      { type: p.CKA_CLASS, value: p.CKO_SECRET_KEY },
      { type: p.CKA_KEY_TYPE, value: p.CKK_GENERIC_SECRET },
      { type: p.CKA_TOKEN, value: false },
      { type: p.CKA_PRIVATE, value: true },
      { type: p.CKA_SENSITIVE, value: false },
      { type: p.CKA_EXTRACTABLE, value: true },
      { type: p.CKA_COPYABLE, value: false },
      ...flags(p, new Set(), SECRET_USAGES(p)),
      { type: p.CKA_VALUE_LEN, value: size },
      { type: p.CKA_MODIFIABLE, value: false },
    ],
    p,
  );
}
