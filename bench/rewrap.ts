// Bulk re-wrap of a card-key rotation (issue 3 Performance: at least 50,000 keys/s, at most 256 MB RSS with
// 1,000,000 stored keys). Seeds `keys` key pairs, each with a real Sk1[PRk] (a pool of key pairs generated and
// wrapped in software custody, spread over the rows), into a fresh SQLite file through a direct prepared-statement
// path; then runs src/issuer/rewrap.ts runRewrap to Sk2 in a process of its own — as `cardkms rotation rewrap
// --db` or the server would, without the seeding's memory — and reports keys/s (wall clock, and per CPU-second of
// that process, which the load of the machine disturbs less), the highest RSS sampled during the run and the
// process's VmHWM, with the machine's load average.
//   npx tsx bench/rewrap.ts [keys] [pageSize]      (or: npm run bench rewrap; REWRAP_KEYS sets keys)

import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import SqliteDatabase from "better-sqlite3";
import { SoftwareCustody } from "../src/custody/software.ts";
import { runRewrap } from "../src/issuer/rewrap.ts";
import { Store } from "../src/store/store.ts";
import { rotationFixture } from "../test/rotation-fixture.ts";

const mb = (bytes: number): number => Math.round(bytes / 2 ** 20);
const vmHwmMb = (): number | undefined => {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync("/proc/self/status", "utf8"));
  return m ? Math.round(Number(m[1]) / 1024) : undefined;
};

export async function benchRewrap(o: { keys?: number; pageSize?: number } = {}): Promise<{ name: string; value: number; unit: string; [k: string]: unknown }[]> {
  const keys = o.keys ?? 1_000_000;
  const pageSize = o.pageSize ?? 1000;
  const dir = mkdtempSync(join(tmpdir(), "cardkms-bench-rewrap-"));
  const file = join(dir, "issuer.db");
  const keystoreKey = randomBytes(32).toString("hex");
  const custody = await SoftwareCustody.open({ path: join(dir, "keystore.json"), key: keystoreKey });
  const store = await Store.open(`sqlite:${file}`);
  try {
    const now = store.now();
    const { user, oldId, newId, sk1, sk2, pool } = await rotationFixture(store, custody, { poolSize: 256 });
    // Seeding (not measured): one prepared statement per table, 50,000 rows per transaction.
    const t0 = performance.now();
    const raw = new SqliteDatabase(file);
    raw.pragma("journal_mode = WAL");
    raw.pragma("synchronous = NORMAL");
    const kp = raw.prepare("insert into key_pairs (id, user_id, card_id, slot, algorithm, public_key, status, created_at) values (?, ?, ?, null, 'P256', ?, 'active', ?)");
    const wk = raw.prepare("insert into wrapped_keys (key_pair_id, key_set_id, wrapped, created_at) values (?, ?, ?, ?)");
    const batch = raw.transaction((from: number, to: number) => {
      for (let n = from; n < to; n++) {
        const id = `kp-${n}`;
        kp.run(id, user.id, oldId, Buffer.from(pool[n % pool.length].spki), now);
        wk.run(id, sk1.id, Buffer.from(pool[n % pool.length].wrapped), now);
      }
    });
    for (let n = 0; n < keys; n += 50_000) batch(n, Math.min(keys, n + 50_000));
    raw.close();
    const seedSeconds = (performance.now() - t0) / 1000;

    const rot = await store.proposeRotation({ cardId: oldId, fromKeySetId: sk1.id, strategy: "embodiment3", toCardId: newId });
    await store.approveRotation(rot.id, "bench");
    await store.startRotation(rot.id, { toCardId: newId, toKeySetId: sk2.id, total: await store.countWrappedKeys(sk1.id) });

    await store.close();
    await custody.close();
    const load = loadavg().map((x) => Math.round(x * 100) / 100);
    const run = await runInChild(file, join(dir, "keystore.json"), keystoreKey, rot.id, pageSize);
    const check = await Store.open(`sqlite:${file}`);
    try {
      const n = await check.countWrappedKeys(sk2.id);
      if (run.done !== keys || n !== keys) throw new Error(`re-wrapped ${run.done} of ${keys} (${n} under Sk2)`);
    } finally {
      await check.close();
    }
    return [
      {
        name: "rewrap_keys",
        value: Math.round(keys / run.seconds),
        unit: "keys/s",
        keys_per_cpu_second: Math.round(keys / run.cpuSeconds),
        rss_max_mb: run.rssMaxMb,
        rss_before_mb: run.rssBeforeMb,
        vm_hwm_mb: run.vmHwmMb,
        keys,
        page_size: pageSize,
        engine: "sqlite",
        custody: "software",
        seconds: Math.round(run.seconds * 10) / 10,
        cpu_seconds: Math.round(run.cpuSeconds * 10) / 10,
        seed_seconds: Math.round(seedSeconds),
        loadavg_before: load,
        loadavg_after: loadavg().map((x) => Math.round(x * 100) / 100),
      },
    ];
  } finally {
    await custody.close();
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

interface ChildRun {
  done: number;
  seconds: number;
  cpuSeconds: number;
  rssMaxMb: number;
  rssBeforeMb: number;
  vmHwmMb: number | undefined;
}

/** The measured part, in a process of its own (this file with --run). */
function runInChild(file: string, keystore: string, key: string, rotationId: string, pageSize: number): Promise<ChildRun> {
  return new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      ["--import", "tsx", fileURLToPath(import.meta.url), "--run", file, keystore, rotationId, String(pageSize)],
      { env: { ...process.env, BENCH_KEYSTORE_KEY: key }, maxBuffer: 1 << 20 },
      (err, stdout, stderr) => {
        if (err) return reject(new Error(`re-wrap process failed: ${stderr || err.message}`));
        if (stderr) process.stderr.write(stderr);
        resolve(JSON.parse(stdout.trim().split("\n").pop()!) as ChildRun);
      },
    );
  });
}

async function childRun(file: string, keystore: string, rotationId: string, pageSize: number): Promise<ChildRun> {
  const store = await Store.open(`sqlite:${file}`);
  const custody = await SoftwareCustody.open({ path: keystore, key: process.env.BENCH_KEYSTORE_KEY! });
  try {
    const rssBefore = process.memoryUsage().rss;
    let rssMax = rssBefore;
    const sample = setInterval(() => (rssMax = Math.max(rssMax, process.memoryUsage().rss)), 25);
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    let done;
    try {
      done = await runRewrap({ store, custody, rotationId, pageSize, onProgress: () => (rssMax = Math.max(rssMax, process.memoryUsage().rss)) });
    } finally {
      clearInterval(sample);
    }
    const seconds = (performance.now() - t0) / 1000;
    const c = process.cpuUsage(c0);
    return { done: done.done, seconds, cpuSeconds: (c.user + c.system) / 1e6, rssMaxMb: mb(rssMax), rssBeforeMb: mb(rssBefore), vmHwmMb: vmHwmMb() };
  } finally {
    await custody.close();
    await store.close();
  }
}

if (import.meta.url === `file://${process.argv[1]}` && process.argv[2] === "--run") {
  const [file, keystore, rotationId, pageSize] = process.argv.slice(3);
  console.log(JSON.stringify(await childRun(file, keystore, rotationId, Number(pageSize))));
} else if (import.meta.url === `file://${process.argv[1]}`) {
  for (const r of await benchRewrap({ keys: Number(process.argv[2] ?? 1_000_000), pageSize: Number(process.argv[3] ?? 1000) })) console.log(JSON.stringify(r));
}
