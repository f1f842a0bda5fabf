// The rotation commands (src/cli/rotation.ts): the re-wrap progress bar an operator sees, the command set, and a
// whole embodiment-3 rotation driven through `cardkms rotation ...` (child processes) against a running server —
// propose, approve (by another operator: four eyes), new-card into a fresh card image through the relay, rewrap
// --wait, status, distribute, the new card's terminal sync that completes it — with --json everywhere and the exit
// codes of usage errors (2) and refusals (1).
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { Command } from "commander";
import { progressLine, registerRotationCommands } from "../src/cli/rotation.ts";
import { createOperatorToken } from "../src/server/main.ts";
import { startTestServer } from "./terminal-server.ts";
import { execCli, tempDir, type CliResult } from "./helpers.ts";

test("progress line: bar, percentage, counts, rate and ETA", () => {
  const p = { rotationId: "r", done: 420_000, total: 1_000_000, cursor: 420_000, keysPerSecond: 58_000, elapsedMs: 7241 };
  assert.equal(progressLine(p, 10), "[####......]  42.0%  420,000/1,000,000 keys  58,000 keys/s  ETA 10s");
  assert.equal(progressLine({ ...p, done: 0, total: 0, keysPerSecond: 0 }, 4), "[####] 100.0%  0/0 keys  0 keys/s");
  assert.equal(progressLine({ ...p, done: 1_000_000 }, 4), "[####] 100.0%  1,000,000/1,000,000 keys  58,000 keys/s  ETA 0s");
});

test("the commands register as `rotation propose|approve|cancel|new-card|status|rewrap|distribute`, each with --json", () => {
  const rotation = registerRotationCommands(new Command());
  assert.deepEqual(rotation.commands.map((c) => c.name()).sort(), ["approve", "cancel", "distribute", "new-card", "propose", "rewrap", "status"]);
  for (const c of rotation.commands)
    assert.ok(
      c.options.some((o) => o.long === "--json"),
      `${c.name()} --json`,
    );
  const rewrap = rotation.commands.find((c) => c.name() === "rewrap");
  assert.ok(rewrap);
  for (const o of ["--server", "--token", "--wait", "--db", "--page-size"])
    assert.ok(
      rewrap.options.some((x) => x.long === o),
      o,
    );
});

const dir = tempDir("cardkms-cli-rotation-");
const IMAGE_KEY = "44".repeat(32);

function cli(args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  return execCli(args, { env: { ...process.env, CARDKMS_IMAGE_KEY: IMAGE_KEY, CARDKMS_SERVER: "", CARDKMS_TOKEN: "", CARDKMS_DB: "", ...env } });
}

test("an embodiment-3 rotation through the CLI against a running server", { timeout: 10 * 60_000 }, async (t) => {
  const srv = await startTestServer(dir);
  t.after(() => srv.close());
  const env = { CARDKMS_SERVER: srv.url, CARDKMS_TOKEN: srv.operatorToken, CARDKMS_KMC_FILE: srv.kmcFile };
  const second = { ...env, CARDKMS_TOKEN: (await createOperatorToken(srv.server.store, "otto", ["operator"])).token };
  const json = async (args: string[], e = env) => {
    const r = await cli([...args, "--json"], e);
    assert.equal(r.code, 0, `${args.join(" ")}: ${r.stderr}`);
    return JSON.parse(r.stdout);
  };

  const user = await json(["user", "register", "--name", "Hanako Sato"]);
  const image = join(dir, "old.card");
  const old = await json(["card", "issue", "--user", user.id, "--image", image]);
  for (const slot of ["9a", "9c"]) await json(["credential", "request", "--card", old.cardId, "--slot", slot, "--alg", "P256"]);

  assert.equal((await cli(["rotation", "propose", old.cardId, "--strategy", "embodiment7"], env)).code, 2);
  const proposed = await json(["rotation", "propose", old.cardId, "--strategy", "embodiment3"]);
  assert.equal(proposed.status, "proposed");
  const early = await cli(["rotation", "new-card", proposed.id, "--image", join(dir, "early.card")], env);
  assert.equal(early.code, 1, "refused before approval");
  assert.match(early.stderr, /approved/);
  const own = await cli(["rotation", "approve", proposed.id], env);
  assert.equal(own.code, 1, "the proposer may not approve");
  assert.match(own.stderr, /four eyes/);
  assert.equal((await json(["rotation", "approve", proposed.id], second)).status, "approved");

  const fresh = await json(["rotation", "new-card", proposed.id, "--image", join(dir, "new.card")]);
  assert.equal(fresh.status, "active");
  const shown = await json(["card", "show", join(dir, "new.card")]);
  assert.equal(shown.cardId, fresh.cardId);
  assert.deepEqual(
    shown.keySets.map((k: { kvn: number }) => k.kvn),
    [2],
  );

  const rewrapped = await json(["rotation", "rewrap", proposed.id, "--wait", "--interval", "20"]);
  assert.equal(rewrapped.rewrap.state, "done");
  assert.deepEqual([rewrapped.rotation.done, rewrapped.rotation.total, rewrapped.left], [2, 2, 0]);
  const human = await cli(["rotation", "status", proposed.id], env);
  assert.equal(human.code, 0, human.stderr);
  assert.match(human.stdout, /running: card [0-9a-f]+ -> [0-9a-f]+; re-wrap done 2\/2/);

  assert.equal((await cli(["rotation", "distribute", proposed.id, "--add", "nonsense"], env)).code, 2);
  const dist = await json(["rotation", "distribute", proposed.id]);
  assert.deepEqual([dist.rotation.status, dist.distribution.state, dist.distribution.owed], ["running", "distributed", ["9a", "9c"]]);
  assert.deepEqual(
    dist.packages.map((p: { slot: string; kvn: number }) => [p.slot, p.kvn]),
    [
      ["9a", 2],
      ["9c", 2],
    ],
  );
  const owed = await cli(["rotation", "status", proposed.id], env);
  assert.match(owed.stdout, /still owed to the new card: 9a, 9c/);
  // The new card's terminal fetches and loads its packages: nothing is owed, the rotation is complete.
  const synced = await cli(["terminal", "sync", "--card-image", join(dir, "new.card"), "--dir", join(dir, "terminal"), "--json"], { CARDKMS_SERVER: srv.url });
  assert.equal(synced.code, 0, synced.stderr);
  const done = await json(["rotation", "status", proposed.id]);
  assert.deepEqual([done.rotation.status, done.distribution.owed], ["completed", []]);
});
