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
//   S8-9 reproduce (FIG. 10): the target is the card record the request names and the arbitrators approved
//        (target.ts: the registered device's for "key-lost", the replacement card named at filing for
//        "card-destroyed"), issued to the escrowed key's user, active, nothing else in the slot; it is reached with
//        that card record's current key set; the card's secret ID is read under SCP03 R-ENCRYPTION and checked
//        against the registered one ("key-lost": the same card, or nothing; "card-destroyed": another card, which
//        becomes the registered device — FIG. 11-12); the released shares are opened inside the service with custody's
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
// Lifecycle (migration 0007_recovery_lifecycle):
//   - The reproduction lease. reproduce() claims a request (satisfied -> reproducing) with a random claim id and a
//     lease (`reproductionLeaseMs`, default 10 min: longer than the live relay's 5 min, see reproduce()), renews
//     the lease before every APDU it sends, and ends the claim itself (-> reproduced, or back to satisfied on a
//     refusal). A process that dies mid-reproduction leaves the request "reproducing" until its lease passes; then
//     a later reproduce() takes it over, or an operator resets it (resetReproduction) — both refused while the
//     lease is live, both audited. Every step of a claim is a conditional update on the claim id, so two
//     reproductions of one request never run at once, across processes on one database.
//   - Arbitrator keys rotate (rotateArbitratorKeys) by a KeyRotation document signed with the arbitrator's CURRENT
//     signing key — the operator's token relays it but cannot forge it — and, for a new signing key, also signed
//     with the new one (proof of possession). Every key version is kept: an approval or approver list is re-verified
//     with the version that verified it when it was recorded (KeyedRegistry), so chains recorded before a rotation
//     still verify. Share envelopes stay sealed to the encryption key they were sealed to: the arbitrator keeps its
//     old encryption private key until the escrow is re-split (not done here); escrowOf shows which shares are
//     sealed to a retired key.
//   - Arbitrators deregister (deregisterArbitrator): the record stays (ids are never reused, key history kept);
//     a deregistered arbitrator is refused as a new policy member, cannot decide, sign an approver list or rotate,
//     and no new escrow or request may depend on it. Its decisions recorded before stay valid. Requests in flight
//     that it makes impossible to satisfy (an indispensable party, a group that can no longer reach k, the author
//     of a list not yet signed) are ended, naming it; satisfied requests whose list is signed, and reproductions,
//     go on. Deregistering an arbitrator without which an escrowed key can no longer be reproduced at all is
//     refused (arbitrator_in_use) unless forced; arbitratorDependents lists the cards whose policies name it.
//   - Lists page (listPage, pendingPage, arbitratorsPage, arbitratorDependents): a stable order, a `limit` with a
//     maximum, an opaque `after` cursor; a page carries `next` when more follow.
//
// Never: a share value, K, E in clear, a private key or a device secret ID in the DB, the audit log, an error or a
// return value. Buffers holding them are wiped once used.

import { constants, createHash, createECDH, createPublicKey, diffieHellman, generateKeyPairSync, hkdfSync, publicEncrypt, randomBytes, randomUUID, sign, verify, createCipheriv, createDecipheriv, type KeyObject } from "node:crypto";
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
  type ArbitratorKeyRecord,
  type ArbitratorRecord,
  type ApprovalRecord,
  type EscrowRow,
  type RequestKind,
  type RequestRecord,
  type RequestStatus,
} from "../store/recovery-repository.ts";
import { type Approval, type ApproverList, type ReproductionRequest, ApprovalChain, approvalHash, chainHead, requestDigest, validateRequest, verifyApproverList, verifyChain } from "./approvals.ts";
import { CheckedRefusal, PolicyValidationError, RecoveryError } from "./errors.ts";
import type { SealedBox } from "./ecies.ts";
import { bytesEqual, canonicalJson, fromB64, labelledDigest } from "./encoding.ts";
import { type Decision, type Evaluation, type ReproductionPolicy, evaluatePolicy, policyDigest, policyParties, validatePolicy } from "./policy.ts";
import { ArbitratorRegistry, uncompressedPoint, type Arbitrator, type PublicKeyInput } from "./registry.ts";
import { reproduce as reproduceFromShares } from "./reproduce.ts";
import { boundTarget, checkSlotOnCard, checkTarget, registeredCardRecord, targetAtFiling, TargetRefusal, type ReproductionTarget, type TargetCard, type TargetCheck } from "./target.ts";
import { markDestroyedCard, requireTargetActive } from "./destroyed-card.ts";
import { type EscrowRecord, type ReleasedShare, type ShareEnvelope, type ShareSlot, shareCommitment, splitSecret } from "./shares.ts";

export type { RequestKind, RequestStatus } from "../store/recovery-repository.ts";
export type { ReproductionTarget, TargetCard, TargetCheck } from "./target.ts";

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
  | "card_write_failed"
  /** The arbitrator is deregistered: it cannot decide, sign, rotate, or be depended on by a new policy, escrow or request. */
  | "arbitrator_disabled"
  /** Deregistering it would leave escrowed keys that can no longer be reproduced (unless forced). */
  | "arbitrator_in_use"
  /** A key rotation that does not start from the arbitrator's current keys and version (replayed, raced or stale). */
  | "rotation_stale"
  /** A key rotation to a key the arbitrator used before. */
  | "key_reused"
  /** Another reproduction took the request over after this one's lease expired: this one stops. */
  | "lease_lost"
  /** The card that would receive the key is not the approved one, not the user's, unfit, or its slot is taken (target.ts). */
  | TargetCheck;

/** The service's refusals; `details` are non-secret (ids, names, counts) for the audit log and the caller. */
export class RecoveryServiceError extends CheckedRefusal<ServiceCheck> {
  override readonly name = "RecoveryServiceError";
}

/** Runs `fn`, turning a target's refusal (target.ts) into the service's refusal with the same check. */
async function targetChecked<T>(fn: () => Promise<T> | T): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof TargetRefusal) throw new RecoveryServiceError(e.check, e.message.replace(/^[a-z_]+: /, ""), e.details);
    throw e;
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
  /** The version of the current keys: 1 at registration, +1 for each rotation. */
  keyVersion: number;
  status: "active" | "deregistered";
  deregistered?: { at: Date; by: string; reason: string };
  /** Every key version, oldest first (public key ids only). */
  keys: ArbitratorKeyVersionView[];
}

export interface ArbitratorKeyVersionView {
  version: number;
  /** SHA-256 of the SPKI, hex. */
  signingKeyId: string;
  encryptionKeyId: string;
  validFrom: Date;
  /** When the next version replaced it; absent for the current version. */
  retiredAt?: Date;
}

/**
 * A key rotation (rotateArbitratorKeys): the arbitrator's new keys, bound to the keys and version they replace.
 * Signed (`signature`) with the arbitrator's CURRENT signing key over keyRotationBytes(body) — ECDSA P-256 /
 * SHA-256, IEEE P1363, base64 — so whoever relays it (an operator, with an operator token) cannot make one; and,
 * when the signing key changes, also with the NEW signing key (`newKeySignature`): proof that the arbitrator holds
 * it. Naming the next version and the current key ids makes a document valid once: it cannot be replayed after
 * the rotation it made, nor raced by another.
 */
export interface KeyRotationBody {
  format: "cardkms.recovery.key-rotation/1";
  arbitrator: string;
  /** The version this rotation creates: the current version + 1. */
  keyVersion: number;
  /** SHA-256 (hex) of the SPKIs of the current keys, the ones replaced. */
  previousSigningKeyId: string;
  previousEncryptionKeyId: string;
  /** The new keys, base64 DER SPKI (one of them may be the current key, unchanged). */
  signingPublicKey: string;
  encryptionPublicKey: string;
  /** ISO 8601, informative. */
  issuedAt: string;
}

export interface KeyRotation extends KeyRotationBody {
  signature: string;
  newKeySignature?: string;
}

/** What an arbitrator's deregistration did. */
export interface DeregistrationResult {
  arbitrator: ArbitratorView;
  /** Requests in flight it made impossible to satisfy: ended, naming it. */
  endedRequests: { requestId: string; cardId: string; message: string }[];
  /** Escrowed cards whose key can no longer be reproduced (forced deregistration), at most 100, and their count. */
  strandedCards: string[];
  strandedCount: number;
}

/** A card whose policy names an arbitrator (arbitratorDependents). */
export interface PolicyDependency {
  cardId: string;
  policyDigest: string;
  /** Set when the card's key is escrowed under this policy (then the policy is fixed). */
  escrowId?: string;
  /** How the policy names it: "author", "indispensable", "group:<name>". */
  as: string[];
  /** Whether the policy can still be met with this arbitrator — and every arbitrator already deregistered — out. */
  satisfiableWithout: boolean;
}

/** A page of a list: `next` (an opaque cursor for `after`) when more follow. */
export interface Page<T> {
  items: T[];
  next?: string;
}

/** Every item of a paged list: `page` fetches the page after a cursor (the first with none). */
export async function allPages<T>(page: (after?: string) => Promise<Page<T>>): Promise<T[]> {
  const out: T[] = [];
  for (let after: string | undefined; ; ) {
    const p = await page(after);
    out.push(...p.items);
    if (p.next === undefined) return out;
    after = p.next;
  }
}

export interface PageOptions {
  /** 1..the list's maximum; default DEFAULT_PAGE_SIZE. */
  limit?: number;
  /** The `next` of the previous page. */
  after?: string;
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
  /**
   * Who holds which share (no share value); the encryption key it is sealed to (recipientKeyId), whether that key
   * has been rotated out since (the holder keeps the old private key until a re-split), whether the holder is
   * deregistered.
   */
  shares: { shareId: string; arbitrator: string; slot: ShareSlot; recipientKeyId: string; sealedToRetiredKey: boolean; holderDeregistered: boolean }[];
  /** The registered device: 1 for the card first issued, +1 for each replacement. */
  deviceGeneration: number;
  createdAt: Date;
}

/**
 * The request arbitrators sign over: the recovery module's request, with the kind of reproduction asked for and the
 * card record that will receive the key (target.ts) — so an approval covers that card and no other. `target` is
 * absent only from requests filed before it was signed.
 */
export type ServiceRequest = ReproductionRequest & { kind: RequestKind; target?: ReproductionTarget };

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
  /** While "reproducing": who holds the request, since when, and until when its lease runs. */
  reproduction?: { claimedBy: string; claimedAt: Date; leaseUntil?: Date };
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
  /** The card record the key went into (the request's target). */
  targetCardId: string;
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
  /**
   * How long a reproduction holds its request without renewing its lease (it renews before every APDU). Default
   * DEFAULT_REPRODUCTION_LEASE_MS. Keep it above the live relay's session TTL (5 min by default: a reproduction whose
   * terminal stops answering fails by then), so that a lease expires only when its holder is gone.
   */
  reproductionLeaseMs?: number;
}

/** Default reproduction lease: 10 min, twice the live relay's default session TTL. */
export const DEFAULT_REPRODUCTION_LEASE_MS = 10 * 60_000;
export const DEFAULT_PAGE_SIZE = 100;
/** Maximum page of requests, arbitrators and policy dependencies. */
export const MAX_PAGE_SIZE = 1000;
/** Maximum page of pending items (each carries a request view and share envelopes). */
export const MAX_PENDING_PAGE_SIZE = 100;

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
// Key rotation documents (arbitrator side: signKeyRotation; service side: rotateArbitratorKeys)

/** The bytes a KeyRotation's signatures cover. */
export function keyRotationBytes(b: KeyRotationBody): Buffer {
  return Buffer.from(
    `cardkms/recovery/key-rotation/v1\n${canonicalJson({
      format: b.format,
      arbitrator: b.arbitrator,
      keyVersion: b.keyVersion,
      previousSigningKeyId: b.previousSigningKeyId,
      previousEncryptionKeyId: b.previousEncryptionKeyId,
      signingPublicKey: b.signingPublicKey,
      encryptionPublicKey: b.encryptionPublicKey,
      issuedAt: b.issuedAt,
    })}`,
  );
}

const spkiDer = (k: KeyObject): Uint8Array => new Uint8Array((k.type === "private" ? createPublicKey(k) : k).export({ format: "der", type: "spki" }));

/**
 * On the arbitrator's side: a rotation of its keys from `current` (its record as the service shows it: key version
 * and public keys) to a new signing key pair and/or a new encryption public key, signed with the current signing
 * private key (and with the new signing private key, when there is one). Private keys stay with the caller.
 */
export function signKeyRotation(
  current: { arbitrator: string; keyVersion: number; signingPublicKey: Uint8Array; encryptionPublicKey: Uint8Array },
  currentSigningKey: KeyObject,
  next: { signingKey?: KeyObject; encryptionPublicKey?: KeyObject | Uint8Array },
  issuedAt: Date = new Date(),
): KeyRotation {
  if (next.signingKey !== undefined && next.signingKey.type !== "private") throw new TypeError("the new signing key must be a private key (it signs the proof of possession)");
  const enc = next.encryptionPublicKey === undefined ? current.encryptionPublicKey : next.encryptionPublicKey instanceof Uint8Array ? next.encryptionPublicKey : spkiDer(next.encryptionPublicKey);
  const body: KeyRotationBody = {
    format: "cardkms.recovery.key-rotation/1",
    arbitrator: current.arbitrator,
    keyVersion: current.keyVersion + 1,
    previousSigningKeyId: sha256Hex(current.signingPublicKey),
    previousEncryptionKeyId: sha256Hex(current.encryptionPublicKey),
    signingPublicKey: Buffer.from(next.signingKey ? spkiDer(next.signingKey) : current.signingPublicKey).toString("base64"),
    encryptionPublicKey: Buffer.from(enc).toString("base64"),
    issuedAt: issuedAt.toISOString(),
  };
  const bytes = keyRotationBytes(body);
  const r: KeyRotation = { ...body, signature: sign("sha256", bytes, { key: currentSigningKey, dsaEncoding: "ieee-p1363" }).toString("base64") };
  if (next.signingKey) r.newKeySignature = sign("sha256", bytes, { key: next.signingKey, dsaEncoding: "ieee-p1363" }).toString("base64");
  return r;
}

function verifiesP1363(key: KeyObject, data: Buffer, signature: unknown): boolean {
  if (typeof signature !== "string") return false;
  try {
    const sig = Buffer.from(signature, "base64");
    return sig.length === 64 && verify("sha256", data, { key, dsaEncoding: "ieee-p1363" }, sig);
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Arbitrators with their key history, for verifying recorded signatures

/**
 * The registered arbitrators (deregistered ones included: their recorded decisions stay verifiable and the
 * policies naming them stay valid) with their current keys, plus their earlier key versions. A chain recorded
 * across a rotation is verified with the key version that verified each signature when it was recorded:
 * `pinDecision(id, v)` makes get(id) — what ApprovalChain looks an approval's signer up with — answer version v,
 * `pinList(id, v)` makes require(id) — what verifyApproverList looks the list's author up with — answer version v.
 * An arbitrator decides once per request, so one decision pin per arbitrator is exact; the author's list may have
 * been signed with another version than its own decision (a rotation in between), hence the separate list pin.
 * Unpinned, both answer the current keys. Used per verification, never shared.
 */
class KeyedRegistry extends ArbitratorRegistry {
  readonly #versions = new Map<string, Map<number, ArbitratorKeyRecord>>();
  readonly #records = new Map<string, ArbitratorRecord>();
  readonly #decisionPins = new Map<string, Arbitrator>();
  readonly #listPins = new Map<string, Arbitrator>();

  constructor(records: readonly ArbitratorRecord[], keys: readonly ArbitratorKeyRecord[]) {
    super();
    for (const a of records) {
      this.register({ id: a.id, role: a.roles.join(", ") || undefined, displayName: a.displayName, signingPublicKey: a.signingPublicKey, encryptionPublicKey: a.encryptionPublicKey });
      this.#records.set(a.id, a);
    }
    for (const k of keys) {
      let m = this.#versions.get(k.arbitratorId);
      if (!m) this.#versions.set(k.arbitratorId, (m = new Map()));
      m.set(k.version, k);
    }
  }

  record(id: string): ArbitratorRecord | undefined {
    return this.#records.get(id);
  }

  isDisabled(id: string): boolean {
    return this.#records.get(id)?.disabledAt !== undefined;
  }

  disabledIds(): string[] {
    return [...this.#records.values()].filter((a) => a.disabledAt !== undefined).map((a) => a.id);
  }

  currentVersion(id: string): number {
    return this.#records.get(id)?.keyVersion ?? 1;
  }

  #at(id: string, version: number): Arbitrator {
    const a = this.#records.get(id);
    const k = this.#versions.get(id)?.get(version);
    if (!a || !k) throw new Error(`arbitrator ${id} has no key version ${version}`);
    return new ArbitratorRegistry().register({ id, role: a.roles.join(", ") || undefined, displayName: a.displayName, signingPublicKey: k.signingPublicKey, encryptionPublicKey: k.encryptionPublicKey });
  }

  /** Pins each recorded decision's signer to the version that verified it (absent: 1, from before versions). */
  pinDecisions(rows: readonly ApprovalRecord[]): this {
    for (const r of rows) if (this.#records.has(r.arbitratorId)) this.pinDecision(r.arbitratorId, r.signingKeyVersion ?? 1);
    return this;
  }

  pinDecision(id: string, version: number): this {
    if (version === this.currentVersion(id)) this.#decisionPins.delete(id);
    else this.#decisionPins.set(id, this.#at(id, version));
    return this;
  }

  unpinDecision(id: string): this {
    this.#decisionPins.delete(id);
    return this;
  }

  pinList(id: string, version: number): this {
    if (version === this.currentVersion(id)) this.#listPins.delete(id);
    else this.#listPins.set(id, this.#at(id, version));
    return this;
  }

  override get(id: string): Arbitrator | undefined {
    return this.#decisionPins.get(id) ?? super.get(id);
  }

  override require(id: string): Arbitrator {
    return this.#listPins.get(id) ?? super.require(id);
  }
}

/**
 * Why a policy can no longer be met once the arbitrators `disabled` are out — those among them that have not
 * decided count as refusing; the author, while the approver list is unsigned, cannot sign it — or undefined when it
 * still can. `decisions` are those recorded (they stand, whoever made them).
 */
function unreachableWithout(policy: ReproductionPolicy, disabled: readonly string[], decisions: readonly Decision[] = [], listSigned = false): string | undefined {
  const out = new Set(disabled);
  if (!listSigned && out.has(policy.author)) return `the policy's author ${policy.author} is deregistered: nobody can sign the list of approvers`;
  const decided = new Set(decisions.map((d) => d.arbitrator));
  const refusals = policyParties(policy)
    .filter((p) => out.has(p) && !decided.has(p))
    .map((p): Decision => ({ arbitrator: p, decision: "refuse", reason: "deregistered" }));
  if (!refusals.length) return undefined;
  const e = evaluatePolicy(policy, [...decisions, ...refusals]);
  return e.status === "failed" ? `${e.message} (deregistered: ${refusals.map((r) => r.arbitrator).join(", ")})` : undefined;
}

/** How a policy names an arbitrator: "author", "indispensable", "group:<name>". */
function rolesIn(policy: ReproductionPolicy, id: string): string[] {
  const as: string[] = [];
  if (policy.author === id) as.push("author");
  if (policy.indispensable.includes(id)) as.push("indispensable");
  for (const g of policy.groups) if (g.members.includes(id)) as.push(`group:${g.name}`);
  return as;
}

// ---------------------------------------------------------------------------------------------------------------
// Cursors: opaque (base64url JSON of the list's name and the last item's position), checked when read back

const CURSOR = /^[A-Za-z0-9_-]{1,512}$/;

function encodeCursor(list: string, position: (string | number)[]): string {
  return Buffer.from(JSON.stringify([list, ...position])).toString("base64url");
}

function decodeCursor(cursor: unknown, list: string, shape: readonly ("string" | "number")[]): (string | number)[] {
  const bad = () => new RecoveryServiceError("invalid_argument", "after: not a cursor of this list (use the `next` of the previous page)");
  if (typeof cursor !== "string" || !CURSOR.test(cursor)) throw bad();
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(cursor, "base64url").toString("utf8"));
  } catch {
    throw bad();
  }
  if (!Array.isArray(v) || v.length !== shape.length + 1 || v[0] !== list) throw bad();
  const pos = v.slice(1) as unknown[];
  for (const [i, t] of shape.entries()) {
    const x = pos[i];
    if (t === "number" ? !Number.isSafeInteger(x) : typeof x !== "string" || x.length === 0 || x.length > 128) throw bad();
  }
  return pos as (string | number)[];
}

function pageLimit(limit: unknown, max: number): number {
  if (limit === undefined) return Math.min(DEFAULT_PAGE_SIZE, max);
  if (typeof limit !== "number" || !Number.isInteger(limit) || limit < 1 || limit > max) throw new RecoveryServiceError("invalid_argument", `limit must be 1..${max}`, { max });
  return limit;
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
    private readonly leaseMs: number,
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
    const leaseMs = opts.reproductionLeaseMs ?? DEFAULT_REPRODUCTION_LEASE_MS;
    if (!Number.isSafeInteger(leaseMs) || leaseMs < 1000) throw new TypeError("reproductionLeaseMs must be an integer of at least 1000 (ms)");
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
    // The reproduction device's key only opens share releases (ECDH): generated inside custody for that alone, never
    // extractable, so it never exists outside custody, in clear or wrapped.
    await ensure(dev, () => custody.generateKeyPair(dev, "P256", { extractable: "never", usage: ["decipher"] }));
    const ki = await custody.keyInfo(kek);
    if (ki?.kind !== "secret" || ki.bits !== 256 || !ki.usage?.includes("wrap") || ki.extractable !== "never")
      throw new Error(`custody key ${kek} is not a non-extractable AES-256 wrapping key`);
    const di = await custody.keyInfo(dev);
    if (di?.kind !== "keyPair" || di.type !== "P256" || di.extractable !== "never") throw new Error(`custody key ${dev} is not a non-extractable P-256 key pair`);
    const spki = await custody.publicKey(dev);
    return new RecoveryService(opts.db, custody, opts.clock ?? (() => new Date()), kek, dev, spki, leaseMs);
  }

  private at(): number {
    return this.now().getTime();
  }

  /** The reproduction device's public key, which arbitrators release their shares to (releaseShare). */
  deviceKey(): { spki: Uint8Array; keyId: string } {
    return { spki: this.deviceSpki.slice(), keyId: sha256Hex(this.deviceSpki) };
  }

  // --- arbitrators ------------------------------------------------------------------------------------------------

  /**
   * Every arbitrator with its current keys (deregistered ones included) and the key history of `historyOf` (every
   * arbitrator's without it). Pin versions (KeyedRegistry) before verifying recorded signatures.
   */
  private async registry(repo: SqlRecoveryRepository = this.repo, historyOf?: readonly string[]): Promise<KeyedRegistry> {
    return new KeyedRegistry(await repo.arbitrators(), await repo.arbitratorKeys(historyOf && [...new Set(historyOf)]));
  }

  /** The registry for re-verifying a request's recorded chain (and approver list): every signer pinned. */
  private async chainRegistry(repo: SqlRecoveryRepository, rec: RequestRecord, rows: readonly ApprovalRecord[]): Promise<KeyedRegistry> {
    const author = (JSON.parse(rec.request) as ServiceRequest).policy.author;
    const reg = (await this.registry(repo, [...rows.map((r) => r.arbitratorId), author])).pinDecisions(rows);
    if (rec.approverList !== null && reg.record(author)) reg.pinList(author, rec.approverListKeyVersion ?? 1);
    return reg;
  }

  private static arbitratorView(a: ArbitratorRecord, keys: readonly ArbitratorKeyRecord[]): ArbitratorView {
    const v: ArbitratorView = {
      id: a.id,
      roles: [...a.roles],
      signingPublicKey: a.signingPublicKey.slice(),
      encryptionPublicKey: a.encryptionPublicKey.slice(),
      encryptionKeyId: sha256Hex(a.encryptionPublicKey),
      registeredBy: a.registeredBy,
      registeredAt: new Date(a.registeredAt),
      keyVersion: a.keyVersion ?? 1,
      status: a.disabledAt === undefined ? "active" : "deregistered",
      keys: keys
        .filter((k) => k.arbitratorId === a.id)
        .map((k) => {
          const kv: ArbitratorKeyVersionView = { version: k.version, signingKeyId: sha256Hex(k.signingPublicKey), encryptionKeyId: sha256Hex(k.encryptionPublicKey), validFrom: new Date(k.validFrom) };
          if (k.retiredAt !== undefined) kv.retiredAt = new Date(k.retiredAt);
          return kv;
        }),
    };
    if (a.displayName !== undefined) v.displayName = a.displayName;
    if (a.disabledAt !== undefined) v.deregistered = { at: new Date(a.disabledAt), by: a.disabledBy ?? "", reason: a.disabledReason ?? "" };
    return v;
  }

  private async arbitratorViews(records: readonly ArbitratorRecord[], repo: SqlRecoveryRepository = this.repo): Promise<ArbitratorView[]> {
    const keys = await repo.arbitratorKeys(records.map((a) => a.id));
    return records.map((a) => RecoveryService.arbitratorView(a, keys));
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
      // ids are never reused: a deregistered arbitrator's record stays
      if (!(await repo.insertArbitrator(rec))) throw new RecoveryServiceError("arbitrator_exists", `arbitrator ${rec.id} is already registered`, { arbitrator: rec.id });
      await appendAudit(trx, {
        actor,
        action: "recovery.arbitrator.register",
        subject: rec.id,
        details: { roles: rec.roles, signingKeyId: sha256Hex(rec.signingPublicKey), encryptionKeyId: sha256Hex(rec.encryptionPublicKey) },
        at: rec.registeredAt,
      });
    });
    return RecoveryService.arbitratorView(rec, [{ arbitratorId: rec.id, version: 1, signingPublicKey: rec.signingPublicKey, encryptionPublicKey: rec.encryptionPublicKey, validFrom: rec.registeredAt, recordedBy: actor }]);
  }

  /** Every arbitrator, by id (all pages; the routes page with arbitratorsPage). */
  async arbitrators(): Promise<ArbitratorView[]> {
    return this.arbitratorViews(await this.repo.arbitrators());
  }

  /** A page of the arbitrators, by id (deregistered ones included, with their status). */
  async arbitratorsPage(page: PageOptions = {}): Promise<Page<ArbitratorView>> {
    const limit = pageLimit(page.limit, MAX_PAGE_SIZE);
    const after = page.after === undefined ? undefined : (decodeCursor(page.after, "arbitrators", ["string"])[0] as string);
    const recs = await this.repo.arbitrators({ after, limit: limit + 1 });
    const items = await this.arbitratorViews(recs.slice(0, limit));
    return recs.length > limit ? { items, next: encodeCursor("arbitrators", [items[items.length - 1].id]) } : { items };
  }

  async arbitrator(id: string): Promise<ArbitratorView | undefined> {
    const a = await this.repo.arbitrator(id);
    return a && (await this.arbitratorViews([a]))[0];
  }

  /**
   * Rotates an arbitrator's keys (a new signing and/or encryption public key) by a KeyRotation signed with its
   * current signing key (and with the new signing key, when it changes). Refused by name: a stale or replayed
   * document (rotation_stale), a signature that is not the arbitrator's (forged_signature), a key it used before
   * (key_reused), a deregistered arbitrator (arbitrator_disabled). The old version is kept (retired): approvals and
   * approver lists it verified still verify. Shares already sealed to the old encryption key stay so (escrowOf shows
   * them): the arbitrator opens them with its old encryption key until the escrow is re-split. Audited, refusals too.
   * An arbitrator that lost its current signing key cannot rotate: it is deregistered and registered anew.
   */
  async rotateArbitratorKeys(id: string, rotation: KeyRotation, actor: string): Promise<ArbitratorView> {
    try {
      checkActor(actor);
      checkId(id, "arbitrator id");
      const r = rotation as Partial<KeyRotation>;
      const HEX64 = /^[0-9a-f]{64}$/;
      if (
        !isObject(r) ||
        r.format !== "cardkms.recovery.key-rotation/1" ||
        typeof r.arbitrator !== "string" ||
        !Number.isSafeInteger(r.keyVersion) ||
        typeof r.previousSigningKeyId !== "string" ||
        !HEX64.test(r.previousSigningKeyId) ||
        typeof r.previousEncryptionKeyId !== "string" ||
        !HEX64.test(r.previousEncryptionKeyId) ||
        typeof r.signingPublicKey !== "string" ||
        typeof r.encryptionPublicKey !== "string" ||
        typeof r.issuedAt !== "string" ||
        Number.isNaN(Date.parse(r.issuedAt)) ||
        typeof r.signature !== "string"
      )
        throw new RecoveryServiceError("invalid_argument", "expected a key rotation document (format cardkms.recovery.key-rotation/1)", { arbitrator: id });
      if (r.arbitrator !== id) throw new RecoveryServiceError("invalid_argument", `the rotation is for arbitrator ${r.arbitrator}, not ${id}`, { arbitrator: id });
      const doc = r as KeyRotation;
      const rec = await this.repo.arbitrator(id);
      if (!rec) throw new RecoveryServiceError("not_found", `no arbitrator ${id}`, { arbitrator: id });
      if (rec.disabledAt !== undefined) throw new RecoveryServiceError("arbitrator_disabled", `arbitrator ${id} is deregistered: its keys no longer rotate`, { arbitrator: id });
      const from = rec.keyVersion ?? 1;
      if (doc.keyVersion !== from + 1 || doc.previousSigningKeyId !== sha256Hex(rec.signingPublicKey) || doc.previousEncryptionKeyId !== sha256Hex(rec.encryptionPublicKey))
        throw new RecoveryServiceError("rotation_stale", `the rotation does not start from ${id}'s current keys (version ${from}): replayed, raced or stale`, { arbitrator: id, keyVersion: from });
      const bytes = keyRotationBytes(doc);
      const current = p256FromSpki(rec.signingPublicKey, "the current signing key");
      if (!verifiesP1363(current, bytes, doc.signature)) throw new RecoveryError("forged_signature", `the rotation is not signed with ${id}'s current signing key`, { arbitrator: id });
      let checked: Arbitrator;
      try {
        checked = new ArbitratorRegistry().register({ id, signingPublicKey: fromB64(doc.signingPublicKey, "signingPublicKey"), encryptionPublicKey: fromB64(doc.encryptionPublicKey, "encryptionPublicKey") });
      } catch (e) {
        if (e instanceof RecoveryError || e instanceof TypeError || e instanceof RangeError) throw new RecoveryServiceError("invalid_argument", `the new keys must be P-256 public keys, base64 DER SubjectPublicKeyInfo`, { arbitrator: id });
        throw e;
      }
      const signing = spkiDer(checked.signingKey);
      const encryption = spkiDer(checked.encryptionKey);
      const signingChanged = !bytesEqual(signing, rec.signingPublicKey);
      const encryptionChanged = !bytesEqual(encryption, rec.encryptionPublicKey);
      if (!signingChanged && !encryptionChanged) throw new RecoveryServiceError("invalid_argument", "the rotation changes no key", { arbitrator: id });
      if (signingChanged && !verifiesP1363(checked.signingKey, bytes, doc.newKeySignature))
        throw new RecoveryError("forged_signature", `the rotation is not signed with the new signing key (proof of possession)`, { arbitrator: id });
      const history = await this.repo.arbitratorKeys([id]);
      if (signingChanged && history.some((k) => bytesEqual(k.signingPublicKey, signing))) throw new RecoveryServiceError("key_reused", `${id} used this signing key before: a retired key is never current again`, { arbitrator: id });
      if (encryptionChanged && history.some((k) => bytesEqual(k.encryptionPublicKey, encryption)))
        throw new RecoveryServiceError("key_reused", `${id} used this encryption key before: a retired key is never current again`, { arbitrator: id });
      const at = this.at();
      const stored: KeyRotation = { ...doc };
      await this.repo.transaction(async (repo, trx) => {
        if (!(await repo.rotateArbitratorKeys(id, from, { signingPublicKey: signing, encryptionPublicKey: encryption, at, rotation: JSON.stringify(stored), by: actor })))
          throw new RecoveryServiceError("rotation_stale", `arbitrator ${id}'s keys changed meanwhile`, { arbitrator: id });
        await appendAudit(trx, {
          actor,
          action: "recovery.arbitrator.rotate",
          subject: id,
          details: {
            fromVersion: from,
            toVersion: from + 1,
            signingChanged,
            encryptionChanged,
            previousSigningKeyId: doc.previousSigningKeyId,
            previousEncryptionKeyId: doc.previousEncryptionKeyId,
            signingKeyId: sha256Hex(signing),
            encryptionKeyId: sha256Hex(encryption),
          },
          at,
        });
      });
      return (await this.arbitrator(id))!;
    } catch (e) {
      if (isRecoveryRefusal(e)) await this.auditRefusal(actor, "recovery.arbitrator.rotate.refuse", id, e, {});
      throw e;
    }
  }

  /**
   * Cards whose policies name the arbitrator, by card id (a page): how they name it, whether the card's key is
   * escrowed under it, and whether the policy can still be met without it (and without every arbitrator already
   * deregistered).
   */
  async arbitratorDependents(id: string, page: PageOptions = {}): Promise<Page<PolicyDependency>> {
    checkId(id, "arbitrator id");
    const limit = pageLimit(page.limit, MAX_PAGE_SIZE);
    let after = page.after === undefined ? undefined : (decodeCursor(page.after, "dependents", ["string"])[0] as string);
    if (!(await this.repo.arbitrator(id))) throw new RecoveryServiceError("not_found", `no arbitrator ${id}`, { arbitrator: id });
    const disabled = [...new Set([...(await this.registry(this.repo, [])).disabledIds(), id])];
    const items: PolicyDependency[] = [];
    const BATCH = 200;
    for (;;) {
      const batch = await this.repo.policiesMentioning(id, { after, limit: BATCH });
      for (const p of batch) {
        const policy = JSON.parse(p.escrowPolicy ?? p.policy) as ReproductionPolicy;
        const as = rolesIn(policy, id);
        if (!as.length) continue; // the id occurred as text elsewhere (e.g. a group name)
        if (items.length === limit) return { items, next: encodeCursor("dependents", [items[items.length - 1].cardId]) };
        const d: PolicyDependency = { cardId: p.cardId, policyDigest: p.policyDigest, as, satisfiableWithout: unreachableWithout(policy, disabled) === undefined };
        if (p.escrowId !== undefined) d.escrowId = p.escrowId;
        items.push(d);
      }
      if (batch.length < BATCH) return { items };
      after = batch[batch.length - 1].cardId;
    }
  }

  /**
   * Deregisters an arbitrator (an operator's act, audited): its record and key history stay, its id is never
   * reused. From now on it is refused as a new policy member, cannot decide on any request, sign an approver list,
   * or rotate its keys, and no new escrow or request may depend on it. What it decided before stands. Requests in
   * flight it makes impossible to satisfy — it was an undecided indispensable party, its group can no longer reach
   * k without it, or it is the author of a list not yet signed — are ended, naming it (the card may file again once
   * its escrow no longer depends on it); the others go on, satisfied requests with a signed list and reproductions
   * included. Refused (arbitrator_in_use) when an escrowed key could no longer be reproduced at all without it,
   * unless `force` (e.g. its keys are compromised): such keys stay unreproducible until their escrow is re-split.
   */
  async deregisterArbitrator(id: string, opts: { reason: string; force?: boolean }, actor: string): Promise<DeregistrationResult> {
    const reason = isObject(opts) ? opts.reason : undefined;
    const force = isObject(opts) && opts.force === true;
    try {
      checkActor(actor);
      checkId(id, "arbitrator id");
      if (typeof reason !== "string" || !reason.trim() || reason.length > MAX_REASON) throw new RecoveryServiceError("invalid_argument", "a deregistration states its reason");
      const at = this.at();
      return await this.repo.transaction(async (repo, trx) => {
        const rec = await repo.arbitrator(id);
        if (!rec) throw new RecoveryServiceError("not_found", `no arbitrator ${id}`, { arbitrator: id });
        if (rec.disabledAt !== undefined) throw new RecoveryServiceError("arbitrator_disabled", `arbitrator ${id} is deregistered already`, { arbitrator: id });
        const disabled = [...new Set([...(await this.registry(repo, [])).disabledIds(), id])];
        // escrowed keys that no arbitrator set left could reproduce
        const stranded: string[] = [];
        for (let after: string | undefined; ; ) {
          const batch = await repo.policiesMentioning(id, { after, limit: 500 });
          for (const p of batch) {
            if (p.escrowId === undefined) continue;
            const policy = JSON.parse(p.escrowPolicy ?? p.policy) as ReproductionPolicy;
            if (rolesIn(policy, id).length && unreachableWithout(policy, disabled) !== undefined) stranded.push(p.cardId);
          }
          if (batch.length < 500) break;
          after = batch[batch.length - 1].cardId;
        }
        if (stranded.length && !force)
          throw new RecoveryServiceError(
            "arbitrator_in_use",
            `without ${id}, the escrowed keys of ${stranded.length} card(s) (${stranded.slice(0, 5).join(", ")}${stranded.length > 5 ? ", …" : ""}) could no longer be reproduced; deregister with force to do it anyway`,
            { arbitrator: id, stranded: stranded.length, cards: stranded.slice(0, 20) },
          );
        if (!(await repo.disableArbitrator(id, at, actor, reason))) throw new RecoveryServiceError("arbitrator_disabled", `arbitrator ${id} is deregistered already`, { arbitrator: id });
        // requests in flight it makes impossible to satisfy end, naming it
        const ended: DeregistrationResult["endedRequests"] = [];
        for (let after: { filedAt: number; requestId: string } | undefined; ; ) {
          const batch = await repo.requests({ statuses: ["open", "satisfied"], after, limit: 500 });
          for (const r of batch) {
            const policy = (JSON.parse(r.request) as ServiceRequest).policy;
            if (!rolesIn(policy, id).length) continue;
            const decisions = (await repo.approvals(r.requestId)).map((a): Decision => ({ arbitrator: a.arbitratorId, decision: a.decision }));
            const why = unreachableWithout(policy, disabled, decisions, r.approverList !== null);
            if (why === undefined) continue;
            const message = `arbitrator ${id} was deregistered: ${why}`;
            if (!(await repo.moveRequest(r.requestId, ["open", "satisfied"], "ended", at, { statusDetail: message }))) continue;
            await appendAudit(trx, { actor, action: "recovery.request.end", subject: r.requestId, details: { cardId: r.cardId, condition: { kind: "arbitrator_deregistered", party: id }, message }, at });
            ended.push({ requestId: r.requestId, cardId: r.cardId, message });
          }
          if (batch.length < 500) break;
          after = { filedAt: batch[batch.length - 1].filedAt, requestId: batch[batch.length - 1].requestId };
        }
        await appendAudit(trx, {
          actor,
          action: "recovery.arbitrator.deregister",
          subject: id,
          details: { reason, force, strandedCount: stranded.length, strandedCards: stranded.slice(0, 100), endedRequests: ended.map((e) => e.requestId) },
          at,
        });
        const view = (await this.arbitratorViews([{ ...rec, disabledAt: at, disabledBy: actor, disabledReason: reason }], repo))[0];
        return { arbitrator: view, endedRequests: ended, strandedCards: stranded.slice(0, 100), strandedCount: stranded.length };
      });
    } catch (e) {
      if (isRecoveryRefusal(e)) await this.auditRefusal(actor, "recovery.arbitrator.deregister.refuse", id, e, { force });
      throw e;
    }
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
    const registry = await this.registry(this.repo, []);
    const policy = validatePolicy(parsed, registry);
    // a deregistered arbitrator is refused as a new member, each place it is named pointed at
    const out = new Set(registry.disabledIds());
    if (out.size) {
      const issues = [
        ...(out.has(policy.author) ? [{ path: "/author", id: policy.author }] : []),
        ...policy.indispensable.flatMap((id, i) => (out.has(id) ? [{ path: `/indispensable/${i}`, id }] : [])),
        ...policy.groups.flatMap((g, gi) => g.members.flatMap((id, mi) => (out.has(id) ? [{ path: `/groups/${gi}/members/${mi}`, id }] : []))),
      ];
      if (issues.length) throw new PolicyValidationError(issues.map((x) => ({ path: x.path, message: `arbitrator ${x.id} is deregistered` })));
    }
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
    const registry = await this.registry(this.repo, []);
    const gone = [policy.author, ...policyParties(policy)].filter((p) => registry.isDisabled(p));
    if (gone.length)
      throw new RecoveryServiceError("arbitrator_disabled", `card ${cardId}'s policy names deregistered arbitrator(s) ${[...new Set(gone)].join(", ")}: set a policy without them first`, { cardId, arbitrators: [...new Set(gone)] });
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
    const sealedTo = new Map((await this.repo.envelopesOfEscrow(e.escrowId)).map((v) => [v.shareId, (JSON.parse(v.envelope) as ShareEnvelope).header.recipientKeyId]));
    const holders = new Map((await this.repo.arbitrators()).map((a) => [a.id, a]));
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
      shares: record.shares.map((s) => {
        const holder = holders.get(s.arbitrator);
        const recipientKeyId = sealedTo.get(s.shareId) ?? "";
        return {
          shareId: s.shareId,
          arbitrator: s.arbitrator,
          slot: s.slot,
          recipientKeyId,
          sealedToRetiredKey: holder !== undefined && recipientKeyId !== sha256Hex(holder.encryptionPublicKey),
          holderDeregistered: holder?.disabledAt !== undefined,
        };
      }),
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
   * one unfinished request. The request names the card record that will receive the key (`target`, what every
   * approval signs over, target.ts): for key-lost the registered device's, for card-destroyed `replacementCardId` —
   * required, and checked now: a card record of the escrowed key's user, active, not a registered device, nothing
   * in the slot. Refusals are audited (recovery.request.file.refuse).
   */
  async fileRequest(input: { cardId: string; kind: RequestKind; requester: string; reason?: string; replacementCardId?: string }, actor: string): Promise<RequestView> {
    checkActor(actor);
    const subject = isObject(input) && typeof input.cardId === "string" ? input.cardId : "unknown";
    try {
      return await this.file(input, actor);
    } catch (e) {
      if (isRecoveryRefusal(e))
        await this.auditRefusal(actor, "recovery.request.file.refuse", subject, e, {
          kind: isObject(input) && typeof input.kind === "string" ? input.kind.slice(0, 32) : null,
          replacementCardId: isObject(input) && typeof input.replacementCardId === "string" ? input.replacementCardId.slice(0, 128) : null,
        });
      throw e;
    }
  }

  private async file(input: { cardId: string; kind: RequestKind; requester: string; reason?: string; replacementCardId?: string }, actor: string): Promise<RequestView> {
    if (!isObject(input)) throw new RecoveryServiceError("invalid_argument", "expected { cardId, kind, requester, reason?, replacementCardId? }");
    checkId(input.cardId, "card id");
    if (!KINDS.includes(input.kind)) throw new RecoveryServiceError("invalid_argument", `kind must be one of ${KINDS.join(", ")}`);
    if (typeof input.requester !== "string" || input.requester.length === 0 || input.requester.length > 128) throw new RecoveryServiceError("invalid_argument", "requester must be 1-128 characters");
    if (input.reason !== undefined && (typeof input.reason !== "string" || input.reason.length > MAX_REASON)) throw new RecoveryServiceError("invalid_argument", `reason must be at most ${MAX_REASON} characters`);
    if (input.kind === "key-lost" && input.replacementCardId !== undefined)
      throw new RecoveryServiceError("invalid_argument", "a key-lost request reproduces the key into the registered card itself: it names no replacement card");
    if (input.kind === "card-destroyed") {
      if (input.replacementCardId === undefined)
        throw new RecoveryServiceError("invalid_argument", "a card-destroyed request names the replacement card (replacementCardId): the arbitrators approve the reproduction into that card only");
      checkId(input.replacementCardId, "replacement card id");
    }
    const escrow = await this.repo.escrowByCard(input.cardId);
    if (!escrow) throw new RecoveryServiceError("no_escrow", `card ${input.cardId} has no escrowed key`, { cardId: input.cardId });
    const now = this.now();
    const device = await this.repo.device(input.cardId);
    const target = await targetChecked(async () => {
      const t = targetAtFiling(input.kind, escrow, device, input.replacementCardId);
      // a replacement card is judged now (and again at the reproduction); the registered device at the reproduction
      if (input.kind === "card-destroyed") await checkTarget(this.repo, { kind: input.kind, target: t, escrow, device, at: now.getTime() });
      return t;
    });
    const request: ServiceRequest = {
      format: "cardkms.recovery.request/1",
      requestId: newId(now.getTime()),
      escrowId: escrow.escrowId,
      cardId: input.cardId,
      policy: JSON.parse(escrow.policy) as ReproductionPolicy,
      requester: input.requester,
      filedAt: now.toISOString(),
      kind: input.kind,
      target,
    };
    if (input.reason !== undefined) request.reason = input.reason;
    const registry = await this.registry(this.repo, []);
    validateRequest(request, registry);
    const blocked = unreachableWithout(request.policy, registry.disabledIds());
    if (blocked)
      throw new RecoveryServiceError("arbitrator_disabled", `card ${input.cardId}'s key cannot be reproduced under its escrow's policy: ${blocked}; its escrow must be re-split first`, {
        cardId: input.cardId,
        arbitrators: registry.disabledIds().filter((id) => rolesIn(request.policy, id).length),
      });
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
        details: { cardId: rec.cardId, escrowId: rec.escrowId, kind: rec.kind, requester: request.requester, requestDigest: rec.requestDigest, target: { cardId: target.cardId, userId: target.userId } },
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
    if (rec.status === "reproducing") {
      v.reproduction = { claimedBy: rec.reproductionClaimedBy ?? "unknown", claimedAt: new Date(rec.reproductionClaimedAt ?? rec.updatedAt) };
      if (rec.reproductionLeaseUntil !== undefined) v.reproduction.leaseUntil = new Date(rec.reproductionLeaseUntil);
    }
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

  /** Requests, newest first; by status and/or card. Without `limit`, all of them (every page); with it, the first page. */
  async list(filter: { status?: RequestStatus | readonly RequestStatus[]; cardId?: string; limit?: number } = {}): Promise<RequestView[]> {
    if (filter.limit !== undefined) return (await this.listPage(filter)).items;
    return allPages((after) => this.listPage({ ...filter, limit: MAX_PAGE_SIZE, after }));
  }

  /** A page of requests, newest first (filing time, then request id), by status and/or card. */
  async listPage(filter: { status?: RequestStatus | readonly RequestStatus[]; cardId?: string } & PageOptions = {}): Promise<Page<RequestView>> {
    const limit = pageLimit(filter.limit, MAX_PAGE_SIZE);
    const statuses = filter.status === undefined ? undefined : typeof filter.status === "string" ? [filter.status] : filter.status;
    const after = filter.after === undefined ? undefined : RecoveryService.requestPosition(filter.after, "requests");
    const recs = await this.repo.requests({ statuses, cardId: filter.cardId, after, limit: limit + 1 });
    const items: RequestView[] = [];
    for (const r of recs.slice(0, limit)) {
      const { approvals, released } = await this.load(this.repo, r.requestId);
      items.push(this.view(r, approvals, released));
    }
    const last = recs[limit - 1];
    return recs.length > limit ? { items, next: encodeCursor("requests", [last.filedAt, last.requestId]) } : { items };
  }

  private static requestPosition(cursor: string, list: string): { filedAt: number; requestId: string } {
    const [filedAt, requestId] = decodeCursor(cursor, list, ["number", "string"]) as [number, string];
    return { filedAt, requestId };
  }

  /**
   * What an arbitrator has to do (all of it, every page): requests it is a party of and has not decided on
   * ("decide", with its share envelopes for the card and whether an order condition makes it wait), and satisfied
   * requests whose approver list it must sign as the policy's author ("sign-approver-list"). Nothing for a
   * deregistered arbitrator.
   */
  async pendingFor(arbitratorId: string): Promise<PendingItem[]> {
    return allPages((after) => this.pendingPage(arbitratorId, { limit: MAX_PENDING_PAGE_SIZE, after }));
  }

  /** A page of pendingFor, in the order of the requests (newest first). */
  async pendingPage(arbitratorId: string, page: PageOptions = {}): Promise<Page<PendingItem>> {
    const limit = pageLimit(page.limit, MAX_PENDING_PAGE_SIZE);
    let after = page.after === undefined ? undefined : RecoveryService.requestPosition(page.after, "pending");
    const arb = typeof arbitratorId === "string" ? await this.repo.arbitrator(arbitratorId) : undefined;
    if (!arb) throw new RecoveryServiceError("not_found", `no arbitrator ${arbitratorId}`, { arbitrator: arbitratorId });
    if (arb.disabledAt !== undefined) return { items: [] };
    const items: PendingItem[] = [];
    let last: RequestRecord | undefined;
    const BATCH = 200;
    // The unfinished requests are scanned in order, those naming the arbitrator read in full; one item past the
    // page tells whether a next page exists.
    for (;;) {
      const batch = await this.repo.requests({ statuses: ["open", "satisfied"], after, limit: BATCH });
      for (const r of batch) {
        const item = await this.pendingItem(r, arbitratorId);
        if (!item) continue;
        if (items.length === limit) return { items, next: encodeCursor("pending", [last!.filedAt, last!.requestId]) };
        items.push(item);
        last = r;
      }
      if (batch.length < BATCH) return { items };
      after = { filedAt: batch[batch.length - 1].filedAt, requestId: batch[batch.length - 1].requestId };
    }
  }

  private async pendingItem(r: RequestRecord, arbitratorId: string): Promise<PendingItem | undefined> {
    const policy = (JSON.parse(r.request) as ServiceRequest).policy;
    const party = r.status === "open" && policyParties(policy).includes(arbitratorId);
    const author = r.status === "satisfied" && r.approverList === null && policy.author === arbitratorId;
    if (!party && !author) return undefined;
    const { approvals, released } = await this.load(this.repo, r.requestId);
    const v = this.view(r, approvals, released);
    if (party && v.evaluation.status === "pending" && !approvals.some((a) => a.arbitrator === arbitratorId)) {
      const approvers = v.evaluation.approvers;
      const waitingFor = policy.order.filter((o) => o.after === arbitratorId && !approvers.includes(o.before)).map((o) => o.before);
      return { action: "decide", request: v, mayApproveNow: waitingFor.length === 0, waitingFor, envelopes: await this.shareEnvelopes(arbitratorId, { cardId: r.cardId }) };
    }
    if (author) return { action: "sign-approver-list", request: v };
    return undefined;
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
        // the recorded decisions re-verified with the keys that verified them; the new one with the current keys
        const registry = await this.chainRegistry(repo, rec, await repo.approvals(requestId));
        const chain = new ApprovalChain(request, registry);
        for (const a of approvals) chain.append(a);
        registry.unpinDecision(approval.arbitrator);
        if (registry.isDisabled(approval.arbitrator))
          throw new RecoveryServiceError("arbitrator_disabled", `arbitrator ${approval.arbitrator} is deregistered: it no longer decides`, { requestId, arbitrator: approval.arbitrator });
        const evaluation = chain.append(approval);
        const escrowRow = await repo.escrow(rec.escrowId);
        if (!escrowRow) throw new RecoveryServiceError("not_found", `escrow ${rec.escrowId} of request ${requestId} is gone`, { requestId });
        const released = expected === "approve" ? await this.checkReleases(request, JSON.parse(escrowRow.record) as EscrowRecord, approval.arbitrator, releases) : [];
        if (expected === "refuse" && releases.length) throw new RecoveryServiceError("release_invalid", "a refusal releases no share");
        const seq = approvals.length;
        const signingKeyVersion = registry.currentVersion(approval.arbitrator);
        if (!(await repo.insertApproval({ requestId, seq, arbitratorId: approval.arbitrator, decision: approval.decision, approval: JSON.stringify(approval), approvalHash: approvalHash(approval), recordedAt: at, signingKeyVersion })))
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
        const registry = await this.chainRegistry(repo, rec, await repo.approvals(requestId));
        const verdict = verifyChain(request, approvals, registry);
        if (!verdict.ok) throw verdict.error;
        // the list itself: the author's current key (require() is not pinned for an unsigned list)
        if (isObject(list) && typeof list.author === "string" && registry.isDisabled(list.author))
          throw new RecoveryServiceError("arbitrator_disabled", `arbitrator ${list.author} is deregistered: it no longer signs lists of approvers`, { requestId, arbitrator: list.author });
        verifyApproverList(list, request, verdict, registry);
        const text = JSON.stringify(list);
        const approverListKeyVersion = registry.currentVersion(list.author);
        if (!(await repo.moveRequest(requestId, ["satisfied"], "satisfied", at, { approverList: text, approverListKeyVersion })))
          throw new RecoveryServiceError("request_closed", `request ${requestId} changed meanwhile`, { requestId });
        await appendAudit(trx, { actor, action: "recovery.approvers.list", subject: requestId, details: { cardId: rec.cardId, author: list.author, approvers: list.approvers, chainHead: list.chainHead }, at });
        return this.view({ ...rec, approverList: text, approverListKeyVersion, updatedAt: at }, approvals, released);
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
   * Steps S8 and S11 (FIG. 10): reproduces the key of a satisfied request into the card at the terminal
   * (`presented.transmit`) — the request's target (target.ts): the registered card for "key-lost", the replacement
   * card the arbitrators approved for "card-destroyed" (which then replaces the registered device) — and closes the
   * request. Checks in order: the request (satisfied, approver list signed, not used); the target card record (the
   * one the request names — `presented.cardId`, when given, must be it —, the escrowed key's user's, active, nothing
   * else in the slot), all before anything changes; the card, reached with the target card record's current key set
   * (`presented.keySet`, when given, must be it): its secret ID; the chain and shares (reproduce.ts), the unwrapped
   * key against the registered public key inside custody; the certificate in the card's slot (none, or that key's);
   * then writes key and certificate through SCP03 and destroys the key in custody. Every refusal is audited and leaves the request
   * usable for another attempt (unless the card was written).
   *
   * The lease. The request is claimed (satisfied -> reproducing) under a random claim id with a lease of
   * `reproductionLeaseMs`; the lease is renewed before every APDU sent to the card, and the claim is ended by its
   * holder only (-> reproduced, or back to satisfied on a refusal). A request left "reproducing" by a holder that
   * is gone (a crash, SIGKILL, power loss: nothing ran its cleanup) is taken over here once its lease has passed —
   * audited as recovery.reproduce.takeover — or reset by an operator (resetReproduction); while the lease is live
   * both are refused (request_closed, naming the lease). If the holder was only stalled, its next renewal finds the
   * claim gone and it stops (lease_lost) before sending anything more to its card; its cleanup cannot release the
   * new holder's claim. Why the default lease of 10 min is enough: the live relay (src/server/live-relay.ts) ends a
   * session 5 min after opening it and fails any APDU still unanswered, so a holder driven through it never goes
   * 5 min without renewing its lease or failing; a lease passes only when its holder is gone or stalled longer than
   * that. Lease times are compared on each process's clock: keep the servers' clocks within minutes of each other.
   *
   * Whether the card was written before a crash does not matter for safety. A request is single-use once it is
   * "reproduced" — the record written in the same transaction as the device replacement, after the card write —
   * and not before: a crash between the write and that record leaves a request that may be reproduced once more.
   * What such a second reproduction can do is what the first could: write the card holder's own key (checked
   * against the registered public key inside custody) into a card that passed the same checks — for "key-lost" the
   * registered card itself (writing it again changes nothing), for "card-destroyed" the card of the replacement card
   * record the arbitrators approved (neither the registered device nor any other record's device, reached through
   * that card record's SCP03 keys), under the same signed chain and approver list. Only the card of the reproduction that
   * records "reproduced" becomes the registered device (FIG. 11-12), and that record is conditional on holding the
   * claim. A terminal that withholds APDUs and forwards them later is outside what any server-side state can
   * prevent; a refused attempt whose APDUs reached the card is the same case and was already possible.
   */
  async reproduce(requestId: string, presented: TargetCard, actor: string): Promise<ReproductionResult> {
    checkActor(actor);
    let claim: string | undefined;
    let written = false;
    let leftover: string | undefined;
    try {
      if (!isObject(presented) || typeof presented.transmit !== "function") throw new RecoveryServiceError("invalid_argument", "the target card must give transmit");
      if (presented.cardId !== undefined) checkId(presented.cardId, "target card id");
      const at = this.at();
      const mine = { claim: randomUUID(), by: actor, at, leaseUntil: at + this.leaseMs };
      let target!: ReproductionTarget;
      let keySet!: KeySetRef;
      // Claim the request: of concurrent reproductions one proceeds; a request whose holder's lease passed is taken
      // over. The target is judged first, inside the same transaction: a refused target changes nothing.
      await this.repo.transaction(async (repo, trx) => {
        const rec = await repo.request(requestId);
        if (!rec) throw new RecoveryServiceError("not_found", `no request ${requestId}`, { requestId });
        const takeover = rec.status === "reproducing";
        if (takeover) this.requireLeaseOver(rec, at);
        else this.requireSatisfied(rec);
        if (rec.approverList === null) throw new RecoveryServiceError("approver_list_missing", `request ${requestId}: the policy's author has not signed the list of approvers`, { requestId });
        ({ target, keySet } = await this.targetOf(repo, rec, presented, at));
        if (takeover) {
          if (!(await repo.claimReproduction(requestId, mine, rec.reproductionClaim ?? null))) throw new RecoveryServiceError("request_closed", `request ${requestId} was taken over meanwhile`, { requestId, status: "reproducing" });
          await appendAudit(trx, { actor, action: "recovery.reproduce.takeover", subject: requestId, details: { cardId: rec.cardId, ...RecoveryService.previousClaim(rec), leaseUntil: mine.leaseUntil }, at });
          return;
        }
        if (!(await repo.claimReproduction(requestId, mine))) throw new RecoveryServiceError("request_closed", `request ${requestId} is being reproduced`, { requestId, status: "reproducing" });
      });
      claim = mine.claim;
      /** Renews the lease, or stops this reproduction when another one took the request over. */
      const hold = async (): Promise<void> => {
        if (!(await this.repo.renewReproduction(requestId, mine.claim, this.at() + this.leaseMs)))
          throw new RecoveryServiceError("lease_lost", `request ${requestId} was taken over by another reproduction after this one's lease passed: this one stops`, { requestId });
      };
      // the card is reached with the target card record's own keys, whatever the caller holds, while it is active
      const card: InsertedCard = {
        keySet,
        transmit: async (apdu) => {
          await hold();
          await targetChecked(() => requireTargetActive(this.db, target.cardId));
          return presented.transmit(apdu);
        },
      };
      /** A refusal that stops the reproduction as it is (not a card that could not be read or written). */
      const stops = (e: unknown) => e instanceof RecoveryServiceError && (e.check === "lease_lost" || e.check === "target_unfit");
      const rows = await this.repo.approvals(requestId);
      const { rec, approvals } = await this.load(this.repo, requestId);
      const request = JSON.parse(rec.request) as ServiceRequest;
      const escrowRow = await this.repo.escrow(rec.escrowId);
      const device = await this.repo.device(rec.cardId);
      if (!escrowRow || !device) throw new RecoveryServiceError("not_found", `card ${rec.cardId} has no escrow or no registered device`, { requestId });
      const alg = escrowRow.alg as KeyPairAlg;

      // FIG. 10 unit 24: the card presented against the registered device secret ID.
      let secretId: Uint8Array;
      try {
        secretId = await readCardSecretId(this.custody, card);
      } catch (e) {
        if (stops(e)) throw e;
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
      await hold();
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
          // each signature re-verified with the key version that verified it when recorded (key rotations)
          registry: await this.chainRegistry(this.repo, rec, rows),
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
        // nothing else in the slot, as the card itself says (under R-MAC: the terminal cannot hide a certificate)
        try {
          await targetChecked(() => checkSlotOnCard(this.custody, card, escrowRow.slot as PivSlot, escrowRow.publicKey, { requestId, target: target.cardId }));
        } catch (err) {
          if (isRecoveryRefusal(err)) throw err;
          throw new RecoveryServiceError("device_unreadable", `the target card's slot ${escrowRow.slot} could not be read through the secure channel (${(err as Error).message})`, { requestId });
        }
        try {
          await writeKeyIntoCard(this.custody, card, { label, slot: escrowRow.slot as PivSlot, alg, certificate: escrowRow.certificate });
        } catch (err) {
          if (stops(err)) throw err;
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
          if (!(await repo.replaceDevice(rec.cardId, device.secretIdDigest, { secretIdDigest: digest, keySet: JSON.stringify(keySet), registeredAt: done, cardRecordId: target.cardId })))
            throw new RecoveryServiceError("device_mismatch", `card ${rec.cardId}'s registered device changed during the reproduction`, { requestId });
          await appendAudit(trx, {
            actor,
            action: "recovery.device.replace",
            subject: rec.cardId,
            details: { requestId, generation, from: keySetSummary(JSON.parse(device.keySet) as KeySetRef), to: keySetSummary(keySet), fromCard: device.cardRecordId ?? null, toCard: target.cardId },
            at: done,
          });
          // the destroyed card stops acting in this same transaction (issue 15 §5): destroyed-card.ts
          await markDestroyedCard(trx, { cardRecordId: registeredCardRecord(escrowRow, device), requestId, replacementCardId: target.cardId, actor, at: done });
        }
        if (!(await repo.endReproduction(requestId, mine.claim, "reproduced", done, { reproducedBy: actor, reproducedAt: done })))
          throw new RecoveryServiceError("lease_lost", `request ${requestId} was taken over during the reproduction (this one's lease had passed); the card was written, the request stays with the other reproduction`, {
            requestId,
          });
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
            target: keySetSummary(keySet),
            targetCardId: target.cardId,
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
        targetCardId: target.cardId,
        deviceReplaced: rec.kind === "card-destroyed",
        deviceGeneration: generation,
      };
    } catch (err) {
      const check = isRecoveryRefusal(err) ? err.check : "error";
      // Back to satisfied — only while this reproduction still holds the claim. Once the card was written the
      // request stays "reproducing" (under this claim, until its lease passes: see above).
      if (claim !== undefined && !written) {
        await this.repo.endReproduction(requestId, claim, "satisfied", this.at(), { statusDetail: `last reproduction attempt refused: ${check}` }).catch(() => false);
      }
      const presentedCard = isObject(presented) && typeof presented.cardId === "string" ? presented.cardId.slice(0, 128) : null;
      await this.auditRefusal(actor, "recovery.reproduce.refuse", requestId, err, { written, presentedCard, ...(leftover ? { keyLeftInCustody: leftover } : {}) });
      throw err;
    }
  }

  /**
   * The card record a request's key goes into and the key set that reaches its card (target.ts), checked against
   * what the caller presents; read-only, refusals named.
   */
  private async targetOf(repo: SqlRecoveryRepository, rec: RequestRecord, presented: TargetCard, at: number): Promise<{ target: ReproductionTarget; keySet: KeySetRef }> {
    const escrow = await repo.escrow(rec.escrowId);
    if (!escrow) throw new RecoveryServiceError("not_found", `escrow ${rec.escrowId} of request ${rec.requestId} is gone`, { requestId: rec.requestId });
    const device = await repo.device(rec.cardId);
    const request = JSON.parse(rec.request) as ServiceRequest;
    return targetChecked(async () => {
      const target = boundTarget({ requestId: rec.requestId, kind: rec.kind, target: request.target }, escrow, device);
      const keySet = await checkTarget(repo, { kind: rec.kind, target, escrow, device, at, presented: { cardId: presented.cardId, keySet: presented.keySet } });
      return { target, keySet };
    });
  }

  /** Refuses (request_closed) while the request's reproduction lease is live. */
  private requireLeaseOver(rec: RequestRecord, at: number): void {
    const until = rec.reproductionLeaseUntil;
    if (until !== undefined && until > at)
      throw new RecoveryServiceError(
        "request_closed",
        `request ${rec.requestId} is being reproduced by ${rec.reproductionClaimedBy ?? "another reproduction"}; its lease runs until ${new Date(until).toISOString()}`,
        { requestId: rec.requestId, status: rec.status, claimedBy: rec.reproductionClaimedBy, leaseUntil: until },
      );
  }

  private static previousClaim(rec: RequestRecord): { [key: string]: JsonValue } {
    return { previousClaimedBy: rec.reproductionClaimedBy ?? null, previousClaimedAt: rec.reproductionClaimedAt ?? null, previousLeaseUntil: rec.reproductionLeaseUntil ?? null };
  }

  /**
   * An operator puts a request stuck in "reproducing" — its reproduction's process is gone — back to "satisfied",
   * to be reproduced again. Refused while the reproduction's lease is live (request_closed) and for a request that
   * is not being reproduced. Audited (recovery.reproduce.reset), refusals too. See reproduce() on why a card that
   * may have been written meanwhile does not make this unsafe.
   */
  async resetReproduction(requestId: string, reason: string, actor: string): Promise<RequestView> {
    try {
      checkActor(actor);
      if (typeof reason !== "string" || !reason.trim() || reason.length > MAX_REASON) throw new RecoveryServiceError("invalid_argument", "a reset states its reason");
      const at = this.at();
      return await this.repo.transaction(async (repo, trx) => {
        const { rec, approvals, released } = await this.load(repo, requestId);
        if (rec.status !== "reproducing") throw new RecoveryServiceError("request_closed", `request ${requestId} is ${rec.status}, not being reproduced`, { requestId, status: rec.status });
        this.requireLeaseOver(rec, at);
        const statusDetail = `reproduction reset: ${reason}`;
        if (!(await repo.endReproduction(requestId, rec.reproductionClaim ?? null, "satisfied", at, { statusDetail })))
          throw new RecoveryServiceError("request_closed", `request ${requestId} changed meanwhile`, { requestId });
        await appendAudit(trx, { actor, action: "recovery.reproduce.reset", subject: requestId, details: { cardId: rec.cardId, reason, ...RecoveryService.previousClaim(rec) }, at });
        const next: RequestRecord = { ...rec, status: "satisfied", statusDetail, updatedAt: at };
        delete next.reproductionClaim;
        delete next.reproductionClaimedBy;
        delete next.reproductionClaimedAt;
        delete next.reproductionLeaseUntil;
        return this.view(next, approvals, released);
      });
    } catch (e) {
      if (isRecoveryRefusal(e)) await this.auditRefusal(actor, "recovery.reproduce.reset.refuse", typeof requestId === "string" ? requestId : "unknown", e, {});
      throw e;
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
