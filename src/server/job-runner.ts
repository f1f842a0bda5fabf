// The job runner of one server process (issue 16 §2 "Jobs with leases"): on start and every `pollMs` (an unref'd
// timer) it claims runnable jobs of the kinds it has handlers for — queued, or running under a lease that ran out,
// whichever server queued them — and runs each under its lease (src/issuer/jobs.ts runLeasedJob), up to
// `concurrency` at a time. kick() claims at once (the route that queued a job calls it). Its instance id, the
// lease owner it writes, is a random UUID per process unless configured.
//
//   close()    graceful: stops claiming, aborts each running job after its current step and releases its lease
//              (it ends now), so another server takes the job over at once;
//   abandon()  crash-like, for tests and fatal paths: stops claiming and aborts the jobs, writes nothing more to
//              their rows — the leases run out as a dead process's would.
//
// Never: runs a job without holding its lease, or writes a job whose lease another runner took.

import { randomUUID } from "node:crypto";
import { runLeasedJob, type JobHandler, type JobStore, type LeasedRunEnd } from "../issuer/jobs.ts";

export interface JobRunnerOptions {
  jobs: JobStore;
  /** The work per job kind; only these kinds are claimed. */
  handlers: Record<string, JobHandler>;
  /** The lease owner this process writes (default: a random UUID). */
  instanceId?: string;
  /** How often to look for runnable jobs (default 5,000 ms). */
  pollMs?: number;
  /** How long a lease runs unless renewed (default 30,000 ms; renewed every third of it and at each step). */
  leaseMs?: number;
  /** Jobs run at once by this process (default 2). */
  concurrency?: number;
  log?: { info(o: object, msg: string): void; error(o: object, msg: string): void };
}

export const DEFAULT_JOB_POLL_MS = 5000;
export const DEFAULT_JOB_LEASE_MS = 30_000;

export class JobRunner {
  readonly instanceId: string;
  readonly leaseMs: number;
  readonly #o: JobRunnerOptions;
  readonly #pollMs: number;
  readonly #concurrency: number;
  readonly #running = new Map<string, Promise<LeasedRunEnd | undefined>>();
  readonly #stop = new AbortController();
  #abandoned = false;
  #timer: NodeJS.Timeout | undefined;
  #pass: Promise<void> | undefined;
  #again = false;

  constructor(o: JobRunnerOptions) {
    this.#o = o;
    this.instanceId = o.instanceId ?? randomUUID();
    this.#pollMs = o.pollMs ?? DEFAULT_JOB_POLL_MS;
    this.leaseMs = o.leaseMs ?? DEFAULT_JOB_LEASE_MS;
    this.#concurrency = o.concurrency ?? 2;
    for (const [what, v, min] of [
      ["pollMs", this.#pollMs, 1],
      ["leaseMs", this.leaseMs, 3],
      ["concurrency", this.#concurrency, 1],
    ] as const)
      if (!Number.isSafeInteger(v) || v < min) throw new RangeError(`job runner ${what}: expected an integer >= ${min}, got ${v}`);
  }

  /** Claims now and every pollMs until closed. */
  start(): void {
    if (this.#timer || this.#stop.signal.aborted) return;
    this.#timer = setInterval(() => this.kick(), this.#pollMs);
    this.#timer.unref();
    this.kick();
  }

  /** Looks for runnable jobs now (a route that queued one calls it); one pass at a time. */
  kick(): void {
    if (this.#stop.signal.aborted) return;
    if (this.#pass) {
      this.#again = true;
      return;
    }
    this.#pass = (async () => {
      do {
        this.#again = false;
        await this.#claimAll().catch((e: unknown) => this.#o.log?.error({ err: { name: (e as Error)?.name, message: (e as Error)?.message } }, "job runner: claiming failed"));
      } while (this.#again && !this.#stop.signal.aborted);
    })().finally(() => (this.#pass = undefined));
  }

  /** The jobs this process runs now, by id. */
  get running(): string[] {
    return [...this.#running.keys()];
  }

  async #claimAll(): Promise<void> {
    const kinds = Object.keys(this.#o.handlers);
    while (!this.#stop.signal.aborted && this.#running.size < this.#concurrency) {
      const claimed = await this.#o.jobs.claim({ owner: this.instanceId, leaseMs: this.leaseMs, kinds });
      if (!claimed) return;
      if (this.#stop.signal.aborted) {
        if (!this.#abandoned) await this.#o.jobs.release(claimed.job.id, this.instanceId);
        return;
      }
      const { job, from } = claimed;
      // Our own lease ran out while we ran it (a stalled event loop) and the claim took it again: the run going on
      // renews it; no second run.
      if (this.#running.has(job.id)) continue;
      this.#o.log?.info({ job: { id: job.id, kind: job.kind, subject: job.subject, attempts: job.attempts, takeoverFrom: from.state === "running" ? from.leaseOwner : undefined } }, "job claimed");
      const run = runLeasedJob({
        jobs: this.#o.jobs,
        claimed,
        owner: this.instanceId,
        leaseMs: this.leaseMs,
        handler: this.#o.handlers[job.kind],
        stop: this.#stop.signal,
        abandoned: () => this.#abandoned,
        onError: (e) => this.#o.log?.error({ job: { id: job.id, kind: job.kind, subject: job.subject }, err: { name: (e as Error)?.name } }, "job failed"),
      })
        .then((end) => {
          this.#o.log?.info({ job: { id: job.id, kind: job.kind, subject: job.subject }, end }, "job ended");
          return end;
        })
        .catch((e: unknown) => {
          // Recording the end failed (the database went away): the lease runs out and another runner resumes it.
          this.#o.log?.error({ job: { id: job.id, kind: job.kind }, err: { name: (e as Error)?.name } }, "job ended unrecorded");
          return undefined;
        })
        .finally(() => {
          this.#running.delete(job.id);
          // A slot is free: look for more work (another job may be waiting).
          if (!this.#stop.signal.aborted) this.kick();
        });
      this.#running.set(job.id, run);
    }
  }

  /** Graceful stop: no more claims; each running job stops after its current step and its lease is released. */
  async close(): Promise<void> {
    this.#halt();
    await this.#pass;
    await Promise.allSettled([...this.#running.values()]);
  }

  /** Crash-like stop: no more claims, the jobs aborted, nothing more written to their rows (the leases run out). Does not wait. */
  abandon(): void {
    this.#abandoned = true;
    this.#halt();
  }

  #halt(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    this.#stop.abort();
  }
}
