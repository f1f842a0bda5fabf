// The one paging of the project's lists: a stable order, a `limit` with a maximum, an opaque `after` cursor
// (base64url JSON of the list's name and the last item's position, checked when read back: a cursor of another
// list is refused), and a page that carries `next` when more follow. Clients walk a list with allPages.
//
// Never: a cursor that names anything but positions (ids, sequence numbers, times) of the list's own items.

import { DomainError } from "./errors.ts";

/** A page of a list: `next` (an opaque cursor for `after`) when more follow. */
export interface Page<T> {
  items: T[];
  next?: string;
}

export interface PageOptions {
  /** 1..the list's maximum; default DEFAULT_PAGE_SIZE. */
  limit?: number;
  /** The `next` of the previous page. */
  after?: string;
}

export const DEFAULT_PAGE_SIZE = 100;

/** How a list refuses a bad `limit` or `after` (by default a DomainError invalid, check invalid_argument). */
export type InvalidPaging = (message: string, details?: Record<string, unknown>) => Error;

const invalidArgument: InvalidPaging = (message, details = {}) => new DomainError("invalid", "invalid_argument", message, details);

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

const CURSOR = /^[A-Za-z0-9_-]{1,512}$/;

export function encodeCursor(list: string, position: (string | number)[]): string {
  return Buffer.from(JSON.stringify([list, ...position])).toString("base64url");
}

/** The position a cursor of `list` names, each member of the type `shape` says; refuses anything else. */
export function decodeCursor(cursor: unknown, list: string, shape: readonly ("string" | "number")[], invalid: InvalidPaging = invalidArgument): (string | number)[] {
  const bad = () => invalid("after: not a cursor of this list (use the `next` of the previous page)");
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

/** `limit` checked against 1..`max` (undefined: the default page size, at most `max`). */
export function pageLimit(limit: unknown, max: number, invalid: InvalidPaging = invalidArgument): number {
  if (limit === undefined) return Math.min(DEFAULT_PAGE_SIZE, max);
  if (typeof limit !== "number" || !Number.isInteger(limit) || limit < 1 || limit > max) throw invalid(`limit must be 1..${max}`, { max });
  return limit;
}
