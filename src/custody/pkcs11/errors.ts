// PKCS#11 failures as CustodyErrors: each names the PKCS#11 function, what it was doing and the CKR_ code, with a
// hint for the codes an operator can act on, and maps the code to the custody's error codes (a wrong PIN is
// LOGIN_FAILED, a key the token refuses to use that way NOT_PERMITTED, a wrapped key that does not unwrap
// WRONG_KEY, a token gone UNAVAILABLE).

import { CustodyError, type CustodyErrorCode, type KeyPairAlg } from "../custody.ts";
import { ckrName } from "./templates.ts";

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
export function mapError(e: unknown, fn: string, what: string): CustodyError {
  if (e instanceof CustodyError) return e;
  const ckr = ckrName(e);
  if (!ckr) return new CustodyError("HSM_ERROR", `PKCS#11 ${fn} (${what}) failed: ${e instanceof Error ? e.message.split("\n")[0] : String(e)}`, { cause: e });
  const hint = CKR_HINTS[ckr];
  return new CustodyError(CKR_CODES[ckr] ?? "HSM_ERROR", `PKCS#11 ${fn} (${what}) failed: ${ckr}${hint ? ` — ${hint}` : ""}`, { cause: e });
}

/**
 * A failed C_UnwrapKey of a private key: WRONG_KEY when it does not unwrap under the key (SoftHSM2 reports a failed
 * RFC 5649 integrity check as CKR_GENERAL_ERROR; the standard codes are CKR_WRAPPED_KEY_INVALID /
 * CKR_ENCRYPTED_DATA_INVALID) or unwraps to something that is not a private key of the template's type
 * (SoftHSM2: CKR_FUNCTION_FAILED).
 */
export function unwrapError(e: unknown, what: string, alg: KeyPairAlg): CustodyError {
  const ckr = ckrName(e);
  if (ckr === "CKR_GENERAL_ERROR" || ckr === "CKR_WRAPPED_KEY_INVALID" || ckr === "CKR_ENCRYPTED_DATA_INVALID" || ckr === "CKR_WRAPPED_KEY_LEN_RANGE")
    return new CustodyError("WRONG_KEY", `PKCS#11 C_UnwrapKey (${what}) failed: ${ckr} — the wrapped private key does not unwrap under the given key (wrong key or altered)`, { cause: e });
  if (ckr === "CKR_FUNCTION_FAILED") return new CustodyError("WRONG_KEY", `PKCS#11 C_UnwrapKey (${what}) failed: ${ckr} — the wrapped key is not a ${alg} private key`, { cause: e });
  return mapError(e, "C_UnwrapKey", what);
}
