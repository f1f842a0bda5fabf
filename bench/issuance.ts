// Issuance benchmarks (issue 3, "Performance"):
//  - issuance_inprocess_p256_c<N>: P-256 Issuer.requestCredential/s in this process on SQLite with the software
//    keystore and the CA service the server uses (CA key in custody, SqlCaRepository in the same DB), at
//    concurrency N. A diagnostic for the HTTP figure: what the domain core costs without HTTP.
//  - issuance_http_p256[_pg]: the server in its own process (compiled: `node dist/server/main.js`), a load
//    client here with keep-alive connections issuing credentials for a fixed time; credentials/s (201s) and
//    p50/p99 latency.
//  - issuance_rsa2048: RSA-2048 credentials/s through the Issuer vs. RSA-2048 key pairs/s this machine generates
//    on all its cores in the same run (the best of async crypto.generateKeyPair and worker threads).
//
// Rates are steady-state: calls completing inside a window after a warm-up; calls in flight at its end finish
// uncounted. Each result carries CPU per credential (the machine is shared, so rates move with its load).
//
// Run alone: `npx tsx bench/issuance.ts inprocess|http|rsa [--engine sqlite|postgres] [--conc 1,16,64] [--ms N]`
// (`--log info` for the server's log level). Profiling: BENCH_SERVER_NODE_ARGS="--cpu-prof --cpu-prof-dir=DIR"
// profiles the server process; BENCH_PRAGMA="cache_size=-65536;..." sets SQLite pragmas for the in-process run.
// Notes: docs/profiling-issuance.md.

import { generateKeyPair, generateKeyPairSync, randomBytes, sign } from "node:crypto";
import { sql } from "kysely";
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { availableParallelism, loadavg, tmpdir } from "node:os";
import { performance } from "node:perf_hooks";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Worker } from "node:worker_threads";
import { openCaService } from "../src/ca/service.ts";
import type { KeyAlg } from "../src/card/state.ts";
import type { KeyCustody } from "../src/custody/custody.ts";
import { SoftwareCustody } from "../src/custody/software.ts";
import { Issuer, SLOTS } from "../src/issuer/issuer.ts";
import { KMC_LABEL } from "../src/issuer/transport-keys.ts";
import { SqlCaRepository } from "../src/store/ca-repository.ts";
import type { OpenOptions } from "../src/store/db.ts";
import { Store } from "../src/store/store.ts";
import { createOperatorToken } from "../src/server/main.ts";
import { testEngines, type TestDatabase } from "../test/support/store-testing.ts";

export interface BenchResult {
  name: string;
  value: number;
  unit: string;
  [extra: string]: unknown;
}

const pct = (sorted: number[], p: number): number => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))] : NaN);
const r1 = (x: number): number => Math.round(x * 10) / 10;

/** The card manufacturer's KMC in the issuer's custody (a key ceremony): issuing a card needs its transport keys. */
async function benchKmc(custody: KeyCustody): Promise<void> {
  await custody.createSecretKey(KMC_LABEL, { type: "aes", bits: 128, usage: ["derive"] });
}

/** An issuer as the server assembles it: a store on `engine`, the software keystore, the CA service over SQL. */
export async function benchIssuer(engine: "sqlite" | "postgres", open: OpenOptions = {}): Promise<{ issuer: Issuer; close(): Promise<void> }> {
  const e = testEngines().find((x) => x.name === engine);
  if (!e) throw new Error(`engine ${engine} is not available (CARDKMS_TEST_PG=off?)`);
  const tdb: TestDatabase = await e.create({ sqliteCheckpoint: "background", ...open });
  const dir = mkdtempSync(join(tmpdir(), "cardkms-bench-issuance-"));
  const custody = await SoftwareCustody.open({ path: join(dir, "keystore.json"), key: randomBytes(32).toString("hex") });
  const store = new Store(tdb.db);
  for (const p of (process.env.BENCH_PRAGMA ?? "").split(";").filter(Boolean)) await sql.raw(`pragma ${p}`).execute(tdb.db);
  const ca = await openCaService({ custody, signerLabel: "ca-issuing", repository: new SqlCaRepository(tdb.db, "issuing"), subject: { commonName: "bench CA" }, crlUrl: "http://127.0.0.1/crl" });
  const issuer = await Issuer.open({ store, custody, ca: ca.client });
  await benchKmc(custody);
  return {
    issuer,
    async close() {
      await custody.close();
      await tdb.drop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Cards enough for `n` fresh (card, slot) credential requests: one user and card per 24 slots. */
async function makeCards(issuer: Issuer, n: number): Promise<string[]> {
  const cards: string[] = [];
  const need = Math.ceil(n / SLOTS.length);
  const mk = async (i: number) => {
    const u = await issuer.registerUser({ commonName: `Bench User ${i}`, email: `u${i}@example.test`, organization: "Example Bank", country: "JP" }, "bench");
    cards.push((await issuer.issueCard({ userId: u.id }, "bench")).card.id);
  };
  for (let i = 0; i < need; i += 16) await Promise.all(Array.from({ length: Math.min(16, need - i) }, (_, j) => mk(i + j)));
  return cards;
}

/** A shared supply of fresh (card, slot) targets, slot-major so that concurrent requests hit different cards. */
function targets(cards: string[]): () => { cardId: string; slot: string } {
  let i = 0;
  return () => {
    const k = i++;
    const card = cards[k % cards.length];
    const slot = SLOTS[Math.floor(k / cards.length)];
    if (!slot) throw new Error("bench ran out of (card, slot) targets");
    return { cardId: card, slot };
  };
}

/**
 * Keeps `conc` calls of `op` in flight for `warmMs + ms`, and counts the calls that complete inside the window
 * [warmMs, warmMs + ms]: a steady-state rate, without the ramp-up, and without the drain at the end (calls still
 * in flight then finish before this returns, uncounted). CPU and event-loop use are those of the window.
 */
export async function closedLoop(
  conc: number,
  ms: number,
  op: () => Promise<unknown>,
  warmMs = 0,
): Promise<{ rate: number; n: number; p50: number; p99: number; errors: number; firstError?: string; cpuUsPerOp: number; elu: number }> {
  const lat: number[] = [];
  let errors = 0;
  let firstError: string | undefined;
  const t0 = performance.now();
  const from = t0 + warmMs;
  const end = from + ms;
  let cpu0 = process.cpuUsage();
  let elu0 = performance.eventLoopUtilization();
  let cpu: { user: number; system: number } | undefined;
  let elu = 0;
  const startWindow = setTimeout(() => {
    cpu0 = process.cpuUsage();
    elu0 = performance.eventLoopUtilization();
  }, warmMs);
  const closeWindow = () => {
    cpu ??= process.cpuUsage(cpu0);
    elu ||= performance.eventLoopUtilization(elu0).utilization;
  };
  const endWindow = setTimeout(closeWindow, warmMs + ms);
  await Promise.all(
    Array.from({ length: conc }, async () => {
      while (performance.now() < end) {
        const s = performance.now();
        try {
          await op();
          const e = performance.now();
          if (e >= from && e <= end) lat.push(e - s);
          else if (e > end) closeWindow();
        } catch (e) {
          errors++;
          firstError ??= e instanceof Error ? e.message : String(e);
        }
      }
    }),
  );
  clearTimeout(startWindow);
  clearTimeout(endWindow);
  closeWindow();
  lat.sort((a, b) => a - b);
  return { rate: lat.length / (ms / 1000), n: lat.length, p50: pct(lat, 50), p99: pct(lat, 99), errors, firstError, cpuUsPerOp: (cpu!.user + cpu!.system) / Math.max(1, lat.length), elu };
}

export async function benchIssuanceInProcess(opts: { engine?: "sqlite" | "postgres"; conc?: number[]; ms?: number; alg?: KeyAlg; sync?: "full" | "normal" } = {}): Promise<BenchResult[]> {
  const engine = opts.engine ?? "sqlite";
  const concs = opts.conc ?? [1, 4, 16, 64];
  const ms = opts.ms ?? 5000;
  const alg = opts.alg ?? "P256";
  const sync = opts.sync ?? "normal";
  const { issuer, close } = await benchIssuer(engine, { sqliteSynchronous: sync });
  const out: BenchResult[] = [];
  try {
    const cards = await makeCards(issuer, Math.ceil(2000 * (ms / 1000 + 1) * concs.length) + 500);
    const next = targets(cards);
    const one = () => issuer.requestCredential({ ...next(), alg }, "bench");
    for (let i = 0; i < 200; i++) await one(); // warm-up
    for (const conc of concs) {
      const r = await closedLoop(conc, ms, one, 1000);
      out.push({
        name: `issuance_inprocess_${alg.toLowerCase()}${engine === "postgres" ? "_pg" : ""}_c${conc}`,
        value: Math.round(r.rate),
        unit: "credentials/s",
        p50_ms: r1(r.p50),
        p99_ms: r1(r.p99),
        issued: r.n,
        errors: r.errors,
        cpu_us_per_credential: Math.round(r.cpuUsPerOp),
        main_thread_busy: Math.round(r.elu * 100) / 100,
        loadavg_1m: r1(loadavg()[0]),
        ...(r.firstError ? { first_error: r.firstError } : {}),
        engine,
        ...(engine === "sqlite" ? { sqlite_synchronous: sync } : {}),
      });
    }
  } finally {
    await close();
  }
  return out;
}

// --- over HTTP, the server in its own process ----------------------------------------------------------------

interface HttpReply {
  status: number;
  body: string;
}

function request(agent: http.Agent, base: URL, token: string, method: string, path: string, body?: unknown): Promise<HttpReply> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const req = http.request(
      {
        agent,
        host: base.hostname,
        port: base.port,
        method,
        path,
        headers: { authorization: `Bearer ${token}`, ...(data ? { "content-type": "application/json", "content-length": data.length } : {}) },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString("utf8") }));
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end(data);
  });
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

/** CPU seconds (user + system) a process has used, from /proc (Linux). */
function procCpu(pid: number): number {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = f.slice(f.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
  } catch {
    return NaN;
  }
}

export interface HttpBenchOptions {
  engine?: "sqlite" | "postgres";
  conc?: number;
  ms?: number;
  warmMs?: number;
  alg?: KeyAlg;
  /** Extra environment for the server (e.g. CARDKMS_LOG_LEVEL). */
  env?: Record<string, string>;
  /** Servers on the one database (issue 16: several `cardkms issuer serve`), the client spreads requests round-robin. */
  servers?: number;
}

export async function benchIssuanceHttp(o: HttpBenchOptions = {}): Promise<BenchResult[]> {
  const engine = o.engine ?? "sqlite";
  const conc = o.conc ?? 48;
  const ms = o.ms ?? 10_000;
  const warmMs = o.warmMs ?? 2000;
  const alg = o.alg ?? "P256";
  const nServers = o.servers ?? 1;
  if (nServers > 1 && engine !== "postgres") throw new Error("several servers share one PostgreSQL database");
  const dir = mkdtempSync(join(tmpdir(), "cardkms-bench-http-"));
  let tdb: TestDatabase | undefined;
  const children: ChildProcess[] = [];
  try {
    let database: string;
    if (engine === "postgres") {
      const e = testEngines().find((x) => x.name === "postgres");
      if (!e) throw new Error("PostgreSQL is off (CARDKMS_TEST_PG=off)");
      tdb = await e.create();
      database = tdb.url;
    } else database = join(dir, "issuer.db");
    // The operator the load client authenticates as, created in the DB before the server starts.
    const setup = await Store.open(database);
    const { token } = await createOperatorToken(setup, "bench", ["operator"]);
    await setup.close();

    const keystoreKey = randomBytes(32).toString("hex");
    const keystore = await SoftwareCustody.open({ path: join(dir, "keystore.json"), key: keystoreKey });
    await benchKmc(keystore);
    await keystore.close();
    // The compiled server (dist/, as `cardkms issuer serve` runs it; rebuilt first so it matches the sources), or
    // with BENCH_SERVER=source the TypeScript through tsx, to compare the two.
    const fromSource = process.env.BENCH_SERVER === "source";
    if (!fromSource) execFileSync("npm", ["run", "--silent", "build"], { cwd: fileURLToPath(new URL("..", import.meta.url)), stdio: "ignore" });
    const entry = fromSource ? ["--import", "tsx", fileURLToPath(new URL("../src/server/main.ts", import.meta.url))] : [fileURLToPath(new URL("../dist/server/main.js", import.meta.url))];
    const logLevel = o.env?.CARDKMS_LOG_LEVEL ?? "warn";
    // On PostgreSQL each server also loads the statement counter (bench/pg-count.mjs; the bench only, never in service).
    const countFiles: string[] = [];
    const bases: URL[] = [];
    const webhookSecret = randomBytes(32).toString("hex");
    const agent = new http.Agent({ keepAlive: true, maxSockets: conc });
    // The first server alone (it makes the CA key and the master keys in custody), then the others.
    for (let k = 0; k < nServers; k++) {
      const port = await freePort();
      const env = {
        ...process.env,
        CARDKMS_DATABASE: database,
        CARDKMS_CUSTODY: "software",
        CARDKMS_KEYSTORE: join(dir, "keystore.json"),
        CARDKMS_KEYSTORE_KEY: keystoreKey,
        CARDKMS_LISTEN_HOST: "127.0.0.1",
        CARDKMS_LISTEN_PORT: String(port),
        CARDKMS_CRL_URL: `http://127.0.0.1:${port}/v1/ca/crl`,
        CARDKMS_WEBHOOK_SECRET: webhookSecret,
        CARDKMS_LOG_LEVEL: logLevel,
        ...o.env,
      };
      const countFile = join(dir, `pg-count-${k}.json`);
      const counting = engine === "postgres" ? ["--import", fileURLToPath(new URL("./pg-count.mjs", import.meta.url))] : [];
      if (counting.length) Object.assign(env, { BENCH_PG_COUNT_FILE: countFile });
      countFiles.push(countFile);
      const server = spawn(process.execPath, [...(process.env.BENCH_SERVER_NODE_ARGS ?? "").split(" ").filter(Boolean), ...counting, ...entry], { env, stdio: ["ignore", "pipe", "pipe"] });
      children.push(server);
      let serverOut = "";
      server.stdout?.on("data", (d: Buffer) => (serverOut = (serverOut + d.toString()).slice(-4000)));
      server.stderr?.on("data", (d: Buffer) => (serverOut = (serverOut + d.toString()).slice(-4000)));
      const base = new URL(`http://127.0.0.1:${port}`);
      bases.push(base);
      for (let i = 0; ; i++) {
        if (server.exitCode !== null) throw new Error(`server ${k} exited ${server.exitCode}: ${serverOut.trim().slice(-1500)}`);
        try {
          if ((await request(agent, base, token, "GET", "/healthz")).status === 200) break;
        } catch {
          // not listening yet
        }
        if (i > 600) throw new Error(`server ${k} did not answer within 60 s: ${serverOut.trim().slice(-1500)}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    let rr = 0;
    /** The next server, round-robin: what a load balancer in front of them does. */
    const via = () => bases[rr++ % bases.length];

    // users and cards through the API: enough fresh (card, slot) pairs for ~1,500/s over warm-up + measurement
    const nCards = Math.ceil((2000 * (ms + warmMs)) / 1000 / SLOTS.length) + 20;
    const cards: string[] = [];
    let made = 0;
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        while (made < nCards) {
          const i = made++;
          const u = await request(agent, via(), token, "POST", "/v1/users", {
            personalData: { commonName: `Bench User ${i}`, email: `u${i}@example.test`, organization: "Example Bank", country: "JP" },
          });
          if (u.status !== 201) throw new Error(`POST /v1/users: ${u.status} ${u.body.slice(0, 300)}`);
          const c = await request(agent, via(), token, "POST", "/v1/cards", { userId: (JSON.parse(u.body) as { id: string }).id });
          if (c.status !== 201) throw new Error(`POST /v1/cards: ${c.status} ${c.body.slice(0, 300)}`);
          cards.push((JSON.parse(c.body) as { card: { id: string } }).card.id);
        }
      }),
    );
    const next = targets(cards);
    const issue = async () => {
      const t = next();
      const r = await request(agent, via(), token, "POST", `/v1/cards/${t.cardId}/credentials`, { slot: t.slot, alg });
      if (r.status !== 201) throw new Error(`POST credentials: ${r.status} ${r.body.slice(0, 300)}`);
    };
    let s0 = NaN;
    let serverCpu = NaN;
    // PostgreSQL: the server's statements (pg-count.mjs) and the DB's side (pgSnapshot) at both ends of the window.
    let pgAt0: Promise<PgSnapshot> | undefined;
    let pgAt1: Promise<PgSnapshot> | undefined;
    const pids = children.map((c) => c.pid!);
    const serversCpu = () => pids.reduce((a, pid) => a + procCpu(pid), 0);
    const snap = () => (tdb ? pgSnapshot(tdb.url, pids, countFiles) : undefined);
    const t1 = setTimeout(() => {
      s0 = serversCpu();
      pgAt0 = snap();
    }, warmMs);
    const t2 = setTimeout(() => {
      serverCpu = serversCpu() - s0;
      pgAt1 = snap();
    }, warmMs + ms);
    const r = await closedLoop(conc, ms, issue, warmMs);
    clearTimeout(t1);
    clearTimeout(t2);
    if (Number.isNaN(serverCpu)) serverCpu = serversCpu() - s0;
    pgAt1 ??= snap();
    const pgFigures: Partial<ReturnType<typeof pgDelta>> = pgAt0 && pgAt1 ? pgDelta(await pgAt0, await pgAt1, r.n, nServers) : {};
    agent.destroy();
    // The same-run baseline, so the figure compares across machines: node:crypto P-256 signatures per second on one
    // core of this machine now (each credential costs the server one CA signature and more).
    const baseline = p256SignsPerSecond(1000);
    return [
      {
        name: `issuance_http_${alg.toLowerCase()}${engine === "postgres" ? "_pg" : ""}${nServers > 1 ? `_${nServers}servers` : ""}`,
        value: Math.round(r.rate),
        unit: "credentials/s",
        baseline: Math.round(baseline),
        baseline_unit: "node:crypto P-256 signatures/s (one core)",
        ratio: Math.round((r.rate / baseline) * 10_000) / 10_000,
        server: fromSource ? "source (tsx)" : "compiled (dist/)",
        servers: nServers,
        p50_ms: r1(r.p50),
        p99_ms: r1(r.p99),
        issued: r.n,
        errors: r.errors,
        ...(r.firstError ? { first_error: r.firstError } : {}),
        concurrency: conc,
        seconds: ms / 1000,
        server_cpu_us_per_credential: Math.round((serverCpu * 1e6) / Math.max(1, r.n)),
        client_cpu_us_per_credential: Math.round(r.cpuUsPerOp),
        loadavg_1m: r1(loadavg()[0]),
        engine,
        server_log_level: logLevel,
        ...pgFigures.summary,
      },
      ...(pgFigures.lines ?? []),
    ];
  } finally {
    await Promise.all(
      children.map(async (child) => {
        if (child.exitCode !== null) return;
        const exited = new Promise((r) => child.once("exit", r));
        child.kill("SIGTERM");
        await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
        if (child.exitCode === null) child.kill("SIGKILL");
      }),
    );
    await tdb?.drop();
    rmSync(dir, { recursive: true, force: true });
  }
}

// --- PostgreSQL: statements, round trips, the DB's CPU and WAL per credential (issue 16 §5) -------------------

interface PgSnapshot {
  /** The server's statement counts (bench/pg-count.mjs), undefined if it did not answer. */
  counts?: { total: number; named: number; statements: Record<string, number> };
  /** CPU seconds of the backends serving the bench DB (by pid, from /proc) and of PostgreSQL's own processes. */
  backendCpu: Map<number, number>;
  auxCpu: number;
  walLsn: bigint;
  commits: number;
  rollbacks: number;
}

/** The counter's file after a SIGUSR2 (it writes aside and renames, so a file that exists is whole). */
async function statementCounts(pid: number, file: string): Promise<PgSnapshot["counts"]> {
  rmSync(file, { force: true });
  process.kill(pid, "SIGUSR2");
  for (let i = 0; i < 200; i++) {
    try {
      return JSON.parse(readFileSync(file, "utf8")) as PgSnapshot["counts"];
    } catch {
      await new Promise((r) => setTimeout(r, 10));
    }
  }
  return undefined;
}

/** The servers' statement counts added up (undefined if one did not answer). */
async function allStatementCounts(pids: number[], files: string[]): Promise<PgSnapshot["counts"]> {
  const each = await Promise.all(pids.map((pid, i) => statementCounts(pid, files[i])));
  if (each.some((c) => c === undefined)) return undefined;
  const sum: NonNullable<PgSnapshot["counts"]> = { total: 0, named: 0, statements: {} };
  for (const c of each as NonNullable<PgSnapshot["counts"]>[]) {
    sum.total += c.total;
    sum.named += c.named;
    for (const [k, v] of Object.entries(c.statements)) sum.statements[k] = (sum.statements[k] ?? 0) + v;
  }
  return sum;
}

async function pgSnapshot(url: string, serverPids: number[], countFiles: string[]): Promise<PgSnapshot> {
  const counts = allStatementCounts(serverPids, countFiles);
  const { default: pg } = await import("pg");
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    const db = new URL(url).pathname.slice(1);
    const lsn = await c.query<{ lsn: string }>("select pg_current_wal_lsn()::text as lsn");
    const [hi, lo] = lsn.rows[0].lsn.split("/");
    const procs = await c.query<{ pid: number; datname: string | null; backend_type: string }>("select pid, datname, backend_type from pg_stat_activity where pid <> pg_backend_pid()");
    const st = await c.query<{ xact_commit: string; xact_rollback: string }>("select xact_commit::text, xact_rollback::text from pg_stat_database where datname = $1", [db]);
    const backendCpu = new Map<number, number>();
    let auxCpu = 0;
    for (const p of procs.rows) {
      if (p.datname === db && p.backend_type === "client backend") backendCpu.set(p.pid, procCpu(p.pid));
      else if (p.backend_type !== "client backend") auxCpu += procCpu(p.pid) || 0;
    }
    return {
      counts: await counts,
      backendCpu,
      auxCpu,
      walLsn: (BigInt(`0x${hi}`) << 32n) + BigInt(`0x${lo}`),
      commits: Number(st.rows[0]?.xact_commit ?? 0),
      rollbacks: Number(st.rows[0]?.xact_rollback ?? 0),
    };
  } finally {
    await c.end();
  }
}

/** Per-credential figures between two snapshots: the summary fields of the main line, and one line per figure. */
function pgDelta(a: PgSnapshot, b: PgSnapshot, n: number, servers = 1): { summary: Record<string, unknown>; lines: BenchResult[] } {
  const suffix = servers > 1 ? `_${servers}servers` : "";
  const per = (x: number) => Math.round((x / Math.max(1, n)) * 100) / 100;
  let backend = 0;
  for (const [pid, cpu] of b.backendCpu) backend += cpu - (a.backendCpu.get(pid) ?? 0); // a pid new in b: all its CPU is in the window
  const statements: Record<string, number> = {};
  if (a.counts && b.counts) {
    for (const [k, v] of Object.entries(b.counts.statements)) {
      const d = v - (a.counts.statements[k] ?? 0);
      if (d > 0) statements[k] = per(d);
    }
  }
  const sorted = Object.fromEntries(Object.entries(statements).sort((x, y) => y[1] - x[1]));
  const roundTrips = a.counts && b.counts ? per(b.counts.total - a.counts.total) : NaN;
  const named = a.counts && b.counts ? per(b.counts.named - a.counts.named) : NaN;
  const lines: BenchResult[] = [
    { name: `issuance_http_p256_pg${suffix}_round_trips`, value: roundTrips, unit: "statements/credential", named_prepared: named, statements: sorted },
    { name: `issuance_http_p256_pg${suffix}_commits`, value: per(b.commits - a.commits), unit: "commits/credential", rollbacks: per(b.rollbacks - a.rollbacks) },
    {
      name: `issuance_http_p256_pg${suffix}_backend_cpu`,
      value: Math.round((backend * 1e6) / Math.max(1, n)),
      unit: "µs/credential",
      backends: b.backendCpu.size,
      aux_processes_us: Math.round(((b.auxCpu - a.auxCpu) * 1e6) / Math.max(1, n)),
      note: "aux: walwriter, checkpointer, ... shared with other databases on this server",
    },
    {
      name: `issuance_http_p256_pg${suffix}_wal`,
      value: Math.round(Number(b.walLsn - a.walLsn) / Math.max(1, n)),
      unit: "bytes/credential",
      note: "cluster-wide WAL: includes other databases' writes in the window",
    },
  ];
  return { summary: { pg_round_trips_per_credential: roundTrips }, lines };
}

/** node:crypto ECDSA P-256 / SHA-256 signatures per second over `ms` milliseconds, on this thread. */
function p256SignsPerSecond(ms: number): number {
  const { privateKey } = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
  const data = randomBytes(64);
  const t0 = performance.now();
  let n = 0;
  while (performance.now() - t0 < ms) {
    for (let i = 0; i < 50; i++) sign("sha256", data, privateKey);
    n += 50;
  }
  return n / ((performance.now() - t0) / 1000);
}

// --- RSA-2048: issuance vs. this machine's key generation rate -----------------------------------------------

const RSA_WORKER = `
const { parentPort, workerData } = require("node:worker_threads");
const { generateKeyPairSync } = require("node:crypto");
const { performance } = require("node:perf_hooks");
const end = performance.timeOrigin + performance.now() + workerData.ms;
while (performance.timeOrigin + performance.now() < end) {
  generateKeyPairSync("rsa", { modulusLength: 2048, publicExponent: 0x10001 });
  parentPort.postMessage(performance.timeOrigin + performance.now());
}
`;

/**
 * RSA-2048 key pairs/s with one worker thread per core, each generating synchronously; keys completed inside
 * [warmMs, warmMs + ms] are counted.
 */
async function rsaKeygenWorkers(ms: number, warmMs: number, workers = availableParallelism()): Promise<number> {
  const from = performance.timeOrigin + performance.now() + warmMs;
  const end = from + ms;
  let n = 0;
  await Promise.all(
    Array.from(
      { length: workers },
      () =>
        new Promise<void>((resolve, reject) => {
          const w = new Worker(RSA_WORKER, { eval: true, workerData: { ms: warmMs + ms } });
          w.on("message", (t: number) => {
            if (t >= from && t <= end) n++;
          });
          w.once("error", reject);
          w.once("exit", () => resolve());
        }),
    ),
  );
  return n / (ms / 1000);
}

/** RSA-2048 key pairs/s with Node's async generateKeyPair (libuv thread pool), `conc` outstanding. */
async function rsaKeygenAsync(ms: number, warmMs: number, conc: number): Promise<number> {
  const gen = () => new Promise<void>((resolve, reject) => generateKeyPair("rsa", { modulusLength: 2048, publicExponent: 0x10001 }, (e) => (e ? reject(e) : resolve())));
  return (await closedLoop(conc, ms, gen, warmMs)).rate;
}

/**
 * issuance_rsa2048: RSA-2048 credentials/s through Issuer.requestCredential (in-process, SQLite, software
 * keystore: generation on the libuv thread pool) against the best RSA-2048 generation rate of this machine, the
 * two measured alternately in `rounds` rounds so that a change of machine load hits both.
 */
export async function benchIssuanceRsa(o: { ms?: number; rounds?: number; conc?: number } = {}): Promise<BenchResult[]> {
  const ms = o.ms ?? 10_000;
  const rounds = o.rounds ?? 2;
  const pool = Number(process.env.UV_THREADPOOL_SIZE ?? 4);
  const conc = o.conc ?? 2 * pool;
  const { issuer, close } = await benchIssuer("sqlite");
  try {
    const cards = await makeCards(issuer, 120 * (ms / 1000) * rounds + 200);
    const next = targets(cards);
    const one = () => issuer.requestCredential({ ...next(), alg: "RSA2048" }, "bench");
    const warmMs = 3000;
    const base = { async: [] as number[], workers: [] as number[] };
    const value: number[] = [];
    let issued = 0;
    let errors = 0;
    let firstError: string | undefined;
    const lat: number[] = [];
    for (let r = 0; r < rounds; r++) {
      base.async.push(await rsaKeygenAsync(ms, warmMs, 2 * pool));
      base.workers.push(await rsaKeygenWorkers(ms, warmMs));
      const res = await closedLoop(conc, ms, one, warmMs);
      value.push(res.rate);
      issued += res.n;
      errors += res.errors;
      firstError ??= res.firstError;
      lat.push(res.p50);
    }
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    const baseline = Math.max(mean(base.async), mean(base.workers));
    const v = mean(value);
    return [
      {
        name: "issuance_rsa2048",
        value: r1(v),
        unit: "credentials/s",
        baseline: r1(baseline),
        ratio: Math.round((v / baseline) * 1000) / 1000,
        baseline_async_keygen: r1(mean(base.async)),
        baseline_worker_keygen: r1(mean(base.workers)),
        rounds,
        seconds_each: ms / 1000,
        warmup_seconds_each: warmMs / 1000,
        issued,
        errors,
        ...(firstError ? { first_error: firstError } : {}),
        p50_ms: r1(mean(lat)),
        concurrency: conc,
        uv_threadpool_size: pool,
        cores: availableParallelism(),
        path: "in-process Issuer.requestCredential, SQLite, software keystore (RSA generated on the libuv thread pool)",
        loadavg_1m: r1(loadavg()[0]),
      },
    ];
  } finally {
    await close();
  }
}

// --- CLI -----------------------------------------------------------------------------------------------------

if (import.meta.url === `file://${process.argv[1]}`) {
  const args = process.argv.slice(2);
  const flag = (n: string) => {
    const i = args.indexOf(`--${n}`);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const what = args[0] ?? "inprocess";
  const engine = (flag("engine") ?? "sqlite") as "sqlite" | "postgres";
  const conc = flag("conc")?.split(",").map(Number);
  const ms = flag("ms") ? Number(flag("ms")) : undefined;
  let res: BenchResult[];
  if (what === "inprocess") res = await benchIssuanceInProcess({ engine, conc, ms, alg: (flag("alg") ?? "P256") as KeyAlg, sync: flag("sync") as "full" | "normal" | undefined });
  else if (what === "http") res = await benchIssuanceHttp({ engine, conc: conc?.[0], ms, alg: (flag("alg") ?? "P256") as KeyAlg, env: flag("log") ? { CARDKMS_LOG_LEVEL: flag("log")! } : undefined });
  else if (what === "rsa") res = await benchIssuanceRsa({ ms, rounds: flag("rounds") ? Number(flag("rounds")) : undefined });
  else throw new Error(`unknown ${what}`);
  for (const r of res) console.log(JSON.stringify(r));
}
