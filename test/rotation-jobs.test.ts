// Issue 16 §2, "Jobs with leases": two issuer servers (Fastify apps as src/server/main.ts wires them) on one
// PostgreSQL database. Server A claims a rotation's re-wrap job, commits two pages and then dies mid-page (its job
// runner abandoned: no release, nothing more written — the lease runs out as a dead process's would). Server B's
// runner takes the expired lease over and finishes from the persisted cursor. Every key is re-wrapped exactly once
// (as many Sk2[PRk] as Sk1[PRk], no key pair twice); A, when its stuck page returns, finds its lease gone and
// writes nothing; the audit log has two rewrap-started (B's naming the takeover) and one rewrapped; both servers
// report the same job from the database.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { createCard } from "../src/card/card.ts";
import type { KeyCustody } from "../src/custody/custody.ts";
import type { IssuerServer } from "../src/server/main.ts";
import { createOperatorToken } from "../src/server/main.ts";
import type { Db } from "../src/store/db.ts";
import { testEngines } from "./support/store-testing.ts";
import { api, expect, issueAndPersonalise, issuerApiEnv, relay, type ApiEnv } from "./api-env.ts";
import { tempDir } from "./helpers.ts";
import { TEST_KMC } from "./kmc.ts";

type Status = {
  rotation: { id: string; status: string; done: number; total: number; cursor: number; fromKeySetId: string; toKeySetId: string | null };
  rewrap: { state: string; keysPerSecond?: number; error?: string; job?: { id: string; state: string; leaseOwner: string | null; attempts: number } };
};

const SLOTS = ["9a", "9c", "9d", "9e"];

/** Custody whose `n`-th rewrapPrivateKeys call waits for `open` (server A stuck mid-page). */
function stuckAt(n: number) {
  let calls = 0;
  let reached!: () => void;
  let open!: () => void;
  const atGate = new Promise<void>((r) => (reached = r));
  const gate = new Promise<void>((r) => (open = r));
  const wrap = (c: KeyCustody): KeyCustody =>
    new Proxy(c, {
      get(t, k) {
        const v = Reflect.get(t, k, t) as unknown;
        if (k === "rewrapPrivateKeys")
          return async (...a: Parameters<KeyCustody["rewrapPrivateKeys"]>) => {
            if (++calls === n) {
              reached();
              await gate;
            }
            return t.rewrapPrivateKeys(...a);
          };
        return typeof v === "function" ? (v as (...x: unknown[]) => unknown).bind(t) : v;
      },
    });
  return { wrap, atGate, open };
}

const statusVia = async (env: ApiEnv, server: IssuerServer, id: string) => expect(await api({ ...env, server }).get(`/v1/rotations/${id}`, env.tokens.auditor), 200) as unknown as Status;

for (const engine of testEngines().filter((e) => e.name === "postgres")) {
  test("two servers on one PostgreSQL: server A dies mid re-wrap, server B takes its lease over and finishes; every key re-wrapped once", { timeout: 10 * 60_000 }, async (t) => {
    const stuck = stuckAt(3);
    const env = await issuerApiEnv(engine, {
      logLevel: "silent",
      wrapCustody: stuck.wrap,
      jobs: { instanceId: "server-a", pollMs: 50, leaseMs: 600 },
      rotations: { approvals: 1, rewrapPageSize: 1 },
    });
    const cards: { close(): void }[] = [];
    t.after(async () => {
      stuck.open();
      for (const c of cards) c.close();
      await env.close();
    });
    const a = env.server;
    const { post, get } = api(env);
    const op = env.tokens.operator;

    // A rotation with four keys to re-wrap, one page each.
    const old = await issueAndPersonalise(env, "Taro Suzuki");
    cards.push(old.card);
    for (const slot of SLOTS) expect(await post(`/v1/cards/${old.cardId}/credentials`, op, { slot, alg: "P256" }), 201);
    const id = (expect(await post(`/v1/cards/${old.cardId}/rotations`, op, { strategy: "embodiment3" }), 201) as { id: string }).id;
    expect(await post(`/v1/rotations/${id}/approve`, (await createOperatorToken(a.store, "otto", ["operator"])).token), 200);
    const fresh = expect(await post(`/v1/rotations/${id}/new-card`, op), 201) as { card: { id: string }; personalisation: { sessionId: string; apdus: string[] } };
    const newCard = createCard(join(tempDir("cardkms-jobs-card-"), `${fresh.card.id}.card`), randomBytes(32), { kmc: TEST_KMC, cardId: Buffer.from(fresh.card.id, "hex") });
    cards.push(newCard);
    expect(await relay(post, op, fresh.personalisation, newCard), 200);

    // A queues the job and its runner claims it; it commits two pages and gets stuck in the third.
    const queued = expect(await post(`/v1/rotations/${id}/rewrap`, op), 202) as unknown as Status;
    assert.equal(queued.rewrap.state, "running");
    // a second POST while it is live: the same job (one live job per rotation)
    const twice = expect(await post(`/v1/rotations/${id}/rewrap`, op), 202) as unknown as Status;
    assert.equal(twice.rewrap.job?.id, queued.rewrap.job?.id);
    await stuck.atGate;
    const mid = await statusVia(env, a, id);
    assert.deepEqual([mid.rewrap.state, mid.rewrap.job?.state, mid.rewrap.job?.leaseOwner, mid.rewrap.job?.attempts], ["running", "running", "server-a", 1]);
    assert.ok(mid.rotation.done >= 1 && mid.rotation.done <= 2, `A committed its first pages before it got stuck (done ${mid.rotation.done})`);

    // A dies: its runner stops without releasing the lease. B starts on the same database, its own custody.
    a.jobRunner.abandon();
    const b = await env.startAnother({ config: { jobs: { instanceId: "server-b", pollMs: 50, leaseMs: 600 } }, start: { wrapCustody: undefined } });
    let s: Status;
    for (;;) {
      s = await statusVia(env, b, id);
      if (s.rewrap.job?.state === "done") break;
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.deepEqual([s.rewrap.state, s.rewrap.job?.leaseOwner], ["done", "server-b"], JSON.stringify(s));
    // A's claim, B's takeover (and, were B's event loop stalled past its lease, B's own claim again: not a second run)
    assert.ok(s.rewrap.job!.attempts >= 2);
    assert.deepEqual([s.rotation.done, s.rotation.total], [SLOTS.length, SLOTS.length]);
    assert.equal(typeof s.rewrap.keysPerSecond, "number");
    // both servers answer the same from the database
    assert.deepEqual(await statusVia(env, a, id), s);

    // A's stuck page comes back: its lease is B's now, so it writes nothing (no page, no job row, no audit).
    stuck.open();
    while (a.jobRunner.running.length > 0) await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(await statusVia(env, b, id), s, "A wrote nothing after it lost its lease");

    // Every key re-wrapped exactly once.
    const db = b.store.db as Db;
    const count = async (ks: string) =>
      Number(
        (
          await db
            .selectFrom("wrapped_keys")
            .select((eb) => eb.fn.countAll().as("n"))
            .where("key_set_id", "=", ks)
            .executeTakeFirstOrThrow()
        ).n,
      );
    assert.equal(await count(s.rotation.toKeySetId!), await count(s.rotation.fromKeySetId));
    assert.equal(await count(s.rotation.toKeySetId!), SLOTS.length);
    const dupes = await db
      .selectFrom("wrapped_keys")
      .select("key_pair_id")
      .where("key_set_id", "=", s.rotation.toKeySetId!)
      .groupBy("key_pair_id")
      .having((eb) => eb.fn.countAll(), ">", 1)
      .execute();
    assert.deepEqual(dupes, []);

    // The audit: A's start, B's start naming the takeover, one end.
    const audit = expect(await get("/v1/audit?limit=1000", env.tokens.auditor), 200) as { entries: { action: string; subject: string; details: Record<string, unknown> }[] };
    const rewraps = audit.entries.filter((e) => e.subject === id && e.action.startsWith("rotation.rewrap"));
    assert.deepEqual(
      rewraps.map((e) => e.action),
      ["rotation.rewrap-started", "rotation.rewrap-started", "rotation.rewrapped"],
    );
    assert.equal(rewraps[0].details.takeover, undefined);
    assert.deepEqual(rewraps[1].details.takeover, { from: "server-a", attempt: 2 });
    assert.ok((rewraps[1].details.done as number) >= 1, "B resumed from A's committed cursor, not from the start");
    assert.equal((expect(await get("/v1/audit/verify", env.tokens.auditor), 200) as { ok: boolean }).ok, true);

    // Done: POST answers 200 on either server, and queues nothing.
    expect(await post(`/v1/rotations/${id}/rewrap`, op), 200);
    expect(await api({ ...env, server: b }).post(`/v1/rotations/${id}/rewrap`, op), 200);
  });
}
