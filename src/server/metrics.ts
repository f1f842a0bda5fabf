// Prometheus metrics: issuances, deliveries, rotations, errors by status, request latencies, and the refusals and
// retirements of the server's limits (who is hitting them, on which route). Read by auditors: GET /metrics on the
// API answers auditor (and admin) tokens only, or — config metrics.access "loopback" — a separate listener bound to
// a loopback address serves it without a token (serveMetricsOnLoopback).
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { Counter, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import { isLoopbackHost } from "./config.ts";

export class Metrics {
  readonly registry = new Registry();
  readonly issuances = new Counter({ name: "cardkms_issuances_total", help: "Cards issued", registers: [this.registry] });
  readonly deliveries = new Counter({ name: "cardkms_deliveries_total", help: "Credentials delivered to cards", labelNames: ["path"], registers: [this.registry] });
  readonly rotations = new Counter({ name: "cardkms_rotations_total", help: "Card key rotations completed", labelNames: ["strategy"], registers: [this.registry] });
  readonly revocations = new Counter({ name: "cardkms_revocations_total", help: "Certificates revoked", registers: [this.registry] });
  readonly errors = new Counter({ name: "cardkms_http_errors_total", help: "HTTP error responses", labelNames: ["status"], registers: [this.registry] });
  /** Requests a limit refused: reason "rate-limited" (per client address), "too-many-sessions" (a table's bound), "body-too-large". */
  readonly refusals = new Counter({
    name: "cardkms_http_refusals_total",
    help: "Requests refused by a limit of the server, by reason and route",
    labelNames: ["reason", "route"],
    registers: [this.registry],
  });
  /** Entries retired to make room for newer ones: card-login handshakes and terminal tokens, by the bound reached. */
  readonly retired = new Counter({
    name: "cardkms_sessions_retired_total",
    help: "Pending handshakes and terminal tokens retired for a newer one, by table and bound (card, card-client, total)",
    labelNames: ["table", "bound"],
    registers: [this.registry],
  });
  readonly latency = new Histogram({
    name: "cardkms_http_request_duration_seconds",
    help: "HTTP request latency",
    labelNames: ["method", "route", "status"],
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [this.registry],
  });

  constructor(opts: { defaults?: boolean } = {}) {
    if (opts.defaults ?? true) collectDefaultMetrics({ register: this.registry, prefix: "cardkms_" });
  }
}

/**
 * GET /metrics without a token on a listener of its own, bound to a loopback address (nothing else is served there):
 * for a scraper on the same host, while the API's /metrics keeps asking for an auditor token.
 */
export async function serveMetricsOnLoopback(metrics: Metrics, o: { host: string; port: number }): Promise<{ url: string; close(): Promise<void> }> {
  if (!isLoopbackHost(o.host)) throw new Error(`metrics listener: ${o.host} is not a loopback address`);
  const server = createServer((req, res) => {
    if (req.method !== "GET" || (req.url ?? "").split("?")[0] !== "/metrics") {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
      return;
    }
    metrics.registry.metrics().then(
      (text) => res.writeHead(200, { "content-type": metrics.registry.contentType }).end(text),
      () => res.writeHead(500, { "content-type": "text/plain" }).end("metrics unavailable\n"),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(o.port, o.host.replace(/^\[|\]$/g, ""), () => resolve());
  });
  const a = server.address() as AddressInfo;
  const host = a.family === "IPv6" ? `[${a.address}]` : a.address;
  return {
    url: `http://${host}:${a.port}/metrics`,
    close: () => new Promise<void>((resolve) => (server.closeAllConnections(), server.close(() => resolve()))),
  };
}
