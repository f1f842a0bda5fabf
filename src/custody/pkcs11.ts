// PKCS#11 key custody through pkcs11js (PKCS#11 2.40; tested with SoftHSM2 2.6). Keys live on a token found by
// its label; the application logs in with the user PIN. What runs where:
//   inside the HSM   card key diversification (CKM_AES_CBC_ENCRYPT_DATA from the master, session objects destroyed
//                    after use), KCVs (CKM_AES_ECB), PUT KEY cryptograms (C_WrapKey CKM_AES_CBC, zero IV, under the
//                    current DEK), the SCP03 KDF over the static ENC/MAC (C_Sign CKM_AES_CMAC), package keys and
//                    the private-key wrap key (CKM_AES_CBC_ENCRYPT_DATA from the DEK), package sealing
//                    (CKM_AES_GCM), key pair generation, signing (CKM_ECDSA over a digest computed here,
//                    CKM_SHA*_RSA_PKCS), wrapping and re-wrapping private keys (CKM_AES_KEY_WRAP_PAD), taking
//                    a wrapped private key into custody (C_UnwrapKey CKM_AES_KEY_WRAP_PAD), ECDH (CKM_ECDH1_DERIVE
//                    to a session CKK_GENERIC_SECRET, read and destroyed) and RSA decryption (CKM_RSA_PKCS_OAEP
//                    SHA-256; on a token whose OAEP takes SHA-1 only, CKM_RSA_X_509 with the OAEP decoding here)
//   in this process  digests, DER/SPKI encodings, the derivation data (public: built from the card ID), and the
//                    SCP03 session keys, which the HSM returns as CMAC output (they are ephemeral) and from which
//                    the cryptograms are computed
// Every key's attributes come from one template per role (pkcs11-templates.ts): every flag stated, the least usage,
// CKA_MODIFIABLE and CKA_COPYABLE false, unwrap (and, where the token has them, derive) templates that keep what a key
// unwraps or derives sensitive. Masters, the CA key and storage keys are CKA_TOKEN and never extractable; keys that
// must reach a card (derived card keys, credential private keys) are extractable, but only wrapped. What the token
// actually enforces is what selfTest() (pkcs11-selftest.ts) finds out by trying.
//
// pkcs11js calls are synchronous: each custody operation runs to completion without yielding, so the one session
// of an instance is never shared by two operations at once. Errors name the PKCS#11 function and its CKR_ code.

import { createHash, randomBytes, verify as nodeVerify } from "node:crypto";
import { createRequire } from "node:module";
import type * as Pkcs11Types from "pkcs11js";
import { cryptogram, DERIVE } from "../card/scp03/kdf.ts";
import {
  checkChallenge,
  checkHash,
  checkKeyPairAlg,
  checkKeySetRef,
  checkLabel,
  checkPairUsage,
  checkSecretSpec,
  checkUnwrapUsage,
  CustodyError,
  defaultHash,
  KEY_SET_USAGE,
  type CustodyErrorCode,
  type Extractability,
  type HashAlg,
  type KeyCustody,
  type KeyInfo,
  type KeyPairAlg,
  type KeyPairOptions,
  type KeySetKcvs,
  type KeySetRef,
  type PutKeyData,
  type Scp03SessionMaterial,
  type SealedForCard,
  type SecretKeySpec,
  type SecretKeyUsage,
  type Signer,
  type StoredKeySetRef,
  type WrapTarget,
} from "./custody.ts";
import { cardKeyData, PURPOSE, purposeKeyData, transportKeyData, type CardKeyName } from "../card/derivation.ts";
import { canonicalSpki, ecGenerator, ecPeer, ecPointsWithX, oaepSha256Decode } from "./asymmetric.ts";
import {
  aesKeyTemplate,
  ckrName,
  CKA_DERIVE_TEMPLATE,
  CKA_UNWRAP_TEMPLATE,
  ecdhSecretTemplate,
  lockedTemplate,
  privateKeyTemplate,
  publicKeyTemplate,
  secretUsageFlags,
  transitKeyTemplate,
  type TokenFeatures,
} from "./pkcs11-templates.ts";
import { runSelfTest, type CustodySelfTest } from "./pkcs11-selftest.ts";
import { EC_CURVES, ecdsaRawToDer, ecPointToSpki, hex, isEc, putKeyDataField, rsaBits, rsaToSpki, type PutKeyComponent } from "./encoding.ts";

type P11 = typeof Pkcs11Types;
type Handle = Buffer;
type Template = Pkcs11Types.Template;

export const DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so";

export interface Pkcs11CustodyOptions {
  /** PKCS#11 module path; default CARDKMS_PKCS11_MODULE, then SoftHSM2's Debian path. */
  module?: string;
  /** Token label; default CARDKMS_PKCS11_TOKEN. */
  tokenLabel?: string;
  /** User PIN; default CARDKMS_PKCS11_PIN. */
  pin?: string;
  env?: Record<string, string | undefined>;
}

let p11: P11 | undefined;
function lib(): P11 {
  // Loaded on first use: a software-only deployment never loads the native addon.
  p11 ??= createRequire(import.meta.url)("pkcs11js") as P11;
  return p11;
}

/** One initialised module per path in this process (C_Initialize once, C_Finalize with the last user). */
interface ModuleRef {
  mod: Pkcs11Types.PKCS11;
  users: number;
  /** SHA-256 of the PIN each token was logged in with: a second instance must present the same PIN. */
  logins: Map<string, string>;
  /** What each token accepts (probed once per token). */
  features: Map<string, TokenFeatures>;
}
const modules = new Map<string, ModuleRef>();


const CKR_CODES: Record<string, CustodyErrorCode> = {
  CKR_PIN_INCORRECT: "LOGIN_FAILED",
  CKR_PIN_LEN_RANGE: "LOGIN_FAILED",
  CKR_PIN_LOCKED: "LOGIN_FAILED",
  CKR_PIN_EXPIRED: "LOGIN_FAILED",
  CKR_USER_PIN_NOT_INITIALIZED: "LOGIN_FAILED",
  CKR_KEY_UNEXTRACTABLE: "NOT_PERMITTED",
  CKR_KEY_FUNCTION_NOT_PERMITTED: "NOT_PERMITTED",
  CKR_ACTION_PROHIBITED: "NOT_PERMITTED",
  CKR_ATTRIBUTE_SENSITIVE: "NOT_PERMITTED",
  CKR_WRAPPED_KEY_INVALID: "WRONG_KEY",
  CKR_ENCRYPTED_DATA_INVALID: "WRONG_KEY",
  CKR_DEVICE_REMOVED: "UNAVAILABLE",
  CKR_TOKEN_NOT_PRESENT: "UNAVAILABLE",
  CKR_DEVICE_ERROR: "UNAVAILABLE",
  CKR_SESSION_HANDLE_INVALID: "UNAVAILABLE",
  CKR_SESSION_CLOSED: "UNAVAILABLE",
};

const CKR_HINTS: Record<string, string> = {
  CKR_PIN_INCORRECT: "the user PIN is wrong (CARDKMS_PKCS11_PIN)",
  CKR_PIN_LOCKED: "the user PIN is locked: the security officer must reset it",
  CKR_KEY_UNEXTRACTABLE: "the key is not extractable",
  CKR_MECHANISM_INVALID: "the token does not support this mechanism",
  CKR_WRAPPED_KEY_INVALID: "the wrapped key does not unwrap under this key (wrong key or altered)",
  CKR_ENCRYPTED_DATA_INVALID: "the wrapped key does not unwrap under this key (wrong key or altered)",
};

/** Maps a pkcs11js error to a CustodyError naming the function and the CKR_ code. */
function mapError(e: unknown, fn: string, what: string): CustodyError {
  if (e instanceof CustodyError) return e;
  const ckr = ckrName(e);
  if (!ckr) return new CustodyError("HSM_ERROR", `PKCS#11 ${fn} (${what}) failed: ${e instanceof Error ? e.message.split("\n")[0] : String(e)}`, { cause: e });
  const hint = CKR_HINTS[ckr];
  return new CustodyError(CKR_CODES[ckr] ?? "HSM_ERROR", `PKCS#11 ${fn} (${what}) failed: ${ckr}${hint ? ` — ${hint}` : ""}`, { cause: e });
}

/** CK_RSA_PKCS_OAEP_PARAMS.source: the encoding parameter (label) is given, here empty (PKCS#11 2.40 §2.1.8). */
const CKZ_DATA_SPECIFIED = 1;

/**
 * A failed C_UnwrapKey of a private key: WRONG_KEY when it does not unwrap under the key (SoftHSM2 reports a failed
 * RFC 5649 integrity check as CKR_GENERAL_ERROR; the standard codes are CKR_WRAPPED_KEY_INVALID /
 * CKR_ENCRYPTED_DATA_INVALID) or unwraps to something that is not a private key of the template's type
 * (SoftHSM2: CKR_FUNCTION_FAILED).
 */
function unwrapError(e: unknown, what: string, alg: KeyPairAlg): CustodyError {
  const ckr = ckrName(e);
  if (ckr === "CKR_GENERAL_ERROR" || ckr === "CKR_WRAPPED_KEY_INVALID" || ckr === "CKR_ENCRYPTED_DATA_INVALID" || ckr === "CKR_WRAPPED_KEY_LEN_RANGE")
    return new CustodyError("WRONG_KEY", `PKCS#11 C_UnwrapKey (${what}) failed: ${ckr} — the wrapped private key does not unwrap under the given key (wrong key or altered)`, { cause: e });
  if (ckr === "CKR_FUNCTION_FAILED")
    return new CustodyError("WRONG_KEY", `PKCS#11 C_UnwrapKey (${what}) failed: ${ckr} — the wrapped key is not a ${alg} private key`, { cause: e });
  return mapError(e, "C_UnwrapKey", what);
}

/**
 * Whether the token takes the template attributes (PKCS#11 2.40 §4.4): a session AES key is made with each and
 * destroyed. CKR_ATTRIBUTE_TYPE_INVALID (SoftHSM2 2.6 for CKA_DERIVE_TEMPLATE) or any other refusal: no. A binding
 * that cannot pass a template at all (pkcs11js without patches/pkcs11js+2.1.7.patch) is an installation error.
 */
function probeFeatures(p: P11, mod: Pkcs11Types.PKCS11, session: Handle): TokenFeatures {
  const accepts = (type: number, usage: number): boolean => {
    let h: Handle | undefined;
    try {
      h = mod.C_GenerateKey(session, { mechanism: p.CKM_AES_KEY_GEN }, [
        { type: p.CKA_CLASS, value: p.CKO_SECRET_KEY },
        { type: p.CKA_KEY_TYPE, value: p.CKK_AES },
        { type: p.CKA_VALUE_LEN, value: 16 },
        { type: p.CKA_TOKEN, value: false },
        { type: p.CKA_SENSITIVE, value: true },
        { type: p.CKA_EXTRACTABLE, value: false },
        { type: usage, value: true },
        { type, value: lockedTemplate(p) },
      ]);
      return true;
    } catch (e) {
      if (e instanceof TypeError)
        throw new CustodyError("UNAVAILABLE", `the pkcs11js binding cannot pass attribute templates: it lacks cardkms's patch (patches/pkcs11js+2.1.7.patch; run npm ci) — ${e.message}`);
      return false;
    } finally {
      if (h) mod.C_DestroyObject(session, h);
    }
  };
  return { unwrapTemplate: accepts(CKA_UNWRAP_TEMPLATE, p.CKA_UNWRAP), deriveTemplate: accepts(CKA_DERIVE_TEMPLATE, p.CKA_DERIVE) };
}

const SIGN_MECH: Record<HashAlg, (p: P11) => number> = {
  "SHA-256": (p) => p.CKM_SHA256_RSA_PKCS,
  "SHA-384": (p) => p.CKM_SHA384_RSA_PKCS,
  "SHA-512": (p) => p.CKM_SHA512_RSA_PKCS,
};
const HASH_NODE: Record<HashAlg, string> = { "SHA-256": "sha256", "SHA-384": "sha384", "SHA-512": "sha512" };

const labelId = (label: string): Buffer => createHash("sha256").update(label).digest().subarray(0, 16);

export class Pkcs11Custody implements KeyCustody {
  readonly kind = "pkcs11";
  private closed = false;

  private constructor(
    private readonly p: P11,
    private readonly mod: Pkcs11Types.PKCS11,
    private readonly modulePath: string,
    private readonly session: Handle,
    private readonly slot: Handle,
    readonly tokenLabel: string,
    /** What the token accepts beyond PKCS#11 2.20 (CKA_UNWRAP_TEMPLATE, CKA_DERIVE_TEMPLATE). */
    readonly features: TokenFeatures,
  ) {}

  /** Loads the module, finds the token by label, opens a read-write session and logs in as the user. */
  static async open(opts: Pkcs11CustodyOptions = {}): Promise<Pkcs11Custody> {
    const env = opts.env ?? process.env;
    const modulePath = opts.module ?? env.CARDKMS_PKCS11_MODULE ?? DEFAULT_MODULE;
    const tokenLabel = opts.tokenLabel ?? env.CARDKMS_PKCS11_TOKEN;
    const pin = opts.pin ?? env.CARDKMS_PKCS11_PIN;
    if (!tokenLabel) throw new CustodyError("INVALID_ARGUMENT", "no PKCS#11 token label: set CARDKMS_PKCS11_TOKEN");
    if (!pin) throw new CustodyError("INVALID_ARGUMENT", "no PKCS#11 user PIN: set CARDKMS_PKCS11_PIN");
    const p = lib();
    let ref = modules.get(modulePath);
    if (!ref) {
      const mod = new p.PKCS11();
      try {
        mod.load(modulePath);
      } catch (e) {
        throw new CustodyError("UNAVAILABLE", `cannot load PKCS#11 module ${modulePath}: ${e instanceof Error ? e.message.split("\n")[0] : String(e)}`);
      }
      try {
        mod.C_Initialize({ flags: p.CKF_OS_LOCKING_OK });
      } catch (e) {
        if (ckrName(e) !== "CKR_CRYPTOKI_ALREADY_INITIALIZED") throw mapError(e, "C_Initialize", modulePath);
      }
      ref = { mod, users: 0, logins: new Map(), features: new Map() };
      modules.set(modulePath, ref);
    }
    ref.users++;
    const release = (): void => Pkcs11Custody.release(modulePath);
    let session: Handle | undefined;
    try {
      const mod = ref.mod;
      const slots = mod.C_GetSlotList(true);
      const labels: string[] = [];
      let slot: Handle | undefined;
      for (const s of slots) {
        const l = mod.C_GetTokenInfo(s).label.trim();
        labels.push(l);
        if (l === tokenLabel && !slot) slot = s;
      }
      if (!slot) throw new CustodyError("UNAVAILABLE", `no token labelled ${tokenLabel} in ${modulePath} (tokens: ${labels.join(", ") || "none"})`);
      session = mod.C_OpenSession(slot, p.CKF_SERIAL_SESSION | p.CKF_RW_SESSION);
      const pinHash = createHash("sha256").update(tokenLabel).update("\0").update(pin).digest("hex");
      try {
        mod.C_Login(session, p.CKU_USER, pin);
        ref.logins.set(tokenLabel, pinHash);
      } catch (e) {
        // Login state is per application and token: a second instance finds the user logged in already, and
        // must still have presented the PIN that logged in.
        if (ckrName(e) !== "CKR_USER_ALREADY_LOGGED_IN") throw mapError(e, "C_Login", `user PIN for token ${tokenLabel}`);
        if (ref.logins.get(tokenLabel) !== pinHash) throw new CustodyError("LOGIN_FAILED", `PKCS#11 C_Login (user PIN for token ${tokenLabel}) failed: CKR_PIN_INCORRECT — the user PIN is wrong (CARDKMS_PKCS11_PIN)`);
      }
      let features = ref.features.get(tokenLabel);
      if (!features) {
        features = probeFeatures(p, mod, session);
        ref.features.set(tokenLabel, features);
      }
      return new Pkcs11Custody(p, mod, modulePath, session, slot, tokenLabel, features);
    } catch (e) {
      if (session) {
        try {
          ref.mod.C_CloseSession(session);
        } catch {
          // already gone
        }
      }
      release();
      throw e instanceof CustodyError ? e : mapError(e, "open", tokenLabel);
    }
  }

  private static release(modulePath: string): void {
    const ref = modules.get(modulePath);
    if (!ref) return;
    if (--ref.users > 0) return;
    modules.delete(modulePath);
    try {
      ref.mod.C_Finalize();
    } catch {
      // nothing left to do
    }
    try {
      ref.mod.close();
    } catch {
      // nothing left to do
    }
  }

  // --- plumbing ----------------------------------------------------------------------------------------------

  private call<T>(fn: string, what: string, f: () => T): T {
    if (this.closed) throw new CustodyError("UNAVAILABLE", "custody is closed");
    try {
      return f();
    } catch (e) {
      throw mapError(e, fn, what);
    }
  }

  private find(template: Template, max = 1000): Handle[] {
    return this.call("C_FindObjects", "find keys", () => {
      this.mod.C_FindObjectsInit(this.session, template);
      try {
        return this.mod.C_FindObjects(this.session, max);
      } finally {
        this.mod.C_FindObjectsFinal(this.session);
      }
    });
  }

  private object(label: string, cls: number): Handle | undefined {
    const found = this.find([{ type: this.p.CKA_LABEL, value: label }, { type: this.p.CKA_CLASS, value: cls }], 2);
    if (found.length > 1) throw new CustodyError("CORRUPT", `more than one object labelled ${label} on token ${this.tokenLabel}`);
    return found[0];
  }

  private secretHandle(label: string, usage?: SecretKeyUsage): Handle {
    const h = this.object(label, this.p.CKO_SECRET_KEY);
    if (!h) {
      if (this.object(label, this.p.CKO_PRIVATE_KEY)) throw new CustodyError("INVALID_ARGUMENT", `${label} is not a secret key`);
      throw new CustodyError("NOT_FOUND", `no key labelled ${label}`);
    }
    if (usage) {
      const attrs = [...secretUsageFlags(this.p, [usage])];
      const got = this.attrs(h, attrs, label);
      if (!attrs.every((a) => got.get(a)?.[0] === 1)) throw new CustodyError("NOT_PERMITTED", `key ${label} is not allowed to ${usage}`);
    }
    return h;
  }

  private privateHandle(label: string): Handle {
    const h = this.object(label, this.p.CKO_PRIVATE_KEY);
    if (!h) {
      if (this.object(label, this.p.CKO_SECRET_KEY)) throw new CustodyError("INVALID_ARGUMENT", `${label} is not a key pair`);
      throw new CustodyError("NOT_FOUND", `no key labelled ${label}`);
    }
    return h;
  }

  private attrs(h: Handle, types: number[], what: string): Map<number, Buffer> {
    const res = this.call("C_GetAttributeValue", what, () => this.mod.C_GetAttributeValue(this.session, h, types.map((type) => ({ type }))));
    return new Map(res.map((a) => [a.type, a.value]));
  }

  private destroy(...hs: (Handle | undefined)[]): void {
    for (const h of hs) {
      if (!h) continue;
      try {
        this.mod.C_DestroyObject(this.session, h);
      } catch {
        // session objects vanish with the session anyway
      }
    }
  }

  private exists(label: string): boolean {
    return this.find([{ type: this.p.CKA_LABEL, value: label }], 1).length > 0;
  }

  /** Label and ID of a stored object (class and everything else come from its role's template). */
  private named(label: string): Template {
    return [
      { type: this.p.CKA_LABEL, value: label },
      { type: this.p.CKA_ID, value: labelId(label) },
    ];
  }

  /** A stored AES key (a master, a KEK, a key of an imported key set): pkcs11-templates.ts aesKeyTemplate. */
  private secretTemplate(label: string, usage: SecretKeyUsage[], extractable: Extractability, bytes?: number): Template {
    return [...this.named(label), ...aesKeyTemplate(this.p, { token: true, on: secretUsageFlags(this.p, usage), extractable: extractable === "wrapped", features: this.features, bytes })];
  }

  // --- keys by label -----------------------------------------------------------------------------------------

  async createSecretKey(label: string, spec: SecretKeySpec): Promise<KeyInfo> {
    checkLabel(label);
    const s = checkSecretSpec(spec);
    if (this.exists(label)) throw new CustodyError("EXISTS", `a key labelled ${label} already exists`);
    const t = this.secretTemplate(label, s.usage, s.extractable, s.bits / 8);
    this.call("C_GenerateKey", label, () => this.mod.C_GenerateKey(this.session, { mechanism: this.p.CKM_AES_KEY_GEN }, t));
    return { label, kind: "secret", type: "aes", bits: s.bits, usage: s.usage, extractable: s.extractable };
  }

  async importSecretKey(label: string, spec: SecretKeySpec, value: Uint8Array): Promise<KeyInfo> {
    checkLabel(label);
    const s = checkSecretSpec(spec);
    if (!(value instanceof Uint8Array) || value.length * 8 !== s.bits) throw new CustodyError("INVALID_ARGUMENT", `key value must be ${s.bits / 8} bytes`);
    if (this.exists(label)) throw new CustodyError("EXISTS", `a key labelled ${label} already exists`);
    const t = this.secretTemplate(label, s.usage, s.extractable);
    const v = Buffer.from(value);
    t.push({ type: this.p.CKA_VALUE, value: v });
    try {
      this.call("C_CreateObject", label, () => this.mod.C_CreateObject(this.session, t));
    } finally {
      v.fill(0);
    }
    return { label, kind: "secret", type: "aes", bits: s.bits, usage: s.usage, extractable: s.extractable };
  }

  async importKeySet(prefix: string, keys: { kvn: number; enc: Uint8Array; mac: Uint8Array; dek: Uint8Array }, extractable: Extractability = "never"): Promise<StoredKeySetRef> {
    const ref: StoredKeySetRef = { kind: "stored", kvn: keys.kvn, enc: `${prefix}.enc`, mac: `${prefix}.mac`, dek: `${prefix}.dek` };
    checkKeySetRef(ref);
    for (const name of ["enc", "mac", "dek"] as const) {
      const v = keys[name];
      await this.importSecretKey(ref[name], { type: "aes", bits: (v.length * 8) as 128 | 256, usage: KEY_SET_USAGE[name], extractable }, v);
    }
    return ref;
  }

  async hasKey(label: string): Promise<boolean> {
    checkLabel(label);
    return this.exists(label);
  }

  async keyInfo(label: string): Promise<KeyInfo | undefined> {
    checkLabel(label);
    const p = this.p;
    const s = this.object(label, p.CKO_SECRET_KEY);
    if (s) {
      const all = [p.CKA_VALUE_LEN, p.CKA_EXTRACTABLE, p.CKA_DERIVE, p.CKA_WRAP, p.CKA_ENCRYPT, p.CKA_SIGN];
      const a = this.attrs(s, all, label);
      const flag = (t: number): boolean => a.get(t)?.[0] === 1;
      const usage: SecretKeyUsage[] = [];
      if (flag(p.CKA_DERIVE)) usage.push("derive");
      if (flag(p.CKA_ENCRYPT)) usage.push("encrypt");
      if (flag(p.CKA_SIGN)) usage.push("mac");
      if (flag(p.CKA_WRAP)) usage.push("wrap");
      const len = a.get(p.CKA_VALUE_LEN) as Buffer;
      return { label, kind: "secret", type: "aes", bits: len.readUIntLE(0, Math.min(len.length, 6)) * 8, usage: usage.sort(), extractable: flag(p.CKA_EXTRACTABLE) ? "wrapped" : "never" };
    }
    const k = this.object(label, p.CKO_PRIVATE_KEY);
    if (!k) return undefined;
    const a = this.attrs(k, [p.CKA_EXTRACTABLE], label);
    return { label, kind: "keyPair", type: this.pairAlg(label), extractable: a.get(p.CKA_EXTRACTABLE)?.[0] === 1 ? "wrapped" : "never" };
  }

  private pairAlg(label: string): KeyPairAlg {
    const p = this.p;
    const pub = this.object(label, p.CKO_PUBLIC_KEY);
    if (!pub) throw new CustodyError("CORRUPT", `key pair ${label} has no public key object`);
    const type = this.attrs(pub, [p.CKA_KEY_TYPE], label).get(p.CKA_KEY_TYPE) as Buffer;
    const kt = type.readUIntLE(0, Math.min(type.length, 6));
    if (kt === p.CKK_EC) {
      const params = hex(this.attrs(pub, [p.CKA_EC_PARAMS], label).get(p.CKA_EC_PARAMS) as Buffer);
      if (params === EC_CURVES.P256.oid) return "P256";
      if (params === EC_CURVES.P384.oid) return "P384";
      throw new CustodyError("CORRUPT", `key pair ${label} is on a curve cardkms does not use`);
    }
    if (kt === p.CKK_RSA) {
      const n = this.attrs(pub, [p.CKA_MODULUS], label).get(p.CKA_MODULUS) as Buffer;
      const bits = n.length * 8;
      if (bits === 2048) return "RSA2048";
      if (bits === 3072) return "RSA3072";
      throw new CustodyError("CORRUPT", `key pair ${label} is RSA-${bits}, which cardkms does not use`);
    }
    throw new CustodyError("CORRUPT", `key pair ${label} has a key type cardkms does not use`);
  }

  async deleteKey(label: string): Promise<boolean> {
    checkLabel(label);
    const hs = this.find([{ type: this.p.CKA_LABEL, value: label }]);
    for (const h of hs) this.call("C_DestroyObject", label, () => this.mod.C_DestroyObject(this.session, h));
    return hs.length > 0;
  }

  async listKeys(): Promise<KeyInfo[]> {
    const p = this.p;
    const labels = new Set<string>();
    for (const cls of [p.CKO_SECRET_KEY, p.CKO_PRIVATE_KEY]) {
      for (const h of this.find([{ type: p.CKA_CLASS, value: cls }], 100000)) {
        const l = this.attrs(h, [p.CKA_LABEL], "list keys").get(p.CKA_LABEL);
        if (l && l.length) labels.add(l.toString("utf8"));
      }
    }
    const out: KeyInfo[] = [];
    for (const l of [...labels].sort()) {
      const i = await this.keyInfo(l).catch(() => undefined);
      if (i) out.push(i);
    }
    return out;
  }

  // --- card key sets -----------------------------------------------------------------------------------------

  /**
   * CKM_AES_CBC_ENCRYPT_DATA (zero IV): a session key object, sensitive, with exactly the usage attributes `attrs`
   * (pkcs11-templates.ts aesKeyTemplate).
   */
  private derive(base: Handle, data: Uint8Array, attrs: number[], extractable: boolean, what: string): Handle {
    const p = this.p;
    const t = aesKeyTemplate(p, { token: false, on: new Set(attrs), extractable, features: this.features, bytes: data.length });
    const parameter: Pkcs11Types.AesCBC = { type: p.CK_PARAMS_AES_CBC, iv: Buffer.alloc(16), data: Buffer.from(data) };
    const mech = { mechanism: p.CKM_AES_CBC_ENCRYPT_DATA, parameter };
    return this.call("C_DeriveKey", what, () => this.mod.C_DeriveKey(this.session, mech, base, t));
  }

  /** Handles of a key set: derived session objects (destroyed by the returned release) or stored keys. */
  private keySet(ref: KeySetRef): { enc: Handle; mac: Handle; dek: Handle; extractable: boolean; release: () => void } {
    checkKeySetRef(ref);
    const p = this.p;
    if (ref.kind === "derived") {
      const master = this.secretHandle(ref.master, "derive");
      const bits = ref.bits ?? 128;
      const made: Handle[] = [];
      try {
        const one = (name: CardKeyName, attrs: number[]): Handle => {
          const h = this.derive(master, cardKeyData(ref.cardId, ref.kvn, name, bits), attrs, true, `derive ${name.toUpperCase()} of card ${ref.cardId} from ${ref.master}`);
          made.push(h);
          return h;
        };
        const enc = one("enc", [p.CKA_ENCRYPT, p.CKA_SIGN]);
        const mac = one("mac", [p.CKA_ENCRYPT, p.CKA_SIGN]);
        const dek = one("dek", [p.CKA_ENCRYPT, p.CKA_WRAP, p.CKA_DERIVE]);
        return { enc, mac, dek, extractable: true, release: () => this.destroy(...made) };
      } catch (e) {
        this.destroy(...made);
        throw e;
      }
    }
    if (ref.kind === "kmc") {
      // A blank card's transport keys (derivation.ts §3, EMV CPS adapted to AES): one AES block of derivation data
      // each under the KMC, which CKM_AES_CBC_ENCRYPT_DATA with its zero IV computes as ECB does. They only open
      // the personalisation session and wrap the card's keys for PUT KEY: never extractable, ENC and MAC encrypt
      // (KCV) and sign (the CMAC KDF), the DEK encrypts (KCV) and wraps (PUT KEY cryptograms).
      const kmc = this.secretHandle(ref.kmc, "derive");
      const attrs: Record<CardKeyName, number[]> = { enc: [p.CKA_ENCRYPT, p.CKA_SIGN], mac: [p.CKA_ENCRYPT, p.CKA_SIGN], dek: [p.CKA_ENCRYPT, p.CKA_WRAP] };
      const made: Handle[] = [];
      try {
        for (const name of ["enc", "mac", "dek"] as const) made.push(this.derive(kmc, transportKeyData(ref.kdd, name), attrs[name], false, `derive transport ${name.toUpperCase()} for KDD ${ref.kdd} from ${ref.kmc}`));
      } catch (e) {
        this.destroy(...made);
        throw e;
      }
      return { enc: made[0], mac: made[1], dek: made[2], extractable: false, release: () => this.destroy(...made) };
    }
    const enc = this.secretHandle(ref.enc), mac = this.secretHandle(ref.mac), dek = this.secretHandle(ref.dek);
    const ex = [enc, mac, dek].every((h) => this.attrs(h, [p.CKA_EXTRACTABLE], "key set").get(p.CKA_EXTRACTABLE)?.[0] === 1);
    return { enc, mac, dek, extractable: ex, release: () => undefined };
  }

  private checkUsage(ref: KeySetRef, need: Partial<Record<"enc" | "mac" | "dek", SecretKeyUsage>>): void {
    if (ref.kind !== "stored") return;
    for (const [k, u] of Object.entries(need) as ["enc" | "mac" | "dek", SecretKeyUsage][]) this.secretHandle(ref[k], u);
  }

  private ecb(key: Handle, block: Uint8Array, what: string): Buffer {
    return this.call("C_Encrypt", what, () => {
      this.mod.C_EncryptInit(this.session, { mechanism: this.p.CKM_AES_ECB }, key);
      return this.mod.C_Encrypt(this.session, Buffer.from(block), Buffer.alloc(block.length));
    });
  }

  private kcv(key: Handle, what: string): Buffer {
    return this.ecb(key, new Uint8Array(16).fill(1), `KCV of ${what}`).subarray(0, 3);
  }

  private keyLength(h: Handle, what: string): number {
    const v = this.attrs(h, [this.p.CKA_VALUE_LEN], what).get(this.p.CKA_VALUE_LEN) as Buffer;
    return v.readUIntLE(0, Math.min(v.length, 6));
  }

  async keySetKcvs(ref: KeySetRef): Promise<KeySetKcvs> {
    this.checkUsage(ref, { enc: "encrypt", mac: "encrypt", dek: "encrypt" });
    const k = this.keySet(ref);
    try {
      return { kvn: ref.kvn, enc: hex(this.kcv(k.enc, "ENC")), mac: hex(this.kcv(k.mac, "MAC")), dek: hex(this.kcv(k.dek, "DEK")) };
    } finally {
      k.release();
    }
  }

  async putKeyData(current: KeySetRef, next: KeySetRef): Promise<PutKeyData> {
    this.checkUsage(current, { dek: "wrap" });
    this.checkUsage(next, { enc: "encrypt", mac: "encrypt", dek: "encrypt" });
    const cur = this.keySet(current);
    try {
      const nxt = this.keySet(next);
      try {
        if (!nxt.extractable) throw new CustodyError("NOT_PERMITTED", "the new key set is not extractable (\"never\"): it cannot be sent to a card");
        const part = (h: Handle, name: string): PutKeyComponent => ({
          keyLength: this.keyLength(h, name),
          // GP Amendment D §7.2: AES-CBC, zero ICV, of the key under the current static DEK.
          cryptogram: this.call("C_WrapKey", `PUT KEY cryptogram of ${name}`, () =>
            this.mod.C_WrapKey(this.session, { mechanism: this.p.CKM_AES_CBC, parameter: Buffer.alloc(16) }, cur.dek, h, Buffer.alloc(64)),
          ),
          kcv: this.kcv(h, name),
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
  private kdf(key: Handle, constant: number, context: Uint8Array, bits: number): Uint8Array {
    const input = Buffer.alloc(16 + context.length);
    input[11] = constant;
    input[13] = bits >> 8;
    input[14] = bits & 0xff;
    Buffer.from(context).copy(input, 16);
    const blocks = Math.ceil(bits / 128);
    const out = Buffer.alloc(blocks * 16);
    for (let i = 1; i <= blocks; i++) {
      input[15] = i;
      const mac = this.call("C_Sign", "SCP03 session key derivation (CMAC)", () => {
        this.mod.C_SignInit(this.session, { mechanism: this.p.CKM_AES_CMAC }, key);
        return this.mod.C_Sign(this.session, input, Buffer.alloc(16));
      });
      mac.copy(out, (i - 1) * 16);
    }
    return new Uint8Array(out.subarray(0, bits / 8));
  }

  async scp03Session(ref: KeySetRef, hostChallenge: Uint8Array, cardChallenge: Uint8Array): Promise<Scp03SessionMaterial> {
    checkChallenge(hostChallenge, "host challenge");
    checkChallenge(cardChallenge, "card challenge");
    this.checkUsage(ref, { enc: "mac", mac: "mac" });
    const k = this.keySet(ref);
    try {
      const context = Buffer.concat([hostChallenge, cardChallenge]);
      const len = this.keyLength(k.enc, "ENC");
      const sEnc = this.kdf(k.enc, DERIVE.S_ENC, context, len * 8);
      const sMac = this.kdf(k.mac, DERIVE.S_MAC, context, len * 8);
      const sRmac = this.kdf(k.mac, DERIVE.S_RMAC, context, len * 8);
      return { sEnc, sMac, sRmac, cardCryptogram: cryptogram(sMac, DERIVE.CARD_CRYPTOGRAM, context), hostCryptogram: cryptogram(sMac, DERIVE.HOST_CRYPTOGRAM, context) };
    } finally {
      k.release();
    }
  }

  /** A purpose key (derivation.ts) under the card's DEK, as a session object; the caller destroys it. */
  private purposeKey(ref: KeySetRef, purpose: number, attrs: number[]): Handle {
    this.checkUsage(ref, { dek: "derive" });
    const cardId = ref.cardId;
    if (!cardId) throw new CustodyError("INVALID_ARGUMENT", "a stored key set needs cardId for keys derived from its DEK");
    const k = this.keySet(ref);
    try {
      return this.derive(k.dek, purposeKeyData(cardId, ref.kvn, purpose), attrs, false, `purpose key ${purpose.toString(16)} of card ${cardId}`);
    } finally {
      k.release();
    }
  }

  async sealForCard(ref: KeySetRef, purpose: number, aad: Uint8Array, plaintext: Uint8Array): Promise<SealedForCard> {
    if (!Number.isInteger(purpose) || purpose < 0x40 || purpose > 0xff || purpose === PURPOSE.privateKeyWrap)
      throw new CustodyError("INVALID_ARGUMENT", "seal purpose must be 0x40..0xff and not the private-key wrap purpose");
    const p = this.p;
    const key = this.purposeKey(ref, purpose, [p.CKA_ENCRYPT]);
    try {
      const nonce = Buffer.from(this.call("C_GenerateRandom", "GCM nonce", () => this.mod.C_GenerateRandom(this.session, Buffer.alloc(12))));
      const ciphertext = this.call("C_Encrypt", "seal for card (AES-GCM)", () => {
        const parameter: Pkcs11Types.GcmParams = { type: p.CK_PARAMS_AES_GCM, iv: nonce, aad: Buffer.from(aad), ivBits: 96, tagBits: 128 };
        this.mod.C_EncryptInit(this.session, { mechanism: p.CKM_AES_GCM, parameter }, key);
        return this.mod.C_Encrypt(this.session, Buffer.from(plaintext), Buffer.alloc(plaintext.length + 16));
      });
      return { nonce: new Uint8Array(nonce), ciphertext: new Uint8Array(ciphertext) };
    } finally {
      this.destroy(key);
    }
  }

  // --- key pairs ---------------------------------------------------------------------------------------------

  async generateKeyPair(label: string, alg: KeyPairAlg, opts: KeyPairOptions = {}): Promise<KeyInfo> {
    checkLabel(label);
    checkKeyPairAlg(alg);
    const extractable = opts.extractable ?? "never";
    if (extractable !== "never" && extractable !== "wrapped") throw new CustodyError("INVALID_ARGUMENT", "extractable must be \"never\" or \"wrapped\"");
    if (this.exists(label)) throw new CustodyError("EXISTS", `a key labelled ${label} already exists`);
    const p = this.p;
    const token = opts.ephemeral !== true;
    const usage = checkPairUsage(opts.usage, ["sign"]);
    const pub: Template = [...this.named(label), { type: p.CKA_CLASS, value: p.CKO_PUBLIC_KEY }, ...publicKeyTemplate(p, { token, usage })];
    const priv: Template = [...this.named(label), { type: p.CKA_CLASS, value: p.CKO_PRIVATE_KEY }, ...privateKeyTemplate(p, { token, ec: isEc(alg), usage, extractable, features: this.features })];
    let mechanism: number;
    if (isEc(alg)) {
      mechanism = p.CKM_EC_KEY_PAIR_GEN;
      pub.push({ type: p.CKA_EC_PARAMS, value: Buffer.from(EC_CURVES[alg].oid, "hex") });
    } else {
      mechanism = p.CKM_RSA_PKCS_KEY_PAIR_GEN;
      pub.push({ type: p.CKA_MODULUS_BITS, value: rsaBits(alg) }, { type: p.CKA_PUBLIC_EXPONENT, value: Buffer.from([1, 0, 1]) });
    }
    this.call("C_GenerateKeyPair", `${alg} key pair ${label}`, () => this.mod.C_GenerateKeyPair(this.session, { mechanism }, pub, priv));
    return { label, kind: "keyPair", type: alg, extractable };
  }

  async publicKey(label: string): Promise<Uint8Array> {
    checkLabel(label);
    this.privateHandle(label);
    const alg = this.pairAlg(label);
    const p = this.p;
    const pub = this.object(label, p.CKO_PUBLIC_KEY) as Handle;
    if (isEc(alg)) return ecPointToSpki(alg, this.attrs(pub, [p.CKA_EC_POINT], label).get(p.CKA_EC_POINT) as Buffer);
    const a = this.attrs(pub, [p.CKA_MODULUS, p.CKA_PUBLIC_EXPONENT], label);
    return rsaToSpki(a.get(p.CKA_MODULUS) as Buffer, a.get(p.CKA_PUBLIC_EXPONENT) as Buffer);
  }

  async sign(label: string, data: Uint8Array, opts: { hash?: HashAlg } = {}): Promise<Uint8Array> {
    checkLabel(label);
    const h = this.privateHandle(label);
    const alg = this.pairAlg(label);
    const hash = opts.hash ?? defaultHash(alg);
    checkHash(hash);
    return this.signWith(h, alg, hash, data, label);
  }

  /** ECDSA (DER) or RSA PKCS#1 v1.5 with the private key `h`. */
  private signWith(h: Handle, alg: KeyPairAlg, hash: HashAlg, data: Uint8Array, label: string): Uint8Array {
    const p = this.p;
    if (isEc(alg)) {
      const digest = createHash(HASH_NODE[hash]).update(data).digest();
      const raw = this.call("C_Sign", `ECDSA with ${label}`, () => {
        this.mod.C_SignInit(this.session, { mechanism: p.CKM_ECDSA }, h);
        return this.mod.C_Sign(this.session, digest, Buffer.alloc(2 * EC_CURVES[alg].size));
      });
      return ecdsaRawToDer(raw);
    }
    const sig = this.call("C_Sign", `RSA PKCS#1 v1.5 with ${label}`, () => {
      this.mod.C_SignInit(this.session, { mechanism: SIGN_MECH[hash](p) }, h);
      return this.mod.C_Sign(this.session, Buffer.from(data), Buffer.alloc(rsaBits(alg) / 8));
    });
    return new Uint8Array(sig);
  }

  /** The wrapping key for a target, and whether the caller must destroy it (a derived session object). */
  private wrapKey(to: WrapTarget): { h: Handle; derived: boolean } {
    const p = this.p;
    if ("card" in to) return { h: this.purposeKey(to.card, PURPOSE.privateKeyWrap, [p.CKA_WRAP, p.CKA_UNWRAP]), derived: true };
    if ("key" in to) {
      checkLabel(to.key);
      return { h: this.secretHandle(to.key, "wrap"), derived: false };
    }
    throw new CustodyError("INVALID_ARGUMENT", "wrap target must be {card: KeySetRef} or {key: label}");
  }

  async wrapPrivateKey(label: string, to: WrapTarget): Promise<Uint8Array> {
    checkLabel(label);
    const h = this.privateHandle(label);
    if (this.attrs(h, [this.p.CKA_EXTRACTABLE], label).get(this.p.CKA_EXTRACTABLE)?.[0] !== 1)
      throw new CustodyError("NOT_PERMITTED", `key ${label} is not extractable: it cannot be wrapped`);
    const w = this.wrapKey(to);
    try {
      const out = this.call("C_WrapKey", `wrap ${label} (AES key wrap with padding)`, () =>
        this.mod.C_WrapKey(this.session, { mechanism: this.p.CKM_AES_KEY_WRAP_PAD }, w.h, h, Buffer.alloc(8192)),
      );
      return new Uint8Array(out);
    } finally {
      if (w.derived) this.destroy(w.h);
    }
  }

  async rewrapPrivateKey(wrapped: Uint8Array, alg: KeyPairAlg, from: WrapTarget, to: WrapTarget): Promise<Uint8Array> {
    checkKeyPairAlg(alg);
    const p = this.p;
    const a = this.wrapKey(from);
    let key: Handle | undefined;
    try {
      const t = transitKeyTemplate(p, isEc(alg));
      try {
        key = this.mod.C_UnwrapKey(this.session, { mechanism: p.CKM_AES_KEY_WRAP_PAD }, a.h, Buffer.from(wrapped), t);
      } catch (e) {
        // SoftHSM2 reports a failed RFC 5649 integrity check as CKR_GENERAL_ERROR; the standard codes are
        // CKR_WRAPPED_KEY_INVALID / CKR_ENCRYPTED_DATA_INVALID.
        const ckr = ckrName(e);
        if (ckr === "CKR_GENERAL_ERROR" || ckr === "CKR_WRAPPED_KEY_INVALID" || ckr === "CKR_ENCRYPTED_DATA_INVALID" || ckr === "CKR_WRAPPED_KEY_LEN_RANGE")
          throw new CustodyError("WRONG_KEY", `PKCS#11 C_UnwrapKey (unwrap for re-wrap) failed: ${ckr} — the wrapped private key does not unwrap under the given key (wrong key or altered)`, { cause: e });
        throw mapError(e, "C_UnwrapKey", "unwrap for re-wrap");
      }
    } finally {
      if (a.derived) this.destroy(a.h);
    }
    try {
      const b = this.wrapKey(to);
      try {
        const k = key;
        return new Uint8Array(this.call("C_WrapKey", "re-wrap", () => this.mod.C_WrapKey(this.session, { mechanism: p.CKM_AES_KEY_WRAP_PAD }, b.h, k, Buffer.alloc(8192))));
      } finally {
        if (b.derived) this.destroy(b.h);
      }
    } finally {
      this.destroy(key);
    }
  }

  async rewrapPrivateKeys(items: readonly { wrapped: Uint8Array; alg: KeyPairAlg }[], from: WrapTarget, to: WrapTarget): Promise<Uint8Array[]> {
    for (const it of items) checkKeyPairAlg(it.alg);
    if (items.length === 0) return [];
    const p = this.p;
    // Both wrap keys derived once for the batch (two C_DeriveKey instead of two per key); each private key is
    // a session object only between its C_UnwrapKey and C_WrapKey.
    const a = this.wrapKey(from);
    let b: { h: Handle; derived: boolean } | undefined;
    try {
      b = this.wrapKey(to);
      const out: Uint8Array[] = [];
      for (let k = 0; k < items.length; k++) {
        const t = transitKeyTemplate(p, isEc(items[k].alg));
        let key: Handle;
        try {
          key = this.mod.C_UnwrapKey(this.session, { mechanism: p.CKM_AES_KEY_WRAP_PAD }, a.h, Buffer.from(items[k].wrapped), t);
        } catch (e) {
          const ckr = ckrName(e);
          if (ckr === "CKR_GENERAL_ERROR" || ckr === "CKR_WRAPPED_KEY_INVALID" || ckr === "CKR_ENCRYPTED_DATA_INVALID" || ckr === "CKR_WRAPPED_KEY_LEN_RANGE")
            throw new CustodyError("WRONG_KEY", `PKCS#11 C_UnwrapKey failed on item ${k} of the batch: ${ckr} — it does not unwrap under the given key (wrong key or altered)`, { cause: e });
          throw mapError(e, "C_UnwrapKey", `unwrap item ${k} for re-wrap`);
        }
        try {
          const wk = b.h;
          out.push(new Uint8Array(this.call("C_WrapKey", "re-wrap", () => this.mod.C_WrapKey(this.session, { mechanism: p.CKM_AES_KEY_WRAP_PAD }, wk, key, Buffer.alloc(8192)))));
        } finally {
          this.destroy(key);
        }
      }
      return out;
    } finally {
      if (a.derived) this.destroy(a.h);
      if (b?.derived) this.destroy(b.h);
    }
  }

  async unwrapPrivateKey(label: string, wrapped: Uint8Array, alg: KeyPairAlg, from: WrapTarget, opts: KeyPairOptions & { expectSpki?: Uint8Array } = {}): Promise<KeyInfo> {
    checkLabel(label);
    checkKeyPairAlg(alg);
    const extractable = opts.extractable ?? "never";
    if (extractable !== "never" && extractable !== "wrapped") throw new CustodyError("INVALID_ARGUMENT", "extractable must be \"never\" or \"wrapped\"");
    if (!(wrapped instanceof Uint8Array)) throw new CustodyError("INVALID_ARGUMENT", "the wrapped private key must be bytes");
    const expect = opts.expectSpki === undefined ? undefined : canonicalSpki(opts.expectSpki, "expectSpki");
    if (this.exists(label)) throw new CustodyError("EXISTS", `a key labelled ${label} already exists`);
    const p = this.p;
    const token = opts.ephemeral !== true;
    // What the FIG. 10 key check needs: signing, and deciphering (ECDH for an EC key, decryption for an RSA key).
    const usage = checkUnwrapUsage(opts.usage);
    // Unwrapped where it will live (a copy to the token would need CKA_COPYABLE), checked, and destroyed when refused.
    const t: Template = [
      ...this.named(label),
      { type: p.CKA_CLASS, value: p.CKO_PRIVATE_KEY },
      { type: p.CKA_KEY_TYPE, value: isEc(alg) ? p.CKK_EC : p.CKK_RSA },
      ...privateKeyTemplate(p, { token, ec: isEc(alg), usage, extractable, features: this.features }),
    ];
    const a = this.wrapKey(from);
    let key: Handle | undefined;
    try {
      key = this.mod.C_UnwrapKey(this.session, { mechanism: p.CKM_AES_KEY_WRAP_PAD }, a.h, Buffer.from(wrapped), t);
    } catch (e) {
      throw unwrapError(e, `unwrap ${label}`, alg);
    } finally {
      if (a.derived) this.destroy(a.h);
    }
    let pub: Handle | undefined;
    try {
      const { spki, pubAttrs } = this.unwrappedPublic(key, alg, label);
      if (expect && !expect.equals(spki)) throw new CustodyError("WRONG_KEY", `the key unwrapped for ${label} is not the expected one: its public key differs`);
      pub = this.call("C_CreateObject", `public key of ${label}`, () =>
        this.mod.C_CreateObject(this.session, [...this.named(label), { type: p.CKA_CLASS, value: p.CKO_PUBLIC_KEY }, ...pubAttrs, ...publicKeyTemplate(p, { token, usage })]),
      );
      return { label, kind: "keyPair", type: alg, extractable };
    } catch (e) {
      this.destroy(pub, key);
      throw e;
    }
  }

  /**
   * The SPKI and public key object attributes of an unwrapped private key, after checking that it is an `alg` key
   * and that it signs for that public key (WRONG_KEY otherwise). RSA: CKA_MODULUS / CKA_PUBLIC_EXPONENT of the
   * private key. EC: a PKCS#11 private key has no public point, so its X coordinate is the ECDH secret with the base
   * point G (x(d·G)); of the two points with that X, the public key is the one a test signature verifies under.
   */
  private unwrappedPublic(h: Handle, alg: KeyPairAlg, label: string): { spki: Buffer; pubAttrs: Template } {
    const p = this.p;
    const probe = randomBytes(32);
    const verifies = (spki: Uint8Array, sig: Uint8Array): boolean => nodeVerify("sha256", probe, { key: Buffer.from(spki), format: "der", type: "spki" }, sig);
    if (isEc(alg)) {
      const params = this.attrs(h, [p.CKA_EC_PARAMS], label).get(p.CKA_EC_PARAMS) as Buffer;
      if (hex(params) !== EC_CURVES[alg].oid) throw new CustodyError("WRONG_KEY", `the key unwrapped for ${label} is not a ${alg} key`);
      const x = this.ecdh(h, ecGenerator(alg), EC_CURVES[alg].size, `public point of ${label}`);
      const sig = this.signWith(h, alg, "SHA-256", probe, label);
      for (const point of ecPointsWithX(alg, x)) {
        const spki = Buffer.from(ecPointToSpki(alg, point));
        if (verifies(spki, sig)) {
          // CKA_EC_POINT as the token writes it for generated keys: DER OCTET STRING of the uncompressed point
          const ecPoint = Buffer.concat([Buffer.of(0x04, point.length), point]);
          return { spki, pubAttrs: [{ type: p.CKA_KEY_TYPE, value: p.CKK_EC }, { type: p.CKA_EC_PARAMS, value: params }, { type: p.CKA_EC_POINT, value: ecPoint }] };
        }
      }
      throw new CustodyError("WRONG_KEY", `the key unwrapped for ${label} fails its pairwise check: it signs for neither point of its X coordinate`);
    }
    const a = this.attrs(h, [p.CKA_MODULUS, p.CKA_PUBLIC_EXPONENT], label);
    const n = a.get(p.CKA_MODULUS) as Buffer, e = a.get(p.CKA_PUBLIC_EXPONENT) as Buffer;
    if (n.length * 8 !== rsaBits(alg) || n[0] < 0x80) throw new CustodyError("WRONG_KEY", `the key unwrapped for ${label} is not a ${alg} key`);
    const spki = Buffer.from(rsaToSpki(n, e));
    if (!verifies(spki, this.signWith(h, alg, "SHA-256", probe, label)))
      throw new CustodyError("WRONG_KEY", `the key unwrapped for ${label} fails its pairwise check: its private and public halves differ`);
    return { spki, pubAttrs: [{ type: p.CKA_KEY_TYPE, value: p.CKK_RSA }, { type: p.CKA_MODULUS, value: n }, { type: p.CKA_PUBLIC_EXPONENT, value: e }] };
  }

  /**
   * CKM_ECDH1_DERIVE (no KDF) of the private key `h` with the uncompressed point `peer`: the shared X coordinate,
   * through a session CKK_GENERIC_SECRET of `size` bytes that is readable (not sensitive) and destroyed at once.
   */
  private ecdh(h: Handle, peer: Buffer, size: number, what: string): Buffer {
    const p = this.p;
    const t = ecdhSecretTemplate(p, size);
    const parameter: Pkcs11Types.ECDH1 = { type: p.CK_PARAMS_EC_DH, kdf: p.CKD_NULL, publicData: peer };
    const secret = this.call("C_DeriveKey", what, () => this.mod.C_DeriveKey(this.session, { mechanism: p.CKM_ECDH1_DERIVE, parameter }, h, t));
    try {
      const v = this.attrs(secret, [p.CKA_VALUE], what).get(p.CKA_VALUE) as Buffer;
      if (v.length !== size) throw new CustodyError("HSM_ERROR", `PKCS#11 C_DeriveKey (${what}) returned ${v.length} bytes, not ${size}`);
      return Buffer.from(v);
    } finally {
      this.destroy(secret);
    }
  }

  async decipher(label: string, input: Uint8Array): Promise<Uint8Array> {
    checkLabel(label);
    const h = this.privateHandle(label);
    const alg = this.pairAlg(label);
    const p = this.p;
    if (!(input instanceof Uint8Array)) throw new CustodyError("INVALID_ARGUMENT", "decipher input must be bytes");
    if (isEc(alg)) {
      const peer = ecPeer(alg, input);
      if (this.attrs(h, [p.CKA_DERIVE], label).get(p.CKA_DERIVE)?.[0] !== 1)
        throw new CustodyError("NOT_PERMITTED", `key ${label} is not allowed to derive (ECDH): a generated key pair signs only`);
      return new Uint8Array(this.ecdh(h, peer.point, EC_CURVES[alg].size, `ECDH with ${label}`));
    }
    const k = rsaBits(alg) / 8;
    if (input.length !== k) throw new CustodyError("INVALID_ARGUMENT", `an RSA-OAEP ciphertext for ${label} is ${k} bytes, not ${input.length}`);
    if (this.attrs(h, [p.CKA_DECRYPT], label).get(p.CKA_DECRYPT)?.[0] !== 1)
      throw new CustodyError("NOT_PERMITTED", `key ${label} is not allowed to decrypt: a generated key pair signs only`);
    const refused = (e: unknown): CustodyError => {
      const ckr = ckrName(e);
      if (ckr === "CKR_ENCRYPTED_DATA_INVALID" || ckr === "CKR_ENCRYPTED_DATA_LEN_RANGE" || ckr === "CKR_GENERAL_ERROR" || ckr === "CKR_FUNCTION_FAILED")
        return new CustodyError("WRONG_KEY", `PKCS#11 C_Decrypt (RSA-OAEP with ${label}) failed: ${ckr} — the input does not decrypt under this key: not encrypted for it, or altered`, { cause: e });
      return mapError(e, "C_Decrypt", `RSA-OAEP with ${label}`);
    };
    const oaep: Pkcs11Types.RsaOAEP = { type: p.CK_PARAMS_RSA_OAEP, hashAlg: p.CKM_SHA256, mgf: p.CKG_MGF1_SHA256, source: CKZ_DATA_SPECIFIED };
    let native = true;
    try {
      this.mod.C_DecryptInit(this.session, { mechanism: p.CKM_RSA_PKCS_OAEP, parameter: oaep }, h);
    } catch (e) {
      // A token whose CKM_RSA_PKCS_OAEP takes SHA-1 only (SoftHSM2 2.6: CKR_ARGUMENTS_BAD) or lacks it.
      if (!["CKR_ARGUMENTS_BAD", "CKR_MECHANISM_PARAM_INVALID", "CKR_MECHANISM_INVALID"].includes(ckrName(e) ?? "")) throw mapError(e, "C_DecryptInit", `RSA-OAEP with ${label}`);
      native = false;
    }
    if (native) {
      try {
        return new Uint8Array(this.mod.C_Decrypt(this.session, Buffer.from(input), Buffer.alloc(k)));
      } catch (e) {
        throw refused(e);
      }
    }
    // The RSA private operation in the token (CKM_RSA_X_509), the EME-OAEP decoding of its output here.
    let em: Buffer;
    try {
      this.call("C_DecryptInit", `RSA with ${label}`, () => this.mod.C_DecryptInit(this.session, { mechanism: p.CKM_RSA_X_509 }, h));
      em = this.mod.C_Decrypt(this.session, Buffer.from(input), Buffer.alloc(k));
    } catch (e) {
      throw refused(e);
    }
    const padded = Buffer.alloc(k);
    em.copy(padded, k - em.length);
    em.fill(0);
    const m = oaepSha256Decode(padded, k);
    padded.fill(0);
    if (!m) throw new CustodyError("WRONG_KEY", `the input does not decrypt under ${label} (RSA-OAEP SHA-256): not encrypted for this key, or altered`);
    return new Uint8Array(m);
  }

  async signer(label: string): Promise<Signer> {
    const spki = await this.publicKey(label);
    const alg = this.pairAlg(label);
    return { label, alg, hash: defaultHash(alg), spki, sign: (data) => this.sign(label, data) };
  }

  /** The extraction paths this token refuses and the ones it does not (pkcs11-selftest.ts), with this PIN. */
  async selfTest(): Promise<CustodySelfTest> {
    if (this.closed) throw new CustodyError("UNAVAILABLE", "custody is closed");
    return runSelfTest({ p: this.p, mod: this.mod, session: this.session, slot: this.slot, tokenLabel: this.tokenLabel, features: this.features });
  }

  /** Closes the session; the last instance on a module finalizes it (C_Finalize logs out and unloads). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      this.mod.C_CloseSession(this.session);
    } catch {
      // the session may already be gone (token removed)
    }
    Pkcs11Custody.release(this.modulePath);
  }
}
