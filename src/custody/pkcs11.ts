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
// Every key's attributes come from one template per role (pkcs11/templates.ts): every flag stated, the least usage,
// CKA_MODIFIABLE and CKA_COPYABLE false, unwrap (and, where the token has them, derive) templates that keep what a key
// unwraps or derives sensitive. Masters, the CA key and storage keys are CKA_TOKEN and never extractable; keys that
// must reach a card (derived card keys, credential private keys) are extractable, but only wrapped. What the token
// actually enforces is what selfTest() (pkcs11/selftest.ts) finds out by trying.
//
// pkcs11js calls are synchronous: each custody operation runs to completion without yielding, so the one session
// of an instance is never shared by two operations at once. Errors name the PKCS#11 function and its CKR_ code.
//
// Where, in pkcs11/:
//   pkcs11-custody.ts  the Pkcs11Custody class: opens and closes, hands each operation to its file
//   module.ts          loading pkcs11js and the module, opening the token session, logging in, probing features
//   token.ts           the logged-in session and the plumbing every operation goes through
//   errors.ts          PKCS#11 failures as CustodyErrors naming the function and the CKR_ code
//   templates.ts       the key policy: one attribute template per key role
//   objects.ts         keys by label: create, import, read back, delete, list
//   card-keys.ts       card key sets: derivation, KCVs, PUT KEY, SCP03 session keys, purpose keys, sealing
//   key-pairs.ts       key pair generation, public keys, signing
//   wrapping.ts        wrapping, re-wrapping and unwrapping private keys
//   decipher.ts        ECDH and RSA-OAEP with a private key
//   selftest.ts        the start-up self-test of the extraction paths
// This file is what importers name; it re-exports.

export { DEFAULT_MODULE, type Pkcs11CustodyOptions } from "./pkcs11/module.ts";
export { Pkcs11Custody } from "./pkcs11/pkcs11-custody.ts";
