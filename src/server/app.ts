// The HTTP shell around the domain modules: Fastify with JSON schemas on every route, the OpenAPI document they
// generate (/openapi.json), one problem+json error shape, Prometheus metrics (/metrics), pino logs that redact
// secrets. Routes are plugins registered by the caller; this file knows no domain.

import Fastify, { type FastifyInstance, type FastifyReply, type FastifyServerOptions } from "fastify";
import swagger from "@fastify/swagger";
import { installProblemHandlers, PROBLEM_TYPE_BASE } from "./problem.ts";
import { Metrics } from "./metrics.ts";

export interface ServerOptions {
  logger?: FastifyServerOptions["logger"];
  metrics?: Metrics;
  /** Largest accepted request body in bytes (default 1 MiB). */
  bodyLimit?: number;
  title?: string;
}

/** Paths and headers whose values never reach a log line. */
export const REDACT = ["req.headers.authorization", "req.headers.cookie", "*.password", "*.token", "*.pin", "*.puk", "*.privateKey", "*.key"];

export async function buildServer(o: ServerOptions = {}): Promise<{ app: FastifyInstance; metrics: Metrics }> {
  const metrics = o.metrics ?? new Metrics();
  const logger = o.logger === undefined ? false : o.logger === true ? { level: "info", redact: REDACT } : o.logger;
  const app = Fastify({
    logger,
    bodyLimit: o.bodyLimit ?? 1 << 20,
    // Unknown fields are errors, not silently dropped: every body schema sets additionalProperties: false.
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: true } },
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
      void (reply as FastifyReply).code(status).type("application/problem+json").send({ type: PROBLEM_TYPE_BASE + "bad-request", title: "Bad request", status, detail: err.message.slice(0, 300), instance });
    },
  });
  installProblemHandlers(app, (status) => metrics.errors.inc({ status: String(status) }));
  await app.register(swagger, {
    openapi: { info: { title: o.title ?? "cardkms API", version: "0.1.0" } },
    refResolver: { buildLocalReference: (json, _baseUri, _fragment, i) => (typeof json.$id === "string" ? json.$id : `def-${i}`) },
  });
  app.addHook("onResponse", async (req, reply) => {
    metrics.latency.observe({ method: req.method, route: req.routeOptions.url ?? "unknown", status: String(reply.statusCode) }, reply.elapsedTime / 1000);
  });
  app.get("/openapi.json", { schema: { hide: true } }, async () => app.swagger());
  app.get("/metrics", { schema: { hide: true } }, async (_req, reply) => reply.type(metrics.registry.contentType).send(await metrics.registry.metrics()));
  app.get("/healthz", { schema: { response: { 200: { type: "object", properties: { ok: { type: "boolean" } } } } } }, async () => ({ ok: true }));
  return { app, metrics };
}
