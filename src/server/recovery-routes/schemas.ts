// What the recovery route plugins share besides the wire shapes (src/recovery/wire.ts): the queries of pages, the
// problem+json of these routes, and how a page's query and answer map to the service's (recovery-routes.ts lists
// the routes). A schema one plugin alone uses lives in that plugin's file.

import { Type } from "typebox";
import { Closed, Cursor, Int, Str } from "../../util/wire.ts";
export { toB64 as b64 } from "../../util/bytes.ts";

// ---- schema pieces ------------------------------------------------------------------------------------------------

/** A query of a page: `after` (the `next` of the previous page) and `limit`. */
export const PAGE = { after: Type.Optional(Cursor), limit: Type.Optional(Type.String({ pattern: "^[0-9]{1,4}$" })) };
export const NO_QUERY = Closed({});

/** problem+json of these routes: RFC 9457 members plus the check that refused (and a policy's issues). */
const RECOVERY_PROBLEM = Closed({
  type: Str,
  title: Str,
  status: Int,
  detail: Type.Optional(Str),
  instance: Type.Optional(Str),
  errors: Type.Optional(Type.Array(Closed({ pointer: Type.Optional(Str), detail: Type.Optional(Str) }))),
  check: Type.Optional(Type.String({ description: "the named check that refused, e.g. out_of_order, forged_signature, policy_invalid, device_mismatch, target_not_approved" })),
  issues: Type.Optional(Type.Array(Closed({ path: Type.Optional(Str), message: Type.Optional(Str) }))),
});
export const problems = { "4xx": RECOVERY_PROBLEM, "5xx": { $ref: "Problem#" } } as const;

// ---- pages ------------------------------------------------------------------------------------------------------

/** A page's query as the service takes it (the schema checked the shapes; the service the range and the cursor). */
export const pageOf = (q: { after?: string; limit?: string }) => ({ ...(q.after !== undefined ? { after: q.after } : {}), ...(q.limit !== undefined ? { limit: Number(q.limit) } : {}) });
export const nextOf = (p: { next?: string }) => (p.next !== undefined ? { next: p.next } : {});
