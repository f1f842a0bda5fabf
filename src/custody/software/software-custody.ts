// The software custody as the KeyCustody interface sees it (custody.ts; what it keeps and where: ../software.ts).
// This class opens the keystore (keystore.ts) and hands each operation to the file that owns it: keys by label
// (objects.ts), card key sets (card-keys.ts), key pairs (key-pairs.ts), wrapping (wrapping.ts).

import {
  CustodyError,
  type CustodySelfTest,
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
  type Signer,
  type StoredKeySetRef,
  type WrapTarget,
} from "../custody.ts";
import type { KeystoreBackend } from "../keystore-backend.ts";
import { FileKeystoreBackend } from "../keystore-file-backend.ts";
import { openKeystore, type KeystoreKeySource } from "../keystore-file.ts";
import * as cardKeys from "./card-keys.ts";
import * as keyPairs from "./key-pairs.ts";
import { Keystore, type KeystoreOptions } from "./keystore.ts";
import * as objects from "./objects.ts";
import * as wrapping from "./wrapping.ts";

export interface SoftwareCustodyOptions extends KeystoreKeySource, KeystoreOptions {
  /** Keystore file; created (with its directory's permissions) when missing. Not used when `backend` is given. */
  path?: string;
  /** Where the keystore is kept, instead of the file at `path`: e.g. the store (src/store/custody-keystore.ts). */
  backend?: KeystoreBackend;
}

/** Which keystore a software custody opened (issue 16 §3: recorded in the database its card keys belong to). */
export interface KeystoreIdentity {
  /** The keystore's random identity. */
  id: string;
  kind: "file" | "store";
  /** The file's path, or "the store". */
  where: string;
}

export class SoftwareCustody implements KeyCustody {
  readonly kind = "software";
  /** The keystore file's path, or "the store". */
  readonly path: string;
  readonly keystore: KeystoreIdentity;

  private constructor(private readonly ks: Keystore) {
    this.path = ks.backend.where;
    this.keystore = { id: ks.id, kind: ks.backend.kind, where: ks.backend.where };
  }

  /**
   * Opens the keystore kept by opts.backend, or in the file at opts.path; creates it when there is none. Throws
   * WRONG_KEY when the key does not open it.
   */
  static async open(opts: SoftwareCustodyOptions): Promise<SoftwareCustody> {
    if (!opts.backend && !opts.path) throw new CustodyError("INVALID_ARGUMENT", "a software keystore needs a file path or a backend");
    const backend = opts.backend ?? new FileKeystoreBackend(opts.path as string);
    const { header, kek } = await openKeystore(backend, opts);
    return new SoftwareCustody(new Keystore(backend, header, kek, opts));
  }

  // --- keys by label -----------------------------------------------------------------------------------------

  createSecretKey(label: string, spec: SecretKeySpec): Promise<KeyInfo> {
    return objects.createSecretKey(this.ks, label, spec);
  }

  importSecretKey(label: string, spec: SecretKeySpec, value: Uint8Array): Promise<KeyInfo> {
    return objects.importSecretKey(this.ks, label, spec, value);
  }

  importKeySet(prefix: string, keys: { kvn: number; enc: Uint8Array; mac: Uint8Array; dek: Uint8Array }, extractable: Extractability = "never"): Promise<StoredKeySetRef> {
    return objects.importKeySet(this.ks, prefix, keys, extractable);
  }

  hasKey(label: string): Promise<boolean> {
    return objects.hasKey(this.ks, label);
  }

  keyInfo(label: string): Promise<KeyInfo | undefined> {
    return objects.keyInfo(this.ks, label);
  }

  deleteKey(label: string): Promise<boolean> {
    return objects.deleteKey(this.ks, label);
  }

  listKeys(): Promise<KeyInfo[]> {
    return objects.listKeys(this.ks);
  }

  // --- card key sets -----------------------------------------------------------------------------------------

  keySetKcvs(ref: KeySetRef): Promise<KeySetKcvs> {
    return cardKeys.keySetKcvs(this.ks, ref);
  }

  putKeyData(current: KeySetRef, next: KeySetRef): Promise<PutKeyData> {
    return cardKeys.putKeyData(this.ks, current, next);
  }

  scp03Session(ref: KeySetRef, hostChallenge: Uint8Array, cardChallenge: Uint8Array): Promise<Scp03SessionMaterial> {
    return cardKeys.scp03Session(this.ks, ref, hostChallenge, cardChallenge);
  }

  sealForCard(ref: KeySetRef, purpose: number, aad: Uint8Array, plaintext: Uint8Array): Promise<SealedForCard> {
    return cardKeys.sealForCard(this.ks, ref, purpose, aad, plaintext);
  }

  // --- key pairs ---------------------------------------------------------------------------------------------

  generateKeyPair(label: string, alg: KeyPairAlg, opts: KeyPairOptions = {}): Promise<KeyInfo> {
    return keyPairs.generateKeyPair(this.ks, label, alg, opts);
  }

  publicKey(label: string): Promise<Uint8Array> {
    return keyPairs.publicKey(this.ks, label);
  }

  sign(label: string, data: Uint8Array, opts: { hash?: HashAlg } = {}): Promise<Uint8Array> {
    return keyPairs.sign(this.ks, label, data, opts);
  }

  wrapPrivateKey(label: string, to: WrapTarget): Promise<Uint8Array> {
    return wrapping.wrapPrivateKey(this.ks, label, to);
  }

  rewrapPrivateKey(wrapped: Uint8Array, alg: KeyPairAlg, from: WrapTarget, to: WrapTarget): Promise<Uint8Array> {
    return wrapping.rewrapPrivateKey(this.ks, wrapped, alg, from, to);
  }

  rewrapPrivateKeys(items: readonly { wrapped: Uint8Array; alg: KeyPairAlg }[], from: WrapTarget, to: WrapTarget): Promise<Uint8Array[]> {
    return wrapping.rewrapPrivateKeys(this.ks, items, from, to);
  }

  unwrapPrivateKey(label: string, wrapped: Uint8Array, alg: KeyPairAlg, from: WrapTarget, opts: KeyPairOptions & { expectSpki?: Uint8Array } = {}): Promise<KeyInfo> {
    return wrapping.unwrapPrivateKey(this.ks, label, wrapped, alg, from, opts);
  }

  decipher(label: string, input: Uint8Array): Promise<Uint8Array> {
    return keyPairs.decipher(this.ks, label, input);
  }

  signer(label: string): Promise<Signer> {
    return keyPairs.signer(this.ks, label);
  }

  /**
   * The software keystore has no PIN holder to test: whoever holds the keystore key and the file reads every key (its
   * protection is the AES-GCM seal of each entry and the key's secrecy). Reported as such, with no path.
   */
  async selfTest(): Promise<CustodySelfTest> {
    this.ks.live();
    return {
      custody: "software",
      token: "software keystore",
      paths: [],
      open: [],
      keys: [],
      notes: ["whoever holds the keystore key (CARDKMS_KEYSTORE_KEY) and the keystore file can read every key in it; this process holds the keys in memory while it runs"],
      ok: true,
    };
  }

  close(): Promise<void> {
    return this.ks.close();
  }
}
