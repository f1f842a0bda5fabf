// Steps S8-S11 (seed 001 embodiment 3, FIG. 10-12): the reproduction of an escrowed key into the card the request
// names (target.ts), once the policy is satisfied and its author signed the approver list — the card's secret ID
// checked against the registered device (unit 24), the released shares opened (share-release.ts), K and E rebuilt
// (reproduce.ts, the pure part), E unwrapped into custody and checked there (unit 22, custody-key-check.ts), written
// into the card through SCP03 and destroyed in custody; for "card-destroyed" the new card becomes the registered
// device and the destroyed one stops acting (destroyed-card.ts). A request is single-use.
//
//   The reproduction lease (migration 0007_recovery_lifecycle). reproduce() claims a request (satisfied -> reproducing) with a random claim id and a
//   lease (`reproductionLeaseMs`, default 10 min: longer than the live relay's 5 min, see reproduce()), renews the
//   lease before every APDU it sends, and ends the claim itself (-> reproduced, or back to satisfied on a refusal). A
//   process that dies mid-reproduction leaves the request "reproducing" until its lease passes; then a later
//   reproduce() takes it over, or an operator resets it (resetReproduction) — both refused while the lease is live,
//   both audited. Every step of a claim is a conditional update on the claim id, so two reproductions of one request
//   never run at once, across processes on one database.
//
// Never: a share value, E or the card's secret ID kept once used (each buffer is wiped), nor the reproduced key left
// in custody: it is deleted, and its absence checked, whatever happened.

import { randomUUID } from "node:crypto";
import { CustodyError, type KeyPairAlg, type KeySetRef } from "../custody/custody.ts";
import { readCardSecretId, writeKeyIntoCard } from "../keygen/card-io.ts";
import type { InsertedCard, PivSlot } from "../keygen/device.ts";
import type { RecoveryRepository } from "./ports.ts";
import type { RequestKind, RequestRecord } from "./records.ts";
import type { JsonValue } from "../util/json.ts";
import type { ApproverList } from "./approvals.ts";
import { keyCheckInCustody } from "./custody-key-check.ts";
import { markDestroyedCard, requireTargetActive } from "./destroyed-card.ts";
import { RecoveryError } from "./errors.ts";
import { deviceSecretIdDigest } from "./escrow.ts";
import { chainRegistry } from "./keyed-registry.ts";
import { reproduce as reproduceFromShares } from "./reproduce.ts";
import { loadRequest, requestView, requireSatisfied, type RequestView, type ServiceRequest } from "./requests.ts";
import { auditRefusal, checkActor, checkId, isObject, keySetSummary, MAX_REASON, type ServiceContext } from "./service-context.ts";
import { isRecoveryRefusal, RecoveryServiceError, targetChecked } from "./service-errors.ts";
import { openRelease, type ShareRelease } from "./share-release.ts";
import type { EscrowRecord, ReleasedShare } from "./shares.ts";
import { boundTarget, checkSlotOnCard, checkTarget, registeredCardRecord, type ReproductionTarget, type TargetCard } from "./target.ts";

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
export async function reproduce(ctx: ServiceContext, requestId: string, presented: TargetCard, actor: string): Promise<ReproductionResult> {
  checkActor(actor);
  let claim: string | undefined;
  let written = false;
  let leftover: string | undefined;
  try {
    if (!isObject(presented) || typeof presented.transmit !== "function") throw new RecoveryServiceError("invalid_argument", "the target card must give transmit");
    if (presented.cardId !== undefined) checkId(presented.cardId, "target card id");
    const at = ctx.at();
    const mine = { claim: randomUUID(), by: actor, at, leaseUntil: at + ctx.leaseMs };
    let target!: ReproductionTarget;
    let keySet!: KeySetRef;
    // Claim the request: of concurrent reproductions one proceeds; a request whose holder's lease passed is taken
    // over. The target is judged first, inside the same transaction: a refused target changes nothing.
    await ctx.store.transaction(async ({ repo, audit }) => {
      const rec = await repo.request(requestId);
      if (!rec) throw new RecoveryServiceError("not_found", `no request ${requestId}`, { requestId });
      const takeover = rec.status === "reproducing";
      if (takeover) requireLeaseOver(rec, at);
      else requireSatisfied(rec);
      if (rec.approverList === null) throw new RecoveryServiceError("approver_list_missing", `request ${requestId}: the policy's author has not signed the list of approvers`, { requestId });
      ({ target, keySet } = await targetOf(repo, rec, presented, at));
      if (takeover) {
        if (!(await repo.claimReproduction(requestId, mine, rec.reproductionClaim ?? null)))
          throw new RecoveryServiceError("request_closed", `request ${requestId} was taken over meanwhile`, { requestId, status: "reproducing" });
        await audit({ actor, action: "recovery.reproduce.takeover", subject: requestId, details: { cardId: rec.cardId, ...previousClaim(rec), leaseUntil: mine.leaseUntil }, at });
        return;
      }
      if (!(await repo.claimReproduction(requestId, mine))) throw new RecoveryServiceError("request_closed", `request ${requestId} is being reproduced`, { requestId, status: "reproducing" });
    });
    claim = mine.claim;
    /** Renews the lease, or stops this reproduction when another one took the request over. */
    const hold = async (): Promise<void> => {
      if (!(await ctx.repo.renewReproduction(requestId, mine.claim, ctx.at() + ctx.leaseMs)))
        throw new RecoveryServiceError("lease_lost", `request ${requestId} was taken over by another reproduction after this one's lease passed: this one stops`, { requestId });
    };
    // the card is reached with the target card record's own keys, whatever the caller holds, while it is active
    const card: InsertedCard = {
      keySet,
      transmit: async (apdu) => {
        await hold();
        await targetChecked(() => requireTargetActive(ctx.store, target.cardId));
        return presented.transmit(apdu);
      },
    };
    /** A refusal that stops the reproduction as it is (not a card that could not be read or written). */
    const stops = (e: unknown) => e instanceof RecoveryServiceError && (e.check === "lease_lost" || e.check === "target_unfit");
    const rows = await ctx.repo.approvals(requestId);
    const { rec, approvals } = await loadRequest(ctx.repo, requestId);
    const request = JSON.parse(rec.request) as ServiceRequest;
    const escrowRow = await ctx.repo.escrow(rec.escrowId);
    const device = await ctx.repo.device(rec.cardId);
    if (!escrowRow || !device) throw new RecoveryServiceError("not_found", `card ${rec.cardId} has no escrow or no registered device`, { requestId });
    const alg = escrowRow.alg as KeyPairAlg;

    // FIG. 10 unit 24: the card presented against the registered device secret ID.
    let secretId: Uint8Array;
    try {
      secretId = await readCardSecretId(ctx.custody, card);
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
        throw new RecoveryServiceError("device_mismatch", `the card presented is card ${rec.cardId}'s registered device itself, not a new card (a lost key on it is a "key-lost" request)`, {
          requestId,
          cardId: rec.cardId,
        });
      const other = await ctx.repo.deviceByDigest(digest);
      if (other) throw new RecoveryServiceError("device_in_use", `the card presented is the registered device of another card record`, { requestId, cardId: rec.cardId });
    }

    // Unit 21: the shares of the approvers, opened inside the service with custody's ECDH; K and E rebuilt.
    const shares: ReleasedShare[] = [];
    let reproduced: Awaited<ReturnType<typeof reproduceFromShares>>;
    await hold();
    try {
      for (const r of await ctx.repo.releases(requestId)) {
        const rel = JSON.parse(r.release) as ShareRelease;
        const value = await openRelease(ctx, rel);
        if (!value)
          throw new RecoveryError("share_decrypt_failed", `share ${rel.header.shareId} from ${rel.header.arbitrator} no longer opens under the reproduction device's key`, {
            requestId,
            shareId: rel.header.shareId,
          });
        shares.push({ escrowId: rel.header.escrowId, cardId: rel.header.cardId, shareId: rel.header.shareId, arbitrator: rel.header.arbitrator, value });
      }
      reproduced = await reproduceFromShares({
        escrow: JSON.parse(escrowRow.record) as EscrowRecord,
        request,
        approvals,
        approverList: JSON.parse(rec.approverList!) as ApproverList,
        // each signature re-verified with the key version that verified it when recorded (key rotations)
        registry: await chainRegistry(ctx.repo, rec, rows),
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
        await ctx.custody.unwrapPrivateKey(label, e, alg, { key: escrowRow.wrappedUnder }, { expectSpki: escrowRow.publicKey, extractable: "wrapped", ephemeral: true });
        created = true;
      } catch (err) {
        if (err instanceof CustodyError && err.code === "WRONG_KEY")
          throw new RecoveryError("key_check_failed", `the reproduced key of card ${rec.cardId} does not unwrap to its registered public key`, { requestId, cardId: rec.cardId });
        throw err;
      } finally {
        e.fill(0);
      }
      const failed = await keyCheckInCustody(ctx.custody, label, alg, escrowRow.publicKey);
      if (failed)
        throw new RecoveryError("key_check_failed", `the reproduced key of card ${rec.cardId} fails the ${failed} check against its registered public key`, { requestId, cardId: rec.cardId, failed });
      // nothing else in the slot, as the card itself says (under R-MAC: the terminal cannot hide a certificate)
      try {
        await targetChecked(() => checkSlotOnCard(ctx.custody, card, escrowRow.slot as PivSlot, escrowRow.publicKey, { requestId, target: target.cardId }));
      } catch (err) {
        if (isRecoveryRefusal(err)) throw err;
        throw new RecoveryServiceError("device_unreadable", `the target card's slot ${escrowRow.slot} could not be read through the secure channel (${(err as Error).message})`, { requestId });
      }
      try {
        await writeKeyIntoCard(ctx.custody, card, { label, slot: escrowRow.slot as PivSlot, alg, certificate: escrowRow.certificate });
      } catch (err) {
        if (stops(err)) throw err;
        throw new RecoveryServiceError("card_write_failed", `writing the reproduced key into the card failed (${(err as Error).message})`, { requestId });
      }
      written = true;
    } finally {
      // The reproduced key disappears from the reproduction device, whatever happened; its absence is checked.
      if (created || (await ctx.custody.hasKey(label))) {
        await ctx.custody.deleteKey(label);
        if (await ctx.custody.hasKey(label)) leftover = label;
      }
    }
    if (leftover) throw new Error(`key ${leftover} is still in custody after deletion`);

    // Records: the device replaced (FIG. 11-12), the request closed, who approved in order.
    const done = ctx.at();
    const generation = rec.kind === "card-destroyed" ? device.generation + 1 : device.generation;
    await ctx.store.transaction(async (tx) => {
      const { repo, audit } = tx;
      if (rec.kind === "card-destroyed") {
        if (!(await repo.replaceDevice(rec.cardId, device.secretIdDigest, { secretIdDigest: digest, keySet: JSON.stringify(keySet), registeredAt: done, cardRecordId: target.cardId })))
          throw new RecoveryServiceError("device_mismatch", `card ${rec.cardId}'s registered device changed during the reproduction`, { requestId });
        await audit({
          actor,
          action: "recovery.device.replace",
          subject: rec.cardId,
          details: { requestId, generation, from: keySetSummary(JSON.parse(device.keySet) as KeySetRef), to: keySetSummary(keySet), fromCard: device.cardRecordId ?? null, toCard: target.cardId },
          at: done,
        });
        // the destroyed card stops acting in this same transaction (issue 15 §5): destroyed-card.ts
        await markDestroyedCard(tx, { cardRecordId: registeredCardRecord(escrowRow, device), requestId, replacementCardId: target.cardId, actor, at: done });
      }
      if (!(await repo.endReproduction(requestId, mine.claim, "reproduced", done, { reproducedBy: actor, reproducedAt: done })))
        throw new RecoveryServiceError(
          "lease_lost",
          `request ${requestId} was taken over during the reproduction (this one's lease had passed); the card was written, the request stays with the other reproduction`,
          {
            requestId,
          },
        );
      await audit({
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
      await ctx.repo.endReproduction(requestId, claim, "satisfied", ctx.at(), { statusDetail: `last reproduction attempt refused: ${check}` }).catch(() => false);
    }
    const presentedCard = isObject(presented) && typeof presented.cardId === "string" ? presented.cardId.slice(0, 128) : null;
    await auditRefusal(ctx, actor, "recovery.reproduce.refuse", requestId, err, { written, presentedCard, ...(leftover ? { keyLeftInCustody: leftover } : {}) });
    throw err;
  }
}

/**
 * The card record a request's key goes into and the key set that reaches its card (target.ts), checked against
 * what the caller presents; read-only, refusals named.
 */
async function targetOf(repo: RecoveryRepository, rec: RequestRecord, presented: TargetCard, at: number): Promise<{ target: ReproductionTarget; keySet: KeySetRef }> {
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
function requireLeaseOver(rec: RequestRecord, at: number): void {
  const until = rec.reproductionLeaseUntil;
  if (until !== undefined && until > at)
    throw new RecoveryServiceError(
      "request_closed",
      `request ${rec.requestId} is being reproduced by ${rec.reproductionClaimedBy ?? "another reproduction"}; its lease runs until ${new Date(until).toISOString()}`,
      { requestId: rec.requestId, status: rec.status, claimedBy: rec.reproductionClaimedBy, leaseUntil: until },
    );
}

/** The claim a takeover or a reset replaces, as the audit log names it. */
function previousClaim(rec: RequestRecord): { [key: string]: JsonValue } {
  return { previousClaimedBy: rec.reproductionClaimedBy ?? null, previousClaimedAt: rec.reproductionClaimedAt ?? null, previousLeaseUntil: rec.reproductionLeaseUntil ?? null };
}

/**
 * An operator puts a request stuck in "reproducing" — its reproduction's process is gone — back to "satisfied",
 * to be reproduced again. Refused while the reproduction's lease is live (request_closed) and for a request that
 * is not being reproduced. Audited (recovery.reproduce.reset), refusals too. See reproduce() on why a card that
 * may have been written meanwhile does not make this unsafe.
 */
export async function resetReproduction(ctx: ServiceContext, requestId: string, reason: string, actor: string): Promise<RequestView> {
  try {
    checkActor(actor);
    if (typeof reason !== "string" || !reason.trim() || reason.length > MAX_REASON) throw new RecoveryServiceError("invalid_argument", "a reset states its reason");
    const at = ctx.at();
    return await ctx.store.transaction(async ({ repo, audit }) => {
      const { rec, approvals, released } = await loadRequest(repo, requestId);
      if (rec.status !== "reproducing") throw new RecoveryServiceError("request_closed", `request ${requestId} is ${rec.status}, not being reproduced`, { requestId, status: rec.status });
      requireLeaseOver(rec, at);
      const statusDetail = `reproduction reset: ${reason}`;
      if (!(await repo.endReproduction(requestId, rec.reproductionClaim ?? null, "satisfied", at, { statusDetail })))
        throw new RecoveryServiceError("request_closed", `request ${requestId} changed meanwhile`, { requestId });
      await audit({ actor, action: "recovery.reproduce.reset", subject: requestId, details: { cardId: rec.cardId, reason, ...previousClaim(rec) }, at });
      const next: RequestRecord = { ...rec, status: "satisfied", statusDetail, updatedAt: at };
      delete next.reproductionClaim;
      delete next.reproductionClaimedBy;
      delete next.reproductionClaimedAt;
      delete next.reproductionLeaseUntil;
      return requestView(next, approvals, released);
    });
  } catch (e) {
    if (isRecoveryRefusal(e)) await auditRefusal(ctx, actor, "recovery.reproduce.reset.refuse", typeof requestId === "string" ? requestId : "unknown", e, {});
    throw e;
  }
}
