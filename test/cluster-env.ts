// The issuer as a cluster (issue 16): `count` (default 3) `cardkms issuer serve` processes — the compiled CLI, as an
// operator runs it — on ONE fresh database (PostgreSQL by default: a `cardkms_test_<random>` database of its own,
// dropped at the end), each on a port of its own, all with the same configuration file, the same custody and the
// same operator tokens. What a load balancer in front of them would see: several base URLs that must behave as one.
//
//   custody   a harness option (ClusterOptions.custody). Default, today's: one software keystore FILE that every
//             process opens with the same key, the test KMC (test/kmc.ts) imported before any server starts.
//             storeKeystore: the keystore kept in the store (custody.keystoreBackend "store"), the KMC imported likewise.
//   start     the first server alone (it makes the CA key, the master keys and the webhook root in custody), then
//             the others in parallel; startAllAtOnce starts them all together on the fresh custody instead.
//   control   kill(i) sends SIGKILL (a crash: nothing is closed), restart(i) starts server i again on the same
//             port, stop() ends them all (SIGTERM, then SIGKILL for one that hangs) and drops the database.
//
// It never leaves a process behind: stop() runs when the given test ends (ClusterOptions.t; else the caller's
// after hook calls it), a failed start stops what it started, and a process 'exit' hook SIGKILLs any server still
// alive. Timeouts here are hang detectors only, never speed checks.
// Logs: each server's output is kept (the last 256 KiB) and shown when a start fails; logs(i) reads it.
import { type ChildProcessByStdio } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Readable } from "node:stream";
import type { TestContext } from "node:test";
import { SoftwareCustody } from "../src/custody/software.ts";
import type { IssuerConfig } from "../src/server/config.ts";
import { createOperatorToken } from "../src/server/main.ts";
import { StoreKeystoreBackend } from "../src/store/custody-keystore.ts";
import { Store } from "../src/store/store.ts";
import { testEngines, type TestDatabase, type TestEngine } from "./support/store-testing.ts";
import { spawnCli } from "./helpers.ts";
import { importTestKmc, testKmcFile } from "./kmc.ts";

const ROOT = join(import.meta.dirname, "..");
/** A server that neither listens nor exits after this long has hung (hang detector only). */
const START_HANG_MS = 3 * 60_000;
/** A server still running this long after SIGTERM has hung: it gets SIGKILL. */
const STOP_HANG_MS = 60_000;
const LOG_KEEP = 256 * 1024;

/** What every server of the cluster is given to reach the same keys: its config section and the secrets' variables. */
export interface ClusterCustody {
  config: IssuerConfig["custody"];
  env: Record<string, string>;
}

/** Prepares the shared custody in `dir` or in the cluster's fresh database `db` (the test KMC in it), before any server starts. */
export type ClusterCustodyMaker = (dir: string, db: TestDatabase["db"]) => Promise<ClusterCustody>;

/** Today's shared custody: one software keystore file, one key, the test KMC imported. */
export const sharedKeystoreFile: ClusterCustodyMaker = async (dir) => {
  const keystore = join(dir, "keystore.json");
  const key = randomBytes(32).toString("hex");
  const custody = await SoftwareCustody.open({ path: keystore, key });
  try {
    await importTestKmc(custody);
  } finally {
    await custody.close();
  }
  return { config: { kind: "software", keystore }, env: { CARDKMS_KEYSTORE_KEY: key } };
};

/**
 * The keystore kept in the store (issue 16 §3, custody.keystoreBackend "store"): created in the cluster's database
 * with the test KMC imported before any server starts; every server opens it with the same key. No file.
 */
export const storeKeystore: ClusterCustodyMaker = async (dir, db) => {
  const key = randomBytes(32).toString("hex");
  const custody = await SoftwareCustody.open({ backend: new StoreKeystoreBackend(db), key });
  try {
    await importTestKmc(custody);
  } finally {
    await custody.close();
  }
  // the path is never opened with the store backend (the config schema asks for one)
  return { config: { kind: "software", keystore: join(dir, "unused-keystore.json"), keystoreBackend: "store" }, env: { CARDKMS_KEYSTORE_KEY: key } };
};

export interface ClusterOptions {
  /** Server processes (default 3). */
  count?: number;
  /** The database engine (default PostgreSQL, the one a cluster runs on; testEngines()'s SQLite works for one server). */
  engine?: TestEngine;
  /** The custody every server shares (default sharedKeystoreFile). */
  custody?: ClusterCustodyMaker;
  /** Settings over the cluster's defaults in the shared config file (config.ts shape, e.g. { limits: {...} }). */
  settings?: Record<string, unknown>;
  /** Fixed ports, one per server (default: free ports the servers pick, kept across restarts). */
  ports?: number[];
  /** Start every server at once on the fresh custody and database (default: the first alone, then the rest together). */
  startAllAtOnce?: boolean;
  /** Stop the cluster when this test ends. Without it the caller calls stop() (e.g. in a file-level after hook). */
  t?: TestContext;
}

export interface Cluster {
  /** The servers' base URLs (http://127.0.0.1:<port>), by index; the same after a restart. */
  urls: string[];
  /** The shared database's URL (for `cardkms audit verify --database`, or another connection). */
  database: string;
  /** The test's own connection to the shared database (to check what is recorded). */
  tdb: TestDatabase;
  store: Store;
  /** Made in the shared database before the servers started: the same on every server. */
  tokens: { admin: string; operator: string; operator2: string; auditor: string };
  /** The shared configuration file every server runs with (`--config`). */
  configFile: string;
  /** The variables every server runs with besides the config file (custody secrets). */
  env: Record<string, string>;
  /** The card manufacturer's KMC for the CLI's factory (CARDKMS_KMC_FILE). */
  kmcFile: string;
  /** Whether server i's process is alive. */
  running(i: number): boolean;
  /** Server i's output so far (its last 256 KiB). */
  logs(i: number): string;
  /** SIGKILL server i (a crash: no close, no flush) and wait for it to be gone. */
  kill(i: number): Promise<void>;
  /** Start server i again (after kill), on its port; resolves with its URL once it listens. */
  restart(i: number): Promise<string>;
  /** Every server stopped (SIGTERM; SIGKILL if it hangs), the database dropped. Idempotent. */
  stop(): Promise<void>;
}

type Child = ChildProcessByStdio<null, Readable, Readable>;

const alive = new Set<Child>();
let exitHook = false;
/** Last resort: the test process is going away: no server outlives it. */
function killStragglersOnExit(): void {
  if (exitHook) return;
  exitHook = true;
  process.once("exit", () => {
    for (const c of alive) c.kill("SIGKILL");
  });
}

const exited = (c: Child) => c.exitCode !== null || c.signalCode !== null;

async function ended(c: Child, signal: NodeJS.Signals, hangMs: number): Promise<void> {
  if (exited(c)) return;
  const gone = new Promise<void>((resolve) => c.once("exit", () => resolve()));
  c.kill(signal);
  let timer: NodeJS.Timeout | undefined;
  const hung = await Promise.race([gone.then(() => false), new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), hangMs)))]);
  clearTimeout(timer);
  if (hung) {
    c.kill("SIGKILL");
    await gone;
  }
}

/** The variables of this process less every CARDKMS_* one (a developer's settings never reach the cluster), plus `env`. */
function childEnv(env: Record<string, string>): NodeJS.ProcessEnv {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("CARDKMS_")));
  return { ...clean, ...env };
}

export async function startCluster(o: ClusterOptions = {}): Promise<Cluster> {
  const count = o.count ?? 3;
  if (!Number.isInteger(count) || count < 1) throw new Error(`cluster: count ${count}`);
  const engine = o.engine ?? testEngines().find((e) => e.name === "postgres");
  if (!engine) throw new Error("cluster: PostgreSQL is off (CARDKMS_TEST_PG); a cluster needs one database every server reaches");
  killStragglersOnExit();
  const tdb = await engine.create();
  const dir = mkdtempSync(join(tmpdir(), "cardkms-cluster-"));
  const store = new Store(tdb.db);
  const children: (Child | undefined)[] = new Array(count).fill(undefined);
  const ports: number[] = o.ports ? [...o.ports] : new Array(count).fill(0);
  const urls: string[] = new Array(count).fill("");
  const logs: string[] = new Array(count).fill("");
  let stopping: Promise<void> | undefined;
  const stop = () =>
    (stopping ??= (async () => {
      await Promise.all(children.map((c) => c && ended(c, "SIGTERM", STOP_HANG_MS)));
      await tdb.drop();
      rmSync(dir, { recursive: true, force: true });
    })());
  o.t?.after(stop);

  // Everything made before the servers start is undone by stop() when a step fails.
  const prepared = await prepare().catch(async (e: unknown) => {
    await stop();
    throw e;
  });
  const { configFile, env, tokens } = prepared;
  async function prepare() {
    const custody = await (o.custody ?? sharedKeystoreFile)(dir, tdb.db);
    const configFile = join(dir, "issuer.json");
    const settings = {
      listen: { host: "127.0.0.1", port: 0 },
      database: tdb.url,
      custody: custody.config,
      ca: { mode: "local", subject: "CN=cardkms cluster CA" },
      // where relying parties would reach the cluster: the load balancer's name (a name, so no server warns about it)
      crlUrl: "http://crl.cardkms.test/crl",
      logLevel: "warn",
      // on demand only: a timer per process would add entries the tests do not count
      audit: { checkpointIntervalSeconds: 0 },
      ...o.settings,
    };
    writeFileSync(configFile, JSON.stringify(settings, null, 2), { mode: 0o600 });
    const env = custody.env;
    const tokens = {
      admin: (await createOperatorToken(store, "ada", ["admin"])).token,
      operator: (await createOperatorToken(store, "olga", ["operator"])).token,
      operator2: (await createOperatorToken(store, "otto", ["operator"])).token,
      auditor: (await createOperatorToken(store, "arno", ["auditor"])).token,
    };
    return { configFile, env, tokens };
  }

  /** Server i: spawned, listening; its port remembered for restarts. */
  function serve(i: number): Promise<string> {
    const proc = spawnCli(["issuer", "serve", "--config", configFile, "--json"], { cwd: ROOT, env: childEnv({ ...env, CARDKMS_LISTEN_PORT: String(ports[i]) }) });
    children[i] = proc;
    alive.add(proc);
    proc.once("exit", () => alive.delete(proc));
    const keep = (d: Buffer) => {
      logs[i] = (logs[i] + d.toString()).slice(-LOG_KEEP);
    };
    proc.stdout.on("data", keep);
    proc.stderr.on("data", keep);
    return new Promise<string>((resolve, reject) => {
      let out = "";
      const onData = (d: Buffer) => {
        out += d.toString();
        for (const line of out.split("\n")) {
          if (!line.startsWith("{")) continue;
          let msg: { url?: unknown; level?: unknown };
          try {
            msg = JSON.parse(line) as typeof msg;
          } catch {
            continue; // a line still arriving
          }
          // `issuer serve --json` prints {"url": ...} once listening; pino lines carry a level
          if (typeof msg.url === "string" && msg.level === undefined) {
            proc.stdout.off("data", onData);
            clearTimeout(timer);
            proc.off("exit", onExit);
            urls[i] = msg.url;
            ports[i] = Number(new URL(msg.url).port);
            resolve(msg.url);
            return;
          }
        }
      };
      const onExit = (code: number | null, signal: NodeJS.Signals | null) => {
        clearTimeout(timer);
        reject(new Error(`cluster server ${i}: issuer serve exited (${code ?? signal}) before listening:\n${logs[i]}`));
      };
      const timer = setTimeout(() => {
        proc.kill("SIGKILL");
        reject(new Error(`cluster server ${i}: not listening after ${START_HANG_MS / 1000}s (hung):\n${logs[i]}`));
      }, START_HANG_MS);
      proc.stdout.on("data", onData);
      proc.once("exit", onExit);
    });
  }

  try {
    if (o.startAllAtOnce) await Promise.all(children.map((_, i) => serve(i)));
    else {
      await serve(0);
      await Promise.all(children.slice(1).map((_, i) => serve(i + 1)));
    }
  } catch (e) {
    await stop();
    throw e;
  }

  return {
    urls,
    database: tdb.url,
    tdb,
    store,
    tokens,
    configFile,
    env,
    kmcFile: testKmcFile(dir),
    running: (i) => !!children[i] && !exited(children[i]!),
    logs: (i) => logs[i],
    async kill(i) {
      const c = children[i];
      if (c) await ended(c, "SIGKILL", STOP_HANG_MS);
    },
    async restart(i) {
      if (stopping) throw new Error("cluster: stopped");
      const c = children[i];
      if (c && !exited(c)) throw new Error(`cluster server ${i} is still running: kill it first`);
      return serve(i);
    },
    stop,
  };
}
