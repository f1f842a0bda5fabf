// The key reproduction service (seed 001 embodiment 3, FIG. 7-12, steps S1-S12; claims 35-48): the domain
// service routes and CLI build on. It keeps its records in the system DB (src/store/recovery-repository.ts), its
// keys in custody, and appends every privileged act — and every refusal, by the name of the check that failed —
// to the hash-chained audit log.
//
//   S1   setPolicy: the reproduction policy of a card, as validated data (policy.ts).
//   S2-3 escrow (the key generation device's hook, src/keygen/escrow.ts): with the new key pair still in custody,
//        E = the private key wrapped inside custody under ESCROW_KEK_LABEL (an AES-256 key created here once,
//        never extractable); E is split under the card's policy (shares.ts: E sealed under a fresh K, K split
//        into shares sealed to the arbitrators). The escrow record (E under K, commitments), the envelopes and
//        the card's device secret ID digest (FIG. 10 unit 24) and public key (unit 23) are stored. Custody alone
//        cannot reproduce: E is stored only under K, which only the arbitrators' shares rebuild; the shares alone
//        cannot either: they rebuild E, a key wrapped under a key that never leaves custody.
//   S5-7 fileRequest; each arbitrator fetches the request (pendingFor), approves with a signature over the request
//        and the chain before it and releases its shares — opened on its side (openShare) and re-sealed to the
//        reproduction device's key pair in custody (releaseShare, below) — or refuses with a reason. A refusal by
//        an indispensable party, or a threshold that can no longer be met, ends the request naming the condition.
//        The policy's author then signs the list of approvers (FIG. 9 condition 15, submitApproverList).
//   S8-9 reproduce (FIG. 10): the target card's secret ID is read under SCP03 R-ENCRYPTION and checked against
//        the registered one ("key-lost": the same card, or nothing; "card-destroyed": another card, which becomes
//        the registered device — FIG. 11-12); the released shares are opened inside the service with custody's
//        ECDH, K and then E are rebuilt (reproduce.ts, gated on the verified chain and approver list), E is
//        unwrapped INTO custody (it must match the registered public key), the key is checked inside custody
//        (sign/verify, decipher round trip: unit 22), written into the card through SCP03 exactly as the key
//        generation device writes it, and destroyed in custody. A request is single-use.
//
// Release of shares: the seed sends each arbitrator's partial data to the reproduction device; here an arbitrator
// seals its opened share to the reproduction device's P-256 key pair (REPRODUCTION_DEVICE_KEY_LABEL, generated in
// custody, never extractable): ECDH with an ephemeral key, HKDF-SHA256, AES-256-GCM whose additional data is the
// release header (request, escrow, card, share, arbitrator, device key). The service opens a release only with
// custody's ECDH (KeyCustody.decipher), when it checks it against the share's commitment at approval time and when
// it reproduces; the stored releases are sealed.
//
// Never: a share value, K, E in clear, a private key or a device secret ID in the DB, the audit log, an error or a
// return value. Buffers holding them are wiped once used.

import { constants, createHash, createECDH, createPublicKey, diffieHellman, generateKeyPairSync, hkdfSync, publicEncrypt, randomBytes, randomUUID, verify, createCipheriv, createDecipheriv, type KeyObject } from "node:crypto";
import { CustodyError, defaultHash, type KeyCustody, type KeyPairAlg, type KeySetRef } from "../custody/custody.ts";
import type { InsertedCard, PivSlot } from "../keygen/device.ts";
import type { EscrowInput, KeyEscrowHook } from "../keygen/escrow.ts";
import { readCardSecretId, writeKeyIntoCard } from "../keygen/card-io.ts";
import { appendAudit } from "../store/audit.ts";
import type { Db } from "../store/db.ts";
import { newId } from "../store/ids.ts";
import type { JsonValue } from "../store/store.ts";
import {
  SqlRecoveryRepository,
  UNFINISHED_STATUSES,
  type ArbitratorRecord,
  type EscrowRow,
  type RequestKind,
  type RequestRecord,
  type RequestStatus,
} from "../store/recovery-repository.ts";
import { type Approval, type ApproverList, type ReproductionRequest, ApprovalChain, approvalHash, chainHead, requestDigest, validateRequest, verifyApproverList, verifyChain } from "./approvals.ts";
import { PolicyValidationError, RecoveryError } from "./errors.ts";
import type { SealedBox } from "./ecies.ts";
import { bytesEqual, canonicalJson, fromB64, labelledDigest } from "./encoding.ts";
import { type Evaluation, type ReproductionPolicy, evaluatePolicy, policyDigest, policyParties, validatePolicy } from "./policy.ts";
import { ArbitratorRegistry, uncompressedPoint, type PublicKeyInput } from "./registry.ts";
import { reproduce as reproduceFromShares } from "./reproduce.ts";
import { type EscrowRecord, type ReleasedShare, type ShareEnvelope, type ShareSlot, shareCommitment, splitSecret } from "./shares.ts";

export type { RequestKind, RequestStatus } from "../store/recovery-repository.ts";

/** The AES-256 key escrowed private keys are wrapped under (usage wrap, never extractable). */
export const ESCROW_KEK_LABEL = "recovery.escrow-kek";
/** The reproduction device's P-256 key pair shares are released to (never extractable). */
export const REPRODUCTION_DEVICE_KEY_LABEL = "recovery.reproduction-device";

// ---------------------------------------------------------------------------------------------------------------
// Errors

/** Checks of the service itself; the recovery module's own checks come as RecoveryError (errors.ts). */
export type ServiceCheck =
  /** Malformed input (ids, kinds, shapes). */
  | "invalid_argument"
  /** No such arbitrator, card, escrow or request. */
  | "not_found"
  | "arbitrator_exists"
  /** Step S1 comes first: the card has no policy. */
  | "no_policy"
  /** The card already has an escrow (one per card; its policy is fixed with it). */
  | "escrow_exists"
  /** A request for a card that was issued without an escrow. */
  | "no_escrow"
  /** The card already has an unfinished request. */
  | "request_unfinished"
  /** The request is reproduced, withdrawn, being reproduced, or its chain was closed by the approver list. */
  | "request_closed"
  /** The policy is met but its author has not signed the list of approvers yet. */
  | "approver_list_missing"
  /** A share release that is not one (shape). */
  | "release_invalid"
  /** The presented card is not the one the request allows (FIG. 10 unit 22/24). */
  | "device_mismatch"
  /** The presented card is the registered device of another card record. */
  | "device_in_use"
  /** The card's secret ID could not be read (the secure channel did not open with the given key set). */
  | "device_unreadable"
  | "card_write_failed";

export class RecoveryServiceError extends Error {
  override readonly name = "RecoveryServiceError";
  constructor(
    readonly check: ServiceCheck,
    message: string,
    /** Non-secret details for the audit log and the caller (ids, names, counts). */
    readonly details: Readonly<Record<string, unknown>> = {},
  ) {
    super(`${check}: ${message}`);
  }
}

/** A named refusal: the recovery module's (RecoveryError) or the service's (RecoveryServiceError). */
export type RecoveryRefusal = RecoveryError | RecoveryServiceError;
export const isRecoveryRefusal = (e: unknown): e is RecoveryRefusal => e instanceof RecoveryError || e instanceof RecoveryServiceError;

// ---------------------------------------------------------------------------------------------------------------
// Public shapes

export interface ArbitratorInput {
  /** 1-128 characters of [A-Za-z0-9._:@-]. */
  id: string;
  /** e.g. ["user"], ["credit company"], ["service provider"], ["issuing-apparatus manager"] (FIG. 9). */
  roles?: string[];
  displayName?: string;
  /** ECDSA P-256 key that verifies the arbitrator's approvals (SPKI DER, PEM or KeyObject). */
  signingPublicKey: PublicKeyInput;
  /** ECDH P-256 key the arbitrator's shares are sealed to (SPKI DER, PEM or KeyObject). */
  encryptionPublicKey: PublicKeyInput;
}

export interface ArbitratorView {
  id: string;
  roles: string[];
  displayName?: string;
  /** SPKI DER. */
  signingPublicKey: Uint8Array;
  /** SPKI DER. */
  encryptionPublicKey: Uint8Array;
  /** SHA-256 of the encryption key's SPKI, hex (ShareEnvelopeHeader.recipientKeyId). */
  encryptionKeyId: string;
  registeredBy: string;
  registeredAt: Date;
}

export interface PolicyView {
  cardId: string;
  policy: ReproductionPolicy;
  digest: string;
  setBy: string;
  setAt: Date;
}

export interface EscrowView {
  escrowId: string;
  cardId: string;
  applicantId: string;
  policy: ReproductionPolicy;
  policyDigest: string;
  alg: KeyPairAlg;
  slot: PivSlot;
  /** The registered public key, SPKI DER (FIG. 10 unit 23). */
  publicKey: Uint8Array;
  publicKeySha256: string;
  certificate: Uint8Array;
  serial: string;
  /** Who holds which share (no share value). */
  shares: { shareId: string; arbitrator: string; slot: ShareSlot }[];
  /** The registered device: 1 for the card first issued, +1 for each replacement. */
  deviceGeneration: number;
  createdAt: Date;
}

/** The request arbitrators sign over: the recovery module's request, with the kind of reproduction asked for. */
export type ServiceRequest = ReproductionRequest & { kind: RequestKind };

export interface RequestView {
  requestId: string;
  cardId: string;
  escrowId: string;
  kind: RequestKind;
  status: RequestStatus;
  /** The failed condition of an ended request, a withdrawal reason, or the last refused reproduction attempt. */
  statusDetail?: string;
  /** Exactly what an approval signs over (requestDigest). */
  request: ServiceRequest;
  requestDigest: string;
  /** What the next approval must name as `previous`. */
  chainHead: string;
  /** The signed decisions so far, in chain order. */
  approvals: Approval[];
  /** The policy's judgement of the decisions so far. */
  evaluation: Evaluation;
  /** Share ids released so far (sealed to the reproduction device; never their values). */
  releasedShares: string[];
  approverList?: ApproverList;
  filedBy: string;
  filedAt: Date;
  reproducedBy?: string;
  reproducedAt?: Date;
}

/** What an arbitrator has to do (pendingFor). */
export type PendingItem =
  | {
      action: "decide";
      request: RequestView;
      /** False while an order condition makes the arbitrator wait; `waitingFor` names whom. */
      mayApproveNow: boolean;
      waitingFor: string[];
      /** The arbitrator's share envelopes of this card's escrow, to open on its side and release. */
      envelopes: ShareEnvelope[];
    }
  | { action: "sign-approver-list"; request: RequestView };

export interface ReproductionResult {
  requestId: string;
  cardId: string;
  kind: RequestKind;
  /** Who approved, in order. */
  approvers: string[];
  /** The author of the list of approvers. */
  author: string;
  chainHead: string;
  slot: PivSlot;
  /** The certificate written back with the key (the original one). */
  serial: string;
  /** True for "card-destroyed": the registered device is now the target card. */
  deviceReplaced: boolean;
  deviceGeneration: number;
}

export interface ShareReleaseHeader {
  format: "cardkms.recovery.release/1";
  requestId: string;
  escrowId: string;
  cardId: string;
  shareId: string;
  arbitrator: string;
  /** SHA-256 of the reproduction device key's SPKI, hex. */
  deviceKeyId: string;
}

/** A share an approver releases for one request, sealed to the reproduction device (header authenticated). */
export interface ShareRelease {
  header: ShareReleaseHeader;
  box: SealedBox;
}

export interface RecoveryServiceOptions {
  db: Db;
  custody: KeyCustody;
  /** Time source (filing times, records), for tests. */
  clock?: () => Date;
  /** Custody label of the escrow key-encryption key. Default ESCROW_KEK_LABEL. */
  escrowKekLabel?: string;
  /** Custody label of the reproduction device's key pair. Default REPRODUCTION_DEVICE_KEY_LABEL. */
  deviceKeyLabel?: string;
}

// ---------------------------------------------------------------------------------------------------------------
// Release of shares to the reproduction device (arbitrator side: releaseShare; service side: openRelease)

const RELEASE_INFO = Buffer.from("cardkms/recovery/release-to-device/v1");
const releaseAad = (h: ShareReleaseHeader): Buffer => Buffer.from(canonicalJson(h));
const sha256Hex = (b: Uint8Array): string => createHash("sha256").update(b).digest("hex");

function p256FromSpki(spki: Uint8Array, what: string): KeyObject {
  let k: KeyObject;
  try {
    k = createPublicKey({ key: Buffer.from(spki), format: "der", type: "spki" });
  } catch {
    throw new RecoveryServiceError("invalid_argument", `${what} is not a public key`);
  }
  if (k.asymmetricKeyType !== "ec" || k.asymmetricKeyDetails?.namedCurve !== "prime256v1") throw new RecoveryServiceError("invalid_argument", `${what} must be a P-256 public key`);
  return k;
}

function releaseKey(z: Uint8Array, epk: Uint8Array, device: Uint8Array): Buffer {
  return Buffer.from(hkdfSync("sha256", z, Buffer.concat([epk, device]), RELEASE_INFO, 32));
}

/**
 * On the arbitrator's side (step S6): seals a share it opened (openShare) to the reproduction device's public key
 * (RecoveryService.deviceKey), for one request. The value is not modified; the caller wipes it.
 */
export function releaseShare(request: Pick<ReproductionRequest, "requestId">, share: ReleasedShare, devicePublicKey: Uint8Array): ShareRelease {
  const device = p256FromSpki(devicePublicKey, "the reproduction device key");
  const point = uncompressedPoint(device);
  const header: ShareReleaseHeader = {
    format: "cardkms.recovery.release/1",
    requestId: request.requestId,
    escrowId: share.escrowId,
    cardId: share.cardId,
    shareId: share.shareId,
    arbitrator: share.arbitrator,
    deviceKeyId: sha256Hex(devicePublicKey),
  };
  const ecdh = createECDH("prime256v1");
  const epk = ecdh.generateKeys();
  const z = ecdh.computeSecret(point);
  const key = releaseKey(z, epk, point);
  z.fill(0);
  const iv = randomBytes(12);
  const c = createCipheriv("aes-256-gcm", key, iv);
  c.setAAD(releaseAad(header));
  const ciphertext = Buffer.concat([c.update(share.value), c.final()]);
  key.fill(0);
  return { header, box: { epk: epk.toString("base64"), iv: iv.toString("base64"), ciphertext: ciphertext.toString("base64"), tag: c.getAuthTag().toString("base64") } };
}

/** The P-256 SPKI of an uncompressed point (0x04 || X || Y); throws when it is not a point on the curve. */
function spkiOfPoint(point: Uint8Array): Uint8Array {
  if (point.length !== 65 || point[0] !== 4) throw new TypeError("not an uncompressed P-256 point");
  const x = Buffer.from(point.subarray(1, 33)).toString("base64url");
  const y = Buffer.from(point.subarray(33)).toString("base64url");
  return new Uint8Array(createPublicKey({ key: { kty: "EC", crv: "P-256", x, y }, format: "jwk" }).export({ format: "der", type: "spki" }));
}

// ---------------------------------------------------------------------------------------------------------------
// The composed key verification unit 22 (FIG. 10), inside custody

const NODE_HASH = { "SHA-256": "sha256", "SHA-384": "sha384", "SHA-512": "sha512" } as const;

/**
 * Proves that the key pair `label` in custody is the private half of the registered public key, without the key
 * leaving custody: its public key equals the registered SPKI; it signs a random value that verifies with the
 * registered key (Node, outside custody); and it deciphers what was enciphered to the registered key — RSA:
 * OAEP-SHA256 of a random value; EC: an ephemeral ECDH with the registered key, which custody's ECDH must match.
 * Returns the name of the first failed check, or undefined when all pass. Custody failures propagate.
 */
export async function keyCheckInCustody(custody: KeyCustody, label: string, alg: KeyPairAlg, registeredSpki: Uint8Array): Promise<string | undefined> {
  const pub = createPublicKey({ key: Buffer.from(registeredSpki), format: "der", type: "spki" });
  if (!bytesEqual(await custody.publicKey(label), registeredSpki)) return "public key";
  const r = randomBytes(32);
  const sig = await custody.sign(label, r);
  if (!verify(NODE_HASH[defaultHash(alg)], r, { key: pub, dsaEncoding: "der" }, sig)) return "signature";
  if (alg === "RSA2048" || alg === "RSA3072") {
    const c = publicEncrypt({ key: pub, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256" }, r);
    const d = await custody.decipher(label, c);
    const same = bytesEqual(d, r);
    d.fill(0);
    if (!same) return "decipher";
  } else {
    const eph = generateKeyPairSync("ec", { namedCurve: alg === "P384" ? "P-384" : "P-256" });
    const sent = diffieHellman({ privateKey: eph.privateKey, publicKey: pub });
    const got = await custody.decipher(label, new Uint8Array(eph.publicKey.export({ format: "der", type: "spki" })));
    const same = bytesEqual(got, sent);
    got.fill(0);
    sent.fill(0);
    if (!same) return "decipher (ECDH)";
  }
  r.fill(0);
  return undefined;
}

// ---------------------------------------------------------------------------------------------------------------
// The service

const ID = /^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$/;
const isName = (v: unknown): v is string => typeof v === "string" && v.length >= 1 && v.length <= 64 && !/\p{Cc}/u.test(v);
const KINDS: readonly RequestKind[] = ["key-lost", "card-destroyed"];
const MAX_REASON = 1024;

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

function checkId(v: unknown, what: string): asserts v is string {
  if (typeof v !== "string" || !ID.test(v)) throw new RecoveryServiceError("invalid_argument", `${what} must be 1-128 characters of [A-Za-z0-9._:@/-]`);
}

function checkActor(actor: unknown): asserts actor is string {
  if (typeof actor !== "string" || actor.length === 0 || actor.length > 128) throw new RecoveryServiceError("invalid_argument", "actor must name who acts (1-128 characters)");
}

/** Digest under which a card's secret ID is registered (FIG. 10 unit 24): the ID itself is never stored. */
export function deviceSecretIdDigest(secretId: Uint8Array): string {
  return labelledDigest("cardkms/recovery/device-secret-id/v1", secretId).toString("hex");
}

/** A key set reference as the audit log names it (no key). */
const keySetSummary = (k: KeySetRef): { [key: string]: JsonValue } => ({ kind: k.kind, kvn: k.kvn, card: k.cardId ?? null });

/** Plain JSON of a refusal's details (undefined members dropped) for the audit log. */
const jsonDetails = (d: Readonly<Record<string, unknown>>): { [key: string]: JsonValue } => JSON.parse(JSON.stringify(d ?? {})) as { [key: string]: JsonValue };

export class RecoveryService {
  private readonly repo: SqlRecoveryRepository;

  private constructor(
    private readonly db: Db,
    private readonly custody: KeyCustody,
    private readonly now: () => Date,
    private readonly kekLabel: string,
    private readonly deviceLabel: string,
    private readonly deviceSpki: Uint8Array,
  ) {
    this.repo = new SqlRecoveryRepository(db);
  }

  /**
   * Opens the service on a migrated system DB. Creates in custody, once, the escrow key-encryption key (AES-256,
   * wrap only, never extractable) and the reproduction device's key pair (P-256, never extractable), and checks
   * that existing ones have those properties.
   */
  static async open(opts: RecoveryServiceOptions): Promise<RecoveryService> {
    if (!opts?.db || !opts.custody) throw new TypeError("the recovery service needs the system DB and key custody");
    const { custody } = opts;
    const kek = opts.escrowKekLabel ?? ESCROW_KEK_LABEL;
    const dev = opts.deviceKeyLabel ?? REPRODUCTION_DEVICE_KEY_LABEL;
    const ensure = async (label: string, create: () => Promise<unknown>) => {
      if (await custody.hasKey(label)) return;
      try {
        await create();
      } catch (e) {
        // another process created it meanwhile
        if (!(e instanceof CustodyError && e.code === "EXISTS")) throw e;
      }
    };
    await ensure(kek, () => custody.createSecretKey(kek, { type: "aes", bits: 256, usage: ["wrap"], extractable: "never" }));
    // A generated key pair may only sign on PKCS#11; one made by unwrapPrivateKey may also do ECDH (decipher). So the
    // device key is generated inside custody, wrapped under the KEK and unwrapped as the persistent, never
    // extractable key pair: it never exists outside custody, in clear or wrapped (the wrapped form is dropped).
    await ensure(dev, async () => {
      const tmp = `${dev}.gen.${randomUUID()}`;
      await custody.generateKeyPair(tmp, "P256", { extractable: "wrapped", ephemeral: true });
      let w: Uint8Array | undefined;
      try {
        w = await custody.wrapPrivateKey(tmp, { key: kek });
        await custody.unwrapPrivateKey(dev, w, "P256", { key: kek }, { extractable: "never", expectSpki: await custody.publicKey(tmp) });
      } finally {
        w?.fill(0);
        await custody.deleteKey(tmp);
      }
    });
    const ki = await custody.keyInfo(kek);
    if (ki?.kind !== "secret" || ki.bits !== 256 || !ki.usage?.includes("wrap") || ki.extractable !== "never")
      throw new Error(`custody key ${kek} is not a non-extractable AES-256 wrapping key`);
    const di = await custody.keyInfo(dev);
    if (di?.kind !== "keyPair" || di.type !== "P256" || di.extractable !== "never") throw new Error(`custody key ${dev} is not a non-extractable P-256 key pair`);
    const spki = await custody.publicKey(dev);
    return new RecoveryService(opts.db, custody, opts.clock ?? (() => new Date()), kek, dev, spki);
  }

  private at(): number {
    return this.now().getTime();
  }

  /** The reproduction device's public key, which arbitrators release their shares to (releaseShare). */
  deviceKey(): { spki: Uint8Array; keyId: string } {
    return { spki: this.deviceSpki.slice(), keyId: sha256Hex(this.deviceSpki) };
  }

  // --- arbitrators ------------------------------------------------------------------------------------------------

  private static toRegistry(records: readonly ArbitratorRecord[]): ArbitratorRegistry {
    const reg = new ArbitratorRegistry();
    for (const a of records) reg.register({ id: a.id, role: a.roles.join(", ") || undefined, displayName: a.displayName, signingPublicKey: a.signingPublicKey, encryptionPublicKey: a.encryptionPublicKey });
    return reg;
  }

  private async registry(repo: SqlRecoveryRepository = this.repo): Promise<ArbitratorRegistry> {
    return RecoveryService.toRegistry(await repo.arbitrators());
  }

  private static arbitratorView(a: ArbitratorRecord): ArbitratorView {
    const v: ArbitratorView = {
      id: a.id,
      roles: [...a.roles],
      signingPublicKey: a.signingPublicKey.slice(),
      encryptionPublicKey: a.encryptionPublicKey.slice(),
      encryptionKeyId: sha256Hex(a.encryptionPublicKey),
      registeredBy: a.registeredBy,
      registeredAt: new Date(a.registeredAt),
    };
    if (a.displayName !== undefined) v.displayName = a.displayName;
    return v;
  }

  /** Claim 35 (a): registers an arbitrator with its two P-256 public keys. Ids are never reused. */
  async registerArbitrator(input: ArbitratorInput, actor: string): Promise<ArbitratorView> {
    checkActor(actor);
    if (!isObject(input)) throw new RecoveryServiceError("invalid_argument", "expected { id, roles?, displayName?, signingPublicKey, encryptionPublicKey }");
    const roles = input.roles ?? [];
    if (!Array.isArray(roles) || roles.length > 16 || !roles.every(isName))
      throw new RecoveryServiceError("invalid_argument", "roles must be at most 16 names of 1-64 printable characters");
    if (input.displayName !== undefined && !isName(input.displayName))
      throw new RecoveryServiceError("invalid_argument", "displayName must be 1-64 printable characters");
    let checked;
    try {
      // The registry's own checks: id syntax, P-256 public keys.
      checked = new ArbitratorRegistry().register({ id: input.id, signingPublicKey: input.signingPublicKey, encryptionPublicKey: input.encryptionPublicKey });
    } catch (e) {
      if (e instanceof RecoveryError) throw new RecoveryServiceError("invalid_argument", e.message.replace(/^unknown_arbitrator: /, ""), { arbitrator: typeof input.id === "string" ? input.id : undefined });
      throw e;
    }
    const rec: ArbitratorRecord = {
      id: checked.id,
      roles: [...roles],
      signingPublicKey: new Uint8Array(checked.signingKey.export({ format: "der", type: "spki" })),
      encryptionPublicKey: new Uint8Array(checked.encryptionKey.export({ format: "der", type: "spki" })),
      registeredBy: actor,
      registeredAt: this.at(),
    };
    if (input.displayName !== undefined) rec.displayName = input.displayName;
    await this.repo.transaction(async (repo, trx) => {
      if (!(await repo.insertArbitrator(rec))) throw new RecoveryServiceError("arbitrator_exists", `arbitrator ${rec.id} is already registered`, { arbitrator: rec.id });
      await appendAudit(trx, {
        actor,
        action: "recovery.arbitrator.register",
        subject: rec.id,
        details: { roles: rec.roles, signingKeyId: sha256Hex(rec.signingPublicKey), encryptionKeyId: sha256Hex(rec.encryptionPublicKey) },
        at: rec.registeredAt,
      });
    });
    return RecoveryService.arbitratorView(rec);
  }

  async arbitrators(): Promise<ArbitratorView[]> {
    return (await this.repo.arbitrators()).map(RecoveryService.arbitratorView);
  }

  async arbitrator(id: string): Promise<ArbitratorView | undefined> {
    const a = await this.repo.arbitrator(id);
    return a && RecoveryService.arbitratorView(a);
  }

  // --- policies (S1) ----------------------------------------------------------------------------------------------

  /**
   * Step S1: sets the reproduction policy of a card, before its key is escrowed. `doc` is the policy as parsed
   * JSON or as JSON text; an invalid one is refused with a PolicyValidationError listing every problem with a
   * JSON pointer. Once the card's key is escrowed its policy is fixed (the shares were split under it).
   */
  async setPolicy(cardId: string, doc: unknown, actor: string): Promise<PolicyView> {
    checkActor(actor);
    checkId(cardId, "card id");
    let parsed = doc;
    if (typeof doc === "string") {
      try {
        parsed = JSON.parse(doc);
      } catch (e) {
        throw new PolicyValidationError([{ path: "", message: `not JSON (${(e as Error).message})` }]);
      }
    }
    const policy = validatePolicy(parsed, await this.registry());
    const digest = policyDigest(policy);
    const at = this.at();
    await this.repo.transaction(async (repo, trx) => {
      const escrow = await repo.escrowByCard(cardId);
      if (escrow) throw new RecoveryServiceError("escrow_exists", `card ${cardId}'s key is escrowed under policy ${escrow.policyDigest}; its policy can no longer change`, { cardId, escrowId: escrow.escrowId });
      await repo.putPolicy({ cardId, policy: canonicalJson(policy), policyDigest: digest, setBy: actor, setAt: at });
      await appendAudit(trx, {
        actor,
        action: "recovery.policy.set",
        subject: cardId,
        details: {
          policyDigest: digest,
          author: policy.author,
          indispensable: policy.indispensable,
          groups: policy.groups.map((g) => ({ name: g.name, members: g.members, threshold: g.threshold })),
          order: policy.order.map((o) => ({ before: o.before, after: o.after })),
        },
        at,
      });
    });
    return { cardId, policy, digest, setBy: actor, setAt: new Date(at) };
  }

  async policy(cardId: string): Promise<PolicyView | undefined> {
    const p = await this.repo.policy(cardId);
    return p && { cardId: p.cardId, policy: JSON.parse(p.policy) as ReproductionPolicy, digest: p.policyDigest, setBy: p.setBy, setAt: new Date(p.setAt) };
  }

  // --- escrow (S2-S3) ---------------------------------------------------------------------------------------------

  /** The hook the key generation device calls (KeyGenerationDeviceOptions.escrow), acting as `actor`. */
  escrowHook(actor: string): KeyEscrowHook {
    checkActor(actor);
    return {
      escrow: (input) => this.escrow(input, actor),
      abandon: (escrowId, reason) => this.abandonEscrow(escrowId, reason, actor),
    };
  }

  /**
   * Step S3, with the key pair `input.keyLabel` still in custody: wraps it inside custody under the escrow KEK,
   * splits the wrapped form under the card's policy, and records the escrow, the envelopes, the registered public
   * key and certificate, and the digest of the card's secret ID. Does not keep or wipe `input.deviceSecretId`
   * (the caller's).
   */
  async escrow(input: EscrowInput, actor: string): Promise<{ escrowId: string }> {
    checkActor(actor);
    if (!isObject(input)) throw new RecoveryServiceError("invalid_argument", "expected an EscrowInput");
    const { cardId } = input;
    checkId(cardId, "card id");
    if (!(input.deviceSecretId instanceof Uint8Array) || input.deviceSecretId.length < 8) throw new RecoveryServiceError("invalid_argument", "the card's secret ID is missing");
    if (!(input.spki instanceof Uint8Array) || !(input.certificate instanceof Uint8Array)) throw new RecoveryServiceError("invalid_argument", "spki and certificate must be bytes");
    const policyRec = await this.repo.policy(cardId);
    if (!policyRec) throw new RecoveryServiceError("no_policy", `card ${cardId} has no reproduction policy: set it first (step S1)`, { cardId });
    if (await this.repo.escrowByCard(cardId)) throw new RecoveryServiceError("escrow_exists", `card ${cardId} already has an escrow`, { cardId });
    if (!bytesEqual(await this.custody.publicKey(input.keyLabel), input.spki)) throw new RecoveryServiceError("invalid_argument", `the key pair ${input.keyLabel} in custody does not have the public key given`);
    const policy = JSON.parse(policyRec.policy) as ReproductionPolicy;
    const registry = await this.registry();
    const escrowId = newId();
    let e: Uint8Array | undefined;
    let split: Awaited<ReturnType<typeof splitSecret>>;
    try {
      e = await this.custody.wrapPrivateKey(input.keyLabel, { key: this.kekLabel });
      split = await splitSecret({ escrowId, cardId, secret: e, policy, registry });
    } finally {
      e?.fill(0);
    }
    const at = this.at();
    const digest = deviceSecretIdDigest(input.deviceSecretId);
    const row: EscrowRow = {
      escrowId,
      cardId,
      applicantId: input.applicantId,
      policy: policyRec.policy,
      policyDigest: split.escrow.policyDigest,
      record: JSON.stringify(split.escrow),
      wrappedUnder: this.kekLabel,
      alg: input.alg,
      slot: input.slot,
      publicKey: input.spki,
      publicKeySha256: sha256Hex(input.spki),
      certificate: input.certificate,
      serial: input.serial,
      createdBy: actor,
      createdAt: at,
    };
    await this.repo.transaction(async (repo, trx) => {
      const r = await repo.insertEscrow(
        row,
        split.envelopes.map((v) => ({ escrowId, shareId: v.header.shareId, arbitratorId: v.header.arbitrator, envelope: JSON.stringify(v) })),
        { cardId, secretIdDigest: digest, keySet: JSON.stringify(input.keySet), generation: 1, registeredAt: at },
      );
      if (r === "card-has-escrow") throw new RecoveryServiceError("escrow_exists", `card ${cardId} already has an escrow`, { cardId });
      if (r === "device-in-use") throw new RecoveryServiceError("device_in_use", `the inserted card is already the registered device of another card record`, { cardId });
      await appendAudit(trx, {
        actor,
        action: "recovery.escrow.create",
        subject: cardId,
        details: {
          escrowId,
          policyDigest: row.policyDigest,
          applicantId: input.applicantId,
          alg: input.alg,
          slot: input.slot,
          serial: input.serial,
          publicKeySha256: row.publicKeySha256,
          wrappedUnder: this.kekLabel,
          shares: split.escrow.shares.map((s) => ({ shareId: s.shareId, arbitrator: s.arbitrator })),
        },
        at,
      });
      await appendAudit(trx, { actor, action: "recovery.device.register", subject: cardId, details: { escrowId, generation: 1, keySet: keySetSummary(input.keySet) }, at });
    });
    return { escrowId };
  }

  /** The issue did not complete (the card write failed): the escrow, its envelopes and the device record go. */
  async abandonEscrow(escrowId: string, reason: string, actor: string): Promise<void> {
    checkActor(actor);
    await this.repo.transaction(async (repo, trx) => {
      const e = await repo.escrow(escrowId);
      if (!e) throw new RecoveryServiceError("not_found", `no escrow ${escrowId}`, { escrowId });
      if ((await repo.requests({ cardId: e.cardId, limit: 1 })).length) throw new RecoveryServiceError("request_unfinished", `escrow ${escrowId} has reproduction requests: it is in use`, { escrowId });
      await repo.deleteEscrow(escrowId);
      await appendAudit(trx, { actor, action: "recovery.escrow.abandon", subject: e.cardId, details: { escrowId, reason: String(reason).slice(0, MAX_REASON) }, at: this.at() });
    });
  }

  async escrowOf(cardId: string): Promise<EscrowView | undefined> {
    const e = await this.repo.escrowByCard(cardId);
    if (!e) return undefined;
    const record = JSON.parse(e.record) as EscrowRecord;
    const device = await this.repo.device(cardId);
    return {
      escrowId: e.escrowId,
      cardId: e.cardId,
      applicantId: e.applicantId,
      policy: JSON.parse(e.policy) as ReproductionPolicy,
      policyDigest: e.policyDigest,
      alg: e.alg as KeyPairAlg,
      slot: e.slot as PivSlot,
      publicKey: e.publicKey,
      publicKeySha256: e.publicKeySha256,
      certificate: e.certificate,
      serial: e.serial,
      shares: record.shares.map((s) => ({ shareId: s.shareId, arbitrator: s.arbitrator, slot: s.slot })),
      deviceGeneration: device?.generation ?? 0,
      createdAt: new Date(e.createdAt),
    };
  }

  /** An arbitrator's share envelopes (sealed to its key; safe to hand out), optionally of one card only. */
  async shareEnvelopes(arbitratorId: string, opts: { cardId?: string } = {}): Promise<ShareEnvelope[]> {
    return (await this.repo.envelopesFor(arbitratorId, opts)).map((v) => JSON.parse(v.envelope) as ShareEnvelope);
  }

  // --- requests (S5-S7) -------------------------------------------------------------------------------------------

  /**
   * Step S5-S6: files a reproduction request for a card — "key-lost" (its key is gone, the same card comes back)
   * or "card-destroyed" (a new card will receive the key and become the registered device). A card has at most
   * one unfinished request.
   */
  async fileRequest(input: { cardId: string; kind: RequestKind; requester: string; reason?: string }, actor: string): Promise<RequestView> {
    checkActor(actor);
    if (!isObject(input)) throw new RecoveryServiceError("invalid_argument", "expected { cardId, kind, requester, reason? }");
    checkId(input.cardId, "card id");
    if (!KINDS.includes(input.kind)) throw new RecoveryServiceError("invalid_argument", `kind must be one of ${KINDS.join(", ")}`);
    if (typeof input.requester !== "string" || input.requester.length === 0 || input.requester.length > 128) throw new RecoveryServiceError("invalid_argument", "requester must be 1-128 characters");
    if (input.reason !== undefined && (typeof input.reason !== "string" || input.reason.length > MAX_REASON)) throw new RecoveryServiceError("invalid_argument", `reason must be at most ${MAX_REASON} characters`);
    const escrow = await this.repo.escrowByCard(input.cardId);
    if (!escrow) throw new RecoveryServiceError("no_escrow", `card ${input.cardId} has no escrowed key`, { cardId: input.cardId });
    const now = this.now();
    const request: ServiceRequest = {
      format: "cardkms.recovery.request/1",
      requestId: newId(now.getTime()),
      escrowId: escrow.escrowId,
      cardId: input.cardId,
      policy: JSON.parse(escrow.policy) as ReproductionPolicy,
      requester: input.requester,
      filedAt: now.toISOString(),
      kind: input.kind,
    };
    if (input.reason !== undefined) request.reason = input.reason;
    validateRequest(request, await this.registry());
    const rec: RequestRecord = {
      requestId: request.requestId,
      cardId: request.cardId,
      escrowId: request.escrowId,
      kind: input.kind,
      request: JSON.stringify(request),
      requestDigest: requestDigest(request),
      status: "open",
      statusDetail: null,
      approverList: null,
      filedBy: actor,
      filedAt: now.getTime(),
      updatedAt: now.getTime(),
      reproducedBy: null,
      reproducedAt: null,
    };
    await this.repo.transaction(async (repo, trx) => {
      if (!(await repo.insertRequest(rec))) {
        const open = (await repo.requests({ cardId: rec.cardId, statuses: UNFINISHED_STATUSES, limit: 1 }))[0];
        throw new RecoveryServiceError("request_unfinished", `card ${rec.cardId} already has an unfinished request${open ? ` (${open.requestId}, ${open.status})` : ""}`, { cardId: rec.cardId, requestId: open?.requestId });
      }
      await appendAudit(trx, {
        actor,
        action: "recovery.request.file",
        subject: rec.requestId,
        details: { cardId: rec.cardId, escrowId: rec.escrowId, kind: rec.kind, requester: request.requester, requestDigest: rec.requestDigest },
        at: rec.filedAt,
      });
    });
    return this.view(rec, [], []);
  }

  private view(rec: RequestRecord, approvals: Approval[], released: string[]): RequestView {
    const request = JSON.parse(rec.request) as ServiceRequest;
    const v: RequestView = {
      requestId: rec.requestId,
      cardId: rec.cardId,
      escrowId: rec.escrowId,
      kind: rec.kind,
      status: rec.status,
      request,
      requestDigest: rec.requestDigest,
      chainHead: chainHead(request, approvals, rec.requestDigest),
      approvals,
      evaluation: evaluatePolicy(request.policy, approvals.map((a) => ({ arbitrator: a.arbitrator, decision: a.decision, reason: a.reason }))),
      releasedShares: released,
      filedBy: rec.filedBy,
      filedAt: new Date(rec.filedAt),
    };
    if (rec.statusDetail !== null) v.statusDetail = rec.statusDetail;
    if (rec.approverList !== null) v.approverList = JSON.parse(rec.approverList) as ApproverList;
    if (rec.reproducedBy !== null) v.reproducedBy = rec.reproducedBy;
    if (rec.reproducedAt !== null) v.reproducedAt = new Date(rec.reproducedAt);
    return v;
  }

  private async load(repo: SqlRecoveryRepository, requestId: string): Promise<{ rec: RequestRecord; approvals: Approval[]; released: string[] }> {
    if (typeof requestId !== "string") throw new RecoveryServiceError("invalid_argument", "request id must be a string");
    const rec = await repo.request(requestId);
    if (!rec) throw new RecoveryServiceError("not_found", `no request ${requestId}`, { requestId });
    const approvals = (await repo.approvals(requestId)).map((a) => JSON.parse(a.approval) as Approval);
    const released = (await repo.releases(requestId)).map((r) => r.shareId);
    return { rec, approvals, released };
  }

  /** A request, its chain and the policy's judgement of it. */
  async status(requestId: string): Promise<RequestView> {
    const { rec, approvals, released } = await this.load(this.repo, requestId);
    return this.view(rec, approvals, released);
  }

  /** Requests, newest first; by status and/or card. */
  async list(filter: { status?: RequestStatus | readonly RequestStatus[]; cardId?: string; limit?: number } = {}): Promise<RequestView[]> {
    const statuses = filter.status === undefined ? undefined : typeof filter.status === "string" ? [filter.status] : filter.status;
    const recs = await this.repo.requests({ statuses, cardId: filter.cardId, limit: filter.limit });
    const out: RequestView[] = [];
    for (const r of recs) {
      const { approvals, released } = await this.load(this.repo, r.requestId);
      out.push(this.view(r, approvals, released));
    }
    return out;
  }

  /**
   * What an arbitrator has to do: requests it is a party of and has not decided on ("decide", with its share
   * envelopes for the card and whether an order condition makes it wait), and satisfied requests whose approver
   * list it must sign as the policy's author ("sign-approver-list").
   */
  async pendingFor(arbitratorId: string): Promise<PendingItem[]> {
    if (!(await this.repo.arbitrator(arbitratorId))) throw new RecoveryServiceError("not_found", `no arbitrator ${arbitratorId}`, { arbitrator: arbitratorId });
    const out: PendingItem[] = [];
    for (const r of await this.repo.requests({ statuses: ["open", "satisfied"] })) {
      const { approvals, released } = await this.load(this.repo, r.requestId);
      const v = this.view(r, approvals, released);
      const policy = v.request.policy;
      if (r.status === "open" && v.evaluation.status === "pending" && policyParties(policy).includes(arbitratorId) && !approvals.some((a) => a.arbitrator === arbitratorId)) {
        const approvers = v.evaluation.approvers;
        const waitingFor = policy.order.filter((o) => o.after === arbitratorId && !approvers.includes(o.before)).map((o) => o.before);
        out.push({ action: "decide", request: v, mayApproveNow: waitingFor.length === 0, waitingFor, envelopes: await this.shareEnvelopes(arbitratorId, { cardId: r.cardId }) });
      } else if (r.status === "satisfied" && r.approverList === null && policy.author === arbitratorId) {
        out.push({ action: "sign-approver-list", request: v });
      }
    }
    return out;
  }

  /**
   * Step S6: an approval, with the arbitrator's shares released to the reproduction device (one release per
   * share the arbitrator holds in the card's escrow). The approval is checked against the chain (signature,
   * request, order, link — each refusal named), each release against the escrow (card, escrow, share, holder,
   * that it opens under the device key and matches its commitment). Accepted: appended and the policy re-judged.
   * Refused: nothing recorded, the refusal audited, a RecoveryError / RecoveryServiceError thrown.
   */
  async approve(requestId: string, approval: Approval, releases: readonly ShareRelease[], opts: { actor?: string } = {}): Promise<RequestView> {
    return this.decide(requestId, approval, releases, "approve", opts.actor);
  }

  /** Step S6/S9: a signed refusal with its reason. May end the request (indispensable party, threshold). */
  async refuse(requestId: string, approval: Approval, opts: { actor?: string } = {}): Promise<RequestView> {
    return this.decide(requestId, approval, [], "refuse", opts.actor);
  }

  private async decide(requestId: string, approval: Approval, releases: readonly ShareRelease[], expected: "approve" | "refuse", actorOpt: string | undefined): Promise<RequestView> {
    const claimed = isObject(approval) && typeof approval.arbitrator === "string" ? approval.arbitrator : "unknown";
    const actor = actorOpt ?? claimed;
    try {
      checkActor(actor);
      if (!isObject(approval)) throw new RecoveryServiceError("invalid_argument", "expected a signed approval");
      if (approval.decision !== expected) throw new RecoveryServiceError("invalid_argument", `this is ${expected === "approve" ? "an approval" : "a refusal"}; the signed decision says ${String(approval.decision)}`);
      if (expected === "refuse" && (typeof approval.reason !== "string" || approval.reason.trim() === "")) throw new RecoveryServiceError("invalid_argument", "a refusal states its reason");
      if (!Array.isArray(releases)) throw new RecoveryServiceError("release_invalid", "releases must be an array");
      const at = this.at();
      return await this.repo.transaction(async (repo, trx) => {
        if (!(await repo.lockRequest(requestId, at))) throw new RecoveryServiceError("not_found", `no request ${requestId}`, { requestId });
        const { rec, approvals } = await this.load(repo, requestId);
        if (rec.status === "reproduced" || rec.status === "reproducing" || rec.status === "withdrawn")
          throw new RecoveryServiceError("request_closed", `request ${requestId} is ${rec.status}`, { requestId, status: rec.status });
        if (rec.approverList !== null) throw new RecoveryServiceError("request_closed", `request ${requestId}: the list of approvers was drawn up, the chain is closed`, { requestId });
        const request = JSON.parse(rec.request) as ServiceRequest;
        const registry = await this.registry(repo);
        const chain = new ApprovalChain(request, registry);
        for (const a of approvals) chain.append(a);
        const evaluation = chain.append(approval);
        const escrowRow = await repo.escrow(rec.escrowId);
        if (!escrowRow) throw new RecoveryServiceError("not_found", `escrow ${rec.escrowId} of request ${requestId} is gone`, { requestId });
        const released = expected === "approve" ? await this.checkReleases(request, JSON.parse(escrowRow.record) as EscrowRecord, approval.arbitrator, releases) : [];
        if (expected === "refuse" && releases.length) throw new RecoveryServiceError("release_invalid", "a refusal releases no share");
        const seq = approvals.length;
        if (!(await repo.insertApproval({ requestId, seq, arbitratorId: approval.arbitrator, decision: approval.decision, approval: JSON.stringify(approval), approvalHash: approvalHash(approval), recordedAt: at })))
          throw new RecoveryError("broken_chain", `approval ${seq}: another decision took this place in the chain`, { requestId });
        if (!(await repo.insertReleases(released.map((r) => ({ requestId, shareId: r.header.shareId, arbitratorId: approval.arbitrator, release: JSON.stringify(r), recordedAt: at })))))
          throw new RecoveryError("share_duplicate", `a share of ${approval.arbitrator} was released for this request already`, { requestId });
        await appendAudit(trx, {
          actor,
          action: "recovery.decision.record",
          subject: requestId,
          details: {
            cardId: rec.cardId,
            seq,
            arbitrator: approval.arbitrator,
            decision: approval.decision,
            ...(approval.reason !== undefined ? { reason: approval.reason } : {}),
            sharesReleased: released.map((r) => r.header.shareId),
            approvalHash: approvalHash(approval),
            evaluation: evaluation.status,
          },
          at,
        });
        let next = rec;
        if (evaluation.status === "failed" && (rec.status === "open" || rec.status === "satisfied")) {
          await repo.moveRequest(requestId, ["open", "satisfied"], "ended", at, { statusDetail: evaluation.message });
          await appendAudit(trx, { actor: "recovery-service", action: "recovery.request.end", subject: requestId, details: { cardId: rec.cardId, condition: jsonDetails(evaluation.condition), message: evaluation.message }, at });
          next = { ...rec, status: "ended", statusDetail: evaluation.message };
        } else if (evaluation.status === "satisfied" && rec.status === "open") {
          await repo.moveRequest(requestId, ["open"], "satisfied", at);
          await appendAudit(trx, { actor: "recovery-service", action: "recovery.request.satisfied", subject: requestId, details: { cardId: rec.cardId, approvers: evaluation.approvers }, at });
          next = { ...rec, status: "satisfied" };
        }
        const all = [...approvals, approval];
        return this.view({ ...next, updatedAt: at }, all, [...(await repo.releases(requestId)).map((r) => r.shareId)]);
      });
    } catch (e) {
      if (isRecoveryRefusal(e)) await this.auditRefusal(actor, expected === "approve" ? "recovery.approval.refuse" : "recovery.refusal.refuse", requestId, e, { arbitrator: claimed });
      throw e;
    }
  }

  /**
   * The releases of an approver: exactly one per share it holds in the escrow, each for this request, card and
   * escrow, opening under the device key and matching the share's commitment. Values are wiped after the check.
   */
  private async checkReleases(request: ServiceRequest, escrow: EscrowRecord, arbitrator: string, releases: readonly ShareRelease[]): Promise<ShareRelease[]> {
    const held = new Map(escrow.shares.filter((d) => d.arbitrator === arbitrator).map((d) => [d.shareId, d]));
    const all = new Map(escrow.shares.map((d) => [d.shareId, d]));
    const salt = fromB64(escrow.salt, "salt");
    const seen = new Set<string>();
    const out: ShareRelease[] = [];
    for (const [i, r] of releases.entries()) {
      const h = isObject(r) && isObject(r.header) ? (r.header as Partial<ShareReleaseHeader>) : undefined;
      if (!h || h.format !== "cardkms.recovery.release/1" || typeof h.shareId !== "string" || typeof h.arbitrator !== "string" || !isObject(r.box))
        throw new RecoveryServiceError("release_invalid", `release ${i} is not a share release`, { index: i });
      const details = { shareId: h.shareId, arbitrator: h.arbitrator, requestId: request.requestId };
      if (h.requestId !== request.requestId) throw new RecoveryError("replayed_from_other_request", `share ${h.shareId} was released for request ${String(h.requestId)}, not ${request.requestId}`, details);
      if (h.cardId !== request.cardId) throw new RecoveryError("share_other_card", `share ${h.shareId} from ${h.arbitrator} belongs to card ${String(h.cardId)}, not ${request.cardId}`, details);
      if (h.escrowId !== escrow.escrowId) throw new RecoveryError("share_other_escrow", `share ${h.shareId} from ${h.arbitrator} belongs to escrow ${String(h.escrowId)}, not ${escrow.escrowId}`, details);
      if (h.arbitrator !== arbitrator) throw new RecoveryError("share_wrong_arbitrator", `share ${h.shareId} was released by ${h.arbitrator}, not by the approver ${arbitrator}`, details);
      const d = all.get(h.shareId);
      if (!d) throw new RecoveryError("share_unknown", `escrow ${escrow.escrowId} has no share ${h.shareId}`, details);
      if (!held.has(h.shareId)) throw new RecoveryError("share_wrong_arbitrator", `share ${h.shareId} is ${d.arbitrator}'s, not ${arbitrator}'s`, details);
      if (seen.has(h.shareId)) throw new RecoveryError("share_duplicate", `share ${h.shareId} is released twice`, details);
      seen.add(h.shareId);
      if (h.deviceKeyId !== sha256Hex(this.deviceSpki)) throw new RecoveryError("share_decrypt_failed", `share ${h.shareId} is sealed to another device key`, details);
      const value = await this.openRelease(r);
      if (!value) throw new RecoveryError("share_decrypt_failed", `share ${h.shareId} from ${arbitrator} does not open under the reproduction device's key with its header`, details);
      const ok = bytesEqual(Buffer.from(shareCommitment(escrow, salt, d.shareId, d.arbitrator, value), "hex"), Buffer.from(d.commitment, "hex"));
      value.fill(0);
      if (!ok) throw new RecoveryError("share_commitment_mismatch", `share ${h.shareId} from ${arbitrator} does not match its commitment: wrong or forged`, details);
      out.push({ header: { ...(h as ShareReleaseHeader) }, box: { ...(r.box as SealedBox) } });
    }
    const missing = [...held.keys()].filter((id) => !seen.has(id));
    if (missing.length) throw new RecoveryError("share_missing", `${arbitrator} approves without releasing share(s) ${missing.join(", ")}`, { arbitrator, missing, requestId: request.requestId });
    return out;
  }

  /** Opens a release with the device key's ECDH in custody; undefined when it does not open. */
  private async openRelease(r: ShareRelease): Promise<Uint8Array | undefined> {
    let z: Uint8Array | undefined;
    let key: Buffer | undefined;
    try {
      const epk = Buffer.from(r.box.epk, "base64");
      let peer: Uint8Array;
      try {
        peer = spkiOfPoint(epk);
      } catch {
        return undefined;
      }
      z = await this.custody.decipher(this.deviceLabel, peer);
      key = releaseKey(z, epk, uncompressedPoint(p256FromSpki(this.deviceSpki, "the device key")));
      const iv = Buffer.from(r.box.iv, "base64");
      const tag = Buffer.from(r.box.tag, "base64");
      if (iv.length !== 12 || tag.length !== 16) return undefined;
      const d = createDecipheriv("aes-256-gcm", key, iv);
      d.setAAD(releaseAad(r.header));
      d.setAuthTag(tag);
      const out = Buffer.concat([d.update(Buffer.from(r.box.ciphertext, "base64")), d.final()]);
      const plain = new Uint8Array(out);
      out.fill(0);
      return plain;
    } catch (e) {
      if (e instanceof CustodyError && e.code !== "WRONG_KEY" && e.code !== "INVALID_ARGUMENT") throw e;
      return undefined;
    } finally {
      z?.fill(0);
      key?.fill(0);
    }
  }

  /**
   * FIG. 9 condition 15: the policy's author signs the list of approvers of the satisfied chain (signApproverList,
   * on the author's side). Checked against the verified chain; needed before reproduction. The chain is closed
   * by it: no further decision is accepted.
   */
  async submitApproverList(requestId: string, list: ApproverList, opts: { actor?: string } = {}): Promise<RequestView> {
    const actor = opts.actor ?? (isObject(list) && typeof list.author === "string" ? list.author : "unknown");
    try {
      checkActor(actor);
      const at = this.at();
      return await this.repo.transaction(async (repo, trx) => {
        if (!(await repo.lockRequest(requestId, at))) throw new RecoveryServiceError("not_found", `no request ${requestId}`, { requestId });
        const { rec, approvals, released } = await this.load(repo, requestId);
        this.requireSatisfied(rec);
        if (rec.approverList !== null) throw new RecoveryServiceError("request_closed", `request ${requestId} has its list of approvers already`, { requestId });
        const request = JSON.parse(rec.request) as ServiceRequest;
        const registry = await this.registry(repo);
        const verdict = verifyChain(request, approvals, registry);
        if (!verdict.ok) throw verdict.error;
        verifyApproverList(list, request, verdict, registry);
        const text = JSON.stringify(list);
        if (!(await repo.moveRequest(requestId, ["satisfied"], "satisfied", at, { approverList: text }))) throw new RecoveryServiceError("request_closed", `request ${requestId} changed meanwhile`, { requestId });
        await appendAudit(trx, { actor, action: "recovery.approvers.list", subject: requestId, details: { cardId: rec.cardId, author: list.author, approvers: list.approvers, chainHead: list.chainHead }, at });
        return this.view({ ...rec, approverList: text, updatedAt: at }, approvals, released);
      });
    } catch (e) {
      if (isRecoveryRefusal(e)) await this.auditRefusal(actor, "recovery.approvers.refuse", requestId, e, {});
      throw e;
    }
  }

  private requireSatisfied(rec: RequestRecord): void {
    if (rec.status === "satisfied") return;
    if (rec.status === "open") throw new RecoveryError("policy_not_satisfied", `request ${rec.requestId} still needs approvals`, { requestId: rec.requestId });
    if (rec.status === "ended") throw new RecoveryError("request_ended", `request ${rec.requestId} ended: ${rec.statusDetail ?? ""}`, { requestId: rec.requestId });
    throw new RecoveryServiceError("request_closed", `request ${rec.requestId} is ${rec.status}: a request is used once`, { requestId: rec.requestId, status: rec.status });
  }

  /** An operator closes an unfinished request (not one being reproduced). */
  async withdraw(requestId: string, reason: string, actor: string): Promise<RequestView> {
    checkActor(actor);
    if (typeof reason !== "string" || !reason.trim() || reason.length > MAX_REASON) throw new RecoveryServiceError("invalid_argument", "a withdrawal states its reason");
    const at = this.at();
    return this.repo.transaction(async (repo, trx) => {
      const { rec, approvals, released } = await this.load(repo, requestId);
      if (!(await repo.moveRequest(requestId, ["open", "satisfied"], "withdrawn", at, { statusDetail: reason })))
        throw new RecoveryServiceError("request_closed", `request ${requestId} is ${rec.status}`, { requestId, status: rec.status });
      await appendAudit(trx, { actor, action: "recovery.request.withdraw", subject: requestId, details: { cardId: rec.cardId, reason }, at });
      return this.view({ ...rec, status: "withdrawn", statusDetail: reason, updatedAt: at }, approvals, released);
    });
  }

  // --- reproduction (S8-S9, FIG. 10) -------------------------------------------------------------------------------

  /**
   * Steps S8 and S11 (FIG. 10): reproduces the key of a satisfied request into `target` — the registered card
   * for "key-lost", a new card for "card-destroyed" (which then replaces the registered device) — and closes the
   * request. Checks in order: the request (satisfied, approver list signed, not used), the target card's secret
   * ID, the chain and shares (reproduce.ts), the unwrapped key against the registered public key inside custody;
   * then writes key and certificate through SCP03 and destroys the key in custody. Every refusal is audited and
   * leaves the request usable for another attempt (unless the card was written).
   */
  async reproduce(requestId: string, target: InsertedCard, actor: string): Promise<ReproductionResult> {
    checkActor(actor);
    let claimed = false;
    let written = false;
    let leftover: string | undefined;
    try {
      if (!target || typeof target.transmit !== "function" || !target.keySet) throw new RecoveryServiceError("invalid_argument", "the target card must give transmit and its key set reference");
      const at = this.at();
      // Claim the request: of concurrent reproductions one proceeds.
      await this.repo.transaction(async (repo) => {
        const rec = await repo.request(requestId);
        if (!rec) throw new RecoveryServiceError("not_found", `no request ${requestId}`, { requestId });
        this.requireSatisfied(rec);
        if (rec.approverList === null) throw new RecoveryServiceError("approver_list_missing", `request ${requestId}: the policy's author has not signed the list of approvers`, { requestId });
        if (!(await repo.moveRequest(requestId, ["satisfied"], "reproducing", at, { statusDetail: null }))) throw new RecoveryServiceError("request_closed", `request ${requestId} is being reproduced`, { requestId });
      });
      claimed = true;
      const { rec, approvals } = await this.load(this.repo, requestId);
      const request = JSON.parse(rec.request) as ServiceRequest;
      const escrowRow = await this.repo.escrow(rec.escrowId);
      const device = await this.repo.device(rec.cardId);
      if (!escrowRow || !device) throw new RecoveryServiceError("not_found", `card ${rec.cardId} has no escrow or no registered device`, { requestId });
      const alg = escrowRow.alg as KeyPairAlg;

      // FIG. 10 unit 24: the card presented against the registered device secret ID.
      let secretId: Uint8Array;
      try {
        secretId = await readCardSecretId(this.custody, target);
      } catch (e) {
        throw new RecoveryServiceError("device_unreadable", `the target card's secret ID could not be read through the secure channel (${(e as Error).message})`, { requestId });
      }
      const digest = deviceSecretIdDigest(secretId);
      secretId.fill(0);
      if (rec.kind === "key-lost" && digest !== device.secretIdDigest)
        throw new RecoveryServiceError("device_mismatch", `the card presented is not card ${rec.cardId}'s registered device: the same card cannot be reissued twice`, { requestId, cardId: rec.cardId });
      if (rec.kind === "card-destroyed") {
        if (digest === device.secretIdDigest)
          throw new RecoveryServiceError("device_mismatch", `the card presented is card ${rec.cardId}'s registered device itself, not a new card (a lost key on it is a "key-lost" request)`, { requestId, cardId: rec.cardId });
        const other = await this.repo.deviceByDigest(digest);
        if (other) throw new RecoveryServiceError("device_in_use", `the card presented is the registered device of another card record`, { requestId, cardId: rec.cardId });
      }

      // Unit 21: the shares of the approvers, opened inside the service with custody's ECDH; K and E rebuilt.
      const shares: ReleasedShare[] = [];
      let reproduced: Awaited<ReturnType<typeof reproduceFromShares>>;
      try {
        for (const r of await this.repo.releases(requestId)) {
          const rel = JSON.parse(r.release) as ShareRelease;
          const value = await this.openRelease(rel);
          if (!value) throw new RecoveryError("share_decrypt_failed", `share ${rel.header.shareId} from ${rel.header.arbitrator} no longer opens under the reproduction device's key`, { requestId, shareId: rel.header.shareId });
          shares.push({ escrowId: rel.header.escrowId, cardId: rel.header.cardId, shareId: rel.header.shareId, arbitrator: rel.header.arbitrator, value });
        }
        reproduced = await reproduceFromShares({
          escrow: JSON.parse(escrowRow.record) as EscrowRecord,
          request,
          approvals,
          approverList: JSON.parse(rec.approverList!) as ApproverList,
          registry: await this.registry(),
          shares,
        });
      } finally {
        for (const s of shares) s.value.fill(0);
      }

      // E into custody (only if it is the registered key pair), unit 22 inside custody, the card write, destruction.
      const e = reproduced.secret;
      const label = `recovery.reproduce.${randomUUID()}`;
      let created = false;
      try {
        try {
          await this.custody.unwrapPrivateKey(label, e, alg, { key: escrowRow.wrappedUnder }, { expectSpki: escrowRow.publicKey, extractable: "wrapped", ephemeral: true });
          created = true;
        } catch (err) {
          if (err instanceof CustodyError && err.code === "WRONG_KEY")
            throw new RecoveryError("key_check_failed", `the reproduced key of card ${rec.cardId} does not unwrap to its registered public key`, { requestId, cardId: rec.cardId });
          throw err;
        } finally {
          e.fill(0);
        }
        const failed = await keyCheckInCustody(this.custody, label, alg, escrowRow.publicKey);
        if (failed) throw new RecoveryError("key_check_failed", `the reproduced key of card ${rec.cardId} fails the ${failed} check against its registered public key`, { requestId, cardId: rec.cardId, failed });
        try {
          await writeKeyIntoCard(this.custody, target, { label, slot: escrowRow.slot as PivSlot, alg, certificate: escrowRow.certificate });
        } catch (err) {
          throw new RecoveryServiceError("card_write_failed", `writing the reproduced key into the card failed (${(err as Error).message})`, { requestId });
        }
        written = true;
      } finally {
        // The reproduced key disappears from the reproduction device, whatever happened; its absence is checked.
        if (created || (await this.custody.hasKey(label))) {
          await this.custody.deleteKey(label);
          if (await this.custody.hasKey(label)) leftover = label;
        }
      }
      if (leftover) throw new Error(`key ${leftover} is still in custody after deletion`);

      // Records: the device replaced (FIG. 11-12), the request closed, who approved in order.
      const done = this.at();
      const generation = rec.kind === "card-destroyed" ? device.generation + 1 : device.generation;
      await this.repo.transaction(async (repo, trx) => {
        if (rec.kind === "card-destroyed") {
          if (!(await repo.replaceDevice(rec.cardId, device.secretIdDigest, { secretIdDigest: digest, keySet: JSON.stringify(target.keySet), registeredAt: done })))
            throw new RecoveryServiceError("device_mismatch", `card ${rec.cardId}'s registered device changed during the reproduction`, { requestId });
          await appendAudit(trx, {
            actor,
            action: "recovery.device.replace",
            subject: rec.cardId,
            details: { requestId, generation, from: keySetSummary(JSON.parse(device.keySet) as KeySetRef), to: keySetSummary(target.keySet) },
            at: done,
          });
        }
        if (!(await repo.moveRequest(requestId, ["reproducing"], "reproduced", done, { reproducedBy: actor, reproducedAt: done })))
          throw new RecoveryServiceError("request_closed", `request ${requestId} changed during the reproduction`, { requestId });
        await appendAudit(trx, {
          actor,
          action: "recovery.reproduce",
          subject: requestId,
          details: {
            cardId: rec.cardId,
            escrowId: rec.escrowId,
            kind: rec.kind,
            approvers: reproduced.approvers,
            author: reproduced.author,
            chainHead: reproduced.chainHead,
            slot: escrowRow.slot,
            serial: escrowRow.serial,
            publicKeySha256: escrowRow.publicKeySha256,
            deviceGeneration: generation,
            target: keySetSummary(target.keySet),
          },
          at: done,
        });
      });
      return {
        requestId,
        cardId: rec.cardId,
        kind: rec.kind,
        approvers: reproduced.approvers,
        author: reproduced.author,
        chainHead: reproduced.chainHead,
        slot: escrowRow.slot as PivSlot,
        serial: escrowRow.serial,
        deviceReplaced: rec.kind === "card-destroyed",
        deviceGeneration: generation,
      };
    } catch (err) {
      const check = isRecoveryRefusal(err) ? err.check : "error";
      if (claimed && !written) {
        await this.repo.moveRequest(requestId, ["reproducing"], "satisfied", this.at(), { statusDetail: `last reproduction attempt refused: ${check}` }).catch(() => false);
      }
      await this.auditRefusal(actor, "recovery.reproduce.refuse", requestId, err, { written, ...(leftover ? { keyLeftInCustody: leftover } : {}) });
      throw err;
    }
  }

  private async auditRefusal(actor: string, action: string, subject: string, e: unknown, extra: { [key: string]: JsonValue }): Promise<void> {
    const refusal = isRecoveryRefusal(e);
    await appendAudit(this.db, {
      actor: actor || "unknown",
      action,
      subject: typeof subject === "string" && subject ? subject.slice(0, 128) : "unknown",
      details: {
        ...extra,
        check: refusal ? e.check : "error",
        // Refusals name ids and checks only (errors.ts); other errors are named by type, not message.
        message: refusal ? e.message : (e as Error)?.name ?? "Error",
        ...(refusal ? { details: jsonDetails(e.details) } : {}),
      },
      at: this.at(),
    });
  }
}

/** Convenience for an arbitrator's side: opens its envelopes of a request's card and releases them to the device. */
export function releaseSharesFor(request: Pick<ReproductionRequest, "requestId" | "escrowId" | "cardId">, envelopes: readonly ShareEnvelope[], open: (e: ShareEnvelope) => ReleasedShare, devicePublicKey: Uint8Array): ShareRelease[] {
  const out: ShareRelease[] = [];
  for (const env of envelopes) {
    if (env.header.escrowId !== request.escrowId || env.header.cardId !== request.cardId) continue;
    const s = open(env);
    try {
      out.push(releaseShare(request, s, devicePublicKey));
    } finally {
      s.value.fill(0);
    }
  }
  return out;
}
