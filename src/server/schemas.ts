// JSON schemas of domain objects that several route plugins return: one definition, one OpenAPI shape.

import type { Rotation } from "../store/store.ts";
import { CARD_KEY_ALGS, SLOTS } from "../issuer/issuer.ts";

export const nullable = (type: string) => ({ type: [type, "null"] }) as const;

/** A card of the system DB (FIG. 5: card ID, validity VT, current key set). */
export const cardSchema = {
  type: "object",
  properties: {
    id: { type: "string" },
    userId: { type: "string" },
    status: { type: "string" },
    validFrom: { type: "integer" },
    validUntil: { type: "integer" },
    currentKeySetId: nullable("string"),
    lastPackageSeq: { type: "integer" },
    createdAt: { type: "integer" },
    updatedAt: { type: "integer" },
  },
} as const;

/** A card-key rotation job (seed 000 embodiments 3-5). */
export const rotationSchema = {
  type: "object",
  required: ["id", "cardId", "fromKeySetId", "strategy", "status", "cursor", "total", "done", "createdAt"],
  properties: {
    id: { type: "string" },
    cardId: { type: "string" },
    toCardId: nullable("string"),
    fromKeySetId: { type: "string" },
    toKeySetId: nullable("string"),
    strategy: { type: "string" },
    status: { type: "string" },
    cursor: { type: "integer" },
    total: { type: "integer" },
    done: { type: "integer" },
    approvedBy: nullable("string"),
    approvedAt: nullable("integer"),
    error: nullable("string"),
    createdAt: { type: "integer" },
    updatedAt: { type: "integer" },
    /** What the approvals cover besides card, key set and strategy (issue 15 §2). */
    proposedBy: nullable("string"),
    newCardId: nullable("string"),
    added: { type: "array", items: { type: "object", properties: { slot: { type: "string" }, alg: { type: "string" }, profile: { type: "string" } } } },
    dropped: { type: "array", items: { type: "string" } },
    approvalsRequired: { type: "integer" },
    /** none, distributing, distributed (issue 15 §4). */
    distribution: { type: "string" },
    distributedAt: nullable("integer"),
  },
} as const;

/** A rotation as the API shows it (every field of rotationSchema). */
export const rotationOut = (r: Rotation) => ({
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

/** What a credential request names (ST16): the card slot, the algorithm, optionally a CA profile. */
export const credentialRequestProps = {
  slot: { type: "string", enum: [...SLOTS] },
  alg: { type: "string", enum: [...CARD_KEY_ALGS] },
  profile: { type: "string", pattern: "^[A-Za-z][A-Za-z0-9_-]{0,63}$" },
} as const;
