// Pieces several route plugins share: a rotation as the API shows it (its schema is RotationJson,
// src/issuer/wire-rotation.ts: one definition, one OpenAPI shape).

import type { RotationJson } from "../issuer/wire-rotation.ts";
import type { Rotation } from "../store/store.ts";

/** A rotation as the API shows it (every member of RotationJson). */
export const rotationOut = (r: Rotation): RotationJson => ({
  id: r.id,
  cardId: r.cardId,
  toCardId: r.toCardId,
  fromKeySetId: r.fromKeySetId,
  toKeySetId: r.toKeySetId,
  strategy: r.strategy,
  status: r.status,
  cursor: r.cursor,
  total: r.total,
  done: r.done,
  approvedBy: r.approvedBy,
  approvedAt: r.approvedAt,
  error: r.error,
  createdAt: r.createdAt,
  updatedAt: r.updatedAt,
  proposedBy: r.proposedBy,
  newCardId: r.newCardId,
  added: r.added,
  dropped: r.dropped,
  approvalsRequired: r.approvalsRequired,
  distribution: r.distribution,
  distributedAt: r.distributedAt,
});
