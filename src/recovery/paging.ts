// Paged lists of the recovery service (migration 0007_recovery_lifecycle). Lists page (listPage, pendingPage,
// arbitratorsPage, arbitratorDependents): a stable order, a `limit` with a maximum, an opaque `after` cursor; a page
// carries `next` when more follow.

import { RecoveryServiceError } from "./service-errors.ts";

/** A page of a list: `next` (an opaque cursor for `after`) when more follow. */
export interface Page<T> {
  items: T[];
  next?: string;
}

/** Every item of a paged list: `page` fetches the page after a cursor (the first with none). */
export async function allPages<T>(page: (after?: string) => Promise<Page<T>>): Promise<T[]> {
  const out: T[] = [];
  for (let after: string | undefined; ;) {
    const p = await page(after);
    out.push(...p.items);
    if (p.next === undefined) return out;
    after = p.next;
  }
}

export interface PageOptions {
  /** 1..the list's maximum; default DEFAULT_PAGE_SIZE. */
  limit?: number;
  /** The `next` of the previous page. */
  after?: string;
}

export const DEFAULT_PAGE_SIZE = 100;
/** Maximum page of requests, arbitrators and policy dependencies. */
export const MAX_PAGE_SIZE = 1000;
/** Maximum page of pending items (each carries a request view and share envelopes). */
export const MAX_PENDING_PAGE_SIZE = 100;

// ---------------------------------------------------------------------------------------------------------------
// Cursors: opaque (base64url JSON of the list's name and the last item's position), checked when read back

const CURSOR = /^[A-Za-z0-9_-]{1,512}$/;

export function encodeCursor(list: string, position: (string | number)[]): string {
  return Buffer.from(JSON.stringify([list, ...position])).toString("base64url");
}

export function decodeCursor(cursor: unknown, list: string, shape: readonly ("string" | "number")[]): (string | number)[] {
  const bad = () => new RecoveryServiceError("invalid_argument", "after: not a cursor of this list (use the `next` of the previous page)");
  if (typeof cursor !== "string" || !CURSOR.test(cursor)) throw bad();
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(cursor, "base64url").toString("utf8"));
  } catch {
    throw bad();
  }
  if (!Array.isArray(v) || v.length !== shape.length + 1 || v[0] !== list) throw bad();
  const pos = v.slice(1) as unknown[];
  for (const [i, t] of shape.entries()) {
    const x = pos[i];
    if (t === "number" ? !Number.isSafeInteger(x) : typeof x !== "string" || x.length === 0 || x.length > 128) throw bad();
  }
  return pos as (string | number)[];
}

export function pageLimit(limit: unknown, max: number): number {
  if (limit === undefined) return Math.min(DEFAULT_PAGE_SIZE, max);
  if (typeof limit !== "number" || !Number.isInteger(limit) || limit < 1 || limit > max) throw new RecoveryServiceError("invalid_argument", `limit must be 1..${max}`, { max });
  return limit;
}
