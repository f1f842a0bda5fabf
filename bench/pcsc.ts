// PC/SC round trips per second through real middleware: opensc-tool -> libpcsclite -> pcscd -> vpcd -> TCP ->
// VpcdConnector -> CardRuntime and back. One opensc-tool process sends N APDUs in one session; the time of the
// same run with a single APDU (process start-up, PC/SC connect, SELECT) is subtracted.
//
//   npx tsx bench/pcsc.ts [N]     prints one JSON line {"name":"pcsc_roundtrips","value":...,"unit":"apdu/s",...}

import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import type { Applet } from "../src/card/applet.ts";
import { CardRuntime } from "../src/card/runtime.ts";
import { CardError, SW } from "../src/protocol/sw.ts";
import { parseOpenscTool, run, withAttachedCard } from "../src/transport/pcsc.ts";
import { VPCD_READER } from "../src/transport/vpcd.ts";
import { noSecureChannel as refuseAll } from "../test/echo-applet.ts";

export interface BenchResult {
  name: string;
  value: number;
  unit: string;
  [extra: string]: unknown;
}

const AID = Buffer.from("F0636172646B6D7362", "hex"); // F0 "cardkmsb": proprietary RID, bench only
const SELECT = "00A4040009" + AID.toString("hex").toUpperCase() + "00";
const ECHO = "00EE000010" + "00112233445566778899AABBCCDDEEFF" + "00"; // case 4: 16 bytes out, 16 back

/** Echo applet: the card-side work per APDU is negligible next to the PC/SC path being measured. */
const echoApplet: Applet = {
  name: "bench-echo",
  aid: AID,
  select: () => new Uint8Array(0),
  process: (_ctx, cmd) => {
    if (cmd.ins === 0xee) return Uint8Array.from(cmd.data);
    throw new CardError(SW.INS_NOT_SUPPORTED);
  },
};

async function timedRun(n: number): Promise<number> {
  const args = ["-r", VPCD_READER, "-c", "default", "-s", SELECT];
  for (let i = 0; i < n; i++) args.push("-s", ECHO);
  const r = await run("opensc-tool", args, { timeoutMs: 120_000 });
  const got = parseOpenscTool(r.stdout);
  const bad = got.find((x) => x.sw !== 0x9000);
  if (r.code !== 0 || got.length !== n + 1 || bad) {
    throw new Error(`opensc-tool: exit ${r.code}, ${got.length}/${n + 1} answers${bad ? `, SW ${bad.sw.toString(16)}` : ""}: ${r.stderr.trim()}`);
  }
  return r.ms;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

export async function benchPcsc(opts: { n?: number; repeats?: number } = {}): Promise<BenchResult> {
  const n = opts.n ?? 2000;
  const repeats = opts.repeats ?? 3;
  const dir = mkdtempSync(join(tmpdir(), "cardkms-bench-pcsc-"));
  const card = CardRuntime.create(join(dir, "card.img"), randomBytes(32), {
    applets: [echoApplet],
    secureChannel: refuseAll,
    keySet: { kvn: 0x30, enc: randomBytes(16).toString("hex"), mac: randomBytes(16).toString("hex"), dek: randomBytes(16).toString("hex") },
    durability: "none",
  });
  try {
    return await withAttachedCard(card, async (conn) => {
      await timedRun(1); // warm-up: page cache, pcscd threads
      const one: number[] = [];
      const many: number[] = [];
      for (let i = 0; i < repeats; i++) {
        one.push(await timedRun(1));
        many.push(await timedRun(n));
      }
      const startup = median(one);
      const total = median(many);
      const perApduMs = (total - startup) / (n - 1);
      return {
        name: "pcsc_roundtrips",
        value: Math.round(1000 / perApduMs),
        unit: "apdu/s",
        n,
        repeats,
        per_apdu_us: Math.round(perApduMs * 1000 * 10) / 10,
        run_ms: Math.round(total),
        startup_ms: Math.round(startup),
        card_apdus: conn.stats.apdus,
        vpcd_host: conn.host,
        path: "opensc-tool > pcscd > vpcd > tcp > CardRuntime",
      };
    });
  } finally {
    card.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const n = process.argv[2] ? Number(process.argv[2]) : undefined;
  benchPcsc({ n }).then(
    (r) => console.log(JSON.stringify(r)),
    (e: unknown) => {
      console.error(e instanceof Error ? e.message : e);
      process.exitCode = 1;
    },
  );
}
