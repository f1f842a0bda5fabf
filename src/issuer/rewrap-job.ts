// The bulk re-wrap of a rotation (rewrap.ts) as a leased job of kind "rotation.rewrap" (issue 16 §2, jobs.ts), so
// that the servers on one database and the CLI never run one rotation's re-wrap at once, and a re-wrap whose server
// died is taken over from its last committed page:
//
//   rewrapJobHandler   the servers' work for a claimed job: CardRotation.rewrapJob (audited: rotation.rewrap-started,
//                      with the takeover when it resumes another runner's job, and rotation.rewrapped), the lease
//                      renewed before each page's commit, the progress (cursor, done, total, keys per second) kept
//                      in the job row so every server reports the same.
//   rewrapUnderLease   the CLI's: the rotation's job queued (or the live one), claimed for this process by subject,
//                      and run here with runRewrap under the same lease discipline — refused while another runner
//                      holds its lease.
//
// The page cursor check of checkpointRotation still guarantees that no page is applied twice, whoever runs it.
// Never: a key value in a job's progress or error.

import type { KeyCustody } from "../custody/custody.ts";
import { JobLeaseLost, runLeasedJob, type JobHandler, type JobProgress, type JobStore, type LeasedRunEnd } from "./jobs.ts";
import type { IssuerStore } from "./ports.ts";
import type { Rotation } from "./records.ts";
import { RewrapError, runRewrap, type RewrapProgress } from "./rewrap.ts";
import { FIG15, type CardRotation } from "./rotation.ts";

/** The job kind of a rotation's bulk re-wrap; its subject is the rotation's id. */
export const REWRAP_JOB = "rotation.rewrap";

/** What a re-wrap job records as its progress (never secret). */
export interface RewrapJobProgress {
  cursor: number;
  done: number;
  total: number;
  keysPerSecond: number;
}

export const rewrapProgressJson = (p: Pick<RewrapProgress, "cursor" | "done" | "total"> & { keysPerSecond?: number }): JobProgress => ({
  cursor: p.cursor,
  done: p.done,
  total: p.total,
  keysPerSecond: Math.round(p.keysPerSecond ?? 0),
});

/** A job's progress as a re-wrap's (zeros for what it lacks). */
export function rewrapJobProgress(p: JobProgress | null): RewrapJobProgress {
  const n = (k: string) => (typeof p?.[k] === "number" ? (p[k] as number) : 0);
  return { cursor: n("cursor"), done: n("done"), total: n("total"), keysPerSecond: n("keysPerSecond") };
}

/** Whether rotation `r` still has keys under its source key set past its cursor (the re-wrap's work). */
export async function rewrapLeft(store: IssuerStore, r: Rotation): Promise<number> {
  return store.countWrappedKeys(r.fromKeySetId, r.cursor);
}

/** The servers' "rotation.rewrap" work: the audited CardRotation.rewrapJob of the job's rotation under its lease. */
export function rewrapJobHandler(rotations: CardRotation, o: { pageSize?: number } = {}): JobHandler {
  return async (job, ctx) => {
    const r = await rotations.store.getRotation(job.subject);
    if (!r) throw new RewrapError(`no rotation ${job.subject}`, "not_found");
    // Nothing to run (done already by another runner or the CLI, or a strategy that re-wraps nothing): no audit.
    if (r.status === "completed" || FIG15[r.strategy].systemDb !== "all" || (!ctx.takeover && r.status === "running" && (await rewrapLeft(rotations.store, r)) === 0))
      return { stopped: false, progress: rewrapProgressJson(r) };
    let kps = 0;
    const { rotation, stopped } = await rotations.rewrapJob(r, job.actor, {
      pageSize: o.pageSize,
      signal: ctx.signal,
      takeover: ctx.takeover,
      onProgress: (p) => {
        kps = p.keysPerSecond;
        ctx.progress(rewrapProgressJson(p));
      },
      beforeCommit: (p) => ctx.checkpoint(rewrapProgressJson(p)),
    });
    return { stopped, progress: rewrapProgressJson({ ...rotation, keysPerSecond: kps }) };
  };
}

export interface RewrapUnderLeaseOptions {
  jobs: JobStore;
  store: IssuerStore;
  custody: KeyCustody;
  rotationId: string;
  /** Who runs it (audited as the job's actor). */
  actor: string;
  /** This process's runner instance id; a restart with the same id resumes its own lease at once. */
  owner: string;
  leaseMs: number;
  pageSize?: number;
  onProgress?: (p: RewrapProgress) => void;
  signal?: AbortSignal;
}

/**
 * The CLI's re-wrap of one rotation through the job table: its live job (queued now if none) claimed for `owner`,
 * then run here page by page under the lease. Refused (RewrapError conflict) while another runner — a server or
 * another worker — holds the job's lease. Returns how the leased run ended and the rotation as committed.
 */
export async function rewrapUnderLease(o: RewrapUnderLeaseOptions): Promise<{ end: LeasedRunEnd | "nothing"; rotation: Rotation }> {
  const { jobs, store, rotationId } = o;
  const r0 = await store.getRotation(rotationId);
  if (!r0) throw new RewrapError(`no rotation ${rotationId}`, "not_found");
  if (r0.status === "completed" || FIG15[r0.strategy].systemDb !== "all") return { end: "nothing", rotation: r0 };
  if (r0.status !== "running" || !r0.toKeySetId) throw new RewrapError(`rotation ${rotationId} is ${r0.status}; the re-wrap runs only once it is started (running with a target key set)`);
  const { job } = await jobs.enqueue({ kind: REWRAP_JOB, subject: rotationId, actor: o.actor });
  const claimed = await jobs.claim({ owner: o.owner, leaseMs: o.leaseMs, kinds: [REWRAP_JOB], subject: rotationId, reclaimOwn: true });
  if (!claimed) {
    const held = (await jobs.get(job.id)) ?? job;
    const until = held.leaseUntil === null ? "" : ` until ${new Date(held.leaseUntil).toISOString()}`;
    throw new RewrapError(
      `the re-wrap of rotation ${rotationId} runs elsewhere: job ${held.id} is leased by ${held.leaseOwner ?? "another runner"}${until}; try again once it ends or its lease runs out`,
    );
  }
  let failure: unknown;
  const end = await runLeasedJob({
    jobs,
    claimed,
    onError: (e) => (failure = e),
    owner: o.owner,
    leaseMs: o.leaseMs,
    stop: o.signal,
    handler: async (_job, ctx) => {
      let kps = 0;
      const rot = await runRewrap({
        store,
        custody: o.custody,
        rotationId,
        pageSize: o.pageSize,
        signal: ctx.signal,
        onProgress: (p) => {
          kps = p.keysPerSecond;
          ctx.progress(rewrapProgressJson(p));
          o.onProgress?.(p);
        },
        beforeCommit: (p) => ctx.checkpoint(rewrapProgressJson(p)),
      });
      return { stopped: ctx.signal.aborted, progress: rewrapProgressJson({ ...rot, keysPerSecond: kps }) };
    },
  });
  if (end === "lost") throw new JobLeaseLost(claimed.job.id);
  if (end === "failed") throw failure;
  const rotation = (await store.getRotation(rotationId)) ?? r0;
  return { end, rotation };
}
