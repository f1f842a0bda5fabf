// What a card-key rotation owes besides its job row (issue 15 §1, §2, §4), as the domain sees it: the binding an
// approval covers, the approvals, and one item per slot the new card is owed with the state it is in. Pure: the
// canonical forms and the binding hash are computed here; the store keeps the rows (src/store/rotation-repository.ts,
// tables of migrations/0012_rotation_four_eyes.ts) and reaches them through the port's RotationRecords (ports.ts).
//
//   the binding     what an approval covers: old card, its key set, strategy, new card, the credentials added and
//                   the old card's slots left behind, as one canonical string and its SHA-256 (rotationBinding)
//   items           pending -> packaged by the one call that makes its package; packaged -> delivered ->
//                   acknowledged with the package; dropped: left behind by the approved rotation
//
// Never: a query, or a key.

import { sha256Hex } from "../util/bytes.ts";

/** pending: owed; packaged: its package waits for the new card; delivered: the new card's terminal fetched it (or, by
 *  the terminal path of FIG. 15, the pair is the new card's on record); acknowledged: the card's receipt;
 *  dropped: left behind by the approved rotation. */
export type RotationItemState = "pending" | "packaged" | "delivered" | "acknowledged" | "dropped";
/** States that are still owed: a rotation with one of them is not complete. */
export const OWED_ITEM_STATES: readonly RotationItemState[] = ["pending", "packaged"];

/** carried: the old card's key pair; added: generated under Sk2 by the distribution (embodiments 4, 5). */
export type RotationItemKind = "carried" | "added";
/** package: the issuer sends it (FIG. 15 "network"); terminal: it leaves the old card through the terminal. */
export type RotationItemPath = "package" | "terminal";

export interface RotationApproval {
  operator: string;
  bindingHash: string;
  approvedAt: number;
}

export interface RotationItem {
  rotationId: string;
  slot: string;
  kind: RotationItemKind;
  path: RotationItemPath;
  keyPairId: string | null;
  algorithm: string;
  profile: string | null;
  state: RotationItemState;
  /** The package that carries it: the new card's, by its sequence number. */
  packageSeq: number | null;
  updatedAt: number;
}

/** A credential a rotation adds (embodiments 4, 5), as the binding names it. */
export interface AddedCredentialSpec {
  slot: string;
  alg: string;
  profile?: string;
}

/** What an approval covers. */
export interface RotationBindingInput {
  cardId: string;
  fromKeySetId: string;
  strategy: string;
  newCardId: string | null;
  added: AddedCredentialSpec[];
  dropped: string[];
}

/** The canonical JSON of the additions (by slot, each [slot, alg, profile|null]) as rotations.added stores it. */
export function canonicalAdded(add: readonly AddedCredentialSpec[]): string {
  return JSON.stringify([...add].sort((a, b) => (a.slot < b.slot ? -1 : a.slot > b.slot ? 1 : 0)).map((a) => [a.slot, a.alg, a.profile ?? null]));
}

/** The additions back from their canonical JSON. */
export function parseAdded(text: string): AddedCredentialSpec[] {
  return (JSON.parse(text) as [string, string, string | null][]).map(([slot, alg, profile]) => (profile === null ? { slot, alg } : { slot, alg, profile }));
}

/** The canonical JSON of the slots left behind, sorted. */
export const canonicalDropped = (slots: readonly string[]): string => JSON.stringify([...slots].sort());

/**
 * What an approval covers, as one string and its SHA-256 (hex): version, old card, its key set, strategy, new card,
 * additions and drops. Migration 0012 computes version 1 the same way for approvals given before it.
 */
export function rotationBinding(b: RotationBindingInput): { canonical: string; hash: string } {
  const add = JSON.parse(canonicalAdded(b.added)) as unknown[];
  const canonical = JSON.stringify(["cardkms/rotation-binding/v1", b.cardId, b.fromKeySetId, b.strategy, b.newCardId, add, [...b.dropped].sort()]);
  return { canonical, hash: sha256Hex(Buffer.from(canonical, "utf8")) };
}
