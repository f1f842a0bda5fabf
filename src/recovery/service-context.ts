// What every part of the recovery service shares: the ServiceContext RecoveryService.open (service.ts) builds once —
// the system DB and its recovery repository, custody, the clock, custody's labels of the escrow key-encryption key
// and of the reproduction device's key pair, the reproduction lease — and the helpers every module uses: the
// boundary checks of ids and actors, public-key helpers, and the audit of refusals. Nothing here holds a secret.

import { createHash, createPublicKey, type KeyObject } from "node:crypto";
import type { KeyCustody, KeySetRef } from "../custody/custody.ts";
import { appendAudit } from "../store/audit.ts";
import type { Db } from "../store/db.ts";
import type { SqlRecoveryRepository } from "../store/recovery-repository.ts";
import type { JsonValue } from "../store/store.ts";
import { RecoveryServiceError, isRecoveryRefusal } from "./service-errors.ts";

/** The service's state, shared by its modules; fixed when the service opens. */
export interface ServiceContext {
  readonly db: Db;
  /** The recovery records in the system DB (src/store/recovery-repository.ts). */
  readonly repo: SqlRecoveryRepository;
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
// Boundary checks

const ID = /^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$/;
export const MAX_REASON = 1024;

export const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

export function checkId(v: unknown, what: string): asserts v is string {
  if (typeof v !== "string" || !ID.test(v)) throw new RecoveryServiceError("invalid_argument", `${what} must be 1-128 characters of [A-Za-z0-9._:@/-]`);
}

export function checkActor(actor: unknown): asserts actor is string {
  if (typeof actor !== "string" || actor.length === 0 || actor.length > 128) throw new RecoveryServiceError("invalid_argument", "actor must name who acts (1-128 characters)");
}

// ---------------------------------------------------------------------------------------------------------------
// Public keys

export const sha256Hex = (b: Uint8Array): string => createHash("sha256").update(b).digest("hex");

export function p256FromSpki(spki: Uint8Array, what: string): KeyObject {
  let k: KeyObject;
  try {
    k = createPublicKey({ key: Buffer.from(spki), format: "der", type: "spki" });
  } catch {
    throw new RecoveryServiceError("invalid_argument", `${what} is not a public key`);
  }
  if (k.asymmetricKeyType !== "ec" || k.asymmetricKeyDetails?.namedCurve !== "prime256v1") throw new RecoveryServiceError("invalid_argument", `${what} must be a P-256 public key`);
  return k;
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
  await appendAudit(ctx.db, {
    actor: actor || "unknown",
    action,
    subject: typeof subject === "string" && subject ? subject.slice(0, 128) : "unknown",
    details: {
      ...extra,
      check: refusal ? e.check : "error",
      // Refusals name ids and checks only (errors.ts); other errors are named by type, not message.
      message: refusal ? e.message : (e as Error)?.name ?? "Error",
      ...(refusal ? { details: jsonDetails(e.details) } : {}),
    },
    at: ctx.at(),
  });
}
