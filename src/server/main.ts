// The issuer server process (issue 3 §1, §7): wires the domain modules behind HTTP and runs them.
//
//   Store     SQLite file (default) or PostgreSQL by URL, migrated at start
//   Custody   software keystore (key from CARDKMS_KEYSTORE_KEY / _FILE; in a file or the store) or PKCS#11
//             (CARDKMS_PKCS11_PIN); the keystore recorded in the DB, another refused (issue 16 §3, custody/binding.ts)
//   CA        "local": in this process, its key in the same custody, its records in the system DB
//             (openCaService + SqlCaRepository), also served at /v1/ca/* for issuers at other sites;
//             "remote": HttpCaClient to another site's /v1/ca (token from CARDKMS_CA_TOKEN)
//   Issuer    with metrics hooks; routes: issuer-routes.ts, rotation-routes.ts, terminal-routes.ts, event-routes.ts,
//             ca-routes.ts; key reproduction by arbitrators (RecoveryService on the same DB and custody):
//             recovery-routes.ts; backups of the users' enciphered data (BackupRepository, seed 001 S10/S12):
//             backup-routes.ts; the key generation device (seed 001 embodiments 1-2: KeyGenerationDevice on the same
//             custody, its registry in the DB, certifying through a CertificationCenter over the local CA whose
//             registrations are the user records): keygen-routes.ts
//   Auth      operators table (token hash -> roles) and card-bound terminal tokens (hashes) in the system DB
//   Sessions  relay sessions, card login handshakes and terminal tokens in the system DB (SessionRepository,
//             issue 16 §1): several servers on one database take each other's next request
//   Limits    config.limits (issue 9 §2-3): public routes rate-limited per client address with small bodies; card
//             logins, terminal tokens and relay sessions bounded per card and per principal; /metrics for auditor
//             tokens, or on a loopback listener (config.metrics); webhooks kept off internal addresses (config.webhooks)
//   Logs      pino JSON at config.logLevel with the REDACT list; no secret is ever logged
//   Servers   several on one database (issue 16): each registers in server_instances (cluster.ts) when it listens,
//             heartbeats and deregisters when it closes; a live relay round that lands on another server than the one
//             running the operation is forwarded there (live-relay-forward.ts; docs/live-relays.md)
//   Shutdown  SIGTERM / SIGINT close the listener, wait for requests in flight, stop the schedulers, close
//             custody and the DB.
//
// Run: CARDKMS_KEYSTORE_KEY=<64 hex> node dist/server/main.js (config: CARDKMS_CONFIG=<file> and
// CARDKMS_* variables, see config.ts). Bootstrap a first operator with `cardkms issuer token create`.

import { createHash } from "node:crypto";
import { mkdirSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { FastifyInstance, FastifyServerOptions } from "fastify";
import { Counter } from "prom-client";
import type { CaClient } from "../ca/client.ts";
import { HttpCaClient } from "../ca/http-client.ts";
import type { SubjectName } from "../ca/name.ts";
import { openCaService } from "../ca/service.ts";
import { DEFAULT_PROFILES } from "../ca/profile.ts";
import { openCustody, type KeyCustody } from "../custody/index.ts";
import { selfTestRefusal } from "../custody/pkcs11-selftest.ts";
import { bindingOf, checkCustodyBinding } from "../custody/binding.ts";
import { custodyOnStore, SqlCustodyBindings } from "../store/custody-keystore.ts";
import { AuditCheckpointError, AuditCheckpoints, eventCheckpointPublisher, fileCheckpointPublisher, type CheckpointPublisher } from "../issuer/audit-checkpoints.ts";
import { auditRoutes } from "./audit-routes.ts";
import { Issuer } from "../issuer/issuer.ts";
import type { TransportOptions } from "../issuer/transport-keys.ts";
import { CertificationCenter, signedRequestsThroughCenter } from "../keygen/center.ts";
import { UserRegistrations } from "../keygen/registrations.ts";
import { RecoveryService } from "../recovery/service.ts";
import { CardRotation } from "../issuer/rotation.ts";
import { ValidityScheduler } from "../issuer/validity.ts";
import { WebhookAddressPolicy } from "../issuer/webhook-addresses.ts";
import { WebhookDispatcher, WebhookSecrets } from "../issuer/webhooks.ts";
import { BackupRepository } from "../store/backup-repository.ts";
import { SqlCaRepository } from "../store/ca-repository.ts";
import { SqlIssuedKeyRegistry } from "../store/keygen-registry.ts";
import { engineForUrl, looseSqliteFiles, sqlitePath, type Db } from "../store/db.ts";
import { Store } from "../store/store.ts";
import { buildServer, REDACT } from "./app.ts";
import { anyOf, cachedLookup, installAuth, type Role } from "./auth.ts";
import { caRoutes } from "./ca-routes.ts";
import { DEFAULT_CONFIG, loadConfig, type IssuerConfig } from "./config.ts";
import { eventRoutes } from "./event-routes.ts";
import { crlPathOf, crlUrlWarning } from "./crl-url.ts";
import { issuerRoutes, serveCrlAt } from "./issuer-routes.ts";
import { keygenRoutes } from "./keygen-routes.ts";
import { Metrics, serveMetricsOnLoopback } from "./metrics.ts";
import { backupRoutes } from "./backup-routes.ts";
import { recoveryRoutes } from "./recovery-routes.ts";
import type { LiveRelayOptions } from "./live-relay.ts";
import { LiveRelayForwarder } from "./live-relay-forward.ts";
import { defaultAdvertiseUrl, ServerPresence, STALE_BEATS } from "./cluster.ts";
import { instanceId as processInstanceId } from "./instance.ts";
import { SqlLiveRelaySessions, SqlServerInstances } from "../store/server-instances.ts";
import { RelaySessions } from "./relay-sessions.ts";
import { rotationRoutes } from "./rotation-routes.ts";
import { JobRunner } from "./job-runner.ts";
import { jobStoreOf } from "../store/job-repository.ts";
import { REWRAP_JOB, rewrapJobHandler } from "../issuer/rewrap-job.ts";
import { TerminalTokens, terminalRoutes } from "./terminal-routes.ts";
import { StateCounterRepository } from "../store/state-counter-repository.ts";
import { SessionRepository } from "../store/relay-session-repository.ts";
import { recoveryStoreOf } from "../store/recovery-store.ts";

/** A route as registered (for the property test over all routes, and for documentation). */
export interface RouteInfo {
  method: string;
  url: string;
  roles: Role[];
}

export interface IssuerAppDeps {
  store: Store;
  custody: KeyCustody;
  ca: CaClient;
  /**
   * The certification center the key generation device (keygen-routes.ts) sends its signed requests to: this
   * site's CA behind the checks 422-424, or another site's CA over HTTP (which runs them). Default: `ca`.
   */
  center?: CaClient;
  /** Serve the CA's routes (/v1/ca/*) too: the local CA, for issuers at other sites. Signed requests go to `center`. */
  serveCa?: boolean;
  /** Serve the CRL also at this path: the one of the distribution point the local CA writes into certificates (crl-url.ts). */
  crlPath?: string;
  metrics?: Metrics;
  logger?: FastifyServerOptions["logger"];
  bodyLimit?: number;
  validity?: { cardDays?: number; keySetDays?: number };
  /** Blank cards' transport keys: the KMC's custody label, or the public test keys (development; Issuer.open). */
  transport?: TransportOptions;
  /** The expiry window of the validity scan ("scan now" and the scheduler). */
  expiry?: { windowDays: number; scheduler?: ValidityScheduler };
  webhookSecrets?: WebhookSecrets;
  /** The audit log's checkpoints (issue 15 §3): the log's name and where new checkpoints go besides the event. */
  audit?: { origin?: string; publishers?: CheckpointPublisher[] };
  relays?: { ttlMs?: number; max?: number };
  /** The limits of config.ts (issue 9 §2-3): rate limits, body limits, per-card and per-principal bounds. Default: DEFAULT_CONFIG's. */
  limits?: Partial<IssuerConfig["limits"]>;
  /** GET /metrics on the API: for auditor tokens (default) or not served (config metrics.access "loopback"). */
  metricsAccess?: "auditor" | "none";
  /** Where webhooks may point (default: no loopback, private, link-local or metadata address). */
  webhookAddresses?: WebhookAddressPolicy;
  /** Keys per page and commit of the bulk re-wraps this server's job runner runs (default 2,000). */
  rewrapPageSize?: number;
  /** This server's job runner (issue 16 §2, job-runner.ts): its instance id (default a random UUID), poll and lease (ms). */
  jobs?: { instanceId?: string; pollMs?: number; leaseMs?: number };
  /** Four eyes: approvals of distinct operators other than the proposer a rotation needs (config rotations.approvals; default 1). */
  rotationApprovals?: number;
  terminalTokens?: TerminalTokens;
  /** This server among those on the database (issue 16 §1; default: this process's, instance.ts). */
  instanceId?: string;
  /** Several servers (issue 16): how often they heartbeat (ms, default 5 s) and how long a forwarded round may take (ms). */
  cluster?: { heartbeatMs?: number; forwardTimeoutMs?: number };
}

export interface IssuerApp {
  app: FastifyInstance;
  issuer: Issuer;
  metrics: Metrics;
  terminalTokens: TerminalTokens;
  /** Key reproduction by arbitrators (recovery-routes.ts). */
  recovery: RecoveryService;
  /** Signed checkpoints of the audit log (audit-routes.ts; the schedule: startIssuerServer). */
  checkpoints: AuditCheckpoints;
  /** Claims and runs the background jobs (the rotations' re-wraps) of every server on the database; closed with the app. */
  jobRunner: JobRunner;
  routes: RouteInfo[];
  /** This server's id in server_instances and live_relay_sessions (instance.ts). */
  instanceId: string;
}

import { operatorLookup } from "../issuer/operators.ts";

export { createOperatorToken, disableOperatorToken, operatorLookup } from "../issuer/operators.ts";

/** The HTTP application over the given domain objects: every route, auth, metrics hooks. Does not listen. */
export async function buildIssuerApp(d: IssuerAppDeps): Promise<IssuerApp> {
  const metrics = d.metrics ?? new Metrics();
  const credentials = new Counter({ name: "cardkms_credentials_issued_total", help: "Credentials (key pair + certificate + package) issued", registers: [metrics.registry] });
  const personalised = new Counter({ name: "cardkms_cards_personalised_total", help: "Cards personalised", registers: [metrics.registry] });
  const issuer = await Issuer.open({
    store: d.store,
    custody: d.custody,
    ca: d.ca,
    validity: d.validity,
    transport: d.transport,
    onEvent: (e) => {
      if (e.type === "card.issued") metrics.issuances.inc();
      else if (e.type === "credential.issued") credentials.inc();
      else if (e.type === "card.personalised") personalised.inc();
      else if (e.type === "credential.delivered") metrics.deliveries.inc({ path: e.path ?? "unknown" });
      else if (e.type === "certificate.revoked") metrics.revocations.inc();
    },
  });
  const limits = { ...DEFAULT_CONFIG.limits, ...d.limits };
  const { app } = await buildServer({
    logger: d.logger,
    metrics,
    bodyLimit: d.bodyLimit,
    title: "cardkms issuer API",
    rateLimit: { max: limits.rateLimitMax, windowMs: limits.rateLimitWindowSeconds * 1000 },
    publicBodyLimit: limits.publicBodyBytes,
    metricsAccess: d.metricsAccess ?? "auditor",
  });
  const routes: RouteInfo[] = [];
  app.addHook("onRoute", (r) => {
    for (const m of [r.method].flat()) if (m !== "HEAD") routes.push({ method: m, url: r.url, roles: r.config?.roles ?? [] });
  });
  // Relay sessions, login handshakes and terminal tokens: in the system DB, shared by every server on it (issue 16 §1).
  const sessions = new SessionRepository(d.store.db as Db, { now: () => d.store.now() });
  const terminalTokens =
    d.terminalTokens ??
    new TerminalTokens({ repository: sessions, perCard: limits.terminalTokensPerCard, max: limits.terminalTokensMax, onRetire: (bound) => metrics.retired.inc({ table: "terminal-tokens", bound }) });
  installAuth(app, anyOf(terminalTokens.lookup, cachedLookup(operatorLookup(d.store))));

  // One set of relay sessions: the rotation routes open them, POST /relay/{sessionId} (issuer-routes) advances them.
  const relays = new RelaySessions({ repository: sessions, perOwner: limits.relaySessionsPerPrincipal, ...d.relays });
  // Issue 16 §2-3: live relay sessions counted in the DB by every server; rounds for another server's sessions go there.
  const instanceId = d.instanceId ?? processInstanceId;
  const staleAfterMs = STALE_BEATS * (d.cluster?.heartbeatMs ?? DEFAULT_CONFIG.server.heartbeatSeconds * 1000);
  const liveRecords = new SqlLiveRelaySessions(d.store.db as Db);
  const liveRelays: LiveRelayOptions = {
    perOwner: limits.liveRelaySessionsPerPrincipal,
    records: liveRecords,
    instanceId,
    staleAfterMs,
    onRecordError: (e) => app.log.warn({ err: e }, "a live relay session's row could not be deleted (it expires)"),
  };
  const forwarder = new LiveRelayForwarder({
    instances: new SqlServerInstances(d.store.db as Db),
    records: liveRecords,
    staleAfterMs,
    timeoutMs: d.cluster?.forwardTimeoutMs,
    onGone: (g) => app.log.warn({ instanceId: g.instanceId, reason: g.reason }, "a live relay round found its server gone"),
  });
  await app.register(issuerRoutes, { prefix: "/v1", issuer, relays });
  const rotations = new CardRotation(issuer, { approvals: d.rotationApprovals, onCompleted: (r) => metrics.rotations.inc({ strategy: r.strategy }) });
  // Issue 16 §2: the re-wrap jobs live in the job table; whichever server's runner claims one runs it.
  const jobs = jobStoreOf(d.store.db as Db, { now: () => d.store.now() });
  const jobRunner = new JobRunner({
    jobs,
    handlers: { [REWRAP_JOB]: rewrapJobHandler(rotations, { pageSize: d.rewrapPageSize }) },
    ...d.jobs,
    instanceId: d.jobs?.instanceId ?? instanceId,
    log: app.log,
  });
  app.addHook("onClose", () => jobRunner.close());
  await app.register(rotationRoutes, { prefix: "/v1", rotations, relays, jobs, kickJobs: () => jobRunner.kick() });
  await app.register(terminalRoutes, {
    prefix: "/v1",
    issuer,
    tokens: terminalTokens,
    sessions,
    counters: new StateCounterRepository(d.store.db as Db, { now: () => d.store.now() }),
    metrics,
    authSessions: { perCard: limits.handshakesPerCard, perCardClient: limits.handshakesPerCardClient, max: limits.handshakesMax },
  });
  if (d.webhookSecrets) {
    await app.register(eventRoutes, {
      prefix: "/v1",
      store: d.store,
      secrets: d.webhookSecrets,
      addresses: d.webhookAddresses,
      validity: { windowDays: d.expiry?.windowDays ?? 30, scheduler: d.expiry?.scheduler },
      rotationApprovals: d.rotationApprovals,
    });
  }
  const center = d.center ?? d.ca;
  if (d.serveCa) await app.register(caRoutes, { prefix: "/v1", client: center instanceof CertificationCenter ? signedRequestsThroughCenter(d.ca, center) : d.ca });
  const recovery = await RecoveryService.open({ store: recoveryStoreOf(d.store.db as Db), custody: d.custody });
  await app.register(recoveryRoutes, { prefix: "/v1", recovery, issuer, liveRelays, forwarder });
  await app.register(keygenRoutes, { prefix: "/v1", issuer, center, registry: new SqlIssuedKeyRegistry(d.store.db as Db), recovery, liveRelays, forwarder });
  await app.register(backupRoutes, { prefix: "/v1", issuer, backups: new BackupRepository(d.store.db as Db) });
  if (d.crlPath) serveCrlAt(app, d.crlPath, issuer);
  const checkpoints = await AuditCheckpoints.open({
    store: d.store,
    custody: d.custody,
    origin: d.audit?.origin,
    publishers: [...(d.audit?.publishers ?? []), eventCheckpointPublisher(d.store)],
    onPublishError: (e) => app.log.error({ err: e }, "an audit checkpoint was signed and recorded, but sending it out failed"),
  });
  await app.register(auditRoutes, { prefix: "/v1", checkpoints });
  jobRunner.start();
  return { app, issuer, metrics, terminalTokens, recovery, checkpoints, jobRunner, routes, instanceId };
}

/** The scheduled checkpoint (issue 15 §3): only when the log grew; a log that does not extend the last is an alarm. */
async function scheduledCheckpoint(built: IssuerApp, app: FastifyInstance): Promise<void> {
  try {
    const { checkpoint, made } = await built.checkpoints.make({ actor: "system", ifGrown: true });
    if (made) app.log.info({ auditCheckpoint: { size: checkpoint.size, rootHash: checkpoint.rootHash } }, "audit checkpoint signed");
  } catch (e) {
    if (e instanceof AuditCheckpointError) app.log.error({ check: e.check }, `AUDIT LOG: ${e.message}`);
    else app.log.error({ err: e }, "the scheduled audit checkpoint failed");
  }
}

/** A DN string of the configuration ("CN=cardkms CA, O=Example, C=JP") as a structured subject. */
export function parseSubject(dn: string): SubjectName {
  const keys: Record<string, keyof SubjectName> = { CN: "commonName", O: "organization", OU: "organizationalUnit", C: "country", L: "locality", ST: "state", SERIALNUMBER: "serialNumber" };
  const s: Record<string, string> = {};
  for (const part of dn.split(",")) {
    const m = /^\s*([A-Za-z]+)\s*=\s*(.+?)\s*$/.exec(part);
    const k = m && keys[m[1].toUpperCase()];
    if (!m || !k) throw new Error(`CA subject ${JSON.stringify(dn)}: expected "CN=..., O=..., C=..." (CN, O, OU, C, L, ST, serialNumber)`);
    s[k] = m[2];
  }
  return s as SubjectName;
}

/**
 * The webhook signing root: CARDKMS_WEBHOOK_SECRET (at least 32 bytes, hex or base64) when set, else derived
 * from a key in custody — SHA-256 over its RSA PKCS#1 v1.5 signature of a fixed label, which is deterministic,
 * so every process on the same custody derives the same per-webhook secrets without the root ever being stored.
 */
async function webhookSecrets(custody: KeyCustody, env: NodeJS.ProcessEnv): Promise<WebhookSecrets> {
  const configured = env.CARDKMS_WEBHOOK_SECRET;
  if (configured) {
    const raw = /^([0-9a-fA-F]{2})+$/.test(configured) ? Buffer.from(configured, "hex") : Buffer.from(configured, "base64");
    if (raw.length < 32) throw new Error("CARDKMS_WEBHOOK_SECRET: expected at least 32 bytes (64 hex digits or base64)");
    return new WebhookSecrets(raw);
  }
  const label = "webhook-root";
  if (!(await custody.hasKey(label))) await custody.generateKeyPair(label, "RSA2048", { extractable: "never" });
  const sig = await custody.sign(label, new TextEncoder().encode("cardkms/webhook-root/v1"), { hash: "SHA-256" });
  return new WebhookSecrets(createHash("sha256").update(sig).digest());
}

export interface StartOptions {
  env?: NodeJS.ProcessEnv;
  /** Listen on config.listen (default true); false: build only, e.g. for app.inject. */
  listen?: boolean;
  /** Exit the process on SIGTERM / SIGINT after closing (default true when listening). */
  handleSignals?: boolean;
  /** Where the JSON log lines go (default stdout). */
  logStream?: NodeJS.WritableStream;
  /** Wraps the opened custody (tests: the leak scan observes what custody hands out). */
  wrapCustody?: (custody: KeyCustody) => KeyCustody;
  /** This server's instance id (default: the process's, instance.ts); several servers in one process (tests) each need one. */
  instanceId?: string;
}

export interface IssuerServer extends IssuerApp {
  store: Store;
  custody: KeyCustody;
  /** http://host:port once listening. */
  url: string;
  /** The loopback metrics listener's http://host:port/metrics (config metrics.access "loopback"), once listening. */
  metricsUrl?: string;
  /** This server's row in server_instances (issue 16 §1), once listening. */
  presence?: ServerPresence;
  /** Stops accepting, finishes requests in flight, stops the schedulers, closes custody and the DB. Idempotent. */
  close(): Promise<void>;
}

/** Opens everything the configuration names and serves the API. */
export async function startIssuerServer(config: IssuerConfig, opts: StartOptions = {}): Promise<IssuerServer> {
  const env = opts.env ?? process.env;
  const logger = { level: config.logLevel, redact: REDACT, ...(opts.logStream ? { stream: opts.logStream } : {}) };
  // Issue 9 §8: the CRL is served where certificates say it is; a crlUrl whose path cannot be served stops the start.
  const crlPath = config.ca.mode === "local" ? crlPathOf(config.crlUrl) : undefined;
  // Issue 9 §6: the data directory and the DB files owner-only when created here (db.ts); broader ones are warned about.
  if (engineForUrl(config.database) === "sqlite" && !/:memory:/.test(config.database)) mkdirSync(dirname(resolve(sqlitePath(config.database))), { recursive: true, mode: 0o700 });
  const store = await Store.open(config.database);
  const looseFiles = looseSqliteFiles(config.database);
  const closers: (() => Promise<void>)[] = [() => store.close()];
  const closeAll = async () => {
    for (const c of closers.splice(0).reverse()) await c().catch(() => {});
  };
  try {
    const opened = await openCustody(
      custodyOnStore(
        config.custody.kind === "software"
          ? { kind: "software", path: config.custody.keystore, keystoreBackend: config.custody.keystoreBackend, env }
          : { kind: "pkcs11", module: config.custody.module, tokenLabel: config.custody.tokenLabel, env },
        store.db,
      ),
    );
    closers.push(() => opened.close());
    // Issue 16 §3: the keystore this database's card keys live in is recorded; another one (or a copy elsewhere) is refused.
    await checkCustodyBinding(new SqlCustodyBindings(store.db), bindingOf(opened));
    // Issue 17 §1: what a holder of the custody's credentials could take out, tried before anything uses a key.
    const selfTest = await opened.selfTest();
    const refusal = selfTestRefusal(selfTest, {
      accept: config.custody.kind === "pkcs11" ? config.custody.acceptOpenPaths : [],
      developmentToken: config.insecure.developmentToken,
    });
    if (refusal) throw new Error(refusal);
    const custody = opts.wrapCustody ? opts.wrapCustody(opened) : opened;
    let ca: CaClient;
    let center: CaClient | undefined;
    if (config.ca.mode === "local") {
      const service = await openCaService({
        custody,
        signerLabel: "ca-root",
        repository: new SqlCaRepository(store.db as Db, "issuing"),
        subject: parseSubject(config.ca.subject),
        crlUrl: config.crlUrl,
        // validity.certificateDays: the end-entity certificates of every card-key profile
        profiles: DEFAULT_PROFILES.map((p) => ({ ...p, validityDays: config.validity.certificateDays })),
      });
      ca = service.client;
      // steps 420-424: the user records are the registrations the center compares signed requests with
      center = new CertificationCenter({ authority: service.authority, registrations: new UserRegistrations(store) });
    } else {
      ca = new HttpCaClient({ baseUrl: config.ca.url, token: env.CARDKMS_CA_TOKEN || undefined });
    }
    const secrets = await webhookSecrets(custody, env);
    const scheduler = new ValidityScheduler({ store, windowDays: config.expiry.windowDays, scanIntervalSeconds: config.expiry.scanIntervalSeconds });
    const webhookAddresses = new WebhookAddressPolicy({ allow: config.webhooks.allowAddresses });
    const dispatcher = new WebhookDispatcher({ store, secrets, addresses: webhookAddresses });
    const built = await buildIssuerApp({
      store,
      custody,
      ca,
      center,
      serveCa: config.ca.mode === "local",
      crlPath,
      logger,
      validity: { cardDays: config.validity.cardDays, keySetDays: config.validity.keySetDays },
      transport: { insecurePublicTransportKeys: config.insecure.publicTransportKeys },
      expiry: { windowDays: config.expiry.windowDays, scheduler },
      webhookSecrets: secrets,
      webhookAddresses,
      limits: config.limits,
      rotationApprovals: config.rotations.approvals,
      rewrapPageSize: config.rotations.rewrapPageSize,
      jobs: config.jobs,
      metricsAccess: config.metrics.access === "token" ? "auditor" : "none",
      audit: { origin: config.audit.origin, publishers: config.audit.checkpointFile ? [fileCheckpointPublisher(config.audit.checkpointFile)] : [] },
      instanceId: opts.instanceId,
      cluster: { heartbeatMs: config.server.heartbeatSeconds * 1000 },
    });
    const { app } = built;
    app.log[selfTest.ok ? "info" : "warn"](
      {
        selfTest: {
          custody: selfTest.custody,
          tokenName: selfTest.token,
          ok: selfTest.ok,
          open: selfTest.open.map((x) => `${x.path}: ${x.key}`),
          weakKeys: selfTest.keys,
          features: selfTest.features,
        },
      },
      selfTest.custody === "software"
        ? "custody self-test: a software keystore (no PIN holder to test: whoever holds the keystore key reads every key)"
        : selfTest.ok
          ? "custody self-test: every extraction path refused"
          : config.insecure.developmentToken
            ? "INSECURE DEVELOPMENT TOKEN: the custody self-test found extraction paths open (insecure.developmentToken): a holder of the token's user PIN can take keys out. Never in production."
            : "custody self-test: extraction paths open, accepted by name (custody.acceptOpenPaths)",
    );
    if (config.insecure.publicTransportKeys)
      app.log.warn(
        { insecure: "publicTransportKeys" },
        "INSECURE DEVELOPMENT MODE: blank cards are personalised over the GlobalPlatform public test keys 40..4F; anyone who records a personalisation relay gets that card's key Sk. Never in production.",
      );
    for (const f of looseFiles)
      app.log.warn(
        { file: f.path, mode: f.mode },
        `${f.path} has mode ${f.mode}: other local users can reach the issuer's data (personal data, wrapped keys, escrows); chmod it to owner-only (0600 for files, 0700 for the directory)`,
      );
    closers.push(async () => {
      await scheduler.stop();
      await dispatcher.stop();
    });
    // deregistered after the listener closed and the live relays ended, before the DB closes
    let presence: ServerPresence | undefined;
    closers.push(async () => presence?.stop());
    closers.push(() => app.close());
    let url = "";
    let metricsUrl: string | undefined;
    if (opts.listen ?? true) {
      url = await app.listen({ host: config.listen.host, port: config.listen.port });
      // issue 16 §1: the others find this server's live relay sessions here
      const address = app.server.address();
      const port = typeof address === "object" && address ? address.port : config.listen.port;
      presence = new ServerPresence(new SqlServerInstances(store.db as Db), {
        instanceId: built.instanceId,
        advertiseUrl: config.server.advertiseUrl ?? defaultAdvertiseUrl(config.listen.host, port),
        heartbeatMs: config.server.heartbeatSeconds * 1000,
        onError: (e) => app.log.warn({ err: e }, "the server heartbeat could not be written (the next one tries again)"),
      });
      await presence.start();
      const crlWarning = crlPath && crlUrlWarning(config.crlUrl, config.listen.host, url);
      if (crlWarning) app.log.warn({ crlUrl: config.crlUrl, url }, crlWarning);
      if (config.metrics.access === "loopback") {
        const listener = await serveMetricsOnLoopback(built.metrics, config.metrics);
        closers.push(() => listener.close());
        metricsUrl = listener.url;
      }
      scheduler.start();
      dispatcher.start(5000);
      if (config.audit.checkpointIntervalSeconds > 0) {
        const timer = setInterval(() => void scheduledCheckpoint(built, app), config.audit.checkpointIntervalSeconds * 1000);
        timer.unref();
        closers.push(async () => clearInterval(timer));
      }
    }
    let closing: Promise<void> | undefined;
    const server: IssuerServer = { ...built, store, custody, url, metricsUrl, presence, close: () => (closing ??= closeAll()) };
    if (opts.handleSignals ?? opts.listen ?? true) {
      const onSignal = (signal: NodeJS.Signals) => {
        app.log.info({ signal }, "shutting down");
        void server.close().then(() => process.exit(0));
      };
      process.once("SIGTERM", onSignal);
      process.once("SIGINT", onSignal);
    }
    return server;
  } catch (e) {
    await closeAll();
    throw e;
  }
}

// node dist/server/main.js (compiled; or node --import tsx src/server/main.ts from source)
if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  try {
    const config = loadConfig({ file: process.env.CARDKMS_CONFIG || undefined });
    const server = await startIssuerServer(config);
    server.app.log.info(
      { url: server.url, database: config.database.replace(/^([a-z]+:\/\/[^:/@]*):[^@]*@/i, "$1:***@"), custody: config.custody.kind, ca: config.ca.mode },
      "cardkms issuer listening",
    );
  } catch (e) {
    process.stderr.write(`cardkms issuer: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  }
}
