// The bulk re-wrap of a card-key rotation (seed 000 embodiments 3 and 5, FIG. 12 / FIG. 21: "re-encrypts all the
// encrypted private keys Sk1[PRk] in the system DB based on the new symmetric key Sk2").
//
// It streams the keys wrapped under the rotation's source key set a page at a time (keyset pagination on the
// wrapped_keys id), re-wraps each page inside key custody in one batch (the wrap keys of Sk1 and Sk2 are derived
// once per page), and commits each page with Store.checkpointRotation: the new Sk2[PRk] rows and the cursor move
// in ONE transaction. So a crash at any point — mid-page, mid-commit — leaves the job at its last committed page
// and a restart resumes exactly there; a page another worker (or a replay) already committed is refused by the
// cursor check and skipped. Memory stays at one page whatever the number of keys.
//
// What it must never do: see a private key in clear (custody re-wraps), or write a row outside a checkpoint.

import type { KeyCustody, KeyPairAlg, KeySetRef } from "../custody/custody.ts";
import { KEY_PAIR_ALGS } from "../custody/custody.ts";
import { StoreError, type CardKeySet, type Rotation, type Store } from "../store/store.ts";

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
  store: Store;
  custody: KeyCustody;
  rotationId: string;
  /** Keys per page and per commit (default 2,000). */
  pageSize?: number;
  onProgress?: (p: RewrapProgress) => void;
  /** Stops cleanly after the current page's commit. */
  signal?: AbortSignal;
}

export class RewrapError extends Error {
  constructor(message: string) {
    super(message);
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
  const pageSize = o.pageSize ?? 2000;
  let rot = await store.getRotation(rotationId);
  if (!rot) throw new RewrapError(`no rotation ${rotationId}`);
  if (rot.status === "completed") return rot;
  if (rot.status !== "running" || !rot.toKeySetId) throw new RewrapError(`rotation ${rotationId} is ${rot.status}; the re-wrap runs only once it is started (running with a target key set)`);
  const from = await store.getKeySet(rot.fromKeySetId);
  const to = await store.getKeySet(rot.toKeySetId);
  if (!from || !to) throw new RewrapError(`rotation ${rotationId}: key set missing`);
  const fromRef = { card: refOf(from) }, toRef = { card: refOf(to) };
  const t0 = performance.now();
  let thisRun = 0;
  const report = (r: Rotation) => {
    const elapsedMs = performance.now() - t0;
    o.onProgress?.({ rotationId, done: r.done, total: r.total, cursor: r.cursor, keysPerSecond: elapsedMs > 0 ? (thisRun * 1000) / elapsedMs : 0, elapsedMs });
  };
  report(rot);

  for (let restart = true; restart; ) {
    restart = false;
    for await (const page of store.wrappedKeyPages(from.id, { afterId: rot.cursor, pageSize })) {
      if (o.signal?.aborted) return rot;
      const algs = await algorithmsOf(store, page.map((w) => w.keyPairId));
      const items = page.map((w) => {
        if (w.wrapped[0] !== from.kvn) throw new RewrapError(`wrapped key ${w.id} names key version ${w.wrapped[0]}, not ${from.kvn} of its key set`);
        const alg = algs.get(w.keyPairId);
        if (!alg) throw new RewrapError(`key pair ${w.keyPairId}: unknown algorithm`);
        return { wrapped: w.wrapped.subarray(1), alg };
      });
      const out = await custody.rewrapPrivateKeys(items, fromRef, toRef);
      const rewrapped = page.map((w, i) => {
        const b = new Uint8Array(out[i].length + 1);
        b[0] = to.kvn;
        b.set(out[i], 1);
        return { keyPairId: w.keyPairId, wrapped: b };
      });
      try {
        rot = await store.checkpointRotation(rotationId, { expectedCursor: rot.cursor, cursor: page[page.length - 1].id, rewrapped });
      } catch (e) {
        if (!(e instanceof StoreError && e.code === "conflict")) throw e;
        // Another worker committed this page (or the job stopped): pick up from what is committed now.
        const cur = await store.getRotation(rotationId);
        if (!cur || cur.status !== "running") return cur ?? rot;
        rot = cur;
        restart = true;
        break;
      }
      thisRun += page.length;
      report(rot);
    }
  }
  return rot;
}

/** The algorithm of each key pair of a page (custody needs it to unwrap: CKK_EC or CKK_RSA on PKCS#11). */
async function algorithmsOf(store: Store, ids: string[]): Promise<Map<string, KeyPairAlg>> {
  const rows = await store.db.selectFrom("key_pairs").select(["id", "algorithm"]).where("id", "in", [...new Set(ids)]).execute();
  const m = new Map<string, KeyPairAlg>();
  for (const r of rows) if ((KEY_PAIR_ALGS as readonly string[]).includes(r.algorithm)) m.set(r.id, r.algorithm as KeyPairAlg);
  return m;
}
