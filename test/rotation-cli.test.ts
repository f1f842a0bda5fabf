// The rotation re-wrap progress bar (src/cli/rotation.ts): what an operator sees while a bulk re-wrap runs.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Command } from "commander";
import { progressLine, registerRotationCommands } from "../src/cli/rotation.ts";

test("progress line: bar, percentage, counts, rate and ETA", () => {
  const p = { rotationId: "r", done: 420_000, total: 1_000_000, cursor: 420_000, keysPerSecond: 58_000, elapsedMs: 7241 };
  assert.equal(progressLine(p, 10), "[####......]  42.0%  420,000/1,000,000 keys  58,000 keys/s  ETA 10s");
  assert.equal(progressLine({ ...p, done: 0, total: 0, keysPerSecond: 0 }, 4), "[####] 100.0%  0/0 keys  0 keys/s");
  assert.equal(progressLine({ ...p, done: 1_000_000 }, 4), "[####] 100.0%  1,000,000/1,000,000 keys  58,000 keys/s  ETA 0s");
});

test("the command registers as `rotation rewrap <rotation-id>` with --db and --page-size", () => {
  const rotation = registerRotationCommands(new Command());
  const rewrap = rotation.commands.find((c) => c.name() === "rewrap");
  assert.ok(rewrap);
  assert.deepEqual(rewrap.options.map((o) => o.long), ["--db", "--page-size", "--json"]);
});
