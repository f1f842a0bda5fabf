// The HTTP shell around the domain modules: Fastify with JSON schemas on every route, the OpenAPI document they
// generate (/openapi.json), one problem+json error shape, Prometheus metrics (/metrics, for auditors), pino logs that
// redact secrets. Routes are plugins registered by the caller; this file knows no domain.
//
// Limits (issue 9 §2-3). Every public route — one without roles: the card login, the CRL, health, OpenAPI — is
// rate-limited per client address (@fastify/rate-limit; IPv6 by /64) and takes at most `publicBodyLimit` bytes of
// body. Validation stops at the first error (no allErrors: 80,000 unknown keys cost one error, not 80,000) and every
// problem body is bounded (problem.ts). Refusals by a limit (429, 413) are counted in /metrics by reason and route.

import Fastify, { type FastifyInstance, type FastifyReply, type FastifyServerOptions } from "fastify";
import rateLimit from "@fastify/rate-limit";
import swagger from "@fastify/swagger";
import { ApiProblem, installProblemHandlers, PROBLEM_TYPE_BASE } from "./problem.ts";
import { Metrics } from "./metrics.ts";

export interface ServerOptions {
  logger?: FastifyServerOptions["logger"];
  metrics?: Metrics;
  /** Largest accepted request body in bytes (default 1 MiB). */
  bodyLimit?: number;
  /** Largest body a public route (one without roles) accepts, in bytes (default 16 KiB); a route may set less. */
  publicBodyLimit?: number;
  /** Requests per client address to each public route: at most `max` per `windowMs` (default 300 a minute); false: unlimited. */
  rateLimit?: { max: number; windowMs: number } | false;
  /**
   * Who reads GET /metrics: "auditor" (default: an auditor or admin token; refused when no authentication is
   * installed), "public" (no token: a shell without authentication), or "none" (not served on this instance).
   */
  metricsAccess?: "auditor" | "public" | "none";
  title?: string;
}

export const DEFAULT_RATE_LIMIT = { max: 300, windowMs: 60_000 } as const;
export const DEFAULT_PUBLIC_BODY_LIMIT = 16 << 10;

/** Paths and headers whose values never reach a log line. */
export const REDACT = ["req.headers.authorization", "req.headers.cookie", "*.password", "*.token", "*.pin", "*.puk", "*.privateKey", "*.key"];

export async function buildServer(o: ServerOptions = {}): Promise<{ app: FastifyInstance; metrics: Metrics }> {
  const metrics = o.metrics ?? new Metrics();
  const logger = o.logger === undefined ? false : o.logger === true ? { level: "info", redact: REDACT } : o.logger;
  const app = Fastify({
    logger,
    bodyLimit: o.bodyLimit ?? 1 << 20,
    // Unknown fields are errors, not silently dropped: every body schema sets additionalProperties: false. The first
    // error ends validation (allErrors off): a body of 80,000 unknown keys is one error, not 80,000 (issue 9 §3).
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: false } },
    return503OnClosing: true,
    // Path parameters up to 256 characters: the longest identifiers in paths are 128 (backup object IDs, recovery
    // card and arbitrator IDs), percent-encoding aside. Longer ones are refused with 414 before any route runs.
    routerOptions: { maxParamLength: 256 },
    // Errors the router raises before any route runs (a path parameter over maxParamLength: 414; a malformed
    // %-escape: 400) bypass the error handler: answer them in the one problem shape too.
    frameworkErrors: (err, req, reply) => {
      const status = typeof err.statusCode === "number" && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 400;
      metrics.errors.inc({ status: String(status) });
      const instance = req.url.split("?")[0].slice(0, 200);
      void (reply as FastifyReply)
        .code(status)
        .type("application/problem+json")
        .send({ type: PROBLEM_TYPE_BASE + "bad-request", title: "Bad request", status, detail: err.message.slice(0, 300), instance });
    },
  });
  installProblemHandlers(app, (status, p, req) => {
    metrics.errors.inc({ status: String(status) });
    if (status === 429 || status === 413) metrics.refusals.inc({ reason: p.type.replace(PROBLEM_TYPE_BASE, ""), route: req.routeOptions?.url ?? "unknown" });
  });
  await installLimits(app, o);
  await app.register(swagger, {
    openapi: { info: { title: o.title ?? "cardkms API", version: "0.1.0" } },
    refResolver: { buildLocalReference: (json, _baseUri, _fragment, i) => (typeof json.$id === "string" ? json.$id : `def-${i}`) },
  });
  app.addHook("onResponse", async (req, reply) => {
    metrics.latency.observe({ method: req.method, route: req.routeOptions.url ?? "unknown", status: String(reply.statusCode) }, reply.elapsedTime / 1000);
  });
  app.get("/openapi.json", { schema: { hide: true } }, async () => app.swagger());
  const metricsAccess = o.metricsAccess ?? "auditor";
  if (metricsAccess !== "none")
    app.get("/metrics", { schema: { hide: true }, config: metricsAccess === "auditor" ? { roles: ["auditor"] } : {} }, async (req, reply) => {
      // installAuth checks the role; without it (a shell that installs no authentication) nobody is an auditor.
      if (metricsAccess === "auditor" && !req.principal?.roles.some((r) => r === "auditor" || r === "admin"))
        throw new ApiProblem(401, "unauthenticated", "Authentication required", "GET /metrics needs an auditor token");
      return reply.type(metrics.registry.contentType).send(await metrics.registry.metrics());
    });
  app.get("/healthz", { schema: { response: { 200: { type: "object", properties: { ok: { type: "boolean" } } } } } }, async () => ({ ok: true }));
  return { app, metrics };
}

/**
 * Rate limit and body limit of the public routes: each route declared from here on without roles gets them (a route
 * may set its own `config.rateLimit` or a smaller `bodyLimit`). Refusals are 429 problems with Retry-After. A route
 * that declares schemas but no body schema (GET, DELETE) takes no body at all: one is refused (413) before it is read.
 */
async function installLimits(app: FastifyInstance, o: ServerOptions): Promise<void> {
  const limit = o.rateLimit === undefined ? DEFAULT_RATE_LIMIT : o.rateLimit;
  const bodyLimit = o.publicBodyLimit ?? DEFAULT_PUBLIC_BODY_LIMIT;
  app.addHook("preParsing", async (req) => {
    const schema = req.routeOptions.schema;
    if (schema === undefined || schema.body !== undefined) return;
    const length = req.headers["content-length"];
    if ((length !== undefined && length !== "0") || req.headers["transfer-encoding"] !== undefined)
      throw new ApiProblem(413, "body-too-large", "Request body too large", `${req.method} ${req.routeOptions.url} takes no request body`);
  });
  // Before the plugin's own onRoute hook, which reads config.rateLimit.
  app.addHook("onRoute", (route) => {
    if (route.config?.roles?.length) return;
    route.bodyLimit = Math.min(route.bodyLimit ?? bodyLimit, bodyLimit);
    if (limit && route.config?.rateLimit === undefined) route.config = { ...route.config, rateLimit: { max: limit.max, timeWindow: limit.windowMs } };
  });
  if (!limit) return;
  const per = limit.windowMs % 1000 === 0 ? `${limit.windowMs / 1000} s` : `${limit.windowMs} ms`;
  await app.register(rateLimit, {
    global: false,
    errorResponseBuilder: (_req, ctx) =>
      new ApiProblem(429, "rate-limited", "Too many requests", `at most ${ctx.max} requests per ${per} from one client address to this route; retry in ${ctx.after}`),
  });
}
