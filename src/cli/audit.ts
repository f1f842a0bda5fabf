// The audit log on the command line (issue 15 §3): verify it (through the API with an auditor token, or directly
// in the DB), against a signed checkpoint kept outside the server; ask the server for a checkpoint; keep an
// auditor's mirror of the log outside the server (`audit pull`), which names the first entry a later rewrite changed.
//
//   cardkms audit verify [--checkpoint FILE [--key VKEY | --mirror DIR]] [--database URL]
//   cardkms audit checkpoint [--out FILE]
//   cardkms audit pull --mirror DIR [--key VKEY]
//
// A mirror is a directory (0700) of three owner-only files: `key` (the pinned checkpoint key), `checkpoint` (the
// newest checkpoint verified) and `hashes` (the chain hash of every entry it covers, 32 bytes each, in order).

import { Command, Option } from "commander";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { canonicalJson, entryHash, GENESIS_HASH, type AuditEntry, type AuditVerification } from "../store/audit.ts";
import { consistencyProof, equalHash, leafHash, treeHead, verifyConsistency, type Hash } from "../tlog/merkle.ts";
import { extendsCheckpoint } from "../tlog/extends.ts";
import { openNote, parseCheckpoint, parseVerifierKey, type Checkpoint } from "../tlog/note.ts";
import { writeFileAtomic } from "../util/files.ts";
import { apiFrom, print, serverOptions, type ServerOpts } from "./issuer.ts";
import { UsageError } from "./image-key.ts";
import type { IssuerApiClient } from "../terminal/api-client.ts";
import type { AuditPageJson, AuditVerifyJson, CheckpointJson, CheckpointKeyJson, ConsistencyJson } from "../issuer/wire-audit.ts";

const int = (v: string): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new UsageError(`not a whole number: ${v}`);
  return n;
};

/** The leaf of an entry in the audit log's tree: its chain hash (src/issuer/audit-checkpoints.ts auditLeaf). */
const leafOf = (chainHash: Uint8Array): Hash => leafHash(chainHash);

/** Every entry, checked link by link as it comes (hash, sequence, chain): the chain hashes in order, or the first break. */
async function chainOf(entries: AsyncIterable<AuditEntry>): Promise<{ hashes: Uint8Array[]; broken?: { seq: number; message: string } }> {
  const hashes: Uint8Array[] = [];
  let prev = GENESIS_HASH;
  for await (const e of entries) {
    const seq = hashes.length + 1;
    if (e.seq !== seq) return { hashes, broken: { seq, message: `entries ${seq}..${e.seq - 1} are missing (the log jumps to ${e.seq})` } };
    const row = { seq: e.seq, at: e.at, actor: e.actor, action: e.action, subject: e.subject, details: canonicalJson(e.details), prev_hash: e.prevHash };
    if (entryHash(row) !== e.hash) return { hashes, broken: { seq, message: `entry ${seq} does not match its hash: altered` } };
    if (e.prevHash !== prev) return { hashes, broken: { seq, message: `entry ${seq} does not follow entry ${seq - 1}` } };
    hashes.push(new Uint8Array(Buffer.from(e.hash, "hex")));
    prev = e.hash;
  }
  return { hashes };
}

/** The audit entries through the API, a page at a time. */
async function* apiEntries(api: IssuerApiClient, after = 0): AsyncGenerator<AuditEntry> {
  for (let cursor: number | null = after; cursor !== null;) {
    const page: AuditPageJson = await api.request("GET", `/v1/audit?after=${cursor}&limit=1000`);
    yield* page.entries;
    cursor = page.next;
  }
}

async function* dbEntries(database: string): AsyncGenerator<AuditEntry> {
  const { Store } = await import("../store/store.ts");
  const { auditEntries } = await import("../store/audit.ts");
  const store = await Store.open(database);
  try {
    yield* auditEntries(store.db);
  } finally {
    await store.close();
  }
}

const readText = (file: string, what: string): string => {
  try {
    return readFileSync(file, "utf8");
  } catch (e) {
    throw new UsageError(`${what} ${file}: ${(e as NodeJS.ErrnoException).code ?? "cannot be read"}`);
  }
};

/** A checkpoint note opened with the pinned key; a usage error says why it does not open. */
function openCheckpoint(note: string, vkey: string, what: string): Checkpoint {
  try {
    const v = parseVerifierKey(vkey);
    const { text } = openNote(note, [v]);
    const cp = parseCheckpoint(text);
    if (cp.origin !== v.name) throw new Error(`the checkpoint is of log ${cp.origin}, not ${v.name}`);
    return cp;
  } catch (e) {
    throw new VerifyFailure(`${what} does not verify under the checkpoint key: ${(e as Error).message}`);
  }
}

class VerifyFailure extends Error {}

interface Mirror {
  dir: string;
  key?: string;
  checkpoint?: string;
  hashes: Uint8Array[];
}

function readMirror(dir: string): Mirror {
  if (!existsSync(dir)) return { dir, hashes: [] };
  const f = (n: string) => (existsSync(join(dir, n)) ? readFileSync(join(dir, n)) : undefined);
  const raw = f("hashes") ?? Buffer.alloc(0);
  if (raw.length % 32 !== 0) throw new UsageError(`${join(dir, "hashes")} is not a whole number of 32-byte hashes: not a mirror`);
  const hashes = Array.from({ length: raw.length / 32 }, (_, i) => new Uint8Array(raw.subarray(32 * i, 32 * i + 32)));
  return { dir, key: f("key")?.toString("utf8").trim(), checkpoint: f("checkpoint")?.toString("utf8"), hashes };
}

function writeMirror(m: Required<Mirror>): void {
  mkdirSync(m.dir, { recursive: true, mode: 0o700 });
  writeFileAtomic(join(m.dir, "hashes"), Buffer.concat(m.hashes));
  writeFileAtomic(join(m.dir, "key"), m.key + "\n");
  writeFileAtomic(join(m.dir, "checkpoint"), m.checkpoint);
}

type VerifyOpts = ServerOpts & { database?: string; checkpoint?: string; key?: string; mirror?: string };

/** `audit verify --checkpoint`: the log (chain first) extends the checkpoint, or where it does not. */
async function verifyWithCheckpoint(o: VerifyOpts): Promise<void> {
  const mirror = o.mirror ? readMirror(o.mirror) : undefined;
  let vkey = o.key ?? mirror?.key;
  const api = o.database ? undefined : apiFrom(o);
  let pinned = true;
  if (!vkey) {
    if (!api) throw new UsageError("--database needs the checkpoint key: --key <verifier key> or --mirror <dir>");
    vkey = (await api.request<CheckpointKeyJson>("GET", "/v1/audit/checkpoint-key")).verifierKey;
    pinned = false;
  }
  const cp = openCheckpoint(readText(o.checkpoint!, "checkpoint"), vkey, `checkpoint ${o.checkpoint}`);
  const { hashes, broken } = await chainOf(api ? apiEntries(api) : dbEntries(o.database!));
  const leaves = hashes.map(leafOf);
  const reference = mirror && mirror.hashes.length >= cp.size ? mirror.hashes.slice(0, cp.size).map(leafOf) : undefined;
  const r = extendsCheckpoint(leaves, cp, reference);
  if (!r.ok) {
    const data = { ok: false, problem: r.problem, firstEntry: r.firstEntry ?? null, message: r.message, checkpointSize: cp.size, size: hashes.length };
    print(o, `audit log does NOT extend the checkpoint of ${cp.size} entries: ${r.message}`, data);
    process.exitCode = 1;
    return;
  }
  if (broken) {
    print(o, `audit log BROKEN at entry ${broken.seq}: ${broken.message}`, { ok: false, problem: "broken", firstEntry: broken.seq, message: broken.message });
    process.exitCode = 1;
    return;
  }
  // The RFC 9162 proof that the log (as read) extends the checkpoint: from the server when there is one, else made here.
  const n = hashes.length;
  const proof = api
    ? (await api.request<ConsistencyJson>("GET", `/v1/audit/consistency?from=${cp.size}&to=${n}`)).proof.map((b) => new Uint8Array(Buffer.from(b, "base64")))
    : consistencyProof(leaves, cp.size, n);
  const root = treeHead(leaves);
  if (!verifyConsistency(cp.size, n, cp.rootHash, root, proof)) {
    print(o, `the server's consistency proof from ${cp.size} to ${n} entries does not verify`, { ok: false, problem: "proof" });
    process.exitCode = 1;
    return;
  }
  const head = n > 0 ? { seq: n, hash: Buffer.from(hashes[n - 1]).toString("hex") } : null;
  const human =
    `audit log intact and extends the checkpoint of ${cp.size} entries (${cp.origin}): ${n} entries, head ${head ? `${head.seq} ${head.hash}` : "none"}, ` +
    `root ${Buffer.from(root).toString("base64")}` +
    (pinned ? "" : `\nwarning: the checkpoint key was fetched from the server, not pinned (pass --key ${vkey})`);
  print(o, human, { ok: true, entries: n, head, rootHash: Buffer.from(root).toString("base64"), checkpointSize: cp.size, origin: cp.origin, keyPinned: pinned });
}

export function registerAuditCommands(program: Command): void {
  const audit = program.command("audit").description("the hash-chained audit log and its signed checkpoints");
  serverOptions(
    audit
      .command("verify")
      .description(
        "verify the audit chain through the API (auditor token), or directly in the DB with --database; prints the size and head verified. " +
          "With --checkpoint, a signed checkpoint kept outside the server: proves the log extends it, or names the first missing or changed entry (with --mirror)",
      )
      .option("--database <url>", "verify this system DB directly instead of asking the server")
      .option("--head-seq <n>", "an exported head's seq (detects truncation)", int)
      .option("--head-hash <hex>", "an exported head's hash")
      .option("--checkpoint <file>", "a signed checkpoint (cardkms audit checkpoint --out, the server's checkpoint file or webhook)")
      .option("--key <vkey>", "the checkpoint key to trust (GET /v1/audit/checkpoint-key, pinned earlier)")
      .option("--mirror <dir>", "an auditor's mirror (cardkms audit pull): its key, and the entries it holds to name a changed one"),
    "optional",
  ).action(async (o: VerifyOpts & { headSeq?: number; headHash?: string }) => {
    if (o.checkpoint) {
      try {
        await verifyWithCheckpoint(o);
      } catch (e) {
        if (!(e instanceof VerifyFailure)) throw e;
        print(o, `audit log NOT verified: ${e.message}`, { ok: false, problem: "checkpoint", message: e.message });
        process.exitCode = 1;
      }
      return;
    }
    if ((o.headSeq === undefined) !== (o.headHash === undefined)) throw new UsageError("--head-seq and --head-hash go together");
    if (o.headHash !== undefined && !/^[0-9a-f]{64}$/.test(o.headHash)) throw new UsageError("--head-hash is 64 lowercase hex digits");
    const head = o.headSeq !== undefined ? { seq: o.headSeq, hash: o.headHash! } : undefined;
    let v: AuditVerifyJson | AuditVerification;
    if (o.database) {
      const { verifyAuditLog } = await import("../store/audit.ts");
      const { Store } = await import("../store/store.ts");
      const store = await Store.open(o.database);
      try {
        v = await verifyAuditLog(store.db, { expectedHead: head });
      } finally {
        await store.close();
      }
    } else {
      const api = apiFrom(o);
      v = head ? await api.request<AuditVerifyJson>("GET", `/v1/audit/verify?headSeq=${head.seq}&headHash=${head.hash}`) : await api.verifyAudit();
    }
    const at = "head" in v && v.head ? `, head ${v.head.seq} ${v.head.hash}` : "";
    print(o, v.ok ? `audit log intact: ${v.entries} entries${at}` : `audit log BROKEN: ${v.message}`, v);
    if (!v.ok) process.exitCode = 1;
  });

  serverOptions(
    audit
      .command("checkpoint")
      .description("have the server sign a checkpoint of the audit log as it is now (key in custody); print it, or write it with --out to keep outside the server")
      .option("--out <file>", "write the signed checkpoint to this file (owner-only, replaced atomically)"),
  ).action(async (o: ServerOpts & { out?: string }) => {
    const c = await apiFrom(o).request<CheckpointJson>("POST", "/v1/audit/checkpoints", {});
    if (o.out) writeFileAtomic(o.out, c.note);
    print(o, o.out ? `checkpoint of ${c.size} entries (${c.origin}) written to ${o.out}` : c.note.trimEnd(), c);
  });

  serverOptions(
    audit
      .command("pull")
      .description(
        "an auditor's mirror outside the server: pins the checkpoint key on first use, has the server sign a checkpoint, fetches the new entries, " +
          "checks them and the checkpoint, and keeps the entries' hashes; refuses, naming the first changed entry, when the log no longer extends the mirror",
      )
      .addOption(new Option("--mirror <dir>", "the mirror directory (created 0700)").makeOptionMandatory())
      .option("--key <vkey>", "the checkpoint key to pin (else the server's, printed to compare)"),
  ).action(async (o: ServerOpts & { mirror: string; key?: string }) => {
    const api = apiFrom(o);
    const m = readMirror(o.mirror);
    if (o.key && m.key && o.key.trim() !== m.key) throw new UsageError(`the mirror pinned another checkpoint key (${m.key})`);
    const key = m.key ?? o.key ?? (await api.request<CheckpointKeyJson>("GET", "/v1/audit/checkpoint-key")).verifierKey;
    const fail = (problem: string, message: string, firstEntry?: number) => {
      print(o, `pull refused, the mirror is left as it was: ${message}`, { ok: false, problem, firstEntry: firstEntry ?? null, message });
      process.exitCode = 1;
    };
    // Everything again, checked link by link and compared with what the mirror holds: a rewrite is named by its entry.
    const { hashes, broken } = await chainOf(apiEntries(api));
    if (broken) return fail("broken", `the log is broken at entry ${broken.seq}: ${broken.message}`, broken.seq);
    const r = extendsCheckpoint(hashes.map(leafOf), { origin: "mirror", size: m.hashes.length, rootHash: treeHead(m.hashes.map(leafOf)), extensions: [] }, m.hashes.map(leafOf));
    if (!r.ok) return fail(r.problem, r.message, r.firstEntry);
    let note: string;
    try {
      note = (await api.request<CheckpointJson>("POST", "/v1/audit/checkpoints", {})).note;
    } catch (e) {
      return fail("not-signed", `the server signs no checkpoint: ${(e as Error).message}`);
    }
    let cp: Checkpoint;
    try {
      cp = openCheckpoint(note, key, "the server's checkpoint");
    } catch (e) {
      return fail("checkpoint", (e as Error).message);
    }
    if (cp.size > hashes.length) {
      // entries appended between the read and the checkpoint: the rest, checked on from the last one read
      const more = await chainOf(apiEntries(api));
      if (more.broken) return fail("broken", `the log is broken at entry ${more.broken.seq}: ${more.broken.message}`, more.broken.seq);
      hashes.splice(0, hashes.length, ...more.hashes);
    }
    if (hashes.length < cp.size || !equalHash(treeHead(hashes.map(leafOf), cp.size), cp.rootHash))
      return fail("checkpoint", `the entries served do not hash to the checkpoint the server signed (${cp.size} entries)`);
    const kept = hashes.slice(0, cp.size);
    writeMirror({ dir: o.mirror, key, checkpoint: note, hashes: kept });
    const pinnedNow = !m.key;
    print(
      o,
      `mirror ${o.mirror}: ${kept.length} entries (${kept.length - m.hashes.length} new), checkpoint verified (${cp.origin})` +
        (pinnedNow ? `\npinned the checkpoint key ${key}: compare it with the issuer's` : ""),
      { ok: true, entries: kept.length, added: kept.length - m.hashes.length, origin: cp.origin, keyPinned: pinnedNow ? key : null },
    );
  });
}
