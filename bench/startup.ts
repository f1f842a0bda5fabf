// cli_startup: milliseconds from starting `node bin/cardkms.js --help` to its exit, the median of `runs` runs,
// with the median of `node -e 0` (Node's own start-up on this machine, now) as the baseline, the two interleaved
// so both meet the same load. bin/cardkms.js runs the compiled CLI, so dist/ is rebuilt first: the figure is for
// the sources as they are.
//   npx tsx bench/startup.ts [runs]     prints one JSON line {"name":"cli_startup","value":...,"unit":"ms",...}

import { spawnSync } from "node:child_process";
import { loadavg } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

export interface BenchResult {
  name: string;
  value: number;
  unit: string;
  [extra: string]: unknown;
}

const ROOT = join(import.meta.dirname, "..");
const CLI = ["bin/cardkms.js", "--help"];
const BASELINE = ["-e", "0"];

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const r1 = (x: number) => Math.round(x * 10) / 10;
const load = () => loadavg().map((x) => Math.round(x * 100) / 100);

/** Wall-clock milliseconds of one `node args` to its exit; throws unless it exits 0 having printed `expect`. */
function timeNode(args: string[], expect: string): number {
  const t0 = performance.now();
  const r = spawnSync(process.execPath, args, { cwd: ROOT, encoding: "utf8" });
  const ms = performance.now() - t0;
  if (r.status !== 0 || !r.stdout.includes(expect)) throw new Error(`node ${args.join(" ")} exited ${r.status}: ${r.stderr}`);
  return ms;
}

export function benchStartup(runs = 15): BenchResult {
  const build = spawnSync("npm", ["run", "--silent", "build"], { cwd: ROOT, encoding: "utf8" });
  if (build.status !== 0) throw new Error(`npm run build failed: ${build.stdout}${build.stderr}`);
  const loadBefore = load();
  timeNode(BASELINE, ""); // one of each first, into the page cache
  timeNode(CLI, "Usage: cardkms");
  const cli: number[] = [];
  const node: number[] = [];
  for (let i = 0; i < runs; i++) {
    node.push(timeNode(BASELINE, ""));
    cli.push(timeNode(CLI, "Usage: cardkms"));
  }
  const value = median(cli);
  const baseline = median(node);
  return {
    name: "cli_startup",
    value: r1(value),
    unit: "ms",
    baseline: r1(baseline),
    ratio: Math.round((value / baseline) * 1000) / 1000,
    command: `node ${CLI.join(" ")}`,
    runs,
    min: r1(Math.min(...cli)),
    max: r1(Math.max(...cli)),
    loadavg_before: loadBefore,
    loadavg_after: load(),
  };
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  console.log(JSON.stringify({ ...benchStartup(Number(process.argv[2] ?? 15)), date: new Date().toISOString() }));
}
