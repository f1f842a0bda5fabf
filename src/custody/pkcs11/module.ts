// Loading the PKCS#11 module and opening a token (PKCS#11 2.40 §5.4-5.6): pkcs11js is loaded on first use, each
// module path is initialised once per process (C_Initialize) and finalised with its last user (C_Finalize), the
// token is found by its label, and a read-write session is opened and logged in with the user PIN. What the token
// accepts beyond PKCS#11 2.20 (attribute templates) is probed once per token.

import { createHash } from "node:crypto";
import { createRequire } from "node:module";
import { CustodyError } from "../custody.ts";
import { mapError } from "./errors.ts";
import { ckrName, CKA_DERIVE_TEMPLATE, CKA_UNWRAP_TEMPLATE, lockedTemplate, type TokenFeatures } from "./templates.ts";
import { Pkcs11Token } from "./token.ts";

import type * as Pkcs11Types from "pkcs11js";
import type { Handle, P11 } from "./types.ts";

export type { Handle, P11 } from "./types.ts";

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

/** Loads the module, finds the token by label, opens a read-write session and logs in as the user. */
export function openToken(opts: Pkcs11CustodyOptions = {}): Pkcs11Token {
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
  const release = (): void => releaseModule(modulePath);
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
      if (ref.logins.get(tokenLabel) !== pinHash)
        throw new CustodyError("LOGIN_FAILED", `PKCS#11 C_Login (user PIN for token ${tokenLabel}) failed: CKR_PIN_INCORRECT — the user PIN is wrong (CARDKMS_PKCS11_PIN)`);
    }
    let features = ref.features.get(tokenLabel);
    if (!features) {
      features = probeFeatures(p, mod, session);
      ref.features.set(tokenLabel, features);
    }
    return new Pkcs11Token(p, mod, modulePath, session, slot, tokenLabel, features);
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

/** Drops one user of the module; the last one finalizes and unloads it. */
export function releaseModule(modulePath: string): void {
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
