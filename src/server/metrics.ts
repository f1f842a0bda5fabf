// Prometheus metrics (GET /metrics): issuances, deliveries, rotations, errors by status, request latencies.
import { Counter, Histogram, Registry, collectDefaultMetrics } from "prom-client";

export class Metrics {
  readonly registry = new Registry();
  readonly issuances = new Counter({ name: "cardkms_issuances_total", help: "Cards issued", registers: [this.registry] });
  readonly deliveries = new Counter({ name: "cardkms_deliveries_total", help: "Credentials delivered to cards", labelNames: ["path"], registers: [this.registry] });
  readonly rotations = new Counter({ name: "cardkms_rotations_total", help: "Card key rotations completed", labelNames: ["strategy"], registers: [this.registry] });
  readonly revocations = new Counter({ name: "cardkms_revocations_total", help: "Certificates revoked", registers: [this.registry] });
  readonly errors = new Counter({ name: "cardkms_http_errors_total", help: "HTTP error responses", labelNames: ["status"], registers: [this.registry] });
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
