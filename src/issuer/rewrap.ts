// The bulk re-wrap of a card-key rotation (seed 000 embodiments 3 and 5, FIG. 12 / FIG. 21: "re-encrypts all the
// encrypted private keys Sk1[PRk] in the system DB based on the new symmetric key Sk2").
//
// It streams the keys wrapped under the rotation's source key set a page at a time (keyset pagination on the
// wrapped_keys id), re-wraps each page inside key custody in one batch (the wrap keys of Sk1 and Sk2 are derived
// once per page), and commits each page with the port's checkpointRotation: the new Sk2[PRk] rows and the cursor move
// in ONE transaction. So a crash at any point — mid-page, mid-commit — leaves the job at its last committed page
// and a restart resumes exactly there; a page another worker (or a replay) already committed is refused by the
// cursor check and skipped. Memory stays at two pages (one re-wrapped, one committing) whatever the number of
// keys. Each key comes with its key pair's algorithm in the page query (custody needs it to unwrap).
//
// What it must never do: see a private key in clear (custody re-wraps), or write a row outside a checkpoint.

import type { KeyCustody, KeyPairAlg, KeySetRef } from "../custody/custody.ts";
import { KEY_PAIR_ALGS } from "../custody/custody.ts";
import { DomainError, isKind, type ErrorKind } from "../util/errors.ts";
import type { IssuerStore } from "./ports.ts";
import type { CardKeySet, Rotation } from "./records.ts";

export interface RewrapProgress {
  rotationId: string;
  /** Keys re-wrapped so far (all runs of this job). */
  done: number;
  /** Keys under the source key set when the job started. */
  total: number;
  /** Last source wrapped_keys.id committed. */
  cursor: number;
  /** Keys per second in this run. */
  keysPerSecond: number;
  elapsedMs: number;
}

export interface RewrapOptions {
  store: IssuerStore;
  custody: KeyCustody;
  rotationId: string;
  /** Keys per page and per commit (default 2,000). */
  pageSize?: number;
  onProgress?: (p: RewrapProgress) => void;
  /** Stops cleanly after the current page's commit. */
  signal?: AbortSignal;
  /**
   * Awaited before each page's commit with the progress as last committed: a job's lease renewal (issue 16 §2,
   * jobs.ts). When it throws, the page is not committed and the run ends with its error.
   */
  beforeCommit?: (p: RewrapProgress) => Promise<void>;
}

/** The re-wrap cannot run (a DomainError, conflict unless said otherwise, check "rewrap"): the message says why. */
export class RewrapError extends DomainError {
  constructor(message: string, kind: ErrorKind = "conflict") {
    super(kind, "rewrap", message);
    this.name = "RewrapError";
  }
}

const refOf = (ks: CardKeySet): KeySetRef => JSON.parse(ks.custodyRef) as KeySetRef;

/**
 * Runs (or resumes) the bulk re-wrap of a running rotation until no page is left, or the signal aborts. Returns
 * the rotation as last committed; it stays "running" — the orchestrator (rotation.ts) completes it.
 */
export async function runRewrap(o: RewrapOptions): Promise<Rotation> {
  const { store, custody, rotationId } = o;
  const pageSize = o.pageSize ?? 1000;
  let rot = await store.getRotation(rotationId);
  if (!rot) throw new RewrapError(`no rotation ${rotationId}`);
  if (rot.status === "completed") return rot;
  if (rot.status !== "running" || !rot.toKeySetId) throw new RewrapError(`rotation ${rotationId} is ${rot.status}; the re-wrap runs only once it is started (running with a target key set)`);
  const from = await store.getKeySet(rot.fromKeySetId);
  const to = await store.getKeySet(rot.toKeySetId);
  if (!from || !to) throw new RewrapError(`rotation ${rotationId}: key set missing`);
  const fromRef = { card: refOf(from) },
    toRef = { card: refOf(to) };
  const t0 = performance.now();
  let thisRun = 0;
  const progress = (r: Rotation): RewrapProgress => {
    const elapsedMs = performance.now() - t0;
    return { rotationId, done: r.done, total: r.total, cursor: r.cursor, keysPerSecond: elapsedMs > 0 ? (thisRun * 1000) / elapsedMs : 0, elapsedMs };
  };
  const report = (r: Rotation) => o.onProgress?.(progress(r));
  report(rot);

  // Pipelined one page deep: page N's commit is in flight while page N+1 is read and re-wrapped, and is awaited
  // before page N+1's commit starts — commits stay in cursor order, each one checked against the cursor the
  // previous one left. (On PostgreSQL the commit is network I/O and overlaps; SQLite runs it on this thread.)
  const pageAlg = (w: { id: number; keyPairId: string; algorithm: string }): KeyPairAlg => {
    if (!(KEY_PAIR_ALGS as readonly string[]).includes(w.algorithm)) throw new RewrapError(`key pair ${w.keyPairId}: unknown algorithm ${w.algorithm}`);
    return w.algorithm as KeyPairAlg;
  };
  for (let restart = true; restart;) {
    restart = false;
    let pending: { commit: Promise<Rotation>; keys: number } | undefined;
    /** Settles the commit in flight: false when it lost to another worker (rot is then what is committed). */
    const settle = async (): Promise<boolean> => {
      if (!pending) return true;
      const p = pending;
      pending = undefined;
      try {
        rot = await p.commit;
      } catch (e) {
        if (!isKind(e, "conflict")) throw e;
        // Another worker committed this page (or the job stopped): pick up from what is committed now.
        const cur = await store.getRotation(rotationId);
        if (!cur) throw e;
        rot = cur;
        return false;
      }
      thisRun += p.keys;
      report(rot);
      return true;
    };
    let expected = rot.cursor;
    try {
      for await (const page of store.wrappedKeyPagesWithAlgorithm(from.id, { afterId: rot.cursor, pageSize })) {
        if (o.signal?.aborted) break;
        const items = page.map((w) => {
          if (w.wrapped[0] !== from.kvn) throw new RewrapError(`wrapped key ${w.id} names key version ${w.wrapped[0]}, not ${from.kvn} of its key set`);
          return { wrapped: w.wrapped.subarray(1), alg: pageAlg(w) };
        });
        const out = await custody.rewrapPrivateKeys(items, fromRef, toRef);
        const rewrapped = page.map((w, i) => {
          const b = new Uint8Array(out[i].length + 1);
          b[0] = to.kvn;
          b.set(out[i], 1);
          return { keyPairId: w.keyPairId, wrapped: b };
        });
        if (!(await settle())) {
          restart = rot.status === "running";
          break;
        }
        if (o.beforeCommit) await o.beforeCommit(progress(rot));
        const cursor = page[page.length - 1].id;
        const commit = store.checkpointRotation(rotationId, { expectedCursor: expected, cursor, rewrapped });
        commit.catch(() => {}); // awaited in settle(); this only keeps it from counting as unhandled meanwhile
        pending = { commit, keys: page.length };
        expected = cursor;
      }
    } finally {
      // Never leave a commit unobserved, also when a page failed to re-wrap.
      await pending?.commit.catch(() => {});
    }
    if (pending && !(await settle())) restart = rot.status === "running";
  }
  return rot;
}
