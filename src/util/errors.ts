// The one error model of the project's domain (issue 10 §4): every refusal or failure a domain role reports is a
// DomainError with
//   - a kind, which alone decides the HTTP status (server/problem.ts holds the one table: invalid 400,
//     not_found 404, conflict 409, refused 422, unavailable 503);
//   - a check naming what refused (snake_case, stable: clients and the audit log match on it);
//   - non-secret details (ids, names, counts) for the problem body and the audit log.
// Never: a secret, a share, key material or a caller's raw input in the message or the details.
//
// Each domain keeps its own subclasses (IssuerError, RecoveryError, StoreError, ...) so that callers can catch
// one role's errors, but none needs a mapper of its own: the kind says how to answer.

export type ErrorKind = "invalid" | "not_found" | "conflict" | "refused" | "unavailable";

export const ERROR_KINDS: readonly ErrorKind[] = ["invalid", "not_found", "conflict", "refused", "unavailable"];

export class DomainError extends Error {
  constructor(
    readonly kind: ErrorKind,
    /** What refused, in snake_case (e.g. "card_state", "forged_signature"); the kind when nothing finer applies. */
    readonly check: string,
    message: string,
    /** Non-secret details for the problem body and the audit log. */
    readonly details: Readonly<Record<string, unknown>> = {},
  ) {
    super(message);
    this.name = "DomainError";
  }
}

export const isDomainError = (e: unknown): e is DomainError => e instanceof DomainError;

/** True when `e` is a DomainError of `kind` (e.g. a store's conflict the domain turns into its own refusal). */
export const isKind = (e: unknown, kind: ErrorKind): e is DomainError => e instanceof DomainError && e.kind === kind;
