// The job table (migration 0016, job-repository.ts) on SQLite and PostgreSQL (issue 16 §2): one live job per
// (kind, subject); a claim takes a queued job or an expired lease and nothing else; of two claimers on two
// connections (two servers) exactly one gets a job; an expired lease is taken over, and the runner that lost it
// can neither renew, finish nor release it any more; a released lease is taken at once. And runLeasedJob
// (src/issuer/jobs.ts) over it: a runner that lost its lease stops before its next write.
import { test } from "node:test";
import assert from "node:assert/strict";
import { testEngines } from "../../test/support/store-testing.ts";
import { runLeasedJob } from "../issuer/jobs.ts";
import { jobStoreOf } from "./job-repository.ts";

const KIND = "rotation.rewrap";

for (const engine of testEngines()) {
  test(`${engine.name}: jobs — one live job per subject; claim, renew, finish`, async (t) => {
    const tdb = await engine.create();
    t.after(() => tdb.drop());
    let now = 1_000_000;
    const jobs = jobStoreOf(tdb.db, { now: () => now });

    const a = await jobs.enqueue({ kind: KIND, subject: "rot-1", actor: "olga" });
    assert.equal(a.created, true);
    assert.deepEqual([a.job.state, a.job.attempts, a.job.leaseOwner, a.job.actor], ["queued", 0, null, "olga"]);
    const again = await jobs.enqueue({ kind: KIND, subject: "rot-1", actor: "otto" });
    assert.deepEqual([again.created, again.job.id], [false, a.job.id], "a second enqueue gets the live job");
    // concurrent enqueues of another subject: one row
    const many = await Promise.all(Array.from({ length: 8 }, () => jobs.enqueue({ kind: KIND, subject: "rot-2", actor: "olga" })));
    assert.equal(new Set(many.map((m) => m.job.id)).size, 1);
    assert.equal(many.filter((m) => m.created).length, 1);

    // kinds not asked for are not claimed
    assert.equal(await jobs.claim({ owner: "s1", leaseMs: 1000, kinds: ["other.kind"] }), undefined);
    const c1 = await jobs.claim({ owner: "s1", leaseMs: 1000, kinds: [KIND], subject: "rot-1" });
    assert.ok(c1);
    assert.deepEqual([c1.job.id, c1.job.state, c1.job.leaseOwner, c1.job.leaseUntil, c1.job.attempts, c1.from.state], [a.job.id, "running", "s1", now + 1000, 1, "queued"]);
    // a running job under a live lease is nobody else's (nor s1's again, unless it reclaims its own)
    assert.equal(await jobs.claim({ owner: "s2", leaseMs: 1000, kinds: [KIND], subject: "rot-1" }), undefined);
    assert.equal(await jobs.claim({ owner: "s1", leaseMs: 1000, kinds: [KIND], subject: "rot-1" }), undefined);
    const own = await jobs.claim({ owner: "s1", leaseMs: 1000, kinds: [KIND], subject: "rot-1", reclaimOwn: true });
    assert.deepEqual([own?.job.id, own?.job.attempts], [a.job.id, 2], "a restarted process of the same instance resumes its own lease");

    now += 500;
    assert.equal(await jobs.renew(a.job.id, "s2", 1000), false, "another owner cannot renew");
    assert.equal(await jobs.renew(a.job.id, "s1", 1000, { cursor: 7, done: 3 }), true);
    let j = (await jobs.get(a.job.id))!;
    assert.deepEqual([j.leaseUntil, j.progress], [now + 1000, { cursor: 7, done: 3 }]);
    assert.equal(await jobs.finish(a.job.id, "s2", { state: "done" }), false, "another owner cannot finish");
    assert.equal(await jobs.finish(a.job.id, "s1", { state: "done", progress: { cursor: 9, done: 5 } }), true);
    j = (await jobs.get(a.job.id))!;
    assert.deepEqual([j.state, j.progress, j.error], ["done", { cursor: 9, done: 5 }, null]);
    assert.equal(await jobs.renew(a.job.id, "s1", 1000), false, "a finished job's lease is over");
    assert.equal(await jobs.claim({ owner: "s2", leaseMs: 1000, kinds: [KIND], subject: "rot-1" }), undefined, "a finished job is never claimed");
    // the live slot is free again: a new job; latest() shows it, then the finished one is history
    const next = await jobs.enqueue({ kind: KIND, subject: "rot-1", actor: "olga" });
    assert.equal(next.created, true);
    assert.equal((await jobs.latest(KIND, "rot-1"))!.id, next.job.id);
    assert.equal(await jobs.latest(KIND, "nothing"), undefined);
    // failed with its error
    const c2 = (await jobs.claim({ owner: "s2", leaseMs: 1000, kinds: [KIND], subject: "rot-1" }))!;
    assert.equal(await jobs.finish(c2.job.id, "s2", { state: "failed", error: "custody unavailable" }), true);
    assert.deepEqual([(await jobs.get(c2.job.id))!.state, (await jobs.get(c2.job.id))!.error], ["failed", "custody unavailable"]);
    // bounds
    await assert.rejects(jobs.claim({ owner: "s1", leaseMs: 0, kinds: [KIND] }), /job lease/);
    await assert.rejects(jobs.enqueue({ kind: KIND, subject: "", actor: "olga" }), /subject/);
  });

  test(`${engine.name}: jobs — two servers claiming at once: each job goes to exactly one`, async (t) => {
    const tdb = await engine.create();
    t.after(() => tdb.drop());
    const now = 5_000_000;
    // two connections (pools): two server processes
    const one = jobStoreOf(tdb.db, { now: () => now });
    const two = jobStoreOf(tdb.reopen(), { now: () => now });
    const ids = [];
    for (let i = 0; i < 6; i++) ids.push((await one.enqueue({ kind: KIND, subject: `rot-${i}`, actor: "olga" })).job.id);
    const claims = await Promise.all(Array.from({ length: 20 }, (_, i) => (i % 2 ? one : two).claim({ owner: `server-${i}`, leaseMs: 60_000, kinds: [KIND] })));
    const got = claims.filter((c) => c !== undefined);
    assert.equal(got.length, 6, "six jobs, six claims: none claimed twice, none left while claimers asked");
    assert.deepEqual(got.map((c) => c.job.id).sort(), [...ids].sort());
    for (const c of got) assert.equal(c.job.attempts, 1);
    const rows = await Promise.all(ids.map((id) => one.get(id)));
    for (const r of rows) assert.equal(r!.state, "running");
    assert.equal(new Set(rows.map((r) => r!.leaseOwner)).size, 6, "six different owners");
  });

  test(`${engine.name}: jobs — an expired lease is taken over; the old owner is refused; a released lease is taken at once`, async (t) => {
    const tdb = await engine.create();
    t.after(() => tdb.drop());
    let now = 9_000_000;
    const a = jobStoreOf(tdb.db, { now: () => now });
    const b = jobStoreOf(tdb.reopen(), { now: () => now });
    const { job } = await a.enqueue({ kind: KIND, subject: "rot-x", actor: "olga" });
    assert.ok(await a.claim({ owner: "A", leaseMs: 1000, kinds: [KIND] }));
    assert.equal(await a.renew(job.id, "A", 1000, { cursor: 10 }), true);
    now += 999;
    assert.equal(await b.claim({ owner: "B", leaseMs: 1000, kinds: [KIND] }), undefined, "not before the lease runs out");
    now += 1;
    const taken = await b.claim({ owner: "B", leaseMs: 1000, kinds: [KIND] });
    assert.ok(taken, "taken over once the lease ran out");
    assert.deepEqual([taken.from, taken.job.leaseOwner, taken.job.attempts, taken.job.progress], [{ state: "running", leaseOwner: "A" }, "B", 2, { cursor: 10 }]);
    // A lost it: nothing it writes lands
    assert.equal(await a.renew(job.id, "A", 1000, { cursor: 999 }), false);
    assert.equal(await a.finish(job.id, "A", { state: "done" }), false);
    assert.equal(await a.release(job.id, "A"), false);
    assert.deepEqual((await b.get(job.id))!.progress, { cursor: 10 });
    assert.equal((await b.get(job.id))!.leaseOwner, "B");
    // and A cannot take it back while B's lease runs, even with reclaimOwn
    assert.equal(await a.claim({ owner: "A", leaseMs: 1000, kinds: [KIND], reclaimOwn: true }), undefined);
    // an own lease that ran out but that nobody took is still B's: B (late after a stall) renews it and goes on
    now += 1000;
    assert.equal(await b.renew(job.id, "B", 1000), true);
    assert.equal(await a.claim({ owner: "A", leaseMs: 1000, kinds: [KIND] }), undefined, "renewed: not runnable");
    // graceful release: the lease ends now, another server takes it at once, as a takeover
    assert.equal(await b.release(job.id, "B", { cursor: 20 }), true);
    const r = (await a.get(job.id))!;
    assert.deepEqual([r.state, r.leaseUntil, r.progress], ["running", now, { cursor: 20 }]);
    const c = await a.claim({ owner: "C", leaseMs: 1000, kinds: [KIND] });
    assert.deepEqual([c?.job.leaseOwner, c?.from], ["C", { state: "running", leaseOwner: "B" }]);
  });
}

for (const engine of testEngines()) {
  test(`${engine.name}: runLeasedJob — a runner that lost its lease stops before its next write; a stop releases; a failure is recorded`, async (t) => {
    const tdb = await engine.create();
    t.after(() => tdb.drop());
    let now = 20_000_000;
    const jobs = jobStoreOf(tdb.db, { now: () => now });
    const other = jobStoreOf(tdb.reopen(), { now: () => now });

    // Lost: A checkpoints once, stalls past its lease, B takes the job over; A's next checkpoint throws before A writes.
    const { job } = await jobs.enqueue({ kind: KIND, subject: "rot-lost", actor: "olga" });
    const claimed = (await jobs.claim({ owner: "A", leaseMs: 60_000, kinds: [KIND] }))!;
    const writes: number[] = [];
    const end = await runLeasedJob({
      jobs,
      claimed,
      owner: "A",
      leaseMs: 60_000,
      handler: async (_j, ctx) => {
        assert.equal(ctx.takeover, undefined);
        await ctx.checkpoint({ step: 1 });
        writes.push(1);
        now += 60_000;
        const taken = await other.claim({ owner: "B", leaseMs: 60_000, kinds: [KIND] });
        assert.equal(taken?.job.id, job.id);
        await ctx.checkpoint({ step: 2 }); // throws JobLeaseLost
        writes.push(2);
        return { stopped: false };
      },
    });
    assert.equal(end, "lost");
    assert.deepEqual(writes, [1], "nothing after the lease was lost");
    const row = (await jobs.get(job.id))!;
    assert.deepEqual([row.state, row.leaseOwner, row.progress], ["running", "B", { step: 1 }]);

    // Stopped (a graceful close): the lease is released, another runner takes it at once, as a takeover.
    const stop = new AbortController();
    const second = await jobs.enqueue({ kind: KIND, subject: "rot-stop", actor: "olga" });
    const c = (await jobs.claim({ owner: "C", leaseMs: 60_000, kinds: [KIND], subject: "rot-stop" }))!;
    const released = await runLeasedJob({
      jobs,
      claimed: c,
      owner: "C",
      leaseMs: 60_000,
      stop: stop.signal,
      handler: async (_j, ctx) => {
        await ctx.checkpoint({ page: 1 });
        stop.abort();
        assert.equal(ctx.signal.aborted, true);
        return { stopped: true, progress: { page: 1 } };
      },
    });
    assert.equal(released, "released");
    const d = await other.claim({ owner: "D", leaseMs: 60_000, kinds: [KIND], subject: "rot-stop" });
    assert.deepEqual([d?.job.id, d?.from, d?.job.progress], [second.job.id, { state: "running", leaseOwner: "C" }, { page: 1 }]);
    let seen: unknown;
    const failed = await runLeasedJob({
      jobs: other,
      claimed: d!,
      owner: "D",
      leaseMs: 60_000,
      handler: async (_j, ctx) => {
        seen = ctx.takeover;
        throw new Error("custody unavailable");
      },
    });
    assert.equal(failed, "failed");
    assert.deepEqual(seen, { from: "C", attempts: 2 });
    const f = (await jobs.get(second.job.id))!;
    assert.deepEqual([f.state, f.error], ["failed", "custody unavailable"]);
  });
}
