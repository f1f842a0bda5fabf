// The arbitrators of key reproduction (seed 001 embodiment 3, FIG. 9; claim 35 (a)): their registration with two
// P-256 public keys — one verifies their approvals, the other is what their shares are sealed to — and the views the
// routes and CLI show, key history included. Ids are never reused: a deregistered arbitrator's record stays
// (deregistration.ts); its keys rotate by a document it signs (key-rotation.ts). Public keys only.

import type { RecoveryRepository } from "./ports.ts";
import type { ArbitratorKeyRecord, ArbitratorRecord } from "./records.ts";
import { RecoveryError } from "./errors.ts";
import { decodeCursor, encodeCursor, MAX_PAGE_SIZE, pageLimit, type Page, type PageOptions } from "./paging.ts";
import { ArbitratorRegistry, type PublicKeyInput } from "./registry.ts";
import { checkActor, isObject, sha256Hex, type ServiceContext } from "./service-context.ts";
import { RecoveryServiceError } from "./service-errors.ts";

export interface ArbitratorInput {
  /** 1-128 characters of [A-Za-z0-9._:@-]. */
  id: string;
  /** e.g. ["user"], ["credit company"], ["service provider"], ["issuing-apparatus manager"] (FIG. 9). */
  roles?: string[];
  displayName?: string;
  /** ECDSA P-256 key that verifies the arbitrator's approvals (SPKI DER, PEM or KeyObject). */
  signingPublicKey: PublicKeyInput;
  /** ECDH P-256 key the arbitrator's shares are sealed to (SPKI DER, PEM or KeyObject). */
  encryptionPublicKey: PublicKeyInput;
}

export interface ArbitratorView {
  id: string;
  roles: string[];
  displayName?: string;
  /** SPKI DER. */
  signingPublicKey: Uint8Array;
  /** SPKI DER. */
  encryptionPublicKey: Uint8Array;
  /** SHA-256 of the encryption key's SPKI, hex (ShareEnvelopeHeader.recipientKeyId). */
  encryptionKeyId: string;
  registeredBy: string;
  registeredAt: Date;
  /** The version of the current keys: 1 at registration, +1 for each rotation. */
  keyVersion: number;
  status: "active" | "deregistered";
  deregistered?: { at: Date; by: string; reason: string };
  /** Every key version, oldest first (public key ids only). */
  keys: ArbitratorKeyVersionView[];
}

export interface ArbitratorKeyVersionView {
  version: number;
  /** SHA-256 of the SPKI, hex. */
  signingKeyId: string;
  encryptionKeyId: string;
  validFrom: Date;
  /** When the next version replaced it; absent for the current version. */
  retiredAt?: Date;
}

const isName = (v: unknown): v is string => typeof v === "string" && v.length >= 1 && v.length <= 64 && !/\p{Cc}/u.test(v);

function arbitratorView(a: ArbitratorRecord, keys: readonly ArbitratorKeyRecord[]): ArbitratorView {
  const v: ArbitratorView = {
    id: a.id,
    roles: [...a.roles],
    signingPublicKey: a.signingPublicKey.slice(),
    encryptionPublicKey: a.encryptionPublicKey.slice(),
    encryptionKeyId: sha256Hex(a.encryptionPublicKey),
    registeredBy: a.registeredBy,
    registeredAt: new Date(a.registeredAt),
    keyVersion: a.keyVersion ?? 1,
    status: a.disabledAt === undefined ? "active" : "deregistered",
    keys: keys
      .filter((k) => k.arbitratorId === a.id)
      .map((k) => {
        const kv: ArbitratorKeyVersionView = { version: k.version, signingKeyId: sha256Hex(k.signingPublicKey), encryptionKeyId: sha256Hex(k.encryptionPublicKey), validFrom: new Date(k.validFrom) };
        if (k.retiredAt !== undefined) kv.retiredAt = new Date(k.retiredAt);
        return kv;
      }),
  };
  if (a.displayName !== undefined) v.displayName = a.displayName;
  if (a.disabledAt !== undefined) v.deregistered = { at: new Date(a.disabledAt), by: a.disabledBy ?? "", reason: a.disabledReason ?? "" };
  return v;
}

export async function arbitratorViews(records: readonly ArbitratorRecord[], repo: RecoveryRepository): Promise<ArbitratorView[]> {
  const keys = await repo.arbitratorKeys(records.map((a) => a.id));
  return records.map((a) => arbitratorView(a, keys));
}

/** Claim 35 (a): registers an arbitrator with its two P-256 public keys. Ids are never reused. */
export async function registerArbitrator(ctx: ServiceContext, input: ArbitratorInput, actor: string): Promise<ArbitratorView> {
  checkActor(actor);
  if (!isObject(input)) throw new RecoveryServiceError("invalid_argument", "expected { id, roles?, displayName?, signingPublicKey, encryptionPublicKey }");
  const roles = input.roles ?? [];
  if (!Array.isArray(roles) || roles.length > 16 || !roles.every(isName)) throw new RecoveryServiceError("invalid_argument", "roles must be at most 16 names of 1-64 printable characters");
  if (input.displayName !== undefined && !isName(input.displayName)) throw new RecoveryServiceError("invalid_argument", "displayName must be 1-64 printable characters");
  let checked;
  try {
    // The registry's own checks: id syntax, P-256 public keys.
    checked = new ArbitratorRegistry().register({ id: input.id, signingPublicKey: input.signingPublicKey, encryptionPublicKey: input.encryptionPublicKey });
  } catch (e) {
    if (e instanceof RecoveryError)
      throw new RecoveryServiceError("invalid_argument", e.message.replace(/^unknown_arbitrator: /, ""), { arbitrator: typeof input.id === "string" ? input.id : undefined });
    throw e;
  }
  const rec: ArbitratorRecord = {
    id: checked.id,
    roles: [...roles],
    signingPublicKey: new Uint8Array(checked.signingKey.export({ format: "der", type: "spki" })),
    encryptionPublicKey: new Uint8Array(checked.encryptionKey.export({ format: "der", type: "spki" })),
    registeredBy: actor,
    registeredAt: ctx.at(),
  };
  if (input.displayName !== undefined) rec.displayName = input.displayName;
  await ctx.store.transaction(async ({ repo, audit }) => {
    // ids are never reused: a deregistered arbitrator's record stays
    if (!(await repo.insertArbitrator(rec))) throw new RecoveryServiceError("arbitrator_exists", `arbitrator ${rec.id} is already registered`, { arbitrator: rec.id });
    await audit({
      actor,
      action: "recovery.arbitrator.register",
      subject: rec.id,
      details: { roles: rec.roles, signingKeyId: sha256Hex(rec.signingPublicKey), encryptionKeyId: sha256Hex(rec.encryptionPublicKey) },
      at: rec.registeredAt,
    });
  });
  return arbitratorView(rec, [
    { arbitratorId: rec.id, version: 1, signingPublicKey: rec.signingPublicKey, encryptionPublicKey: rec.encryptionPublicKey, validFrom: rec.registeredAt, recordedBy: actor },
  ]);
}

/** Every arbitrator, by id (all pages; the routes page with arbitratorsPage). */
export async function arbitrators(ctx: ServiceContext): Promise<ArbitratorView[]> {
  return arbitratorViews(await ctx.repo.arbitrators(), ctx.repo);
}

/** A page of the arbitrators, by id (deregistered ones included, with their status). */
export async function arbitratorsPage(ctx: ServiceContext, page: PageOptions = {}): Promise<Page<ArbitratorView>> {
  const limit = pageLimit(page.limit, MAX_PAGE_SIZE);
  const after = page.after === undefined ? undefined : (decodeCursor(page.after, "arbitrators", ["string"])[0] as string);
  const recs = await ctx.repo.arbitrators({ after, limit: limit + 1 });
  const items = await arbitratorViews(recs.slice(0, limit), ctx.repo);
  return recs.length > limit ? { items, next: encodeCursor("arbitrators", [items[items.length - 1].id]) } : { items };
}

export async function arbitrator(ctx: ServiceContext, id: string): Promise<ArbitratorView | undefined> {
  const a = await ctx.repo.arbitrator(id);
  return a && (await arbitratorViews([a], ctx.repo))[0];
}

/**
 * Whether a token bound to arbitrator `id` may act now: only while the arbitrator is registered and not deregistered,
 * read on every call (never from a cache). A refusal is audited ("recovery.arbitrator.access.refuse", check
 * arbitrator_disabled, with the method and route attempted) and answered with its reason; undefined: admitted.
 */
export async function arbitratorAccessRefusal(ctx: ServiceContext, id: string, attempt: { method: string; route: string }): Promise<string | undefined> {
  const a = await ctx.repo.arbitrator(id);
  if (a && a.disabledAt === undefined) return undefined;
  await ctx.store.audit({
    actor: id,
    action: "recovery.arbitrator.access.refuse",
    subject: id,
    details: { check: "arbitrator_disabled", method: attempt.method, route: attempt.route },
    at: ctx.at(),
  });
  return a ? `arbitrator ${id} is deregistered: its tokens no longer work` : `arbitrator ${id} is not registered`;
}
