// The audit log's signed checkpoints from the command line (issue 15 §3), against a running issuer: an auditor
// pins the checkpoint key and keeps a mirror outside the server (`audit pull`), takes a checkpoint to a file
// (`audit checkpoint --out`); the server writes its own to the configured file and sends the event. Then the
// database is attacked as the issue describes — the tail rewritten with recomputed hashes, the last rows deleted —
// and `audit verify --checkpoint` fails naming the first changed or missing entry, the mirror refuses to follow,
// and the server refuses to sign over it; while `audit verify` without a checkpoint (the chain alone) says intact.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { sql } from "kysely";
import { appendAudit, entryHash } from "../src/store/audit.ts";
import type { Db } from "../src/store/db.ts";
import { startTestServer } from "./terminal-server.ts";
import { cliJson, runCli, tempDir } from "./helpers.ts";

const dir = tempDir("cardkms-cli-audit-");

async function append(db: Db, n: number, tag: string): Promise<void> {
  for (let i = 0; i < n; i++) await appendAudit(db, { actor: "olga", action: "card.issue", subject: `${tag}-${i}`, details: { i } });
}

/** Entry `from` changed and every hash after it recomputed: a chain that verifies. */
async function rewriteFrom(db: Db, from: number): Promise<void> {
  const rows = await db.selectFrom("audit_log").selectAll().where("seq", ">=", from).orderBy("seq").execute();
  let prev = (
    await db
      .selectFrom("audit_log")
      .select("hash")
      .where("seq", "=", from - 1)
      .executeTakeFirstOrThrow()
  ).hash;
  for (const r of rows) {
    const row = { ...r, subject: r.seq === from ? "someone-else" : r.subject, prev_hash: prev };
    row.hash = entryHash(row);
    await db.updateTable("audit_log").set({ subject: row.subject, prev_hash: row.prev_hash, hash: row.hash }).where("seq", "=", r.seq).execute();
    prev = row.hash;
  }
}

test("audit checkpoint, pull and verify --checkpoint find a rewritten tail and a truncation the chain calls intact", { timeout: 10 * 60_000 }, async (t) => {
  const checkpointFile = join(dir, "server-checkpoint.note");
  const srv = await startTestServer(dir, { config: { audit: { checkpointIntervalSeconds: 0, checkpointFile } } });
  t.after(() => srv.close());
  const db = srv.server.store.db as Db;
  const env = { CARDKMS_SERVER: srv.url, CARDKMS_TOKEN: srv.operatorToken };
  const cli = (args: string[]) => runCli(args, env);
  const mirror = join(dir, "mirror");
  const cpFile = join(dir, "checkpoint.note");

  await append(db, 20, "a");
  const key = (cliJson(await cli(["audit", "pull", "--mirror", mirror, "--json"]), "first pull") as { keyPinned: string }).keyPinned;
  assert.match(key, /^cardkms\/audit\/[0-9a-f]{8}\+[0-9a-f]{8}\+/, "the first pull pins the checkpoint key");
  for (const f of ["key", "checkpoint", "hashes"]) assert.equal(statSync(join(mirror, f)).mode & 0o777, 0o600, `mirror ${f} is owner-only`);
  assert.equal(statSync(mirror).mode & 0o777, 0o700);

  const cp = cliJson(await cli(["audit", "checkpoint", "--out", cpFile, "--json"]), "audit checkpoint") as { size: number; note: string };
  assert.equal(readFileSync(cpFile, "utf8"), cp.note);
  assert.equal(readFileSync(checkpointFile, "utf8"), cp.note, "the server wrote its checkpoint file");
  assert.equal(statSync(checkpointFile).mode & 0o777, 0o600);
  const events = await srv.server.store.listEvents({ type: "audit.checkpoint" });
  assert.ok(
    events.some((e) => (e.payload as { size: number }).size === cp.size),
    "and sent the event",
  );
  await append(db, 5, "b");
  const pulled = cliJson(await cli(["audit", "pull", "--mirror", mirror, "--json"]), "second pull") as { entries: number; added: number };
  assert.ok(pulled.added >= 5);

  const ok = cliJson(await cli(["audit", "verify", "--checkpoint", cpFile, "--mirror", mirror, "--json"]), "verify --checkpoint") as {
    ok: boolean;
    entries: number;
    head: { seq: number };
    checkpointSize: number;
    keyPinned: boolean;
  };
  assert.deepEqual([ok.ok, ok.checkpointSize, ok.keyPinned, ok.head.seq === ok.entries], [true, cp.size, true, true]);
  const human = await cli(["audit", "verify", "--checkpoint", cpFile, "--key", key]);
  assert.equal(human.code, 0, human.stderr);
  assert.match(human.stdout, /extends the checkpoint of \d+ entries .*: \d+ entries, head \d+ [0-9a-f]{64}/);
  const plain = await cli(["audit", "verify"]);
  assert.match(plain.stdout, /audit log intact: \d+ entries, head \d+ [0-9a-f]{64}/, "plain verify prints the size and head it verified");

  // The tail rewritten from entry 12 with every hash recomputed: the chain alone still calls the log intact.
  await rewriteFrom(db, 12);
  assert.equal((await cli(["audit", "verify"])).code, 0, "the chain alone does not see it");
  const rewritten = await cli(["audit", "verify", "--checkpoint", cpFile, "--mirror", mirror, "--json"]);
  assert.equal(rewritten.code, 1);
  assert.deepEqual(JSON.parse(rewritten.stdout), {
    ok: false,
    problem: "rewritten",
    firstEntry: 12,
    message: JSON.parse(rewritten.stdout).message,
    checkpointSize: cp.size,
    size: JSON.parse(rewritten.stdout).size,
  });
  const noMirror = JSON.parse((await cli(["audit", "verify", "--checkpoint", cpFile, "--key", key, "--json"])).stdout);
  assert.equal(noMirror.problem, "rewritten");
  const refusedPull = await cli(["audit", "pull", "--mirror", mirror, "--json"]);
  assert.equal(refusedPull.code, 1);
  assert.equal(JSON.parse(refusedPull.stdout).firstEntry, 12, "the mirror names the entry and stays as it was");
  const noSign = await cli(["audit", "checkpoint", "--json"]);
  assert.notEqual(noSign.code, 0);
  assert.match(noSign.stdout + noSign.stderr, /not-extended|rewritten under it/);

  // The last rows deleted (and the rewrite undone is impossible): verify names the first missing entry.
  await sql`delete from audit_log where seq > 8`.execute(db);
  assert.equal((await cli(["audit", "verify"])).code, 0, "still intact by the chain");
  const cut = JSON.parse((await cli(["audit", "verify", "--checkpoint", cpFile, "--key", key, "--json"])).stdout);
  assert.deepEqual([cut.ok, cut.problem, cut.firstEntry], [false, "truncated", 9]);
  // offline, straight from the database, with the pinned key
  const offline = await runCli(["audit", "verify", "--checkpoint", cpFile, "--key", key, "--database", srv.config.database, "--json"], {});
  assert.equal(JSON.parse(offline.stdout).firstEntry, 9);
  // a checkpoint under another key does not verify at all
  const other = await cli(["audit", "verify", "--checkpoint", cpFile, "--key", key.replace(/\+[0-9a-f]{8}\+/, "+00000000+"), "--json"]);
  assert.equal(other.code, 1);
});
