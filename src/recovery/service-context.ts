// What every part of the recovery service shares: the ServiceContext RecoveryService.open (service.ts) builds once —
// its storage port (ports.ts) and the recovery records in it, custody, the clock, custody's labels of the escrow
// key-encryption key and of the reproduction device's key pair, the reproduction lease — and the helpers every module
// uses: the boundary checks of ids and actors, public-key helpers, and the audit of refusals (through the port, in a
// transaction of its own). Nothing here holds a secret; no SQL.

import type { KeyCustody, KeySetRef } from "../custody/custody.ts";
import type { JsonValue } from "../util/json.ts";
import type { RecoveryRepository, RecoveryStore } from "./ports.ts";
import { isRecoveryRefusal } from "./service-errors.ts";

export { checkActor, checkId, isObject, MAX_REASON, p256FromSpki, sha256Hex } from "./checks.ts";

/** The service's state, shared by its modules; fixed when the service opens. */
export interface ServiceContext {
  /** The service's storage: records, units of work, the audit log, ids (ports.ts; src/store/recovery-store.ts). */
  readonly store: RecoveryStore;
  /** The recovery records outside any transaction (store.repo). */
  readonly repo: RecoveryRepository;
  readonly custody: KeyCustody;
  /** Time source (RecoveryServiceOptions.clock). */
  readonly now: () => Date;
  /** now(), in ms since the epoch: the times of records and audit entries. */
  readonly at: () => number;
  /** Custody label of the escrow key-encryption key. */
  readonly kekLabel: string;
  /** Custody label of the reproduction device's key pair, and its public key (SPKI DER). */
  readonly deviceLabel: string;
  readonly deviceSpki: Uint8Array;
  /** How long a reproduction holds its request without renewing its lease (RecoveryServiceOptions.reproductionLeaseMs). */
  readonly leaseMs: number;
}

// ---------------------------------------------------------------------------------------------------------------
// The audit log

/** A key set reference as the audit log names it (no key). */
export const keySetSummary = (k: KeySetRef): { [key: string]: JsonValue } => ({ kind: k.kind, kvn: k.kvn, card: k.cardId ?? null });

/** Plain JSON of a refusal's details (undefined members dropped) for the audit log. */
export const jsonDetails = (d: Readonly<Record<string, unknown>>): { [key: string]: JsonValue } => JSON.parse(JSON.stringify(d ?? {})) as { [key: string]: JsonValue };

/** Audits a refusal (or another error, named by its type only) of `action` on `subject`, outside any transaction. */
export async function auditRefusal(ctx: ServiceContext, actor: string, action: string, subject: string, e: unknown, extra: { [key: string]: JsonValue }): Promise<void> {
  const refusal = isRecoveryRefusal(e);
  await ctx.store.audit({
    actor: actor || "unknown",
    action,
    subject: typeof subject === "string" && subject ? subject.slice(0, 128) : "unknown",
    details: {
      ...extra,
      check: refusal ? e.check : "error",
      // Refusals name ids and checks only (errors.ts); other errors are named by type, not message.
      message: refusal ? e.message : ((e as Error)?.name ?? "Error"),
      ...(refusal ? { details: jsonDetails(e.details) } : {}),
    },
    at: ctx.at(),
  });
}
