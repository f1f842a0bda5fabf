// Operators and auditors authenticate with bearer API tokens that carry roles. Only a SHA-256 of each token is
// stored; the token itself is shown once, when it is created. A route declares the roles it admits in its
// config (`config: { roles: ["operator"] }`); a route without roles is public (health, CRL, OpenAPI).
// A terminal's token is bound to one card (`Principal.cardId`): it is issued only after that card proved itself
// (terminal-routes.ts), and routes about a card check the binding with `requireCardAccess`.
// An arbitrator's token (role "arbitrator", key reproduction: recovery-routes.ts) is bound to one arbitrator by its
// operators-table name; the routes that admit it check the binding.
// An issuing service's token at a CA of another site (role "issuer", ca-routes.ts) may certify bare public keys —
// keys in that service's own custody; that route checks the role itself, and admin does not imply it.

import { timingSafeEqual } from "node:crypto";
import { hashToken, type Principal, type Role } from "../issuer/operators.ts";
import type { FastifyInstance, FastifyRequest } from "fastify";
import { ApiProblem } from "./problem.ts";

export { hashToken, newToken, ROLES, type Principal, type Role } from "../issuer/operators.ts";

/** Looks a token hash up (e.g. in the operators table); undefined when unknown or disabled. */
export type TokenLookup = (tokenHash: string) => Promise<Principal | undefined>;

export function sameHash(a: string, b: string): boolean {
  const x = Buffer.from(a, "hex");
  const y = Buffer.from(b, "hex");
  return x.length === y.length && timingSafeEqual(x, y);
}

declare module "fastify" {
  interface FastifyRequest {
    principal?: Principal;
  }
  interface FastifyContextConfig {
    roles?: Role[];
  }
}

/**
 * The first lookup that knows the hash wins (e.g. terminal tokens, then the operators table). The terminal tokens'
 * lookup (terminal-sessions.ts) reads the system DB on every request, uncached, so a token issued, retired or expired on
 * any server is seen at once by all of them (issue 16 §1), and its card's state is read on every request too.
 */
export function anyOf(...lookups: TokenLookup[]): TokenLookup {
  return async (hash) => {
    for (const l of lookups) {
      const p = await l(hash);
      if (p) return p;
    }
    return undefined;
  };
}

/**
 * Remembers what `lookup` found for `ttlMs` (the operators table is read once per token per window instead of on
 * every request; seen in the issuance profile). Only hits are kept, so a new token works at once; a disabled
 * operator's token keeps working for at most `ttlMs` (default 2 s) — on each server, as the cache is per process:
 * that is the staleness bound across servers too. At most `max` entries (the oldest go first). Not used for the
 * terminal tokens (see anyOf).
 */
export function cachedLookup(lookup: TokenLookup, o: { ttlMs?: number; max?: number; now?: () => number } = {}): TokenLookup {
  const ttl = o.ttlMs ?? 2000;
  const max = o.max ?? 10_000;
  const now = o.now ?? Date.now;
  const hits = new Map<string, { p: Principal; until: number }>();
  return async (hash) => {
    const t = now();
    const hit = hits.get(hash);
    if (hit && hit.until > t) return hit.p;
    hits.delete(hash);
    const p = await lookup(hash);
    if (p) {
      if (hits.size >= max) hits.delete(hits.keys().next().value as string);
      hits.set(hash, { p, until: t + ttl });
    }
    return p;
  };
}

/**
 * A card's routes: admins, operators when `operators` is set, and a terminal bound to this very card. Anyone
 * else (notably a terminal bound to another card) gets 403.
 */
export function requireCardAccess(principal: Principal | undefined, cardId: string, o: { operators: boolean }): Principal {
  if (!principal) throw new ApiProblem(401, "unauthenticated", "Authentication required", "send Authorization: Bearer <API token>");
  if (principal.roles.includes("admin")) return principal;
  if (o.operators && principal.roles.includes("operator")) return principal;
  if (principal.roles.includes("terminal") && principal.cardId === cardId) return principal;
  throw new ApiProblem(403, "forbidden", "Forbidden", principal.roles.includes("terminal") ? "this terminal token is bound to another card" : "this needs a terminal token bound to this card");
}

/** Installs bearer-token authentication and per-route role checks (401 unauthenticated, 403 wrong role). */
export function installAuth(app: FastifyInstance, lookup: TokenLookup): void {
  app.decorateRequest("principal", undefined);
  app.addHook("onRequest", async (req: FastifyRequest) => {
    const roles = req.routeOptions.config?.roles;
    if (!roles?.length) return;
    const h = req.headers.authorization;
    const m = typeof h === "string" ? /^Bearer ([A-Za-z0-9_\-.~+/=]{8,200})$/.exec(h) : null;
    if (!m) throw new ApiProblem(401, "unauthenticated", "Authentication required", "send Authorization: Bearer <API token>");
    const principal = await lookup(hashToken(m[1]));
    if (!principal) throw new ApiProblem(401, "unauthenticated", "Authentication required", "unknown or revoked token");
    if (!principal.roles.some((r) => r === "admin" || roles.includes(r))) throw new ApiProblem(403, "forbidden", "Forbidden", `this needs one of the roles: ${roles.join(", ")}`);
    req.principal = principal;
  });
}
