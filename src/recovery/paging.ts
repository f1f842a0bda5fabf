// Paged lists of the recovery service (migration 0007_recovery_lifecycle). Lists page (listPage, pendingPage,
// arbitratorsPage, arbitratorDependents) with the project's one paging (src/util/paging.ts): a stable order, a
// `limit` with a maximum, an opaque `after` cursor; a page carries `next` when more follow. A bad limit or cursor
// is the service's refusal invalid_argument.

import { decodeCursor as decode, pageLimit as limitOf, type InvalidPaging } from "../util/paging.ts";
import { RecoveryServiceError } from "./service-errors.ts";

export { allPages, DEFAULT_PAGE_SIZE, encodeCursor, type Page, type PageOptions } from "../util/paging.ts";

/** Maximum page of requests, arbitrators and policy dependencies. */
export const MAX_PAGE_SIZE = 1000;
/** Maximum page of pending items (each carries a request view and share envelopes). */
export const MAX_PENDING_PAGE_SIZE = 100;

const invalid: InvalidPaging = (message, details) => new RecoveryServiceError("invalid_argument", message, details);

export const decodeCursor = (cursor: unknown, list: string, shape: readonly ("string" | "number")[]): (string | number)[] => decode(cursor, list, shape, invalid);

export const pageLimit = (limit: unknown, max: number): number => limitOf(limit, max, invalid);
