// The card a reproduced key goes into (issue 9 item 1; seed 001 FIG. 10-12). The key of an escrow belongs to one
// user — the applicant it was certified for, the user of the escrowed card record — and a reproduction may write it
// only into a card of that user, fit to receive it, that the arbitrators approved:
//
//   - Bound by signatures. The request names its target — `target: {cardId, userId}`, the issuer card record whose
//     card receives the key — and every approval and the approver list sign the request's digest, so they cover it.
//     key-lost: the registered device's card record (FIG. 10 unit 24: the same card comes back). card-destroyed:
//     the replacement card, named when the request is filed (FIG. 11-12); to name another, the request is withdrawn
//     and filed again, and approvals made for one target never count for another (the digest differs). A request
//     filed before targets were signed is reproduced into the registered device (key-lost) or not at all
//     (card-destroyed).
//   - Fit. The target card record exists at the issuer, is issued to the escrow's user, is active and within its
//     validity, has a current SCP03 key set; for card-destroyed it is neither the destroyed card's record nor the
//     registered device of any escrow; nothing else is in the slot — no other active key pair of the issuer for
//     that card and slot (for key-lost: delivered since the escrow, whose key was written over what the slot held),
//     no other escrow of that card in the slot, and (read from the card itself, under SCP03 with
//     R-MAC, so the terminal cannot hide it) no certificate of another key in the slot's certificate object.
//   - Reached by its own keys. The reproduction opens its secure channel with the target card record's CURRENT key
//     set from the issuer's records, not one the caller hands in: the physical card written is the one personalised
//     for the approved card record (and, as before, its secret ID is checked against the registered device).
//
// Every refusal names its check (TargetCheck); the service audits it and changes nothing before the card is read.
// Nothing here is secret: ids, statuses, public keys.

import { X509Certificate } from "node:crypto";
import { CERT_OBJECT } from "../protocol/package.ts";
import { findTlv, parseTlvs, tlv } from "../protocol/tlv.ts";
import type { KeyCustody, KeySetRef } from "../custody/custody.ts";
import { runScript } from "../issuer/card-scripts.ts";
import type { InsertedCard, PivSlot } from "../keygen/device.ts";
import type { RecoveryRepository } from "./ports.ts";
import type { DeviceRecord, EscrowRow, RequestKind } from "./records.ts";
import { ApduError, type Transmit } from "../protocol/apdu-client.ts";
import { PIV_AID } from "../protocol/piv/client.ts";
import { bytesEqual, canonicalJson } from "./encoding.ts";
import { CheckedRefusal } from "./errors.ts";
import type { ReproductionRequest } from "./approvals.ts";

/** The card record that receives a request's key, as the request names it (what the arbitrators sign over). */
export interface ReproductionTarget {
  /** The issuer's card record (cards.id) whose card receives the key. */
  cardId: string;
  /** The user it is issued to: the escrowed key's owner. */
  userId: string;
}

/** What a reproduction is told about the card at the terminal: how to reach it, and which card record it claims to be. */
export interface TargetCard {
  transmit: Transmit;
  /** The card record the caller reproduces into; it must be the request's target. Default: the request's target. */
  cardId?: string;
  /** The key set the caller would reach it with; it must be the target card record's current one. Default: that one. */
  keySet?: KeySetRef;
}

export type TargetCheck =
  /** The card is not the one the request names (and the arbitrators approved), or is reached with other keys. */
  | "target_not_approved"
  /** The card belongs to another user than the escrowed key. */
  | "target_other_user"
  /** The card cannot receive the key: unknown, not active, outside its validity, without a key set, already a registered device. */
  | "target_unfit"
  /** The target slot holds another key. */
  | "target_slot_occupied";

/** A named refusal of a target (the service turns it into a RecoveryServiceError with the same check). */
export class TargetRefusal extends CheckedRefusal<TargetCheck> {
  override readonly name = "TargetRefusal";
}

/** The card record that reaches an escrow's registered device (absent: replaced before migration 0010, unknown). */
export function registeredCardRecord(escrow: EscrowRow, device: DeviceRecord | undefined): string | undefined {
  return device ? device.cardRecordId : escrow.cardId;
}

/**
 * The target of a request as filed: for key-lost the registered device's card record, for card-destroyed the
 * replacement card record given. Throws a TargetRefusal when there is none to name.
 */
export function targetAtFiling(kind: RequestKind, escrow: EscrowRow, device: DeviceRecord | undefined, replacementCardId: string | undefined): ReproductionTarget {
  if (kind === "card-destroyed") return { cardId: replacementCardId!, userId: escrow.applicantId };
  const cardId = registeredCardRecord(escrow, device);
  if (cardId === undefined)
    throw new TargetRefusal("target_unfit", `card ${escrow.cardId}'s registered device was replaced before its card record was recorded: file a card-destroyed request naming the card`, {
      cardId: escrow.cardId,
    });
  return { cardId, userId: escrow.applicantId };
}

/**
 * The target a filed request is bound to: the one it names; for a request filed before targets were named, the
 * registered device's card record (key-lost) — a card-destroyed request without one is refused.
 */
export function boundTarget(request: { requestId: string; kind: RequestKind; target?: ReproductionTarget }, escrow: EscrowRow, device: DeviceRecord | undefined): ReproductionTarget {
  if (request.target !== undefined) return request.target;
  if (request.kind === "card-destroyed")
    throw new TargetRefusal(
      "target_not_approved",
      `request ${request.requestId} was filed before the replacement card was part of what the arbitrators approve: withdraw it and file it again naming the replacement card`,
      { requestId: request.requestId },
    );
  return targetAtFiling("key-lost", escrow, device, undefined);
}

const sameKeySet = (a: KeySetRef, b: KeySetRef): boolean => canonicalJson(a) === canonicalJson(b);

/**
 * Checks the card record `target` as the receiver of `escrow`'s key (see the top of this file) and returns the key
 * set that reaches its card. `presented`: what the caller says about the card at the terminal (checked against the
 * target). Read-only; throws a TargetRefusal naming the first check that fails.
 */
export async function checkTarget(
  repo: RecoveryRepository,
  o: { kind: RequestKind; target: ReproductionTarget; escrow: EscrowRow; device: DeviceRecord | undefined; at: number; presented?: { cardId?: string; keySet?: KeySetRef } },
): Promise<KeySetRef> {
  const { target, escrow, kind } = o;
  const details = { cardId: escrow.cardId, target: target.cardId };
  if (o.presented?.cardId !== undefined && o.presented.cardId !== target.cardId)
    throw new TargetRefusal("target_not_approved", `card ${o.presented.cardId} is not the card the request names (${target.cardId}): the arbitrators approved the reproduction into that card only`, {
      ...details,
      presented: o.presented.cardId,
    });
  const owner = escrow.applicantId;
  if (target.userId !== owner) throw new TargetRefusal("target_other_user", `the request names user ${target.userId}, but card ${escrow.cardId}'s key is user ${owner}'s`, details);
  const own = await repo.cardRecord(escrow.cardId);
  if (own && own.userId !== owner) throw new TargetRefusal("target_other_user", `card ${escrow.cardId} is issued to user ${own.userId}, but its escrowed key is user ${owner}'s`, details);
  const rec = await repo.cardRecord(target.cardId);
  if (!rec) throw new TargetRefusal("target_unfit", `card ${target.cardId} is not a card record of the issuer`, details);
  if (rec.userId !== owner)
    throw new TargetRefusal("target_other_user", `card ${target.cardId} is issued to another user than card ${escrow.cardId}'s: a key goes only into a card of its own user`, details);
  if (rec.status !== "active") throw new TargetRefusal("target_unfit", `card ${target.cardId} is ${rec.status}, not active`, { ...details, status: rec.status });
  if (o.at < rec.validFrom || o.at > rec.validUntil) throw new TargetRefusal("target_unfit", `card ${target.cardId} is outside its validity`, details);
  if (!rec.keySet || rec.keySet.status === "retired") throw new TargetRefusal("target_unfit", `card ${target.cardId} has no current key set`, details);
  if (kind === "key-lost") {
    if (target.cardId !== registeredCardRecord(escrow, o.device))
      throw new TargetRefusal("target_not_approved", `card ${target.cardId} is no longer the registered device of card ${escrow.cardId}'s key`, details);
  } else {
    if (target.cardId === escrow.cardId)
      throw new TargetRefusal("target_unfit", `card ${target.cardId} is the destroyed card's own record: a card-destroyed reproduction goes into a new card`, details);
    const serves = await repo.deviceByCardRecord(target.cardId);
    if (serves) throw new TargetRefusal("target_unfit", `card ${target.cardId} is already the registered device of card ${serves.cardId}'s escrowed key`, { ...details, servesCard: serves.cardId });
  }
  // key-lost: the escrowed key was written over whatever the slot held at its issue; only keys delivered since count
  for (const spki of await repo.activeKeysInSlot(target.cardId, escrow.slot, kind === "key-lost" ? escrow.createdAt : undefined))
    if (!bytesEqual(spki, escrow.publicKey))
      throw new TargetRefusal("target_slot_occupied", `slot ${escrow.slot} of card ${target.cardId} holds another key of the issuer`, { ...details, slot: escrow.slot });
  const other = await repo.escrowByCard(target.cardId);
  if (other && other.escrowId !== escrow.escrowId && other.slot === escrow.slot)
    throw new TargetRefusal("target_slot_occupied", `slot ${escrow.slot} of card ${target.cardId} holds its own escrowed key`, { ...details, slot: escrow.slot });
  let keySet: KeySetRef;
  try {
    keySet = JSON.parse(rec.keySet.custodyRef) as KeySetRef;
  } catch {
    throw new TargetRefusal("target_unfit", `card ${target.cardId}'s key set reference is unreadable`, details);
  }
  if (o.presented?.keySet !== undefined && !sameKeySet(o.presented.keySet, keySet))
    throw new TargetRefusal("target_not_approved", `the card presented is reached with another key set than card ${target.cardId}'s current one`, details);
  return keySet;
}

/** The SPKI (DER) of the key a certificate certifies, or undefined when it is not a certificate. */
function certifiedKey(der: Uint8Array): Uint8Array | undefined {
  try {
    return new Uint8Array(new X509Certificate(der).publicKey.export({ format: "der", type: "spki" }));
  } catch {
    return undefined;
  }
}

/**
 * Reads the certificate object of `slot` from the card through an SCP03 session on its key set (full protection:
 * the terminal can neither read nor alter the answer) and refuses (target_slot_occupied) when it holds a certificate
 * of another key than `publicKey`. An empty slot, or the key itself (a reproduction written before and not
 * recorded, see RecoveryService.reproduce), passes. PIV tells a key by its certificate object; a key written
 * without one (GENERATE ASYMMETRIC with no PUT DATA) cannot be seen — the issuer's records are checked for those.
 */
export async function checkSlotOnCard(custody: KeyCustody, card: InsertedCard, slot: PivSlot, publicKey: Uint8Array, details: Record<string, unknown>): Promise<void> {
  const tag = CERT_OBJECT[slot];
  let held: Uint8Array | undefined;
  await runScript(card.transmit, {
    keys: { custody, ref: card.keySet },
    aid: PIV_AID,
    commands: [{ cla: 0x00, ins: 0xcb, p1: 0x3f, p2: 0xff, data: tlv(0x5c, Buffer.from(tag, "hex")), le: 256 }],
    check: (r) => {
      if (r[0].sw === 0x6a82) return;
      if (r[0].sw !== 0x9000) throw new ApduError(r[0].sw, "GET DATA certificate");
      const inner = findTlv(r[0].data, 0x53);
      const cert = inner && findTlv(parseTlvs(inner), 0x70);
      held = cert && cert.length ? Uint8Array.from(cert) : new Uint8Array();
    },
  });
  if (held === undefined) return;
  const spki = certifiedKey(held);
  if (!spki || !bytesEqual(spki, publicKey))
    throw new TargetRefusal("target_slot_occupied", `slot ${slot} of the card holds ${spki ? "the certificate of another key" : "a certificate object"}`, { ...details, slot });
}

/** A reproduction request as the service keeps it: the signed request, its kind and the card it names. */
export type ServiceRequest = ReproductionRequest & { kind: RequestKind; target?: ReproductionTarget };
