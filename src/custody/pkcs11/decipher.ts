// Deciphering with a private key on the PKCS#11 token: ECDH (CKM_ECDH1_DERIVE to a session CKK_GENERIC_SECRET,
// read and destroyed at once) for an EC key, RSA-OAEP SHA-256 decryption for an RSA key (CKM_RSA_PKCS_OAEP; on a
// token whose OAEP takes SHA-1 only, CKM_RSA_X_509 with the OAEP decoding here). Only a key pair whose template
// allows it (CKA_DERIVE, CKA_DECRYPT) deciphers: a generated key pair signs only.

import type * as Pkcs11Types from "pkcs11js";
import { ecPeer, oaepSha256Decode } from "../asymmetric.ts";
import { checkLabel, CustodyError } from "../custody.ts";
import { EC_CURVES, isEc, rsaBits } from "../encoding.ts";
import { mapError } from "./errors.ts";
import type { Handle } from "./module.ts";
import { pairAlg } from "./objects.ts";
import { ckrName, ecdhSecretTemplate } from "./templates.ts";
import type { Pkcs11Token } from "./token.ts";

/** CK_RSA_PKCS_OAEP_PARAMS.source: the encoding parameter (label) is given, here empty (PKCS#11 2.40 §2.1.8). */
const CKZ_DATA_SPECIFIED = 1;

/**
 * CKM_ECDH1_DERIVE (no KDF) of the private key `h` with the uncompressed point `peer`: the shared X coordinate,
 * through a session CKK_GENERIC_SECRET of `size` bytes that is readable (not sensitive) and destroyed at once.
 */
export function ecdh(hsm: Pkcs11Token, h: Handle, peer: Buffer, size: number, what: string): Buffer {
  const p = hsm.p;
  const t = ecdhSecretTemplate(p, size);
  const parameter: Pkcs11Types.ECDH1 = { type: p.CK_PARAMS_EC_DH, kdf: p.CKD_NULL, publicData: peer };
  const secret = hsm.call("C_DeriveKey", what, () => hsm.mod.C_DeriveKey(hsm.session, { mechanism: p.CKM_ECDH1_DERIVE, parameter }, h, t));
  try {
    const v = hsm.attrs(secret, [p.CKA_VALUE], what).get(p.CKA_VALUE) as Buffer;
    if (v.length !== size) throw new CustodyError("HSM_ERROR", `PKCS#11 C_DeriveKey (${what}) returned ${v.length} bytes, not ${size}`);
    return Buffer.from(v);
  } finally {
    hsm.destroy(secret);
  }
}

export async function decipher(hsm: Pkcs11Token, label: string, input: Uint8Array): Promise<Uint8Array> {
  checkLabel(label);
  const h = hsm.privateHandle(label);
  const alg = pairAlg(hsm, label);
  const p = hsm.p;
  if (!(input instanceof Uint8Array)) throw new CustodyError("INVALID_ARGUMENT", "decipher input must be bytes");
  if (isEc(alg)) {
    const peer = ecPeer(alg, input);
    if (hsm.attrs(h, [p.CKA_DERIVE], label).get(p.CKA_DERIVE)?.[0] !== 1) throw new CustodyError("NOT_PERMITTED", `key ${label} is not allowed to derive (ECDH): a generated key pair signs only`);
    return new Uint8Array(ecdh(hsm, h, peer.point, EC_CURVES[alg].size, `ECDH with ${label}`));
  }
  const k = rsaBits(alg) / 8;
  if (input.length !== k) throw new CustodyError("INVALID_ARGUMENT", `an RSA-OAEP ciphertext for ${label} is ${k} bytes, not ${input.length}`);
  if (hsm.attrs(h, [p.CKA_DECRYPT], label).get(p.CKA_DECRYPT)?.[0] !== 1) throw new CustodyError("NOT_PERMITTED", `key ${label} is not allowed to decrypt: a generated key pair signs only`);
  const refused = (e: unknown): CustodyError => {
    const ckr = ckrName(e);
    if (ckr === "CKR_ENCRYPTED_DATA_INVALID" || ckr === "CKR_ENCRYPTED_DATA_LEN_RANGE" || ckr === "CKR_GENERAL_ERROR" || ckr === "CKR_FUNCTION_FAILED")
      return new CustodyError("WRONG_KEY", `PKCS#11 C_Decrypt (RSA-OAEP with ${label}) failed: ${ckr} — the input does not decrypt under this key: not encrypted for it, or altered`, { cause: e });
    return mapError(e, "C_Decrypt", `RSA-OAEP with ${label}`);
  };
  const oaep: Pkcs11Types.RsaOAEP = { type: p.CK_PARAMS_RSA_OAEP, hashAlg: p.CKM_SHA256, mgf: p.CKG_MGF1_SHA256, source: CKZ_DATA_SPECIFIED };
  let native = true;
  try {
    hsm.mod.C_DecryptInit(hsm.session, { mechanism: p.CKM_RSA_PKCS_OAEP, parameter: oaep }, h);
  } catch (e) {
    // A token whose CKM_RSA_PKCS_OAEP takes SHA-1 only (SoftHSM2 2.6: CKR_ARGUMENTS_BAD) or lacks it.
    if (!["CKR_ARGUMENTS_BAD", "CKR_MECHANISM_PARAM_INVALID", "CKR_MECHANISM_INVALID"].includes(ckrName(e) ?? "")) throw mapError(e, "C_DecryptInit", `RSA-OAEP with ${label}`);
    native = false;
  }
  if (native) {
    try {
      return new Uint8Array(hsm.mod.C_Decrypt(hsm.session, Buffer.from(input), Buffer.alloc(k)));
    } catch (e) {
      throw refused(e);
    }
  }
  // The RSA private operation in the token (CKM_RSA_X_509), the EME-OAEP decoding of its output here.
  let em: Buffer;
  try {
    hsm.call("C_DecryptInit", `RSA with ${label}`, () => hsm.mod.C_DecryptInit(hsm.session, { mechanism: p.CKM_RSA_X_509 }, h));
    em = hsm.mod.C_Decrypt(hsm.session, Buffer.from(input), Buffer.alloc(k));
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
