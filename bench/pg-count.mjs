// Bench-only statement counter for the server process (issue 16 §5): loaded with `node --import <this file>` by
// bench/issuance.ts (issuance_pg), never by the server itself. It wraps pg's Client.prototype.query and counts every
// statement a client sends — one round trip each (pg sends Parse/Bind/Execute/Sync or a simple Query and waits for
// ReadyForQuery) — by its SQL text (savepoint names folded), whether it was sent as a named prepared statement.
// On SIGUSR2 it writes the counts so far to $BENCH_PG_COUNT_FILE as JSON (written aside, then renamed). It never records parameter values.

import { renameSync, writeFileSync } from "node:fs";
import process from "node:process";
import pg from "pg";

const counts = new Map();
let total = 0;
let named = 0;
const query = pg.Client.prototype.query;
pg.Client.prototype.query = function (config, values, callback) {
  const text = typeof config === "string" ? config : config && typeof config.text === "string" ? config.text : undefined;
  if (text !== undefined) {
    const key = text.replace(/\b(savepoint|release savepoint|rollback to savepoint) g\d+/gi, "$1 gN").replace(/\s+/g, " ").trim();
    counts.set(key, (counts.get(key) ?? 0) + 1);
    total++;
    if (typeof config === "object" && config.name) named++;
  }
  return query.call(this, config, values, callback);
};

const file = process.env.BENCH_PG_COUNT_FILE;
if (file) {
  let generation = 0;
  process.on("SIGUSR2", () => {
    writeFileSync(`${file}.tmp`, JSON.stringify({ generation: ++generation, total, named, statements: Object.fromEntries(counts) }));
    renameSync(`${file}.tmp`, file);
  });
}
