// The API's principals: operators (people and tools) and the bearer tokens they act with. Roles say what a token may
// do (server/auth.ts admits or refuses a route by them); only a SHA-256 of each token is stored and the token is
// shown once, when it is made. Creating and disabling an operator is audited in the transaction that records it.
// Arbitrator tokens (key reproduction, claim 35 (a)) are operators too: role arbitrator, named
// "arbitrator:<arbitratorId>:<tokenId>" (arbitratorTokenName), which binds each to one arbitrator; issued, refused and
// revoked here with their "recovery.arbitrator.token.*" audit entries (the routes: server/recovery-routes/).
//
// Never: a token or its hash in the audit log, an error or a log line; a token of role "terminal" here (those come
// from a card's proof, terminal-routes.ts).

import { createHash, randomBytes } from "node:crypto";
import { DomainError } from "../util/errors.ts";
import type { AuditLog } from "./ports.ts";

export type Role = "admin" | "operator" | "auditor" | "terminal" | "arbitrator" | "issuer";
export const ROLES: readonly Role[] = ["admin", "operator", "auditor", "terminal", "arbitrator", "issuer"];

/** Who a request acts as: a name and its roles. */
export interface Principal {
  name: string;
  roles: Role[];
  /** For a terminal: the card it acts for. */
  cardId?: string;
}

/** An operator as stored: hashes only, disabled and never deleted. */
export interface Operator {
  id: string;
  name: string;
  passwordHash: string | null;
  tokenHash: string | null;
  roles: string[];
  createdAt: number;
  disabledAt: number | null;
}

/** What operators need of the store (src/store/operator-repository.ts through Store). */
export interface OperatorStore extends AuditLog {
  now(): number;
  transaction<T>(fn: (store: OperatorStore) => Promise<T>): Promise<T>;
  /** Stores an operator with HASHES of its password and/or token; a DomainError conflict when the name is taken. */
  createOperator(input: { id?: string; name: string; passwordHash?: string | null; tokenHash?: string | null; roles: string[] }): Promise<Operator>;
  /** The enabled operator of that name. */
  getOperatorByName(name: string): Promise<Operator | undefined>;
  getOperatorByTokenHash(tokenHash: string): Promise<Operator | undefined>;
  disableOperator(id: string): Promise<void>;
  /** The enabled operators whose names start with `prefix` (exactly: no wildcards). */
  enabledOperatorsNamed(prefix: string): Promise<Operator[]>;
}

export function hashToken(token: string): string {
  return createHash("sha256").update(token, "utf8").digest("hex");
}

/** A fresh API token and the hash to store. */
export function newToken(): { token: string; hash: string } {
  const token = `ckms_${randomBytes(32).toString("base64url")}`;
  return { token, hash: hashToken(token) };
}

/** Looks API tokens up among the operators: enabled operators only, known roles only (never "terminal"). */
export function operatorLookup(store: Pick<OperatorStore, "getOperatorByTokenHash">): (tokenHash: string) => Promise<Principal | undefined> {
  return async (hash) => {
    const op = await store.getOperatorByTokenHash(hash);
    if (!op || op.disabledAt !== null) return undefined;
    const roles = op.roles.filter((r): r is Role => (ROLES as readonly string[]).includes(r) && r !== "terminal");
    return roles.length ? ({ name: op.name, roles } satisfies Principal) : undefined;
  };
}

/**
 * Creates an operator with a fresh API token (bootstrap and the CLI). Only the token's hash is stored; the token
 * is returned once and never again. Audited ("operator.created": by `actor`, the operator's id, name and roles —
 * never the token or its hash) in the transaction that records it.
 */
export async function createOperatorToken(store: OperatorStore, name: string, roles: Role[], actor = "system"): Promise<{ token: string; operator: Operator }> {
  if (typeof name !== "string" || !/^[A-Za-z0-9_.@-]{1,64}$/.test(name)) throw new Error("operator name: 1-64 of A-Z a-z 0-9 _ . @ -");
  if (!Array.isArray(roles) || roles.length === 0) throw new Error(`operator roles: at least one of ${ROLES.filter((r) => r !== "terminal").join(", ")}`);
  for (const r of roles)
    if (!ROLES.includes(r) || r === "terminal") throw new Error(`operator role ${JSON.stringify(r)}: expected one of admin, operator, auditor (terminal tokens come from a card's proof)`);
  const { token, hash } = newToken();
  const operator = await store.transaction(async (s) => {
    const op = await s.createOperator({ name, tokenHash: hash, roles: [...new Set(roles)] });
    await s.audit({ actor, action: "operator.created", subject: op.id, details: { operatorId: op.id, name, roles: op.roles }, at: s.now() });
    return op;
  });
  return { token, operator };
}

/** Disables the enabled operator `name` (a running server stops taking its token within its 2 s lookup cache), audited ("operator.disabled"). False when there is none. */
export async function disableOperatorToken(store: OperatorStore, name: string, actor = "system"): Promise<boolean> {
  return store.transaction(async (s) => {
    const op = await s.getOperatorByName(name);
    if (!op) return false;
    await s.disableOperator(op.id);
    await s.audit({ actor, action: "operator.disabled", subject: op.id, details: { operatorId: op.id, name }, at: s.now() });
    return true;
  });
}

// ---- arbitrator tokens ---------------------------------------------------------------------------------------

/** The operators-table name of an arbitrator token: binds it to one arbitrator. */
export const arbitratorTokenName = (arbitratorId: string, tokenId: string) => `arbitrator:${arbitratorId}:${tokenId}`;
/** An arbitrator token's name: [1] the arbitrator, [2] the token id. */
export const ARBITRATOR_TOKEN_NAME = /^arbitrator:(.+):([0-9a-f]{16})$/;

/** A deregistered arbitrator gets no token (conflict, check arbitrator_disabled; answered as the recovery service's conflicts are). */
export class ArbitratorTokenRefusal extends DomainError {
  constructor(arbitratorId: string) {
    super("conflict", "arbitrator_disabled", `arbitrator ${arbitratorId} is deregistered: it gets no token`);
    this.name = "ArbitratorTokenRefusal";
  }

  override problem() {
    return { type: "recovery-conflict", title: "Conflict: arbitrator_disabled" };
  }
}

/**
 * Issues an API token bound to `arbitrator` (role arbitrator; as the recovery service reads it now): only its hash is
 * stored, the token is returned once. Audited "recovery.arbitrator.token.issue" {tokenId} in the transaction that
 * records it; for a deregistered arbitrator, refused (ArbitratorTokenRefusal) and audited
 * "recovery.arbitrator.token.refuse" {check: "arbitrator_disabled"}.
 */
export async function issueArbitratorToken(store: OperatorStore, arbitrator: { id: string; status: string }, actor: string): Promise<{ arbitrator: string; tokenId: string; token: string }> {
  const id = arbitrator.id;
  if (arbitrator.status !== "active") {
    await store.audit({ actor, action: "recovery.arbitrator.token.refuse", subject: id, details: { check: "arbitrator_disabled" } });
    throw new ArbitratorTokenRefusal(id);
  }
  const tokenId = randomBytes(8).toString("hex");
  const { token, hash } = newToken();
  await store.transaction(async (s) => {
    await s.createOperator({ name: arbitratorTokenName(id, tokenId), tokenHash: hash, roles: ["arbitrator"] });
    await s.audit({ actor, action: "recovery.arbitrator.token.issue", subject: id, details: { tokenId } });
  });
  return { arbitrator: id, tokenId, token };
}

/** Revokes the enabled token `tokenId` of arbitrator `arbitratorId`, audited ("recovery.arbitrator.token.revoke" {tokenId}); a DomainError not_found when there is none. */
export async function revokeArbitratorToken(store: OperatorStore, arbitratorId: string, tokenId: string, actor: string): Promise<void> {
  await store.transaction(async (s) => {
    const op = await s.getOperatorByName(arbitratorTokenName(arbitratorId, tokenId));
    if (!op) throw new DomainError("not_found", "not_found", `no active token ${tokenId} of arbitrator ${arbitratorId}`);
    await s.disableOperator(op.id);
    await s.audit({ actor, action: "recovery.arbitrator.token.revoke", subject: arbitratorId, details: { tokenId } });
  });
}

/**
 * Revokes every enabled token of arbitrator `arbitratorId` (it was deregistered), audited once
 * ("recovery.arbitrator.token.revoke" {tokenIds, reason}) when there was any; answers the token ids revoked.
 */
export async function revokeArbitratorTokens(store: OperatorStore, arbitratorId: string, reason: string, actor: string): Promise<string[]> {
  return store.transaction(async (s) => {
    const revoked: string[] = [];
    for (const t of await s.enabledOperatorsNamed(arbitratorTokenName(arbitratorId, ""))) {
      const m = ARBITRATOR_TOKEN_NAME.exec(t.name);
      if (!m || m[1] !== arbitratorId) continue;
      await s.disableOperator(t.id);
      revoked.push(m[2]);
    }
    if (revoked.length) await s.audit({ actor, action: "recovery.arbitrator.token.revoke", subject: arbitratorId, details: { tokenIds: revoked, reason } });
    return revoked;
  });
}
