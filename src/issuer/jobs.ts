// Background jobs shared by every server on one database (issue 16 §2 "Jobs with leases"): the port the domain
// declares for the job table (migration 0016, src/store/job-repository.ts implements it) and the lease discipline
// every runner of a job keeps — the servers' runner (src/server/job-runner.ts) and the CLI's re-wrap worker alike.
//
// A job is one row: a kind ("rotation.rewrap" now; update campaigns and propagation runs later), its subject (the
// rotation's id), a state (queued, running, done, failed, stopped), its lease (owner: a server instance's id; until:
// epoch ms of the store's clock), the attempts (claims), its progress (JSON, never secret), the last error. At most
// one live (queued or running) job per (kind, subject). A runner claims a runnable job — queued, or running with an
// expired lease — under a lease, renews the lease while it works, and either finishes it (done, failed) or releases
// it (graceful stop: the lease ends now, another runner takes it at once). A runner whose renewal is refused lost
// the job to another runner: it stops at once and writes nothing more, neither to the job nor through the job's
// work (runLeasedJob's checkpoint throws JobLeaseLost before the work's next write).
//
// Never: a secret in progress or error text; a write for a job whose lease is not the caller's.

import type { JsonValue } from "../util/json.ts";
import { DomainError } from "../util/errors.ts";

export const JOB_STATES = ["queued", "running", "done", "failed", "stopped"] as const;
export type JobState = (typeof JOB_STATES)[number];
/** The states a job is live in: at most one live job per (kind, subject). */
export const LIVE_JOB_STATES: readonly JobState[] = ["queued", "running"];

export type JobProgress = { [key: string]: JsonValue };

export interface Job {
  id: string;
  kind: string;
  subject: string;
  state: JobState;
  /** The runner instance holding the lease (null: never claimed). Kept after a release: who ran it last. */
  leaseOwner: string | null;
  /** Epoch ms (store clock) the lease runs until. */
  leaseUntil: number | null;
  /** How often it was claimed. */
  attempts: number;
  progress: JobProgress | null;
  error: string | null;
  /** Who asked for it. */
  actor: string;
  createdAt: number;
  updatedAt: number;
}

/** A claim: the job as claimed, and what it was before (running: a takeover of another runner's expired or released lease). */
export interface ClaimedJob {
  job: Job;
  from: { state: JobState; leaseOwner: string | null };
}

/** The job table (src/store/job-repository.ts). Every lease change is a guarded UPDATE. */
export interface JobStore {
  /** The store's clock (epoch ms): leases are judged by it. */
  now(): number;
  /** Queues a job unless one is live for (kind, subject): the live one then, `created` false. */
  enqueue(input: { kind: string; subject: string; actor: string }): Promise<{ job: Job; created: boolean }>;
  get(id: string): Promise<Job | undefined>;
  /** The newest job of (kind, subject): the live one if any. */
  latest(kind: string, subject: string): Promise<Job | undefined>;
  /**
   * Claims one runnable job (queued, or running with an expired lease — or, with reclaimOwn, one under `owner`'s
   * own lease: a restarted process of the same instance) of `kinds` (and of `subject`, if given) for `owner` until
   * now + leaseMs, oldest first; undefined when none. Two claimers never get the same job while its lease runs.
   */
  claim(input: { owner: string; leaseMs: number; kinds: readonly string[]; subject?: string; reclaimOwn?: boolean }): Promise<ClaimedJob | undefined>;
  /**
   * Extends `owner`'s lease to now + leaseMs (and records `progress`); false when the job is no longer running
   * under `owner`'s lease (another runner took it over, or it ended). A lease that ran out but nobody took is renewed.
   */
  renew(id: string, owner: string, leaseMs: number, progress?: JobProgress): Promise<boolean>;
  /** Ends `owner`'s running job as done, failed or stopped; false (nothing written) when the lease is not `owner`'s. */
  finish(id: string, owner: string, end: { state: "done" | "failed" | "stopped"; error?: string; progress?: JobProgress }): Promise<boolean>;
  /** Gives `owner`'s lease up (it ends now; the job stays running, runnable by anyone at once); false when not `owner`'s. */
  release(id: string, owner: string, progress?: JobProgress): Promise<boolean>;
}

/** The job's lease is another runner's now (or it ended): the caller must stop and write nothing more. */
export class JobLeaseLost extends DomainError {
  constructor(readonly jobId: string) {
    super("conflict", "job_lease_lost", `job ${jobId}: the lease is no longer this runner's`);
    this.name = "JobLeaseLost";
  }
}

/** What a job's work is handed. */
export interface JobContext {
  /** Aborts when the runner stops (finish the current step and return stopped) or the lease is lost. */
  signal: AbortSignal;
  /** Renews the lease with `progress` before the work's next write; throws JobLeaseLost when it is lost. */
  checkpoint(progress?: JobProgress): Promise<void>;
  /** Progress to record with the next renewal (the timer's), without waiting for it. */
  progress(p: JobProgress): void;
  /** Set when this claim took the job over from a runner that held it (its lease expired or was released). */
  takeover?: { from: string | null; attempts: number };
}

/** A kind's work: resolves { stopped: true } when it stopped at `signal` with work left. */
export type JobHandler = (job: Job, ctx: JobContext) => Promise<{ stopped: boolean; progress?: JobProgress }>;

/** How a leased run ended: done, failed (recorded), released (stopped, lease given up), lost (nothing written), abandoned (nothing written). */
export type LeasedRunEnd = "done" | "failed" | "released" | "lost" | "abandoned";

export interface LeasedRunOptions {
  jobs: JobStore;
  claimed: ClaimedJob;
  owner: string;
  leaseMs: number;
  handler: JobHandler;
  /** Stops the work after its current step; the lease is then released (or, with abandon(), left to expire). */
  stop?: AbortSignal;
  /** True when the run must write nothing more (a crash-like stop: the lease is left to expire). */
  abandoned?: () => boolean;
  onError?: (e: unknown) => void;
}

const errorText = (e: unknown) => (e instanceof Error ? e.message : String(e)).slice(0, 2000);

/**
 * Runs a claimed job under its lease (issue 16 §2): renews it every leaseMs/3 and at each checkpoint of the work,
 * aborts the work when a renewal is refused (or fails: the lease could run out unseen), and records the end — done,
 * failed with its error, or released when the work stopped at `stop` — only while the lease is still this runner's.
 */
export async function runLeasedJob(o: LeasedRunOptions): Promise<LeasedRunEnd> {
  const { jobs, owner, leaseMs } = o;
  const { job, from } = o.claimed;
  const abort = new AbortController();
  let lost = false;
  let latest: JobProgress | undefined;
  const onStop = () => abort.abort();
  if (o.stop?.aborted) abort.abort();
  o.stop?.addEventListener("abort", onStop);
  const renew = async (p?: JobProgress): Promise<void> => {
    if (lost || o.abandoned?.()) throw new JobLeaseLost(job.id);
    let ok = false;
    try {
      ok = await jobs.renew(job.id, owner, leaseMs, p ?? latest);
    } finally {
      if (!ok) {
        lost = true;
        abort.abort();
      }
    }
    if (!ok) throw new JobLeaseLost(job.id);
  };
  const timer = setInterval(() => void renew().catch(() => {}), Math.max(1, Math.floor(leaseMs / 3)));
  timer.unref();
  const takeover = from.state === "running" ? { from: from.leaseOwner, attempts: job.attempts } : undefined;
  try {
    const ctx: JobContext = {
      signal: abort.signal,
      checkpoint: async (p) => {
        if (p) latest = p;
        await renew(p);
      },
      progress: (p) => {
        latest = p;
      },
      ...(takeover ? { takeover } : {}),
    };
    let end: { stopped: boolean; progress?: JobProgress };
    try {
      end = await o.handler(job, ctx);
    } catch (e) {
      if (lost || e instanceof JobLeaseLost) return "lost";
      if (o.abandoned?.()) return "abandoned";
      o.onError?.(e);
      clearInterval(timer);
      return (await jobs.finish(job.id, owner, { state: "failed", error: errorText(e), progress: latest })) ? "failed" : "lost";
    }
    clearInterval(timer);
    if (lost) return "lost";
    if (o.abandoned?.()) return "abandoned";
    const progress = end.progress ?? latest;
    if (end.stopped) return (await jobs.release(job.id, owner, progress)) ? "released" : "lost";
    return (await jobs.finish(job.id, owner, { state: "done", progress })) ? "done" : "lost";
  } finally {
    clearInterval(timer);
    o.stop?.removeEventListener("abort", onStop);
  }
}
