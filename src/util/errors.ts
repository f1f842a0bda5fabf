// The one error model of the project's domain (issue 10 §4): every refusal or failure a domain role reports is a
// DomainError with
//   - a kind, which alone decides the HTTP status (server/problem.ts holds the one table: invalid 400,
//     not_found 404, conflict 409, refused 422, unavailable 503, unauthenticated 401: a party that had to prove
//     who it is did not, e.g. a card at its login);
//   - a check naming what refused (snake_case, stable: clients and the audit log match on it);
//   - non-secret details (ids, names, counts) for the problem body and the audit log.
// Never: a secret, a share, key material or a caller's raw input in the message or the details.
//
// Each domain keeps its own subclasses (IssuerError, RecoveryError, StoreError, ...) so that callers can catch
// one role's errors, but none needs a mapper of its own: the kind says how to answer. A subclass whose answer has a
// problem type of its own (recovery's "recovery-conflict", the CA protocol's "urn:cardkms:ca:refused") says so in
// problem(); one whose refusal is really its cause's (keygen: the card left active mid-session) in answeredWith().

export type ErrorKind = "invalid" | "not_found" | "conflict" | "refused" | "unavailable" | "unauthenticated";

/** How the problem+json answer shows a DomainError when its kind's type and title do not say enough. */
export interface ProblemShape {
  /** A slug under the API's problem base (e.g. "card-state"), or an absolute URI (e.g. "urn:cardkms:ca:refused"). */
  type: string;
  title: string;
  /** The problem's detail; the error's message when absent. */
  detail?: string;
  /** false: the answer carries no `check` member (an answer that had none before the one error model, kept as it was). */
  check?: false;
}

export class DomainError extends Error {
  constructor(
    readonly kind: ErrorKind,
    /** What refused (e.g. "card_state", "forged_signature", "csr-signature"); the kind when nothing finer applies. */
    readonly check: string,
    message: string,
    /** Non-secret details for the problem body and the audit log. */
    readonly details: Readonly<Record<string, unknown>> = {},
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = "DomainError";
  }

  /** The problem type and title of this error's answer; undefined: its kind's. */
  problem(): ProblemShape | undefined {
    return undefined;
  }

  /** The error the caller is answered with: this one, unless a subclass passes on a cause that explains it better. */
  answeredWith(): DomainError {
    return this;
  }
}

/** True when `e` is a DomainError of `kind` (e.g. a store's conflict the domain turns into its own refusal). */
export const isKind = (e: unknown, kind: ErrorKind): e is DomainError => e instanceof DomainError && e.kind === kind;
