// The key reproduction service (seed 001 embodiment 3, FIG. 7-12, steps S1-S12; claims 35-48): the domain
// service routes and CLI build on. It keeps its records through its storage port (ports.ts, records.ts; on the system
// DB: src/store/recovery-store.ts), its keys in custody, and appends every privileged act — and every refusal, by the
// name of the check that failed — to the hash-chained audit log, in the transaction of the records it changes.
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
//        reproduction device's key pair in custody (releaseShare, share-release.ts) — or refuses with a reason. A refusal by
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
// This file is the facade: RecoveryService.open sets up custody's two keys and a ServiceContext (its storage and
// the records in it, custody, the clock, the key labels, the lease: service-context.ts), and every method hands
// it to the module that owns the act:
//   arbitrators.ts        registration and views of arbitrators (claim 35 (a))
//   key-rotation.ts       arbitrator key rotation (KeyRotation documents, both sides)
//   deregistration.ts     deregistration, and what a policy can still do without an arbitrator
//   keyed-registry.ts     the arbitrators with their key history, for re-verifying recorded signatures
//   card-policy.ts        S1 the policy of a card
//   escrow.ts             S2-3 the escrow and the registered device (FIG. 10 units 23-24)
//   requests.ts           S5 filing, views, lists, pending work, withdrawal
//   decisions.ts          S6-7 approvals, refusals, the approver list
//   share-release.ts      the release of shares to the reproduction device (both sides)
//   reproduction.ts       S8-11 the reproduction into the card, and its lease
//   custody-key-check.ts  unit 22 inside custody
//   service-errors.ts     the service's refusals (ServiceCheck); paging.ts: paged lists and cursors
//   ports.ts, records.ts  its storage port and records (implemented in src/store/)
//
// Never: a share value, K, E in clear, a private key or a device secret ID in the DB, the audit log, an error or a
// return value. Buffers holding them are wiped once used.

import { CustodyError, type KeyCustody } from "../custody/custody.ts";
import type { EscrowInput, KeyEscrowHook } from "../keygen/escrow.ts";
import type { RecoveryStore } from "./ports.ts";
import type { RequestKind, RequestStatus } from "./records.ts";
import type { Approval, ApproverList } from "./approvals.ts";
import * as arbitrators from "./arbitrators.ts";
import type { ArbitratorInput, ArbitratorView } from "./arbitrators.ts";
import * as policies from "./card-policy.ts";
import type { PolicyView } from "./card-policy.ts";
import * as decisions from "./decisions.ts";
import * as deregistration from "./deregistration.ts";
import type { DeregistrationResult, PolicyDependency } from "./deregistration.ts";
import * as escrow from "./escrow.ts";
import type { EscrowView } from "./escrow.ts";
import * as keyRotation from "./key-rotation.ts";
import type { KeyRotation } from "./key-rotation.ts";
import type { Page, PageOptions } from "./paging.ts";
import * as reproduction from "./reproduction.ts";
import type { ReproductionResult } from "./reproduction.ts";
import * as requests from "./requests.ts";
import type { PendingItem, RequestView } from "./requests.ts";
import type { ServiceContext } from "./service-context.ts";
import * as release from "./share-release.ts";
import type { ShareRelease } from "./share-release.ts";
import type { ShareEnvelope } from "./shares.ts";
import type { TargetCard } from "./target.ts";

// The public names of the service, from the modules that own them (importers use this file only).
export type { RequestKind, RequestStatus } from "./records.ts";
export type { AuditRecord, RecoveryRepository, RecoveryStore, RecoveryTx } from "./ports.ts";
export type { ReproductionTarget, TargetCard, TargetCheck } from "./target.ts";
export { isRecoveryRefusal, RecoveryServiceError, type RecoveryRefusal, type ServiceCheck } from "./service-errors.ts";
export { allPages, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, MAX_PENDING_PAGE_SIZE, type Page, type PageOptions } from "./paging.ts";
export type { ArbitratorInput, ArbitratorKeyVersionView, ArbitratorView } from "./arbitrators.ts";
export { keyRotationBytes, signKeyRotation, type KeyRotation, type KeyRotationBody } from "./key-rotation.ts";
export type { DeregistrationResult, PolicyDependency } from "./deregistration.ts";
export type { PolicyView } from "./card-policy.ts";
export { deviceSecretIdDigest, type EscrowView } from "./escrow.ts";
export type { PendingItem, RequestView, ServiceRequest } from "./requests.ts";
export { releaseShare, releaseSharesFor, type ShareRelease, type ShareReleaseHeader } from "./share-release.ts";
export type { ReproductionResult } from "./reproduction.ts";
export { keyCheckInCustody } from "./custody-key-check.ts";

/** The AES-256 key escrowed private keys are wrapped under (usage wrap, never extractable). */
export const ESCROW_KEK_LABEL = "recovery.escrow-kek";
/** The reproduction device's P-256 key pair shares are released to (never extractable). */
export const REPRODUCTION_DEVICE_KEY_LABEL = "recovery.reproduction-device";

export interface RecoveryServiceOptions {
  /** The service's storage (ports.ts): on the system DB, src/store/recovery-store.ts recoveryStoreOf(db). */
  store: RecoveryStore;
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

export class RecoveryService {
  private readonly ctx: ServiceContext;

  private constructor(store: RecoveryStore, custody: KeyCustody, now: () => Date, kekLabel: string, deviceLabel: string, deviceSpki: Uint8Array, leaseMs: number) {
    this.ctx = { store, repo: store.repo, custody, now, at: () => now().getTime(), kekLabel, deviceLabel, deviceSpki, leaseMs };
  }

  /**
   * Opens the service on its storage (on a migrated system DB: src/store/recovery-store.ts recoveryStoreOf). Creates
   * in custody, once, the escrow key-encryption key (AES-256, wrap only, never extractable) and the reproduction
   * device's key pair (P-256, never extractable), and checks that existing ones have those properties.
   */
  static async open(opts: RecoveryServiceOptions): Promise<RecoveryService> {
    if (!opts?.store || !opts.custody) throw new TypeError("the recovery service needs its store (the system DB) and key custody");
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
    if (ki?.kind !== "secret" || ki.bits !== 256 || !ki.usage?.includes("wrap") || ki.extractable !== "never") throw new Error(`custody key ${kek} is not a non-extractable AES-256 wrapping key`);
    const di = await custody.keyInfo(dev);
    if (di?.kind !== "keyPair" || di.type !== "P256" || di.extractable !== "never") throw new Error(`custody key ${dev} is not a non-extractable P-256 key pair`);
    const spki = await custody.publicKey(dev);
    return new RecoveryService(opts.store, custody, opts.clock ?? (() => new Date()), kek, dev, spki, leaseMs);
  }

  /** The reproduction device's public key, which arbitrators release their shares to (releaseShare). */
  deviceKey(): { spki: Uint8Array; keyId: string } {
    return release.deviceKey(this.ctx);
  }

  // --- arbitrators (arbitrators.ts, key-rotation.ts, deregistration.ts) -------------------------------------------

  /** Claim 35 (a): registers an arbitrator with its two P-256 public keys. Ids are never reused. */
  async registerArbitrator(input: ArbitratorInput, actor: string): Promise<ArbitratorView> {
    return arbitrators.registerArbitrator(this.ctx, input, actor);
  }

  /** Every arbitrator, by id (all pages; the routes page with arbitratorsPage). */
  async arbitrators(): Promise<ArbitratorView[]> {
    return arbitrators.arbitrators(this.ctx);
  }

  /** A page of the arbitrators, by id (deregistered ones included, with their status). */
  async arbitratorsPage(page: PageOptions = {}): Promise<Page<ArbitratorView>> {
    return arbitrators.arbitratorsPage(this.ctx, page);
  }

  /** One arbitrator, deregistered or not, with its key history; undefined when there is none. */
  async arbitrator(id: string): Promise<ArbitratorView | undefined> {
    return arbitrators.arbitrator(this.ctx, id);
  }

  /**
   * Whether a token bound to arbitrator `id` may act now (only while it is registered and active, read on every
   * call); a refusal is audited (check arbitrator_disabled, the method and route attempted) and its reason answered.
   */
  async arbitratorAccessRefusal(id: string, attempt: { method: string; route: string }): Promise<string | undefined> {
    return arbitrators.arbitratorAccessRefusal(this.ctx, id, attempt);
  }

  /** Rotates an arbitrator's keys by a KeyRotation signed with its current signing key; refusals named and audited. */
  async rotateArbitratorKeys(id: string, rotation: KeyRotation, actor: string): Promise<ArbitratorView> {
    return keyRotation.rotateArbitratorKeys(this.ctx, id, rotation, actor);
  }

  /** Cards whose policies name the arbitrator (a page), and whether each can still be met without it. */
  async arbitratorDependents(id: string, page: PageOptions = {}): Promise<Page<PolicyDependency>> {
    return deregistration.arbitratorDependents(this.ctx, id, page);
  }

  /** Deregisters an arbitrator (audited), ending the requests in flight it makes impossible to satisfy. */
  async deregisterArbitrator(id: string, opts: { reason: string; force?: boolean }, actor: string): Promise<DeregistrationResult> {
    return deregistration.deregisterArbitrator(this.ctx, id, opts, actor);
  }

  // --- policies (S1, card-policy.ts) -------------------------------------------------------------------------------

  /** Step S1: sets the reproduction policy of a card, before its key is escrowed. */
  async setPolicy(cardId: string, doc: unknown, actor: string): Promise<PolicyView> {
    return policies.setPolicy(this.ctx, cardId, doc, actor);
  }

  /** The card's reproduction policy; undefined when it has none. */
  async policy(cardId: string): Promise<PolicyView | undefined> {
    return policies.policy(this.ctx, cardId);
  }

  // --- escrow (S2-S3, escrow.ts) -----------------------------------------------------------------------------------

  /** The hook the key generation device calls (KeyGenerationDeviceOptions.escrow), acting as `actor`. */
  escrowHook(actor: string): KeyEscrowHook {
    return escrow.escrowHook(this.ctx, actor);
  }

  /** Step S3, with the key pair `input.keyLabel` still in custody: wraps it under the escrow KEK, splits and records it. */
  async escrow(input: EscrowInput, actor: string): Promise<{ escrowId: string }> {
    return escrow.escrow(this.ctx, input, actor);
  }

  /** The issue did not complete (the card write failed): the escrow, its envelopes and the device record go. */
  async abandonEscrow(escrowId: string, reason: string, actor: string): Promise<void> {
    return escrow.abandonEscrow(this.ctx, escrowId, reason, actor);
  }

  /** The card's escrow: who holds which share, sealed to which key (no share value); undefined when none. */
  async escrowOf(cardId: string): Promise<EscrowView | undefined> {
    return escrow.escrowOf(this.ctx, cardId);
  }

  /** An arbitrator's share envelopes (sealed to its key; safe to hand out), optionally of one card only. */
  async shareEnvelopes(arbitratorId: string, opts: { cardId?: string } = {}): Promise<ShareEnvelope[]> {
    return escrow.shareEnvelopes(this.ctx, arbitratorId, opts);
  }

  // --- requests (S5-S7, requests.ts and decisions.ts) --------------------------------------------------------------

  /** Step S5-S6: files a "key-lost" or "card-destroyed" reproduction request for a card; refusals audited. */
  async fileRequest(input: { cardId: string; kind: RequestKind; requester: string; reason?: string; replacementCardId?: string }, actor: string): Promise<RequestView> {
    return requests.fileRequest(this.ctx, input, actor);
  }

  /** A request, its chain and the policy's judgement of it. */
  async status(requestId: string): Promise<RequestView> {
    return requests.status(this.ctx, requestId);
  }

  /** Requests, newest first; by status and/or card. Without `limit`, all of them (every page); with it, the first page. */
  async list(filter: { status?: RequestStatus | readonly RequestStatus[]; cardId?: string; limit?: number } = {}): Promise<RequestView[]> {
    return requests.list(this.ctx, filter);
  }

  /** A page of requests, newest first (filing time, then request id), by status and/or card. */
  async listPage(filter: { status?: RequestStatus | readonly RequestStatus[]; cardId?: string } & PageOptions = {}): Promise<Page<RequestView>> {
    return requests.listPage(this.ctx, filter);
  }

  /** What an arbitrator has to do (all of it, every page): decide, or sign an approver list. */
  async pendingFor(arbitratorId: string): Promise<PendingItem[]> {
    return requests.pendingFor(this.ctx, arbitratorId);
  }

  /** A page of pendingFor, in the order of the requests (newest first). */
  async pendingPage(arbitratorId: string, page: PageOptions = {}): Promise<Page<PendingItem>> {
    return requests.pendingPage(this.ctx, arbitratorId, page);
  }

  /** Step S6: an approval, with the arbitrator's shares released to the reproduction device; refusals audited. */
  async approve(requestId: string, approval: Approval, releases: readonly ShareRelease[], opts: { actor?: string } = {}): Promise<RequestView> {
    return decisions.approve(this.ctx, requestId, approval, releases, opts);
  }

  /** Step S6/S9: a signed refusal with its reason. May end the request (indispensable party, threshold). */
  async refuse(requestId: string, approval: Approval, opts: { actor?: string } = {}): Promise<RequestView> {
    return decisions.refuse(this.ctx, requestId, approval, opts);
  }

  /** FIG. 9 condition 15: the policy's author signs the list of approvers of the satisfied chain, closing it. */
  async submitApproverList(requestId: string, list: ApproverList, opts: { actor?: string } = {}): Promise<RequestView> {
    return decisions.submitApproverList(this.ctx, requestId, list, opts);
  }

  /** An operator closes an unfinished request (not one being reproduced). */
  async withdraw(requestId: string, reason: string, actor: string): Promise<RequestView> {
    return requests.withdraw(this.ctx, requestId, reason, actor);
  }

  // --- reproduction (S8-S11, reproduction.ts) ----------------------------------------------------------------------

  /** Steps S8 and S11 (FIG. 10): reproduces the key of a satisfied request into its target card, under a lease. */
  async reproduce(requestId: string, presented: TargetCard, actor: string): Promise<ReproductionResult> {
    return reproduction.reproduce(this.ctx, requestId, presented, actor);
  }

  /** An operator puts a request stuck in "reproducing" back to "satisfied", once its lease has passed. */
  async resetReproduction(requestId: string, reason: string, actor: string): Promise<RequestView> {
    return reproduction.resetReproduction(this.ctx, requestId, reason, actor);
  }
}
