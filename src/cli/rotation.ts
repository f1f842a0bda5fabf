// `cardkms rotation rewrap`: the bulk re-wrap of a card-key rotation (seed 000 embodiments 3, 5) run by an
// operator on the issuer's host, with a progress bar (issue 3 §5.e). It opens the system DB and key custody as
// the server does (CARDKMS_DB / --db; custody from CARDKMS_CUSTODY and friends) and resumes a running rotation
// from its last committed page — so Ctrl-C, a crash or a kill at any point loses nothing. No domain logic here:
// src/issuer/rewrap.ts does the work. To register: `registerRotationCommands(program)` in main.ts.

import { Command, Option } from "commander";
import { openCustody, custodyConfigFromEnv } from "../custody/index.ts";
import { runRewrap, type RewrapProgress } from "../issuer/rewrap.ts";
import { Store } from "../store/store.ts";
import { UsageError } from "./image-key.ts";

/** One line of progress: `[#####.....]  42.0%  420,000/1,000,000 keys  61,234 keys/s  ETA 9s`. */
export function progressLine(p: RewrapProgress, width = 30): string {
  const frac = p.total > 0 ? Math.min(1, p.done / p.total) : 1;
  const fill = Math.round(frac * width);
  const eta = p.keysPerSecond > 0 ? Math.ceil((p.total - p.done) / p.keysPerSecond) : undefined;
  const n = (x: number) => x.toLocaleString("en-US", { maximumFractionDigits: 0 });
  return `[${"#".repeat(fill)}${".".repeat(width - fill)}] ${(frac * 100).toFixed(1).padStart(5)}%  ${n(p.done)}/${n(p.total)} keys  ${n(p.keysPerSecond)} keys/s${eta !== undefined ? `  ETA ${eta}s` : ""}`;
}

export function registerRotationCommands(program: Command): Command {
  const rotation = program.command("rotation").description("card-key rotations (seed 000 embodiments 3-5)");
  rotation
    .command("rewrap")
    .description("run or resume the bulk re-wrap Sk1[PRk] -> Sk2[PRk] of a started rotation, with a progress bar")
    .argument("<rotation-id>", "the rotation (started: it has its new card and key set)")
    .addOption(new Option("--db <url>", "system DB (sqlite:/path or postgres://...)").env("CARDKMS_DB"))
    .addOption(new Option("--page-size <n>", "keys per page and commit").default("2000"))
    .option("--json", "one JSON line per page instead of a bar")
    .action(async (id: string, o: { db?: string; pageSize: string; json?: boolean }) => {
      if (!o.db) throw new UsageError("no system DB: --db or CARDKMS_DB");
      const pageSize = Number(o.pageSize);
      if (!Number.isInteger(pageSize) || pageSize < 1) throw new UsageError(`--page-size: not a positive whole number: ${o.pageSize}`);
      const store = await Store.open(o.db);
      const custody = await openCustody(custodyConfigFromEnv());
      const abort = new AbortController();
      const stop = () => abort.abort();
      process.once("SIGINT", stop);
      const tty = process.stderr.isTTY && !o.json;
      let lastPct = -1;
      try {
        const rot = await runRewrap({
          store,
          custody,
          rotationId: id,
          pageSize,
          signal: abort.signal,
          onProgress: (p) => {
            if (o.json) process.stdout.write(`${JSON.stringify(p)}\n`);
            else if (tty) process.stderr.write(`\r${progressLine(p)}`);
            else {
              const pct = p.total ? Math.floor((p.done * 20) / p.total) : 20;
              if (pct !== lastPct) process.stderr.write(`${progressLine(p)}\n`);
              lastPct = pct;
            }
          },
        });
        if (tty) process.stderr.write("\n");
        const left = await store.countWrappedKeys(rot.fromKeySetId, rot.cursor);
        const msg = abort.signal.aborted ? `stopped at ${rot.done}/${rot.total}; run again to resume` : left === 0 ? `re-wrapped ${rot.done}/${rot.total}` : `${left} keys left`;
        process.stdout.write(o.json ? `${JSON.stringify({ id: rot.id, status: rot.status, done: rot.done, total: rot.total, cursor: rot.cursor, left })}\n` : `${msg}\n`);
      } finally {
        process.off("SIGINT", stop);
        await custody.close();
        await store.close();
      }
    });
  return rotation;
}
