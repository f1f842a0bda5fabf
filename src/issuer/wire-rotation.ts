// The JSON shapes of card-key rotation (seed 000 embodiments 3-5, FIG. 15) that the rotation routes
// (src/server/rotation-routes.ts), the events routes' listing and approval (event-routes.ts) and the CLI
// (src/cli/rotation.ts) share: a rotation, its status with re-wrap, approvals and distribution, what a new card
// and a redistribution answer, and the requests that propose, issue the new card and distribute. One TypeBox
// schema each — the routes validate, serialise and publish them — and its static type. Requests are closed;
// answers are open, as the routes always declared them.
//
// Never here: a SQL driver, fastify, a key value or a custody reference.

import { Type, type Static } from "typebox";
import { Closed, Enum, Int, NullableInt, NullableStr, Str, Written } from "../util/wire.ts";
import { JOB_STATES } from "./jobs.ts";
import { FIG15 } from "./rotation.ts";
import { CardId, CardJson, credentialMembers, RelayRoundJson } from "./wire.ts";

const opt = Type.Optional;

/** The FIG. 15 strategies. */
export const ROTATION_STRATEGIES = Object.keys(FIG15) as (keyof typeof FIG15)[];

/** A card-key rotation job (seed 000 embodiments 3-5). */
export const RotationJson = Written(
  {
    id: Str,
    cardId: Str,
    toCardId: NullableStr(),
    fromKeySetId: Str,
    toKeySetId: NullableStr(),
    strategy: Str,
    status: Str,
    cursor: Int,
    total: Int,
    done: Int,
    approvedBy: NullableStr(),
    approvedAt: NullableInt(),
    error: NullableStr(),
    createdAt: Int,
    updatedAt: Int,
    /** What the approvals cover besides card, key set and strategy (issue 15 §2). */
    proposedBy: NullableStr(),
    newCardId: NullableStr(),
    added: Type.Array(Type.Object({ slot: opt(Str), alg: opt(Str), profile: opt(Str) })),
    dropped: Type.Array(Str),
    approvalsRequired: Int,
    /** none, distributing, distributed (issue 15 §4). */
    distribution: Str,
    distributedAt: NullableInt(),
  },
  { required: ["id", "cardId", "fromKeySetId", "strategy", "status", "cursor", "total", "done", "createdAt"] },
);
export type RotationJson = Static<typeof RotationJson>;

/** Credentials a rotation adds (embodiments 4, 5): as a credential request names them. */
export const AddedCredentialsJson = Type.Array(Closed(credentialMembers), { maxItems: 24 });

/** POST /cards/{id}/rotations. */
export const ProposeRotationRequest = Closed({
  strategy: Enum(ROTATION_STRATEGIES),
  newCardId: opt(CardId),
  add: opt(AddedCredentialsJson),
  drop: opt(Type.Array(credentialMembers.slot, { maxItems: 24, uniqueItems: true })),
});
export type ProposeRotationRequest = Static<typeof ProposeRotationRequest>;

/** POST /rotations/{id}/new-card. */
export const NewCardRequest = Closed({ cardId: opt(CardId) });
/** POST /rotations/{id}/distribute. */
export const DistributeRequest = Closed({ add: opt(AddedCredentialsJson) });

/** A rotation's bulk re-wrap. */
export const RewrapJson = Type.Object({
  /** not-needed: the strategy re-wraps nothing (embodiment 4); idle: not started (no job in this process, keys left). */
  state: Enum(["not-needed", "idle", "running", "done", "failed"]),
  keysPerSecond: opt(Type.Number()),
  error: opt(Str),
  /** The re-wrap's job in the job table (issue 16 §2), the same on every server: queued counts as running above. */
  job: opt(Type.Object({ id: Str, state: Enum(JOB_STATES), leaseOwner: NullableStr(), leaseUntil: NullableInt(), attempts: Int })),
});

/** What a rotation's distribution carries to the new card, one credential each. */
export const RotationItemJson = Written(
  {
    slot: Str,
    /** carried: the old card's pair; added: a credential the rotation adds. */
    kind: Str,
    /** package: sent by the issuer; terminal: it leaves the old card through the terminal (FIG. 15). */
    path: Str,
    keyPairId: NullableStr(),
    state: Enum(["pending", "packaged", "delivered", "acknowledged", "dropped"]),
    packageSeq: NullableInt(),
    updatedAt: Int,
  },
  { required: ["slot", "kind", "path", "state"] },
);

/** A rotation's distribution: its state, its items, the slots it still owes the new card. */
export const DistributionJson = Type.Object({ state: Enum(["none", "distributing", "distributed"]), items: Type.Array(RotationItemJson), owed: Type.Array(Str) });
export type DistributionJson = Static<typeof DistributionJson>;

/** A rotation's approvals (four eyes). */
export const ApprovalsJson = Written(
  {
    required: Int,
    proposedBy: NullableStr(),
    /** SHA-256 (hex) of what the approvals cover. */
    binding: Str,
    given: Type.Array(Written({ operator: Str, approvedAt: Int })),
  },
  { required: ["required", "given", "binding"] },
);

/** GET /rotations/{id}, POST /rotations/{id}/rewrap: the rotation with its re-wrap (and, read, approvals and distribution). */
export const RotationStatusJson = Type.Object({ rotation: RotationJson, rewrap: RewrapJson, left: opt(Int), approvals: opt(ApprovalsJson), distribution: opt(DistributionJson) });
export type RotationStatusJson = Static<typeof RotationStatusJson>;

/** The new card as the rotation routes write it: the members they write (the schema is CardJson: none required). */
const RotationCardJson = Type.Unsafe<{ id: string; userId: string; status: string; validFrom: number; validUntil: number; currentKeySetId: string | null; createdAt: number }>(CardJson);

/** The new card of a rotation, issued already (200: no personalisation) or now (201: its relay's first round). */
export const NewCardDoneJson = Type.Object({ rotation: RotationJson, card: RotationCardJson, personalisation: Type.Null() });
export const NewCardOpenedJson = Type.Object({ rotation: RotationJson, card: RotationCardJson, personalisation: RelayRoundJson });
export type NewCardJson = Static<typeof NewCardDoneJson> | Static<typeof NewCardOpenedJson>;

/** POST /rotations/{id}/distribute: the packages sent and the credentials added. */
export const DistributedJson = Written(
  {
    rotation: RotationJson,
    distribution: DistributionJson,
    packages: Type.Array(Written({ seq: Int, slot: Str, kvn: Int, cardId: Str, bytes: Int })),
    added: Type.Array(Written({ keyPairId: Str, slot: NullableStr(), serial: Str, packageSeq: Int })),
  },
  { required: ["rotation", "packages", "added", "distribution"] },
);
export type DistributedJson = Static<typeof DistributedJson>;
