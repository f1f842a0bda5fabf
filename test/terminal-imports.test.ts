// Issue 10: the user's side never loads the server's storage. Importing every module of the terminal (the user's
// terminal, the back-up device, the arbitrator's and the key generation client) — compiled, as `cardkms` runs them —
// must load neither SQL driver (better-sqlite3, pg) nor the server (fastify), whatever imports what in between.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readdirSync } from "node:fs";
import { join } from "node:path";
const ROOT = join(import.meta.dirname, "..");

const HANG_MS = 5 * 60_000;

test("importing the terminal's modules loads neither better-sqlite3 nor pg nor fastify", { timeout: 10 * 60_000 }, async () => {
  const dir = join(ROOT, "dist", "terminal");
  const modules = readdirSync(dir).filter((f) => f.endsWith(".js"));
  assert.ok(modules.length >= 8, `the compiled terminal (npm run build) has its modules: ${modules.join(", ")}`);
  const script = `
    import { createRequire } from "node:module";
    for (const f of ${JSON.stringify(modules)}) await import(${JSON.stringify(dir + "/")} + f);
    const loaded = Object.keys(createRequire(import.meta.url).cache);
    console.log(JSON.stringify(loaded.filter((k) => /node_modules\\/(better-sqlite3|pg|pg-pool|fastify)\\//.test(k))));`;
  const out = await new Promise<string>((resolve, reject) =>
    execFile(process.execPath, ["--input-type=module", "-e", script], { cwd: ROOT, timeout: HANG_MS }, (err, stdout, stderr) =>
      err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout),
    ),
  );
  assert.deepEqual(JSON.parse(out.trim().split("\n").pop()!), [], "the terminal loaded server-side packages");
});
