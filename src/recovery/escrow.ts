// Steps S2-S3 (seed 001 embodiment 3, FIG. 10 units 23-24): the escrow of a new key pair, through the key generation
// device's hook (src/keygen/escrow.ts) while the key is still in custody — E, the private key wrapped inside custody
// under the escrow KEK, split under the card's policy (shares.ts) — and the registration of the card as the device
// the key belongs to: the digest of its secret ID and its key set. Also what an escrow shows (who holds which share,
// sealed to which key) and the arbitrators' share envelopes.
//
// Never: E in clear outside this call (wiped once split); the card's secret ID is stored only as its digest.

import type { KeyPairAlg } from "../custody/custody.ts";
import type { PivSlot } from "../keygen/device.ts";
import type { EscrowInput, KeyEscrowHook } from "../keygen/escrow.ts";
import type { EscrowRow } from "./records.ts";
import { bytesEqual, labelledDigest } from "./encoding.ts";
import { keyedRegistry } from "./keyed-registry.ts";
import { policyParties, type ReproductionPolicy } from "./policy.ts";
import { checkActor, checkId, isObject, keySetSummary, MAX_REASON, sha256Hex, type ServiceContext } from "./service-context.ts";
import { RecoveryServiceError } from "./service-errors.ts";
import { splitSecret, type EscrowRecord, type ShareEnvelope, type ShareSlot } from "./shares.ts";

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

/** Digest under which a card's secret ID is registered (FIG. 10 unit 24): the ID itself is never stored. */
export function deviceSecretIdDigest(secretId: Uint8Array): string {
  return labelledDigest("cardkms/recovery/device-secret-id/v1", secretId).toString("hex");
}

/** The hook the key generation device calls (KeyGenerationDeviceOptions.escrow), acting as `actor`. */
export function escrowHook(ctx: ServiceContext, actor: string): KeyEscrowHook {
  checkActor(actor);
  return {
    escrow: (input) => escrow(ctx, input, actor),
    abandon: (escrowId, reason) => abandonEscrow(ctx, escrowId, reason, actor),
  };
}

/**
 * Step S3, with the key pair `input.keyLabel` still in custody: wraps it inside custody under the escrow KEK,
 * splits the wrapped form under the card's policy, and records the escrow, the envelopes, the registered public
 * key and certificate, and the digest of the card's secret ID. Does not keep or wipe `input.deviceSecretId`
 * (the caller's).
 */
export async function escrow(ctx: ServiceContext, input: EscrowInput, actor: string): Promise<{ escrowId: string }> {
  checkActor(actor);
  if (!isObject(input)) throw new RecoveryServiceError("invalid_argument", "expected an EscrowInput");
  const { cardId } = input;
  checkId(cardId, "card id");
  if (!(input.deviceSecretId instanceof Uint8Array) || input.deviceSecretId.length < 8) throw new RecoveryServiceError("invalid_argument", "the card's secret ID is missing");
  if (!(input.spki instanceof Uint8Array) || !(input.certificate instanceof Uint8Array)) throw new RecoveryServiceError("invalid_argument", "spki and certificate must be bytes");
  const policyRec = await ctx.repo.policy(cardId);
  if (!policyRec) throw new RecoveryServiceError("no_policy", `card ${cardId} has no reproduction policy: set it first (step S1)`, { cardId });
  if (await ctx.repo.escrowByCard(cardId)) throw new RecoveryServiceError("escrow_exists", `card ${cardId} already has an escrow`, { cardId });
  if (!bytesEqual(await ctx.custody.publicKey(input.keyLabel), input.spki))
    throw new RecoveryServiceError("invalid_argument", `the key pair ${input.keyLabel} in custody does not have the public key given`);
  const policy = JSON.parse(policyRec.policy) as ReproductionPolicy;
  const registry = await keyedRegistry(ctx.repo, []);
  const gone = [policy.author, ...policyParties(policy)].filter((p) => registry.isDisabled(p));
  if (gone.length)
    throw new RecoveryServiceError("arbitrator_disabled", `card ${cardId}'s policy names deregistered arbitrator(s) ${[...new Set(gone)].join(", ")}: set a policy without them first`, {
      cardId,
      arbitrators: [...new Set(gone)],
    });
  const escrowId = ctx.store.newId();
  let e: Uint8Array | undefined;
  let split: Awaited<ReturnType<typeof splitSecret>>;
  try {
    e = await ctx.custody.wrapPrivateKey(input.keyLabel, { key: ctx.kekLabel });
    split = await splitSecret({ escrowId, cardId, secret: e, policy, registry });
  } finally {
    e?.fill(0);
  }
  const at = ctx.at();
  const digest = deviceSecretIdDigest(input.deviceSecretId);
  const row: EscrowRow = {
    escrowId,
    cardId,
    applicantId: input.applicantId,
    policy: policyRec.policy,
    policyDigest: split.escrow.policyDigest,
    record: JSON.stringify(split.escrow),
    wrappedUnder: ctx.kekLabel,
    alg: input.alg,
    slot: input.slot,
    publicKey: input.spki,
    publicKeySha256: sha256Hex(input.spki),
    certificate: input.certificate,
    serial: input.serial,
    createdBy: actor,
    createdAt: at,
  };
  await ctx.store.transaction(async ({ repo, audit }) => {
    const r = await repo.insertEscrow(
      row,
      split.envelopes.map((v) => ({ escrowId, shareId: v.header.shareId, arbitratorId: v.header.arbitrator, envelope: JSON.stringify(v) })),
      { cardId, secretIdDigest: digest, keySet: JSON.stringify(input.keySet), generation: 1, registeredAt: at },
    );
    if (r === "card-has-escrow") throw new RecoveryServiceError("escrow_exists", `card ${cardId} already has an escrow`, { cardId });
    if (r === "device-in-use") throw new RecoveryServiceError("device_in_use", `the inserted card is already the registered device of another card record`, { cardId });
    await audit({
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
        wrappedUnder: ctx.kekLabel,
        shares: split.escrow.shares.map((s) => ({ shareId: s.shareId, arbitrator: s.arbitrator })),
      },
      at,
    });
    await audit({ actor, action: "recovery.device.register", subject: cardId, details: { escrowId, generation: 1, keySet: keySetSummary(input.keySet) }, at });
  });
  return { escrowId };
}

/** The issue did not complete (the card write failed): the escrow, its envelopes and the device record go. */
export async function abandonEscrow(ctx: ServiceContext, escrowId: string, reason: string, actor: string): Promise<void> {
  checkActor(actor);
  await ctx.store.transaction(async ({ repo, audit }) => {
    const e = await repo.escrow(escrowId);
    if (!e) throw new RecoveryServiceError("not_found", `no escrow ${escrowId}`, { escrowId });
    if ((await repo.requests({ cardId: e.cardId, limit: 1 })).length) throw new RecoveryServiceError("request_unfinished", `escrow ${escrowId} has reproduction requests: it is in use`, { escrowId });
    await repo.deleteEscrow(escrowId);
    await audit({ actor, action: "recovery.escrow.abandon", subject: e.cardId, details: { escrowId, reason: String(reason).slice(0, MAX_REASON) }, at: ctx.at() });
  });
}

export async function escrowOf(ctx: ServiceContext, cardId: string): Promise<EscrowView | undefined> {
  const e = await ctx.repo.escrowByCard(cardId);
  if (!e) return undefined;
  const record = JSON.parse(e.record) as EscrowRecord;
  const device = await ctx.repo.device(cardId);
  const sealedTo = new Map((await ctx.repo.envelopesOfEscrow(e.escrowId)).map((v) => [v.shareId, (JSON.parse(v.envelope) as ShareEnvelope).header.recipientKeyId]));
  const holders = new Map((await ctx.repo.arbitrators()).map((a) => [a.id, a]));
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
export async function shareEnvelopes(ctx: ServiceContext, arbitratorId: string, opts: { cardId?: string } = {}): Promise<ShareEnvelope[]> {
  return (await ctx.repo.envelopesFor(arbitratorId, opts)).map((v) => JSON.parse(v.envelope) as ShareEnvelope);
}
