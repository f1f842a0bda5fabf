// Software key custody (the default): keys live in an encrypted keystore (keystore-file.ts), kept in a file or in the
// server's store (keystore-backend.ts, issue 16 §3), and are used with Node's crypto. It computes exactly what pkcs11.ts asks an HSM for — same derivations (derivation.ts), same
// wrapping (RFC 5649), same encodings — so a deployment can move from one to the other by importing its masters.
//
// Secrets are in this process's memory while it runs (that is what a software keystore is); they never appear in
// logs or errors. Ephemeral key pairs (credential keys wrapped for a card and then destroyed) are never written.
//
// Where, in software/:
//   software-custody.ts  the SoftwareCustody class: opens the keystore, hands each operation to its file
//   keystore.ts          the open keystore: entries fetched from the backend (read again after RECHECK_MS) and
//                        unsealed on first use, ephemeral key pairs, the derived-key cache, one write per key,
//                        wiping on close
//   keygen.ts            key pair generation (EC DER written here, RSA on the thread pool)
//   objects.ts           keys by label: create, import, read, delete, list
//   card-keys.ts         card key sets: derivation, KCVs, PUT KEY, SCP03 session keys, purpose keys, sealing
//   key-pairs.ts         key pairs: generation, public keys, signing, deciphering
//   wrapping.ts          wrapping, re-wrapping and unwrapping private keys
// This file is what importers name; it re-exports.

export { SoftwareCustody, type KeystoreIdentity, type SoftwareCustodyOptions } from "./software/software-custody.ts";
