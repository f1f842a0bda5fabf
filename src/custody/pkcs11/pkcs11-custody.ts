// The PKCS#11 custody as the KeyCustody interface sees it (custody.ts; what runs in the HSM and what in this
// process: ../pkcs11.ts). This class opens and closes the token session (module.ts) and hands each operation to the
// file that owns it: keys by label (objects.ts), card key sets (card-keys.ts), key pairs (key-pairs.ts), wrapping
// (wrapping.ts), deciphering (decipher.ts), the self-test (selftest.ts). All of them act through one logged-in
// session (token.ts).

import {
  CustodyError,
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
import * as cardKeys from "./card-keys.ts";
import * as deciphering from "./decipher.ts";
import * as keyPairs from "./key-pairs.ts";
import { openToken, releaseModule, type Pkcs11CustodyOptions } from "./module.ts";
import * as objects from "./objects.ts";
import { runSelfTest, type CustodySelfTest } from "./selftest.ts";
import type { TokenFeatures } from "./templates.ts";
import type { Pkcs11Token } from "./token.ts";
import * as wrapping from "./wrapping.ts";

export class Pkcs11Custody implements KeyCustody {
  readonly kind = "pkcs11";
  readonly tokenLabel: string;
  /** What the token accepts beyond PKCS#11 2.20 (CKA_UNWRAP_TEMPLATE, CKA_DERIVE_TEMPLATE). */
  readonly features: TokenFeatures;

  private constructor(private readonly hsm: Pkcs11Token) {
    this.tokenLabel = hsm.tokenLabel;
    this.features = hsm.features;
  }

  /** Loads the module, finds the token by label, opens a read-write session and logs in as the user. */
  static async open(opts: Pkcs11CustodyOptions = {}): Promise<Pkcs11Custody> {
    return new Pkcs11Custody(openToken(opts));
  }

  // --- keys by label -----------------------------------------------------------------------------------------

  createSecretKey(label: string, spec: SecretKeySpec): Promise<KeyInfo> {
    return objects.createSecretKey(this.hsm, label, spec);
  }

  importSecretKey(label: string, spec: SecretKeySpec, value: Uint8Array): Promise<KeyInfo> {
    return objects.importSecretKey(this.hsm, label, spec, value);
  }

  importKeySet(prefix: string, keys: { kvn: number; enc: Uint8Array; mac: Uint8Array; dek: Uint8Array }, extractable: Extractability = "never"): Promise<StoredKeySetRef> {
    return objects.importKeySet(this.hsm, prefix, keys, extractable);
  }

  hasKey(label: string): Promise<boolean> {
    return objects.hasKey(this.hsm, label);
  }

  keyInfo(label: string): Promise<KeyInfo | undefined> {
    return objects.keyInfo(this.hsm, label);
  }

  deleteKey(label: string): Promise<boolean> {
    return objects.deleteKey(this.hsm, label);
  }

  listKeys(): Promise<KeyInfo[]> {
    return objects.listKeys(this.hsm);
  }

  // --- card key sets -----------------------------------------------------------------------------------------

  keySetKcvs(ref: KeySetRef): Promise<KeySetKcvs> {
    return cardKeys.keySetKcvs(this.hsm, ref);
  }

  putKeyData(current: KeySetRef, next: KeySetRef): Promise<PutKeyData> {
    return cardKeys.putKeyData(this.hsm, current, next);
  }

  scp03Session(ref: KeySetRef, hostChallenge: Uint8Array, cardChallenge: Uint8Array): Promise<Scp03SessionMaterial> {
    return cardKeys.scp03Session(this.hsm, ref, hostChallenge, cardChallenge);
  }

  sealForCard(ref: KeySetRef, purpose: number, aad: Uint8Array, plaintext: Uint8Array): Promise<SealedForCard> {
    return cardKeys.sealForCard(this.hsm, ref, purpose, aad, plaintext);
  }

  // --- key pairs ---------------------------------------------------------------------------------------------

  generateKeyPair(label: string, alg: KeyPairAlg, opts: KeyPairOptions = {}): Promise<KeyInfo> {
    return keyPairs.generateKeyPair(this.hsm, label, alg, opts);
  }

  publicKey(label: string): Promise<Uint8Array> {
    return keyPairs.publicKey(this.hsm, label);
  }

  sign(label: string, data: Uint8Array, opts: { hash?: HashAlg } = {}): Promise<Uint8Array> {
    return keyPairs.sign(this.hsm, label, data, opts);
  }

  wrapPrivateKey(label: string, to: WrapTarget): Promise<Uint8Array> {
    return wrapping.wrapPrivateKey(this.hsm, label, to);
  }

  rewrapPrivateKey(wrapped: Uint8Array, alg: KeyPairAlg, from: WrapTarget, to: WrapTarget): Promise<Uint8Array> {
    return wrapping.rewrapPrivateKey(this.hsm, wrapped, alg, from, to);
  }

  rewrapPrivateKeys(items: readonly { wrapped: Uint8Array; alg: KeyPairAlg }[], from: WrapTarget, to: WrapTarget): Promise<Uint8Array[]> {
    return wrapping.rewrapPrivateKeys(this.hsm, items, from, to);
  }

  unwrapPrivateKey(label: string, wrapped: Uint8Array, alg: KeyPairAlg, from: WrapTarget, opts: KeyPairOptions & { expectSpki?: Uint8Array } = {}): Promise<KeyInfo> {
    return wrapping.unwrapPrivateKey(this.hsm, label, wrapped, alg, from, opts);
  }

  decipher(label: string, input: Uint8Array): Promise<Uint8Array> {
    return deciphering.decipher(this.hsm, label, input);
  }

  signer(label: string): Promise<Signer> {
    return keyPairs.signer(this.hsm, label);
  }

  /** The extraction paths this token refuses and the ones it does not (selftest.ts), with this PIN. */
  async selfTest(): Promise<CustodySelfTest> {
    const hsm = this.hsm;
    if (hsm.closed) throw new CustodyError("UNAVAILABLE", "custody is closed");
    return runSelfTest({ p: hsm.p, mod: hsm.mod, session: hsm.session, slot: hsm.slot, tokenLabel: hsm.tokenLabel, features: hsm.features });
  }

  /** Closes the session; the last instance on a module finalizes it (C_Finalize logs out and unloads). */
  async close(): Promise<void> {
    const hsm = this.hsm;
    if (hsm.closed) return;
    hsm.closed = true;
    try {
      hsm.mod.C_CloseSession(hsm.session);
    } catch {
      // the session may already be gone (token removed)
    }
    releaseModule(hsm.modulePath);
  }
}
