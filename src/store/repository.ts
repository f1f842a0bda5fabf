// What every repository of the issuer's store shares (store.ts is their facade): the StoreError every one of them
// throws, the mapping of the engines' constraint violations to it, the checks and conversions more than one of them
// makes, and StoreRepository, the base that gives each the DB (or transaction) it is bound to, its engine, its clock
// and Store.transaction's rule.
//
// Never: a query of its own. The rows are the repositories' (user-, card-, key-set-, key-pair-, certificate-,
// package-, rotation-job-, event-, webhook- and operator-repository.ts).

import type { Transaction } from "kysely";
import { DomainError } from "../util/errors.ts";
import { engineOf, type Database, type Db, type Engine } from "./db.ts";

export type { JsonValue } from "../util/json.ts";

/** A store's refusal: a DomainError (src/util/errors.ts) whose check is its kind; `code` names the kind too. */
export class StoreError extends DomainError {
  constructor(
    readonly code: "not_found" | "conflict" | "invalid",
    message: string,
  ) {
    super(code, code, message);
    this.name = "StoreError";
  }
}

/** True for a unique, foreign-key or check violation on either engine. */
export function isConstraintViolation(e: unknown): boolean {
  if (typeof e !== "object" || e === null) return false;
  const code = (e as { code?: unknown }).code;
  if (typeof code !== "string") return false;
  return code.startsWith("SQLITE_CONSTRAINT") || code === "23505" || code === "23503" || code === "23514";
}

/** Maps the engines' unique / foreign-key violations to one StoreError("conflict"). */
export async function insertOrConflict<T>(p: Promise<T>, message: string): Promise<T> {
  try {
    return await p;
  } catch (e) {
    if (isConstraintViolation(e)) throw new StoreError("conflict", message);
    throw e;
  }
}

export function checkValidity(what: string, from: number, until: number): void {
  if (!Number.isSafeInteger(from) || !Number.isSafeInteger(until)) throw new StoreError("invalid", `${what} validity: expected epoch ms integers`);
  if (from > until) throw new StoreError("invalid", `${what} validity: starts (${from}) after it ends (${until})`);
}

export const buf = (b: Uint8Array): Buffer => (Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength));

/**
 * A repository of the issuer's store bound to the system DB or to one transaction of it, with the store's clock.
 * `Self` is the repository's own class: transaction() hands `fn` one bound to the transaction.
 */
export abstract class StoreRepository<Self> {
  readonly engine: Engine;

  constructor(
    readonly db: Db | Transaction<Database>,
    protected readonly clock: () => number,
  ) {
    this.engine = engineOf(db);
  }

  now(): number {
    return this.clock();
  }

  /** This repository bound to `trx`, with the same clock. */
  protected abstract bind(trx: Transaction<Database>): Self;

  /**
   * Store.transaction for one repository: runs `fn` in one transaction with this repository bound to it. Inside a
   * transaction already, `fn` joins it.
   */
  protected transaction<T>(fn: (repo: Self) => Promise<T>): Promise<T> {
    if (this.db.isTransaction) return fn(this as unknown as Self);
    return (this.db as Db).transaction().execute((trx) => fn(this.bind(trx)));
  }
}
