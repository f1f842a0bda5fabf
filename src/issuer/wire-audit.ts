// The JSON shapes of the audit log over HTTP (issue 15 §3) that the audit routes (GET /audit and /audit/verify in
// src/server/issuer-routes.ts, the checkpoints in src/server/audit-routes.ts) serve and the clients read (the CLI's
// `audit` commands, src/cli/audit.ts; the terminal's api-client; the recovery demo): an entry and its page, what the
// chain check says, a signed checkpoint, its key and a consistency proof. One TypeBox schema each — the routes
// serialise and publish them — and its static type. Open objects, as the routes always declared them.
//
// Never here: a SQL driver, fastify, a detail the audit log refuses to hold (store/audit.ts keeps secrets out).

import { Type, type Static } from "typebox";
import type { JsonValue } from "../util/json.ts";
import { Bool, Int, NullableInt, Str, Written } from "../util/wire.ts";

/** An entry of the hash-chained audit log (src/store/audit.ts AuditEntry). */
export const AuditEntryJson = Written({
  seq: Int,
  at: Int,
  actor: Str,
  action: Str,
  subject: Str,
  details: Type.Unsafe<{ [key: string]: JsonValue }>({ type: "object", additionalProperties: true }),
  prevHash: Str,
  hash: Str,
});
export type AuditEntryJson = Static<typeof AuditEntryJson>;

/** GET /audit: entries in order; `next` is the last seq of a full page, else null. */
export const AuditPageJson = Type.Object({ entries: Type.Array(AuditEntryJson), next: NullableInt() });
export type AuditPageJson = Static<typeof AuditPageJson>;

/** GET /audit/verify: the chain intact up to `head`, or (ok false, head null) the first entry that is not and why. */
export const AuditVerifyJson = Type.Object({
  ok: Bool,
  entries: Int,
  head: Type.Union([Type.Null(), Written({ seq: Int, hash: Str })]),
  problem: Type.Optional(Str),
  seq: Type.Optional(Int),
  message: Type.Optional(Str),
});
export type AuditVerifyJson = Static<typeof AuditVerifyJson>;

/** A signed checkpoint of the audit log (src/issuer/audit-checkpoints.ts). */
export const CheckpointJson = Type.Object({
  origin: Str,
  size: Type.Integer({ description: "how many audit entries the checkpoint covers (entries 1..size)" }),
  rootHash: Type.String({ description: "the RFC 9162 tree head over the entries' chain hashes, base64" }),
  note: Type.String({ description: "the C2SP tlog-checkpoint signed note: keep it outside the server" }),
  createdAt: Int,
});
export type CheckpointJson = Static<typeof CheckpointJson>;

/** GET /audit/checkpoint-key: what an auditor pins. */
export const CheckpointKeyJson = Type.Object({ origin: Str, verifierKey: Str });
export type CheckpointKeyJson = Static<typeof CheckpointKeyJson>;

/** GET /audit/consistency: the RFC 9162 consistency proof between two tree sizes, base64 hashes. */
export const ConsistencyJson = Type.Object({ from: Int, to: Int, proof: Type.Array(Str) });
export type ConsistencyJson = Static<typeof ConsistencyJson>;
