// The issuer server in processes of its own (`cardkms issuer serve`), for the concurrency tests (issue 15 "Done
// when": many clients against a server in its own process; "several servers on one PostgreSQL must be just as
// safe"): `count` server processes (default 2) on one fresh DB of the given engine and one software keystore holding
// the test KMC (test/kmc.ts) so blank test cards personalise, two operators ("olga" proposes, "otto" approves) and
// an auditor, the config in a file, free ports. Requests go over HTTP (fetch) to the server a test names (relay
// sessions and terminal tokens live in the process that made them); the responses look like app.inject's, so
// test/api-env.ts's relay() and authenticate() drive cards through them.
import type { ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { SoftwareCustody } from "../src/custody/software.ts";
import { createOperatorToken } from "../src/server/main.ts";
import { Store } from "../src/store/store.ts";
import type { TestDatabase, TestEngine } from "./support/store-testing.ts";
import { spawnCli } from "./helpers.ts";
import { importTestKmc } from "./kmc.ts";

const ROOT = join(import.meta.dirname, "..");

/** What app.inject answers, as far as the tests read it. */
export interface Res {
  statusCode: number;
  headers: Record<string, string>;
  body: string;
  json(): Record<string, unknown>;
}

export interface ProcessServer {
  /** One per server process, all on the same DB. */
  urls: string[];
  tokens: { olga: string; otto: string; auditor: string };
  /** The test's own connection to the server's DB (to check what is recorded). */
  tdb: TestDatabase;
  store: Store;
  /** Through server `via` (default the first). */
  post(path: string, token?: string, body?: unknown, via?: number): Promise<Res>;
  get(path: string, token?: string, via?: number): Promise<Res>;
  close(): Promise<void>;
}

async function stop(children: ChildProcess[]): Promise<void> {
  for (const c of children) {
    if (c.exitCode !== null || c.signalCode !== null) continue;
    c.kill("SIGTERM");
    await new Promise((r) => c.once("exit", r));
  }
}

async function call(base: string, method: "GET" | "POST", path: string, token?: string, body?: unknown): Promise<Res> {
  const headers: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {};
  if (method === "POST") headers["content-type"] = "application/json";
  const r = await fetch(base + path, { method, headers, body: method === "POST" ? JSON.stringify(body ?? {}) : undefined });
  const text = await r.text();
  return { statusCode: r.status, headers: Object.fromEntries(r.headers), body: text, json: () => JSON.parse(text) as Record<string, unknown> };
}

/** One `cardkms issuer serve` process; resolves with its URL once it listens. */
function serve(config: string, key: string, started: ChildProcess[]): Promise<string> {
  const proc = spawnCli(["issuer", "serve", "--config", config, "--json"], {
    cwd: ROOT,
    env: { ...process.env, CARDKMS_KEYSTORE_KEY: key, CARDKMS_CONFIG: "", CARDKMS_DATABASE: "" },
  });
  started.push(proc);
  return new Promise<string>((resolve, reject) => {
    let out = "";
    let err = "";
    proc.stdout.on("data", (d: Buffer) => {
      out += d.toString();
      const line = out.split("\n").find((l) => l.startsWith("{"));
      if (line) resolve((JSON.parse(line) as { url: string }).url);
    });
    proc.stderr.on("data", (d: Buffer) => (err += d.toString()));
    proc.once("exit", (code) => reject(new Error(`issuer serve exited ${code}: ${err}`)));
  });
}

/** Starts `count` server processes on `engine`, one after the other (the first makes the CA and master keys). */
export async function startProcessServer(engine: TestEngine, o: { count?: number } = {}): Promise<ProcessServer> {
  // Removed by close(), not by a test hook: the servers read their keystore file while they run (a hook of the
  // caller's `before` would run before the tests do).
  const dir = mkdtempSync(join(tmpdir(), "cardkms-race-"));
  const tdb = await engine.create();
  const store = new Store(tdb.db);
  const keystore = join(dir, "keystore.json");
  const key = randomBytes(32).toString("hex");
  const children: ChildProcess[] = [];
  try {
    const custody = await SoftwareCustody.open({ path: keystore, key });
    await importTestKmc(custody);
    await custody.close();
    const tokens = {
      olga: (await createOperatorToken(store, "olga", ["operator"])).token,
      otto: (await createOperatorToken(store, "otto", ["operator"])).token,
      auditor: (await createOperatorToken(store, "arno", ["auditor"])).token,
    };
    const config = join(dir, "issuer.json");
    const settings = {
      listen: { host: "127.0.0.1", port: 0 },
      database: tdb.url,
      custody: { kind: "software", keystore },
      ca: { mode: "local", subject: "CN=cardkms race CA" },
      logLevel: "silent",
      audit: { checkpointIntervalSeconds: 0 },
    };
    writeFileSync(config, JSON.stringify(settings), { mode: 0o600 });
    const urls: string[] = [];
    for (let i = 0; i < (o.count ?? 2); i++) urls.push(await serve(config, key, children));
    return {
      urls,
      tokens,
      tdb,
      store,
      post: (path, token, body, via = 0) => call(urls[via % urls.length], "POST", path, token, body),
      get: (path, token, via = 0) => call(urls[via % urls.length], "GET", path, token),
      async close() {
        await stop(children);
        await tdb.drop();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (e) {
    await stop(children);
    await tdb.drop();
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}
