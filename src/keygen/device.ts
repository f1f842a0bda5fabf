// The key generation device of seed 001 embodiments 1-2 (FIG. 2 mechanism 110, FIG. 5 device 130; FIG. 4 steps
// 300-320, FIG. 6 steps 400-440; claims 13-34): it makes a key pair nobody knows, has the certification center
// certify it, writes key and certificate into the inserted card, and keeps nothing.
//
//   411-416  the key pair is generated inside key custody (an HSM on PKCS#11), extractable only wrapped, as a
//            session object that is never persisted; this module sees its public key only;
//   414-415  the public key is checked against, and registered in, the device's own registry of every key it
//            generated (registry.ts, by the hash of its canonical encoding — the CA's key identity) — a repeat is
//            destroyed and a new key drawn, as the seed returns to 411;
//   417-418  a PKCS#10 request naming the user's personal data, signed by the new key inside custody (csr.ts), goes
//            to the center over a CaClient (in-process or HTTP: the path is not trusted);
//   421-432  the center checks and certifies (center.ts); its refusals come back named;
//   433      the certificate is verified — signature, chain to the pinned anchor, key, subject (verify.ts);
//   319/434  Sk[PRk] (the private key wrapped inside custody under the card's key set) and the certificate are
//            written through an SCP03 session whose keys custody computes: the key into the card's non-readable
//            key store (IMPORT KEY), the certificate into its PIV object, which only the secure channel may write;
//   434      the private key is destroyed in custody, on success and on every refusal alike, and its absence is
//            checked: "the secret key disappears from the key generation device".
//   S3       (seed 001 embodiment 3, when the issue asks for an escrow) after 433 and before 434, with the key
//            still in custody: the card's secret ID is read through SCP03 under R-ENCRYPTION (FIG. 10 unit 24)
//            and the escrow hook (escrow.ts) wraps the key inside custody, splits the wrapped form among the
//            arbitrators and registers the device. If the card write then fails, the escrow is abandoned.
//
// Deviation from the seed: on a refusal after step 417 the seed returns to step 411 on its own. Here the refusal
// goes to the caller (the key already destroyed) and a retry is a new issue() — a new key — so an attacker on
// the path cannot make the device loop.
//
// Never: holds a private key in this process, puts key material or personal data values in an error or a log.

import { randomUUID } from "node:crypto";
import { CaRefusal } from "../ca/checks.ts";
import type { CaClient, CertifyResult } from "../ca/client.ts";
import type { KeyCustody, KeyPairAlg } from "../custody/custody.ts";
import { validateSubject, type SubjectName } from "../ca/name.ts";
import { buildSignedCsr } from "./csr.ts";
import { readCardSecretId, writeKeyIntoCard, type InsertedCard, type PivSlot } from "./card-io.ts";
import type { KeyEscrowHook } from "./escrow.ts";
import { deviceRefusal, KeyGenerationRefusal } from "./errors.ts";
import { publicKeySha256Of, type IssuedKeyRegistry } from "./registry.ts";
import { verifyIssuedCertificate } from "./verify.ts";

export type { InsertedCard, PivSlot } from "./card-io.ts";

const SLOTS: readonly PivSlot[] = ["9a", "9c", "9d", "9e"];
const ALGS: readonly KeyPairAlg[] = ["P256", "P384", "RSA2048", "RSA3072"];

export interface KeyGenerationDeviceOptions {
  /** Where key pairs are generated and the card key sets live. */
  custody: KeyCustody;
  /** The certification center (step 418), at this site or another. */
  ca: CaClient;
  /** Steps 414-415: the public keys this device generated. */
  registry: IssuedKeyRegistry;
  /**
   * Root certificates (DER) that certificates must chain to (step 433), pinned when the device is commissioned.
   * When omitted, the root the center presents at `create` is pinned (trust on first use) — acceptable only when
   * that first contact is itself trusted.
   */
  trustAnchors?: readonly Uint8Array[];
  /** Keys drawn before giving up when each one was generated before (step 414). Default 3. */
  maxGenerationAttempts?: number;
  /** Time source for certificate validity, for tests. */
  clock?: () => Date;
  /** Seed 001 step S3: where keys are escrowed when an issue asks for it (src/recovery/service.ts escrowHook). */
  escrow?: KeyEscrowHook;
}

export interface IssueCardRequest {
  /** The user as the center knows them (its registration, step 420). */
  applicantId: string;
  /** Step 400/410: the personal data entered at the device; it becomes the request's subject. */
  personalData: SubjectName;
  alg: KeyPairAlg;
  /** The center's certificate profile, e.g. "signature". */
  profile: string;
  /** The PIV key reference the key and certificate are written to. */
  slot: PivSlot;
  card: InsertedCard;
  /**
   * Seed 001 step S3: escrow the key for reproduction by arbitrators under the policy set for `cardId` (the card
   * record; a reissued card keeps it), and register the card's secret ID. Needs a device with an escrow hook.
   */
  escrow?: { cardId: string };
}

export interface IssuedCard {
  slot: PivSlot;
  alg: KeyPairAlg;
  /** DER certificate, as written into the card. */
  certificate: Uint8Array;
  serial: string;
  /** SHA-256 of the certified SubjectPublicKeyInfo, hex (the registry's and the CA's key identity). */
  publicKeySha256: string;
  /** The custody label the key pair had while it existed; it is gone now. For the audit trail. */
  keyLabel: string;
  /** The escrow the key was split into (step S3), when the issue asked for one. */
  escrowId?: string;
}

export class KeyGenerationDevice {
  private constructor(
    private readonly custody: KeyCustody,
    private readonly ca: CaClient,
    private readonly registry: IssuedKeyRegistry,
    private readonly anchors: readonly Uint8Array[],
    private readonly attempts: number,
    private readonly now: () => Date,
    private readonly escrowHook: KeyEscrowHook | undefined,
  ) {}

  /** Commissions a device: pins the trust anchors (given, or the center's root at this moment). */
  static async create(opts: KeyGenerationDeviceOptions): Promise<KeyGenerationDevice> {
    if (!opts.custody || !opts.ca || !opts.registry) throw new TypeError("a key generation device needs custody, a CA client and a registry");
    const attempts = opts.maxGenerationAttempts ?? 3;
    if (!Number.isInteger(attempts) || attempts < 1 || attempts > 10) throw new RangeError(`maxGenerationAttempts must be 1..10, not ${attempts}`);
    let anchors = opts.trustAnchors ? [...opts.trustAnchors] : undefined;
    if (!anchors) {
      const chain = await opts.ca.caCertificates();
      if (chain.length === 0) throw new Error("the center presents no CA certificates to pin");
      anchors = [chain[chain.length - 1]];
    }
    if (anchors.length === 0) throw new TypeError("trustAnchors must hold at least one root certificate");
    if (opts.escrow !== undefined && (typeof opts.escrow?.escrow !== "function" || typeof opts.escrow?.abandon !== "function"))
      throw new TypeError("escrow must be a KeyEscrowHook (escrow and abandon)");
    return new KeyGenerationDevice(
      opts.custody,
      opts.ca,
      opts.registry,
      anchors.map((a) => a.slice()),
      attempts,
      opts.clock ?? (() => new Date()),
      opts.escrow,
    );
  }

  /**
   * Steps 410-435 for one user and one inserted card. Returns what was written; throws KeyGenerationRefusal
   * naming the failed check (by the device or the center). In every outcome the private key no longer exists in
   * custody when this returns. A refusal before step 434 leaves the card untouched; a "card-write" refusal may
   * leave the key without its certificate in the card (the script stopped midway) — the certificate is revoked.
   */
  async issue(req: IssueCardRequest): Promise<IssuedCard> {
    checkRequest(req);
    if (req.escrow && !this.escrowHook) throw new TypeError("this device has no escrow hook: create it with `escrow` to issue with an escrow");
    const { label, spki, publicKeySha256 } = await this.generate(req);
    let serial: string | undefined;
    try {
      // 417-418
      const csr = await buildSignedCsr(this.custody, label, req.personalData);
      let certified: CertifyResult;
      try {
        certified = await this.ca.certify({ csr: csr.pem, profile: req.profile, applicantId: req.applicantId });
      } catch (e) {
        if (e instanceof CaRefusal) throw new KeyGenerationRefusal(e.check, "certification-center", e.detail, { cause: e });
        throw e;
      }
      serial = certified.serial;
      // 433
      const chain = await this.ca.caCertificates();
      verifyIssuedCertificate(certified.certificate, chain, this.anchors, { spki, subject: req.personalData }, this.now());
      // S3 (seed 001 embodiment 3): escrow while the key still exists
      const escrowId = req.escrow ? await this.escrow(req, label, spki, certified) : undefined;
      // 434: key and certificate into the card under SCP03
      try {
        await this.writeCard(req, label, certified.certificate, certified.serial);
      } catch (e) {
        if (escrowId !== undefined) {
          try {
            await this.escrowHook!.abandon(escrowId, "writing into the card failed");
          } catch (a) {
            // the card-write refusal stays the error; it says the escrow is left behind
            if (e instanceof KeyGenerationRefusal) throw deviceRefusal("card-write", `${e.detail}; escrow ${escrowId} NOT abandoned (${(a as Error).message}) — remove it by hand`, { cause: e });
          }
        }
        throw e;
      }
      const issued: IssuedCard = { slot: req.slot, alg: req.alg, certificate: certified.certificate, serial: certified.serial, publicKeySha256, keyLabel: label };
      if (escrowId !== undefined) issued.escrowId = escrowId;
      return issued;
    } catch (e) {
      // a refusal says what it refused: the key it generated and, once certified, the certificate (issue 15 §6)
      if (e instanceof KeyGenerationRefusal) {
        e.publicKeySha256 ??= publicKeySha256;
        if (serial !== undefined) e.serial ??= serial;
      }
      throw e;
    } finally {
      await this.destroy(label);
    }
  }

  /** Steps 411-416: a key pair in custody whose public key this device never generated before. */
  private async generate(req: IssueCardRequest): Promise<{ label: string; spki: Uint8Array; publicKeySha256: string }> {
    for (let attempt = 0; attempt < this.attempts; attempt++) {
      const label = `keygen.${randomUUID()}`;
      await this.custody.generateKeyPair(label, req.alg, { extractable: "wrapped", ephemeral: true });
      try {
        const spki = await this.custody.publicKey(label);
        const publicKeySha256 = publicKeySha256Of(spki);
        if (await this.registry.register({ publicKeySha256, applicantId: req.applicantId, alg: req.alg, generatedAt: this.now() })) return { label, spki, publicKeySha256 };
      } catch (e) {
        await this.destroy(label);
        throw e;
      }
      await this.destroy(label); // 414: generated before — back to 411
    }
    throw deviceRefusal("duplicate-public-key", `each of ${this.attempts} generated keys had been generated before: the key source is not trustworthy`);
  }

  /**
   * Step S3: reads the card's secret ID under SCP03 R-ENCRYPTION and hands the key (by label) to the escrow hook.
   * On a failure the certificate is revoked (its key is about to be destroyed, unescrowed and unwritten) and the
   * refusal names "device-secret-id" or "escrow".
   */
  private async escrow(req: IssueCardRequest, label: string, spki: Uint8Array, certified: CertifyResult): Promise<string> {
    let secretId: Uint8Array;
    try {
      secretId = await readCardSecretId(this.custody, req.card);
    } catch (e) {
      throw deviceRefusal(
        "device-secret-id",
        `the card's secret ID could not be read through the secure channel (${(e as Error).message}); certificate ${certified.serial} ${await this.revoke(certified.serial)}`,
        { cause: e },
      );
    }
    try {
      const r = await this.escrowHook!.escrow({
        cardId: req.escrow!.cardId,
        applicantId: req.applicantId,
        keyLabel: label,
        alg: req.alg,
        slot: req.slot,
        spki,
        certificate: certified.certificate,
        serial: certified.serial,
        keySet: req.card.keySet,
        deviceSecretId: secretId,
      });
      return r.escrowId;
    } catch (e) {
      throw deviceRefusal("escrow", `the key could not be escrowed (${(e as Error).message}); certificate ${certified.serial} ${await this.revoke(certified.serial)}`, { cause: e });
    } finally {
      secretId.fill(0);
    }
  }

  /** Withdraws a certificate whose key is about to cease to exist; says how it went, for the refusal. */
  private async revoke(serial: string): Promise<string> {
    try {
      await this.ca.revoke(serial, "cessationOfOperation");
      return "revoked (cessationOfOperation)";
    } catch {
      return "NOT revoked — revoke it by hand";
    }
  }

  /** Step 434: Sk[PRk] and the certificate into the card under SCP03; on failure the certificate is revoked. */
  private async writeCard(req: IssueCardRequest, label: string, certificate: Uint8Array, serial: string): Promise<void> {
    try {
      await writeKeyIntoCard(this.custody, req.card, { label, slot: req.slot, alg: req.alg, certificate });
    } catch (e) {
      // The certificate names a key that is about to cease to exist: withdraw it.
      throw deviceRefusal("card-write", `writing into the card failed (${(e as Error).message}); certificate ${serial} ${await this.revoke(serial)}`, { cause: e });
    }
  }

  /** Step 434: the private key disappears from the device; its absence is checked, not assumed. */
  private async destroy(label: string): Promise<void> {
    await this.custody.deleteKey(label);
    if (await this.custody.hasKey(label)) throw new Error(`key ${label} is still in custody after deletion`);
  }
}

function checkRequest(req: IssueCardRequest): void {
  if (typeof req !== "object" || req === null) throw new TypeError("issue request must be an object");
  if (typeof req.applicantId !== "string" || !req.applicantId) throw new TypeError("applicantId must be a non-empty string");
  validateSubject(req.personalData); // InvalidSubjectError naming the field, before any key is generated
  if (!ALGS.includes(req.alg)) throw new TypeError(`alg must be one of ${ALGS.join(", ")}`);
  if (typeof req.profile !== "string" || !req.profile) throw new TypeError("profile must be a non-empty string");
  if (!SLOTS.includes(req.slot)) throw new TypeError(`slot must be one of ${SLOTS.join(", ")}`);
  if (!req.card || typeof req.card.transmit !== "function" || !req.card.keySet) throw new TypeError("card must give transmit and the card's key set reference");
  if (req.escrow !== undefined && (typeof req.escrow !== "object" || req.escrow === null || typeof req.escrow.cardId !== "string" || !req.escrow.cardId))
    throw new TypeError("escrow must be { cardId } naming the card record");
}
