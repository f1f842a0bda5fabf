// APDU fuzz throughput and findings: the fuzzer of test/fuzz.test.ts (test/fuzz-corpus.ts) on fresh copies of a
// prepared card image, timed end to end (health checks and card re-creations included, image preparation not).
//
//   npx tsx bench/fuzz.ts [count]     prints one JSON line {"name":"fuzz_apdus","value":...,"unit":"apdu/s",...}
//   FUZZ_SEED picks the seed (default: a random one, printed in the result so a finding can be replayed).

import { randomInt } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { describeFindings, prepareImage, runFuzz, type FuzzEvents } from "../test/fuzz-corpus.ts";

export interface FuzzBenchResult {
  name: "fuzz_apdus";
  value: number;
  unit: "apdu/s";
  count: number;
  sixF00: number;
  seconds: number;
  seed: number;
  findings: number;
  events: FuzzEvents;
  sixF00Apdus: string[];
}

export async function benchFuzz(count = 200_000, seed = process.env.FUZZ_SEED ? Number(process.env.FUZZ_SEED) >>> 0 : randomInt(2 ** 32)): Promise<FuzzBenchResult> {
  const dir = mkdtempSync(join(tmpdir(), "cardkms-bench-fuzz-"));
  try {
    const img = await prepareImage(dir);
    const r = runFuzz({ img, count, seed });
    if (r.findings.length) console.error(describeFindings(r));
    return {
      name: "fuzz_apdus",
      value: Math.round(r.count / r.seconds),
      unit: "apdu/s",
      count: r.count,
      sixF00: r.sixF00.length,
      seconds: Number(r.seconds.toFixed(2)),
      seed,
      findings: r.findings.length,
      events: r.events,
      sixF00Apdus: r.sixF00.slice(0, 20),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const n = process.argv[2] ? Number(process.argv[2]) : undefined;
  benchFuzz(n).then(
    (r) => console.log(JSON.stringify(r)),
    (e: unknown) => {
      console.error(e instanceof Error ? e.message : e);
      process.exitCode = 1;
    },
  );
}
