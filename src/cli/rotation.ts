// `cardkms rotation ...`: card-key rotation Sk1 -> Sk2 onto a new card (seed 000 embodiments 3-5, FIG. 15) as an
// operator drives it, over the issuer API (--server, --token / CARDKMS_SERVER, CARDKMS_TOKEN):
//
//   propose <card-id> --strategy embodiment3|4|5 [--new-card-id <hex>] [--add <slot>:<alg> ...] [--drop <slot> ...]
//                                                    what the approvals cover: the new card (a fresh ID unless
//                                                    given), the pairs added (embodiments 4, 5), the old card's
//                                                    slots left behind
//   approve <rotation-id>                            by an operator other than the proposer (four eyes); it runs
//                                                    once enough distinct operators approved (rotations.approvals)
//   cancel <rotation-id>                             withdraw one not started, to propose it anew
//   new-card <rotation-id> --image <file>            issue the new card; this machine is the card issuing machine:
//                                                    a blank card image is created and personalised through the relay
//   rewrap <rotation-id> [--wait]                    start or resume the bulk re-wrap on the server; --wait shows a
//                                                    progress bar polling the status until it ends
//   rewrap <rotation-id> --db <url>                  or run it here, directly on the system DB and key custody (as
//                                                    the server opens them), resuming from the last committed page —
//                                                    Ctrl-C, a crash or a kill at any point loses nothing; it claims
//                                                    the rotation's job under a lease as the servers do (issue 16
//                                                    §2): refused while a server or another worker runs it
//   status <rotation-id>                             approvals, re-wrap, and what the distribution still owes
//   distribute <rotation-id> [--add <slot>:<alg> ...] once per rotation; --add, if given, must be the approved
//                                                    additions. Complete once the new card fetched every package.
//
// No domain logic here: src/issuer/rotation.ts and rewrap.ts do the work, behind the routes of rotation-routes.ts.

import { Command, Option } from "commander";
import { randomUUID } from "node:crypto";
import { existsSync } from "node:fs";
import { createCard } from "../card/card.ts";
import { factoryOptions, factoryTransport, type FactoryOpts } from "./kmc.ts";
import { openCustody, custodyConfigFromEnv } from "../custody/index.ts";
import type { RewrapProgress } from "../issuer/rewrap.ts";
import type { Db } from "../store/db.ts";
import type { DistributedJson, DistributionJson, NewCardJson, RotationJson, RotationStatusJson } from "../issuer/wire-rotation.ts";
import { fromHex, type IssuerApiClient } from "../terminal/api-client.ts";
import { relaySession } from "../terminal/terminal.ts";
import { InProcessTransport } from "../transport/transport.ts";
import { resolveImageSecret, UsageError } from "./image-key.ts";
import { apiFrom, print, serverOptions, type ServerOpts } from "./issuer.ts";

const STRATEGIES = ["embodiment3", "embodiment4", "embodiment5"];
const ALGS = ["P256", "P384", "RSA2048", "RSA3072"];

/** What GET /v1/rotations/{id} answers, and a rotation's distribution (issuer/wire-rotation.ts). */
export type RotationStatus = RotationStatusJson;
type Distribution = DistributionJson;

const describeDistribution = (d: Distribution): string =>
  `distribution ${d.state}${d.items.length ? `: ${d.items.map((i) => `${i.slot} ${i.state}${i.packageSeq !== null ? ` (package ${i.packageSeq})` : i.path === "terminal" && i.state !== "dropped" ? " (by the terminal)" : ""}`).join(", ")}` : ""}` +
  (d.owed.length ? `; still owed to the new card: ${d.owed.join(", ")}` : "");

const statusOf = (api: IssuerApiClient, id: string) => api.request<RotationStatus>("GET", `/v1/rotations/${encodeURIComponent(id)}`);

const humanStatus = (s: RotationStatus): string => {
  const r = s.rotation;
  const lines = [
    `rotation ${r.id} (${r.strategy}) ${r.status}: card ${r.cardId} -> ${r.toCardId ?? `${r.newCardId ?? "?"} (not issued yet)`}; re-wrap ${s.rewrap.state} ${r.done}/${r.total}, cursor ${r.cursor}${s.rewrap.error ? ` (${s.rewrap.error})` : ""}`,
  ];
  if (s.approvals)
    lines.push(
      `  approvals ${s.approvals.given.length}/${s.approvals.required}${s.approvals.given.length ? ` (${s.approvals.given.map((a) => a.operator).join(", ")})` : ""}; proposed by ${s.approvals.proposedBy ?? "the validity scan"}`,
    );
  if (s.distribution) lines.push(`  ${describeDistribution(s.distribution)}`);
  return lines.join("\n");
};

/** `<slot>:<alg>` pairs of --add. */
function parseAdd(list: string[] | undefined): { slot: string; alg: string }[] {
  return (list ?? []).map((a) => {
    const m = /^([0-9a-f]{2}):([A-Z0-9]+)$/.exec(a);
    if (!m || !ALGS.includes(m[2])) throw new UsageError(`--add ${a}: expected <slot>:<alg>, e.g. 82:P256`);
    return { slot: m[1], alg: m[2] };
  });
}

/** One line of progress: `[#####.....]  42.0%  420,000/1,000,000 keys  61,234 keys/s  ETA 9s`. */
export function progressLine(p: RewrapProgress, width = 30): string {
  const frac = p.total > 0 ? Math.min(1, p.done / p.total) : 1;
  const fill = Math.round(frac * width);
  const eta = p.keysPerSecond > 0 ? Math.ceil((p.total - p.done) / p.keysPerSecond) : undefined;
  const n = (x: number) => x.toLocaleString("en-US", { maximumFractionDigits: 0 });
  return `[${"#".repeat(fill)}${".".repeat(width - fill)}] ${(frac * 100).toFixed(1).padStart(5)}%  ${n(p.done)}/${n(p.total)} keys  ${n(p.keysPerSecond)} keys/s${eta !== undefined ? `  ETA ${eta}s` : ""}`;
}

export function registerRotationCommands(program: Command): Command {
  const rotation = program.command("rotation").description("card-key rotations Sk1 -> Sk2 onto a new card (seed 000 embodiments 3-5, FIG. 15)");

  serverOptions(
    rotation
      .command("propose")
      .description("propose rotating a card's key set; it runs once an operator approves it")
      .argument("<card-id>", "the card whose key set Sk1 is rotated")
      .addOption(
        new Option("--strategy <name>", "FIG. 15 strategy: 3 re-wraps and resends everything, 4 adds beside Sk1, 5 re-wraps but sends only what is added").choices(STRATEGIES).makeOptionMandatory(),
      )
      .option("--new-card-id <hex>", "the new card's ID (8-16 bytes lowercase hex); a fresh one by default")
      .option("--add <slot:alg...>", `embodiments 4, 5: key pairs the new card gets added, e.g. 82:P256 (algorithms ${ALGS.join(", ")})`)
      .option("--drop <slot...>", "slots of the old card whose key pairs the new card is not to get"),
  ).action(async (cardId: string, o: ServerOpts & { strategy: string; newCardId?: string; add?: string[]; drop?: string[] }) => {
    if (o.newCardId && !/^([0-9a-f]{2}){8,16}$/.test(o.newCardId)) throw new UsageError("--new-card-id must be 8 to 16 bytes of lowercase hex");
    for (const d of o.drop ?? []) if (!/^[0-9a-f]{2}$/.test(d)) throw new UsageError(`--drop ${d}: expected a slot, e.g. 9e`);
    const add = parseAdd(o.add);
    const body = { strategy: o.strategy, ...(o.newCardId ? { newCardId: o.newCardId } : {}), ...(add.length ? { add } : {}), ...(o.drop?.length ? { drop: o.drop } : {}) };
    const r = await apiFrom(o).request<RotationJson>("POST", `/v1/cards/${encodeURIComponent(cardId)}/rotations`, body);
    print(o, `rotation ${r.id} proposed for card ${cardId} (${r.strategy}) onto new card ${String(r.newCardId)}; another operator approves it with: cardkms rotation approve ${r.id}`, r);
  });

  serverOptions(
    rotation.command("approve").description("approve a proposed rotation (para 0062), as an operator other than its proposer (four eyes)").argument("<rotation-id>", "the rotation"),
  ).action(async (id: string, o: ServerOpts) => {
    const api = apiFrom(o);
    const r = await api.request<RotationJson>("POST", `/v1/rotations/${encodeURIComponent(id)}/approve`, {});
    if (r.status === "approved") return print(o, `rotation ${r.id} approved by ${String(r.approvedBy)}`, r);
    const s = await statusOf(api, id);
    print(o, `rotation ${r.id}: approval recorded (${s.approvals?.given.length ?? "?"} of ${s.approvals?.required ?? "?"}); it needs another operator`, r);
  });

  serverOptions(rotation.command("cancel").description("withdraw a rotation that has not started (proposed or approved)").argument("<rotation-id>", "the rotation")).action(
    async (id: string, o: ServerOpts) => {
      const r = await apiFrom(o).request<RotationJson>("POST", `/v1/rotations/${encodeURIComponent(id)}/cancel`, {});
      print(o, `rotation ${r.id} cancelled`, r);
    },
  );

  serverOptions(
    factoryOptions(
      rotation
        .command("new-card")
        .description("issue the rotation's new card: a blank card image is created here and personalised with Sk2 (and Sk1 for embodiments 4, 5) through the relay")
        .argument("<rotation-id>", "the approved rotation")
        .requiredOption("--image <file>", "card image to create for the new card")
        .option("--card-id <hex>", "the new card ID (8-16 bytes lowercase hex); chosen by the server by default")
        .option("--capacity <bytes>", "user data the card can hold", (v: string) => positive(v, "--capacity"), 96 * 1024)
        .option("--pin <pin>", "initial PIN", "123456")
        .option("--puk <puk>", "initial PUK", "12345678")
        .addOption(new Option("--image-key-file <file>", "file with the card image key (else CARDKMS_IMAGE_KEY)")),
    ),
  ).action(async (id: string, o: ServerOpts & FactoryOpts & { image: string; cardId?: string; capacity: number; pin: string; puk: string; imageKeyFile?: string }) => {
    const api = apiFrom(o);
    const secret = resolveImageSecret(o.imageKeyFile);
    const factory = factoryTransport(o).card;
    if (existsSync(o.image)) throw new UsageError(`${o.image} already exists`);
    if (o.cardId && !/^([0-9a-f]{2}){8,16}$/.test(o.cardId)) throw new UsageError("--card-id must be 8 to 16 bytes of lowercase hex");
    const r = await api.request<NewCardJson>("POST", `/v1/rotations/${encodeURIComponent(id)}/new-card`, o.cardId ? { cardId: o.cardId } : {});
    if (!r.personalisation) {
      print(o, `rotation ${id}: new card ${r.card.id} is already ${r.card.status}`, { rotationId: id, cardId: r.card.id, status: r.card.status, image: null });
      return;
    }
    const vc = createCard(o.image, secret, { ...factory, cardId: new Uint8Array(Buffer.from(r.card.id, "hex")), capacity: o.capacity, pin: o.pin, puk: o.puk, durability: "fsync" });
    const transport = new InProcessTransport(vc, { closeCard: true });
    try {
      await relaySession(api, (a) => transport.transmit(a), { sessionId: r.personalisation.sessionId, apdus: r.personalisation.apdus.map((a, i) => fromHex(a, `apdus[${i}]`)) });
    } catch (e) {
      throw new Error(`new card ${r.card.id} is registered but its personalisation failed (run new-card again with another --image): ${(e as Error).message}`, { cause: e });
    } finally {
      await transport.close();
    }
    const card = await api.getCard(r.card.id);
    print(o, `rotation ${id}: new card ${r.card.id} personalised into ${o.image} (status ${card.status})`, { rotationId: id, cardId: r.card.id, status: card.status, image: o.image });
  });

  serverOptions(rotation.command("status").description("a rotation's status and the progress of its bulk re-wrap").argument("<rotation-id>", "the rotation")).action(
    async (id: string, o: ServerOpts) => {
      const s = await statusOf(apiFrom(o), id);
      print(o, humanStatus(s), s);
    },
  );

  serverOptions(
    rotation
      .command("rewrap")
      .description("start or resume the bulk re-wrap Sk1[PRk] -> Sk2[PRk] of a started rotation (on the server, or here with --db), with a progress bar")
      .argument("<rotation-id>", "the rotation (started: it has its new card and key set)")
      .option("--wait", "on the server: poll the status with a progress bar until the re-wrap ends")
      .option("--interval <ms>", "with --wait: how often to poll", (v: string) => positive(v, "--interval"), 500)
      .addOption(new Option("--db <url>", "run it here on this system DB (sqlite:/path or postgres://...) instead of on the server").env("CARDKMS_DB"))
      .addOption(new Option("--page-size <n>", "with --db: keys per page and commit").default("1000")),
  ).action(async (id: string, o: ServerOpts & { db?: string; pageSize: string; wait?: boolean; interval: number }) => {
    if (o.db) return rewrapHere(id, o as ServerOpts & { db: string; pageSize: string });
    const api = apiFrom(o);
    let s = await api.request<RotationStatus>("POST", `/v1/rotations/${encodeURIComponent(id)}/rewrap`, {});
    if (o.wait) s = await waitForRewrap(api, id, s, o);
    const r = s.rotation;
    if (s.rewrap.state === "failed") process.exitCode = 1;
    const human =
      s.rewrap.state === "not-needed"
        ? `rotation ${id} (${r.strategy}) re-wraps nothing in the system DB (FIG. 15)`
        : s.rewrap.state === "running"
          ? `re-wrap of rotation ${id} running on the server: ${r.done}/${r.total}; follow it with: cardkms rotation rewrap ${id} --wait`
          : s.rewrap.state === "failed"
            ? `re-wrap of rotation ${id} FAILED at ${r.done}/${r.total}: ${s.rewrap.error ?? "see the server log"}`
            : `re-wrapped ${r.done}/${r.total}`;
    print(o, human, s);
  });

  serverOptions(
    rotation
      .command("distribute")
      .description("redistribute per FIG. 15 (embodiment 3: every pair under Sk2; 4, 5: the approved added pairs only), once per rotation; it completes when the new card fetched them")
      .argument("<rotation-id>", "the rotation (re-wrapped, for embodiments 3 and 5)")
      .option("--add <slot:alg...>", `embodiments 4, 5: the approved additions, e.g. 82:P256 (checked against the approval; by default what was approved)`),
  ).action(async (id: string, o: ServerOpts & { add?: string[] }) => {
    const add = parseAdd(o.add);
    const r = await apiFrom(o).request<DistributedJson>("POST", `/v1/rotations/${encodeURIComponent(id)}/distribute`, o.add ? { add } : {});
    print(
      o,
      `rotation ${id} ${r.rotation.status}: ${r.packages.length} package(s) for card ${r.rotation.toCardId} (${r.packages.map((p) => `${p.slot}@KVN${p.kvn}`).join(", ") || "none"}), ${r.added.length} pair(s) added; ${describeDistribution(r.distribution)}`,
      r,
    );
  });

  return rotation;
}

function positive(v: string, what: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new UsageError(`${what}: not a positive whole number: ${v}`);
  return n;
}

/** A progress renderer: a redrawn bar on a terminal, a line per 5% otherwise, JSON lines with --json. */
function progressWriter(json: boolean | undefined): { update(p: RewrapProgress): void; end(): void } {
  const tty = process.stderr.isTTY && !json;
  let lastPct = -1;
  return {
    update(p) {
      if (json) process.stderr.write(`${JSON.stringify(p)}\n`);
      else if (tty) process.stderr.write(`\r${progressLine(p)}`);
      else {
        const pct = p.total ? Math.floor((p.done * 20) / p.total) : 20;
        if (pct !== lastPct) process.stderr.write(`${progressLine(p)}\n`);
        lastPct = pct;
      }
    },
    end() {
      if (tty) process.stderr.write("\n");
    },
  };
}

async function waitForRewrap(api: IssuerApiClient, id: string, first: RotationStatus, o: { json?: boolean; interval: number }): Promise<RotationStatus> {
  const bar = progressWriter(o.json);
  const t0 = performance.now();
  const done0 = first.rotation.done;
  let s = first;
  const show = () => {
    const elapsedMs = performance.now() - t0;
    const keysPerSecond = s.rewrap.keysPerSecond ?? (elapsedMs > 0 ? ((s.rotation.done - done0) * 1000) / elapsedMs : 0);
    bar.update({ rotationId: id, done: s.rotation.done, total: s.rotation.total, cursor: s.rotation.cursor, keysPerSecond, elapsedMs });
  };
  show();
  while (s.rewrap.state === "running") {
    await new Promise((r) => setTimeout(r, o.interval));
    s = await statusOf(api, id);
    show();
  }
  bar.end();
  return s;
}

/** The re-wrap run in this process, directly on the system DB and custody. */
async function rewrapHere(id: string, o: { db: string; pageSize: string; json?: boolean }): Promise<void> {
  const pageSize = Number(o.pageSize);
  if (!Number.isInteger(pageSize) || pageSize < 1) throw new UsageError(`--page-size: not a positive whole number: ${o.pageSize}`);
  const { Store } = await import("../store/store.ts");
  const { rewrapUnderLease } = await import("../issuer/rewrap-job.ts");
  const { jobStoreOf } = await import("../store/job-repository.ts");
  const { custodyOnStore } = await import("../store/custody-keystore.ts");
  const store = await Store.open(o.db);
  const custody = await openCustody(custodyOnStore(custodyConfigFromEnv(), store.db));
  const abort = new AbortController();
  const stop = () => abort.abort();
  process.once("SIGINT", stop);
  const bar = progressWriter(o.json);
  try {
    const { rotation: rot } = await rewrapUnderLease({
      jobs: jobStoreOf(store.db as Db, { now: () => store.now() }),
      store,
      custody,
      rotationId: id,
      actor: "cli",
      owner: process.env.CARDKMS_INSTANCE_ID || randomUUID(),
      leaseMs: Number(process.env.CARDKMS_JOB_LEASE_MS ?? 30_000),
      pageSize,
      signal: abort.signal,
      onProgress: (p) => bar.update(p),
    });
    bar.end();
    const left = await store.countWrappedKeys(rot.fromKeySetId, rot.cursor);
    const msg = abort.signal.aborted ? `stopped at ${rot.done}/${rot.total}; run again to resume` : left === 0 ? `re-wrapped ${rot.done}/${rot.total}` : `${left} keys left`;
    process.stdout.write(o.json ? `${JSON.stringify({ id: rot.id, status: rot.status, done: rot.done, total: rot.total, cursor: rot.cursor, left })}\n` : `${msg}\n`);
  } finally {
    process.off("SIGINT", stop);
    await custody.close();
    await store.close();
  }
}
