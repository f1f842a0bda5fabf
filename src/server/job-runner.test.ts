// The servers' job runner (job-runner.ts) over the job table on SQLite and PostgreSQL (issue 16 §2): two runners
// (two servers, two connections) share the queued jobs, each run once; a graceful close stops the running job after
// its step and releases its lease, so the other runner takes it over at once (no lease to wait out), naming the
// takeover; a random UUID is the instance id unless one is configured.
import { test } from "node:test";
import assert from "node:assert/strict";
import { testEngines } from "../../test/support/store-testing.ts";
import type { Job, JobHandler } from "../issuer/jobs.ts";
import { jobStoreOf } from "../store/job-repository.ts";
import { JobRunner } from "./job-runner.ts";

const KIND = "test.kind";
const until = async (ok: () => boolean | Promise<boolean>) => {
  while (!(await ok())) await new Promise((r) => setTimeout(r, 10));
};

for (const engine of testEngines()) {
  test(`${engine.name}: job runners — queued jobs run once across two servers; a graceful close hands a running job over at once`, async (t) => {
    const tdb = await engine.create();
    t.after(() => tdb.drop());
    const jobsA = jobStoreOf(tdb.db);
    const jobsB = jobStoreOf(tdb.reopen());

    // Ten jobs, two runners: every job runs exactly once.
    const ran: { job: string; by: string }[] = [];
    const quick =
      (by: string): JobHandler =>
      async (job: Job, ctx) => {
        await ctx.checkpoint({ by });
        ran.push({ job: job.subject, by });
        return { stopped: false };
      };
    for (let i = 0; i < 10; i++) await jobsA.enqueue({ kind: KIND, subject: `s-${i}`, actor: "olga" });
    const a = new JobRunner({ jobs: jobsA, handlers: { [KIND]: quick("A") }, instanceId: "A", pollMs: 20, leaseMs: 60_000 });
    const b = new JobRunner({ jobs: jobsB, handlers: { [KIND]: quick("B") }, instanceId: "B", pollMs: 20, leaseMs: 60_000 });
    a.start();
    b.start();
    await until(async () => {
      const all = await Promise.all(Array.from({ length: 10 }, (_, i) => jobsA.latest(KIND, `s-${i}`)));
      return all.every((j) => j?.state === "done");
    });
    await a.close();
    await b.close();
    assert.equal(ran.length, 10, JSON.stringify(ran));
    assert.equal(new Set(ran.map((r) => r.job)).size, 10, "no job ran twice");
    for (let i = 0; i < 10; i++) {
      const j = (await jobsA.latest(KIND, `s-${i}`))!;
      assert.equal(j.attempts, 1);
      assert.deepEqual(j.progress, { by: j.leaseOwner });
    }

    // A long job on C; C closes gracefully mid-job; D takes it over at once although C's lease had a minute to run.
    let steps = 0;
    const long: JobHandler = async (_job, ctx) => {
      while (!ctx.signal.aborted) {
        await ctx.checkpoint({ steps: ++steps });
        await new Promise((r) => setTimeout(r, 5));
      }
      return { stopped: true, progress: { steps } };
    };
    let takeover: unknown;
    const finishing: JobHandler = async (_job, ctx) => {
      takeover = ctx.takeover;
      return { stopped: false };
    };
    const { job } = await jobsA.enqueue({ kind: KIND, subject: "long", actor: "olga" });
    const c = new JobRunner({ jobs: jobsA, handlers: { [KIND]: long }, instanceId: "C", pollMs: 20, leaseMs: 60_000 });
    c.start();
    await until(() => steps >= 3);
    await c.close();
    const released = (await jobsB.get(job.id))!;
    assert.equal(released.state, "running");
    assert.ok(released.leaseUntil! <= Date.now(), "the lease ends at the close");
    assert.deepEqual(released.progress, { steps });
    const d = new JobRunner({ jobs: jobsB, handlers: { [KIND]: finishing }, pollMs: 20, leaseMs: 60_000 });
    assert.match(d.instanceId, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/, "a random UUID by default");
    d.start();
    await until(async () => (await jobsB.get(job.id))?.state === "done");
    await d.close();
    assert.deepEqual(takeover, { from: "C", attempts: 2 });
    assert.equal((await jobsB.get(job.id))!.leaseOwner, d.instanceId);
  });
}
