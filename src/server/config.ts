// Issuer configuration: defaults, then a JSON file, then CARDKMS_* environment variables, validated as a whole
// at start-up. Every problem is reported at once, naming where the bad value came from.

import { readFileSync } from "node:fs";
import { Ajv } from "ajv";
import { parseCidr } from "../issuer/webhook-addresses.ts";

export interface IssuerConfig {
  listen: { host: string; port: number };
  /** SQLite file path (embedded default) or postgres:// URL. */
  database: string;
  custody:
    | {
        kind: "software";
        keystore: string;
        /**
         * Where the software keystore keeps its keys (issue 16 §3; docs/architecture.md): "file" (default) the file at
         * `keystore`, shared safely only by processes on one host; "store" the server's database, shared by every
         * server on it.
         */
        keystoreBackend?: "file" | "store";
      }
    | {
        kind: "pkcs11";
        module: string;
        tokenLabel: string;
        /**
         * Extraction paths of the custody self-test (src/custody/pkcs11-selftest.ts) that this deployment accepts by
         * name, having read what each means (README, security): the server refuses to start when any other path is open.
         */
        acceptOpenPaths?: string[];
      };
  ca: { mode: "local"; subject: string } | { mode: "remote"; url: string };
  /**
   * URL put in certificates' CRL distribution points; the server serves the CRL at its path too (besides /v1/crl and
   * /v1/ca/crl) and refuses to start when it cannot (src/server/crl-url.ts). Set it to where relying parties reach
   * this server, e.g. http://pki.example.org/crl behind a proxy (CRLs are signed: plain http is usual), or http://127.0.0.1:<listen port>/crl.
   */
  crlUrl: string;
  validity: { cardDays: number; keySetDays: number; certificateDays: number };
  expiry: { windowDays: number; scanIntervalSeconds: number };
  logLevel: "fatal" | "error" | "warn" | "info" | "debug" | "trace" | "silent";
  /**
   * DEVELOPMENT ONLY settings that weaken what the issuer promises; each is off by default and logged loudly when on.
   * publicTransportKeys: personalise blank cards over the GlobalPlatform public test keys 40..4F instead of per-card
   * keys from the manufacturer's KMC — anyone who records the relay gets the card key Sk (issue 17 §3).
   * developmentToken: start on a PKCS#11 token whatever the custody self-test finds open (SoftHSM2: its user PIN
   * reads card keys by derivation; issue 17 §1) — the report is still logged, as a warning.
   */
  insecure: { publicTransportKeys: boolean; developmentToken: boolean };
  /**
   * What keeps one client, card or principal from denying the service to the others (issue 9 §2-3).
   * rateLimitMax requests per rateLimitWindowSeconds from one client address (IPv6: its /64) to each public route
   * (card login, CRL, health, OpenAPI); publicBodyBytes: the largest body a public route accepts. Pending card-login
   * handshakes: handshakesPerCard of one card and handshakesPerCardClient of one card from one client address (a new
   * one retires the oldest), handshakesMax in all (the oldest retired when full). Terminal tokens:
   * terminalTokensPerCard of one card (a new one retires the oldest), terminalTokensMax in all (then 429). Relay
   * sessions (personalisation, delivery, rotation) and live relay sessions (key generation, reproduction): at most
   * relaySessionsPerPrincipal and liveRelaySessionsPerPrincipal open for one token's principal (then 429).
   */
  limits: {
    rateLimitMax: number;
    rateLimitWindowSeconds: number;
    publicBodyBytes: number;
    handshakesPerCard: number;
    handshakesPerCardClient: number;
    handshakesMax: number;
    terminalTokensPerCard: number;
    terminalTokensMax: number;
    relaySessionsPerPrincipal: number;
    liveRelaySessionsPerPrincipal: number;
  };
  /**
   * Who reads the metrics. access "token" (default): GET /metrics on the API, for auditor (or admin) tokens only.
   * "loopback": not on the API; served without a token on a listener of its own at host:port, which must be a
   * loopback address (127.0.0.0/8, ::1, localhost).
   */
  metrics: { access: "token" | "loopback"; host: string; port: number };
  /**
   * Where webhooks may point: loopback, private, link-local, CGNAT, unspecified, multicast, reserved and cloud metadata
   * addresses are refused (at registration and at each send, on the resolved address) unless a range of
   * allowAddresses ("127.0.0.1/32", "10.20.0.0/16", "fd12::/16") contains them.
   */
  webhooks: { allowAddresses: string[] };
  /**
   * Signed checkpoints of the audit log (issue 15 §3, src/issuer/audit-checkpoints.ts): one every
   * checkpointIntervalSeconds when the log grew (0: on demand only), written to checkpointFile when set (owner-only,
   * replaced atomically: put it where the database's attacker cannot reach, e.g. a mount of another host) and sent
   * as the webhook event audit.checkpoint. origin names the log in its checkpoints (default cardkms/audit/<key ID>).
   */
  audit: { checkpointIntervalSeconds: number; checkpointFile?: string; origin?: string };
  /**
   * Four eyes on card-key rotations (issue 15 §2, src/issuer/rotation-approvals.ts): approvals distinct operators
   * other than the proposer must give before a rotation runs (default 1; a proposal keeps the number in force when it
   * was made, and never needs fewer than this server's).
   */
  rotations: { approvals: number; rewrapPageSize?: number };
  /**
   * Several servers on one database (issue 16 §1, docs/live-relays.md). advertiseUrl: where the other servers reach
   * this one, on their private network (default http://<listen host>:<port>, 0.0.0.0 and :: read as loopback: set it
   * when the servers run on several hosts). heartbeatSeconds: how often this server tells the others it runs; one
   * silent for 3 heartbeats is taken for gone.
   */
  server: { advertiseUrl?: string; heartbeatSeconds: number };
  /**
   * The job runner of this server (issue 16 §2, job-runner.ts): instanceId, the lease owner it writes (default a
   * random UUID per process), how often it looks for runnable jobs and how long a lease runs (ms).
   */
  jobs?: { instanceId?: string; pollMs?: number; leaseMs?: number };
}

export const DEFAULT_CONFIG: IssuerConfig = {
  listen: { host: "127.0.0.1", port: 8443 },
  database: ".cardkms/issuer.db",
  custody: { kind: "software", keystore: ".cardkms/keystore.json" },
  ca: { mode: "local", subject: "CN=cardkms CA" },
  crlUrl: "http://127.0.0.1:8443/crl",
  validity: { cardDays: 5 * 365, keySetDays: 2 * 365, certificateDays: 365 },
  expiry: { windowDays: 30, scanIntervalSeconds: 3600 },
  logLevel: "info",
  insecure: { publicTransportKeys: false, developmentToken: false },
  limits: {
    rateLimitMax: 300,
    rateLimitWindowSeconds: 60,
    publicBodyBytes: 16_384,
    handshakesPerCard: 16,
    handshakesPerCardClient: 4,
    handshakesMax: 10_000,
    terminalTokensPerCard: 4,
    terminalTokensMax: 10_000,
    relaySessionsPerPrincipal: 32,
    liveRelaySessionsPerPrincipal: 8,
  },
  metrics: { access: "token", host: "127.0.0.1", port: 9464 },
  webhooks: { allowAddresses: [] },
  audit: { checkpointIntervalSeconds: 300 },
  rotations: { approvals: 1 },
  server: { heartbeatSeconds: 5 },
};

const count = (min: number, max: number) => ({ type: "integer", minimum: min, maximum: max }) as const;

const schema = {
  type: "object",
  additionalProperties: false,
  required: ["listen", "database", "custody", "ca", "crlUrl", "validity", "expiry", "logLevel", "insecure", "limits", "metrics", "webhooks", "audit", "rotations", "server"],
  properties: {
    listen: {
      type: "object",
      additionalProperties: false,
      required: ["host", "port"],
      properties: { host: { type: "string", minLength: 1 }, port: { type: "integer", minimum: 0, maximum: 65535 } },
    },
    database: { type: "string", minLength: 1 },
    custody: {
      oneOf: [
        {
          type: "object",
          additionalProperties: false,
          required: ["kind", "keystore"],
          properties: { kind: { const: "software" }, keystore: { type: "string", minLength: 1 }, keystoreBackend: { enum: ["file", "store"] } },
        },
        {
          type: "object",
          additionalProperties: false,
          required: ["kind", "module", "tokenLabel"],
          properties: {
            kind: { const: "pkcs11" },
            module: { type: "string", minLength: 1 },
            tokenLabel: { type: "string", minLength: 1 },
            acceptOpenPaths: { type: "array", items: { type: "string", pattern: "^[a-z-]{1,40}$" }, uniqueItems: true },
          },
        },
      ],
    },
    ca: {
      oneOf: [
        { type: "object", additionalProperties: false, required: ["mode", "subject"], properties: { mode: { const: "local" }, subject: { type: "string", minLength: 3 } } },
        { type: "object", additionalProperties: false, required: ["mode", "url"], properties: { mode: { const: "remote" }, url: { type: "string", pattern: "^https?://" } } },
      ],
    },
    crlUrl: { type: "string", pattern: "^https?://" },
    validity: {
      type: "object",
      additionalProperties: false,
      required: ["cardDays", "keySetDays", "certificateDays"],
      properties: {
        cardDays: { type: "integer", minimum: 1 },
        keySetDays: { type: "integer", minimum: 1 },
        certificateDays: { type: "integer", minimum: 1, maximum: 3650 },
      },
    },
    expiry: {
      type: "object",
      additionalProperties: false,
      required: ["windowDays", "scanIntervalSeconds"],
      properties: { windowDays: { type: "integer", minimum: 0 }, scanIntervalSeconds: { type: "integer", minimum: 1 } },
    },
    logLevel: { enum: ["fatal", "error", "warn", "info", "debug", "trace", "silent"] },
    insecure: {
      type: "object",
      additionalProperties: false,
      required: ["publicTransportKeys", "developmentToken"],
      properties: { publicTransportKeys: { type: "boolean" }, developmentToken: { type: "boolean" } },
    },
    limits: {
      type: "object",
      additionalProperties: false,
      required: Object.keys(DEFAULT_CONFIG.limits),
      properties: {
        rateLimitMax: count(1, 1_000_000),
        rateLimitWindowSeconds: count(1, 86_400),
        publicBodyBytes: count(256, 1 << 20),
        handshakesPerCard: count(1, 1000),
        handshakesPerCardClient: count(1, 1000),
        handshakesMax: count(1, 1_000_000),
        terminalTokensPerCard: count(1, 1000),
        terminalTokensMax: count(1, 1_000_000),
        relaySessionsPerPrincipal: count(1, 100_000),
        liveRelaySessionsPerPrincipal: count(1, 10_000),
      },
    },
    metrics: {
      type: "object",
      additionalProperties: false,
      required: ["access", "host", "port"],
      properties: { access: { enum: ["token", "loopback"] }, host: { type: "string", minLength: 1 }, port: { type: "integer", minimum: 0, maximum: 65535 } },
    },
    webhooks: {
      type: "object",
      additionalProperties: false,
      required: ["allowAddresses"],
      properties: { allowAddresses: { type: "array", maxItems: 256, items: { type: "string", minLength: 2, maxLength: 64 } } },
    },
    audit: {
      type: "object",
      additionalProperties: false,
      required: ["checkpointIntervalSeconds"],
      properties: {
        checkpointIntervalSeconds: { type: "integer", minimum: 0, maximum: 86_400 },
        checkpointFile: { type: "string", minLength: 1 },
        origin: { type: "string", minLength: 1, maxLength: 200, pattern: "^[^\\s+]+$" },
      },
    },
    rotations: { type: "object", additionalProperties: false, required: ["approvals"], properties: { approvals: count(1, 16), rewrapPageSize: count(1, 100_000) } },
    server: {
      type: "object",
      additionalProperties: false,
      required: ["heartbeatSeconds"],
      properties: { advertiseUrl: { type: "string", pattern: "^https?://[^/?#\\s]+/?$", maxLength: 300 }, heartbeatSeconds: count(1, 300) },
    },
    jobs: {
      type: "object",
      additionalProperties: false,
      properties: { instanceId: { type: "string", minLength: 1, maxLength: 200 }, pollMs: count(10, 3_600_000), leaseMs: count(100, 3_600_000) },
    },
  },
} as const;

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n  ${problems.join("\n  ")}`);
    this.name = "ConfigError";
  }
}

/** Environment variables and the config path they set. Numbers are parsed; anything unparseable is reported. */
const ENV: Record<string, { path: string[]; type: "string" | "integer" | "boolean" | "list" }> = {
  CARDKMS_LISTEN_HOST: { path: ["listen", "host"], type: "string" },
  CARDKMS_LISTEN_PORT: { path: ["listen", "port"], type: "integer" },
  CARDKMS_DATABASE: { path: ["database"], type: "string" },
  CARDKMS_CUSTODY: { path: ["custody", "kind"], type: "string" },
  CARDKMS_KEYSTORE: { path: ["custody", "keystore"], type: "string" },
  CARDKMS_KEYSTORE_BACKEND: { path: ["custody", "keystoreBackend"], type: "string" },
  CARDKMS_PKCS11_MODULE: { path: ["custody", "module"], type: "string" },
  CARDKMS_PKCS11_TOKEN: { path: ["custody", "tokenLabel"], type: "string" },
  CARDKMS_PKCS11_ACCEPT_OPEN_PATHS: { path: ["custody", "acceptOpenPaths"], type: "list" },
  CARDKMS_CA_URL: { path: ["ca", "url"], type: "string" },
  CARDKMS_CRL_URL: { path: ["crlUrl"], type: "string" },
  CARDKMS_EXPIRY_WINDOW_DAYS: { path: ["expiry", "windowDays"], type: "integer" },
  CARDKMS_LOG_LEVEL: { path: ["logLevel"], type: "string" },
  CARDKMS_INSECURE_PUBLIC_TRANSPORT_KEYS: { path: ["insecure", "publicTransportKeys"], type: "boolean" },
  CARDKMS_INSECURE_DEVELOPMENT_TOKEN: { path: ["insecure", "developmentToken"], type: "boolean" },
  CARDKMS_RATE_LIMIT_MAX: { path: ["limits", "rateLimitMax"], type: "integer" },
  CARDKMS_RATE_LIMIT_WINDOW_SECONDS: { path: ["limits", "rateLimitWindowSeconds"], type: "integer" },
  CARDKMS_PUBLIC_BODY_BYTES: { path: ["limits", "publicBodyBytes"], type: "integer" },
  CARDKMS_HANDSHAKES_PER_CARD: { path: ["limits", "handshakesPerCard"], type: "integer" },
  CARDKMS_HANDSHAKES_PER_CARD_CLIENT: { path: ["limits", "handshakesPerCardClient"], type: "integer" },
  CARDKMS_HANDSHAKES_MAX: { path: ["limits", "handshakesMax"], type: "integer" },
  CARDKMS_TERMINAL_TOKENS_PER_CARD: { path: ["limits", "terminalTokensPerCard"], type: "integer" },
  CARDKMS_TERMINAL_TOKENS_MAX: { path: ["limits", "terminalTokensMax"], type: "integer" },
  CARDKMS_RELAY_SESSIONS_PER_PRINCIPAL: { path: ["limits", "relaySessionsPerPrincipal"], type: "integer" },
  CARDKMS_LIVE_RELAY_SESSIONS_PER_PRINCIPAL: { path: ["limits", "liveRelaySessionsPerPrincipal"], type: "integer" },
  CARDKMS_METRICS_ACCESS: { path: ["metrics", "access"], type: "string" },
  CARDKMS_METRICS_HOST: { path: ["metrics", "host"], type: "string" },
  CARDKMS_METRICS_PORT: { path: ["metrics", "port"], type: "integer" },
  CARDKMS_WEBHOOK_ALLOW_ADDRESSES: { path: ["webhooks", "allowAddresses"], type: "list" },
  CARDKMS_AUDIT_CHECKPOINT_INTERVAL_SECONDS: { path: ["audit", "checkpointIntervalSeconds"], type: "integer" },
  CARDKMS_AUDIT_CHECKPOINT_FILE: { path: ["audit", "checkpointFile"], type: "string" },
  CARDKMS_AUDIT_ORIGIN: { path: ["audit", "origin"], type: "string" },
  CARDKMS_ROTATION_APPROVALS: { path: ["rotations", "approvals"], type: "integer" },
  CARDKMS_ADVERTISE_URL: { path: ["server", "advertiseUrl"], type: "string" },
  CARDKMS_HEARTBEAT_SECONDS: { path: ["server", "heartbeatSeconds"], type: "integer" },
  CARDKMS_INSTANCE_ID: { path: ["jobs", "instanceId"], type: "string" },
  CARDKMS_JOB_POLL_MS: { path: ["jobs", "pollMs"], type: "integer" },
  CARDKMS_JOB_LEASE_MS: { path: ["jobs", "leaseMs"], type: "integer" },
};

function setPath(o: Record<string, unknown>, path: string[], v: unknown): void {
  let cur = o;
  for (const k of path.slice(0, -1)) cur = (cur[k] ??= {}) as Record<string, unknown>;
  cur[path[path.length - 1]] = v;
}

export function loadConfig(opts: { file?: string; env?: NodeJS.ProcessEnv } = {}): IssuerConfig {
  const env = opts.env ?? process.env;
  const problems: string[] = [];
  const cfg = structuredClone(DEFAULT_CONFIG) as unknown as Record<string, unknown>;
  const sources = new Map<string, string>();
  if (opts.file) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(readFileSync(opts.file, "utf8"));
    } catch (e) {
      throw new ConfigError([`${opts.file}: ${(e as Error).message}`]);
    }
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) throw new ConfigError([`${opts.file}: must hold a JSON object`]);
    for (const [k, v] of Object.entries(parsed)) {
      // Sections replace the default wholesale when the kind changes (custody, ca), else merge.
      const cur = cfg[k];
      cfg[k] = v && typeof v === "object" && !Array.isArray(v) && cur && typeof cur === "object" && !("kind" in v) && !("mode" in v) ? { ...cur, ...v } : v;
      sources.set(`/${k}`, opts.file);
    }
  }
  for (const [name, spec] of Object.entries(ENV)) {
    const raw = env[name];
    if (raw === undefined || raw === "") continue;
    let v: unknown = raw;
    if (spec.type === "integer") {
      v = Number(raw);
      if (!Number.isInteger(v)) {
        problems.push(`${name}=${raw}: not an integer`);
        continue;
      }
    } else if (spec.type === "boolean") {
      if (!["1", "true", "0", "false"].includes(raw)) {
        problems.push(`${name}=${raw}: expected 1 or true, 0 or false`);
        continue;
      }
      v = raw === "1" || raw === "true";
    } else if (spec.type === "list") {
      v = raw
        .split(",")
        .map((x) => x.trim())
        .filter((x) => x.length > 0);
    }
    if (name === "CARDKMS_CUSTODY") cfg.custody = raw === "pkcs11" ? { kind: "pkcs11" } : { ...(cfg.custody as object), kind: raw };
    else if (name === "CARDKMS_CA_URL") cfg.ca = { mode: "remote", url: raw };
    else setPath(cfg, spec.path, v);
    sources.set(`/${spec.path.join("/")}`, name);
  }
  const ajv = new Ajv({ allErrors: true });
  if (!ajv.validate(schema, cfg)) {
    for (const e of ajv.errors ?? []) {
      const where = e.instancePath || "/";
      const from = [...sources].find(([p]) => where.startsWith(p))?.[1];
      const extra = e.keyword === "additionalProperties" ? ` (${(e.params as { additionalProperty: string }).additionalProperty})` : "";
      problems.push(`${where} ${e.message}${extra}${from ? ` (from ${from})` : ""}`);
    }
  }
  if (problems.length === 0) problems.push(...semanticProblems(cfg as unknown as IssuerConfig, sources));
  if (problems.length) throw new ConfigError([...new Set(problems)]);
  return cfg as unknown as IssuerConfig;
}

/** Addresses a listener that answers without a token may bind: the loopback ones (127.0.0.0/8, ::1, localhost). */
export function isLoopbackHost(host: string): boolean {
  return host === "localhost" || host === "::1" || host === "[::1]" || /^127(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/.test(host);
}

/** What the schema cannot say: a metrics listener off loopback, an allow-list entry that is no address range. */
function semanticProblems(c: IssuerConfig, sources: Map<string, string>): string[] {
  const from = (path: string) => {
    const s = [...sources].find(([p]) => path.startsWith(p))?.[1];
    return s ? ` (from ${s})` : "";
  };
  const problems: string[] = [];
  if (c.metrics.access === "loopback" && !isLoopbackHost(c.metrics.host))
    problems.push(
      `/metrics/host ${JSON.stringify(c.metrics.host)}: the metrics listener serves without a token, so it binds a loopback address only (127.0.0.1, ::1, localhost)${from("/metrics/host")}`,
    );
  c.webhooks.allowAddresses.forEach((a, i) => {
    if (!parseCidr(a))
      problems.push(`/webhooks/allowAddresses/${i} ${JSON.stringify(a)}: not an IP address or CIDR range (e.g. 127.0.0.1/32, 10.20.0.0/16, fd12::/16)${from("/webhooks/allowAddresses")}`);
  });
  return problems;
}
