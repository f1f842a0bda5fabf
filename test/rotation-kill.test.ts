// Issue 3, Reliability: a bulk rotation killed with SIGKILL at random points 20 times, restarted each time,
// completes; afterwards every key pair has exactly one Sk2[PRk], the cursor is at the last source row, and every
// Sk2[PRk] opens (inside custody) under exactly Sk2 to the private key of the public key the DB stores.
// The re-wrap runs in its own process (src/cli/rewrap-worker.ts) on the same DB file / server and keystore.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createPrivateKey, createPublicKey, randomBytes } from "node:crypto";
import { join } from "node:path";
import { aesKeyUnwrapPad } from "../src/protocol/derivation.ts";
import { CustodyError } from "../src/custody/custody.ts";
import { SoftwareCustody } from "../src/custody/software.ts";
import { Store } from "../src/store/store.ts";
import { testEngines } from "./support/store-testing.ts";
import { tempDir } from "./helpers.ts";
import { rotationFixture } from "./rotation-fixture.ts";

const KEYS = 20_000;
const KILLS = 20;
const POOL = 64;
const ROOT = join(import.meta.dirname, "..");

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Starts the worker; with `killAfterMs`, SIGKILLs it that long after its first progress line. */
function runWorker(args: string[], env: Record<string, string>, killAfterMs?: number): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", join(ROOT, "src/cli/rewrap-worker.ts"), ...args], { cwd: ROOT, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "",
      stderr = "",
      armed = false;
    child.stdout.on("data", (d: Buffer) => {
      stdout += d.toString();
      if (killAfterMs !== undefined && !armed && stdout.includes("\n")) {
        armed = true;
        setTimeout(() => child.kill("SIGKILL"), killAfterMs);
      }
    });
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("error", reject);
    child.on("close", (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}

for (const engine of testEngines()) {
  test(`bulk rotation survives ${KILLS} SIGKILLs on ${engine.name}`, { timeout: 10 * 60_000 }, async () => {
    const dir = tempDir("cardkms-kill-");
    const keystore = join(dir, "keystore.json");
    const kek = randomBytes(32).toString("hex");
    const tdb = await engine.create();
    const custody = await SoftwareCustody.open({ path: keystore, key: kek });
    try {
      const store = new Store(tdb.db);
      const now = store.now();
      const { user, oldId, newId, ref1, ref2, sk1, sk2, pool } = await rotationFixture(store, custody, { poolSize: POOL, algOf: (i) => (i % 8 === 0 ? "P384" : "P256") });
      await tdb.db.transaction().execute(async (trx) => {
        for (let i = 0; i < KEYS; i += 500) {
          const rows = Array.from({ length: Math.min(500, KEYS - i) }, (_, j) => {
            const n = i + j;
            return {
              id: `kp-${String(n).padStart(6, "0")}`,
              user_id: user.id,
              card_id: oldId,
              slot: null,
              algorithm: pool[n % POOL].alg,
              public_key: pool[n % POOL].spki,
              status: "active" as const,
              created_at: now,
            };
          });
          await trx.insertInto("key_pairs").values(rows).execute();
          await trx
            .insertInto("wrapped_keys")
            .values(rows.map((r, j) => ({ key_pair_id: r.id, key_set_id: sk1.id, wrapped: pool[(i + j) % POOL].wrapped, created_at: now })))
            .execute();
        }
      });
      const rot = await store.proposeRotation({ cardId: oldId, fromKeySetId: sk1.id, strategy: "embodiment3", toCardId: newId });
      await store.approveRotation(rot.id, "olga");
      await store.startRotation(rot.id, { toCardId: newId, toKeySetId: sk2.id, total: await store.countWrappedKeys(sk1.id) });

      // Kill it at random points, restarting each time, then let it finish.
      // One instance id for every restart: a restarted worker resumes its own job lease at once (issue 16 §2); a
      // worker of another id is refused while that lease runs.
      const env = { CARDKMS_KEYSTORE_KEY: kek, CARDKMS_REWRAP_PAGE: "100", CARDKMS_INSTANCE_ID: "kill-test-worker" };
      const args = [tdb.url, keystore, rot.id, "--complete"];
      let kills = 0;
      const cursors: number[] = [];
      while (kills < KILLS) {
        const r = await runWorker(args, env, Math.floor(Math.random() * 60));
        if (r.signal === "SIGKILL") {
          if (kills++ === 0) {
            const other = await runWorker(args, { ...env, CARDKMS_INSTANCE_ID: "another-worker" });
            assert.equal(other.code, 1, "a second worker is refused while the killed one's lease runs");
            assert.match(other.stderr, /runs elsewhere: job \S+ is leased by kill-test-worker/);
          }
        } else assert.equal(r.code, 0, `worker failed: ${r.stderr}`);
        cursors.push((await store.getRotation(rot.id))!.cursor);
        if ((await store.getRotation(rot.id))!.status === "completed") break;
      }
      assert.equal(kills, KILLS, `the re-wrap outlived only ${kills} kills (cursors ${cursors.join(" ")})`);
      assert.ok(cursors.at(-1)! < (await maxId(tdb.db, sk1.id)), "the kills landed before the end");
      for (let i = 1; i < cursors.length; i++) assert.ok(cursors[i] >= cursors[i - 1], "the cursor never moves back");
      const last = await runWorker(args, env);
      assert.equal(last.code, 0, last.stderr);

      // Completed; nothing lost, nothing duplicated; the cursor is at the last source row.
      const done = (await store.getRotation(rot.id))!;
      assert.equal(done.status, "completed");
      assert.equal(done.cursor, await maxId(tdb.db, sk1.id));
      assert.deepEqual([done.done, done.total], [KEYS, KEYS]);
      assert.equal(await store.countWrappedKeys(sk2.id), KEYS);
      const dupes = await tdb.db
        .selectFrom("wrapped_keys")
        .select("key_pair_id")
        .where("key_set_id", "=", sk2.id)
        .groupBy("key_pair_id")
        .having((eb) => eb.fn.countAll(), ">", 1)
        .execute();
      assert.deepEqual(dupes, []);
      const missing = await tdb.db
        .selectFrom("wrapped_keys as a")
        .select("a.key_pair_id")
        .where("a.key_set_id", "=", sk1.id)
        .where((eb) => eb.not(eb.exists(eb.selectFrom("wrapped_keys as b").select("b.id").whereRef("b.key_pair_id", "=", "a.key_pair_id").where("b.key_set_id", "=", sk2.id))))
        .execute();
      assert.deepEqual(missing, []);

      // Every Sk2[PRk] opens under Sk2 — inside custody, re-wrapped to a test storage key we hold — to the key
      // whose public key the DB stores; and not under Sk1.
      const storageValue = randomBytes(32);
      await custody.importSecretKey("test-storage", { type: "aes", bits: 256, usage: ["wrap"] }, storageValue);
      const pub = new Map<string, string>();
      let checked = 0;
      for await (const page of store.wrappedKeyPages(sk2.id, { pageSize: 2000 })) {
        const kps = await tdb.db
          .selectFrom("key_pairs")
          .select(["id", "public_key", "algorithm"])
          .where(
            "id",
            "in",
            page.map((w) => w.keyPairId),
          )
          .execute();
        const byId = new Map(kps.map((k) => [k.id, k]));
        for (const w of page) assert.equal(w.wrapped[0], 2, "Sk2[PRk] names KVN 2");
        const items = page.map((w) => ({ wrapped: w.wrapped.subarray(1), alg: byId.get(w.keyPairId)!.algorithm as "P256" | "P384" }));
        const out = await custody.rewrapPrivateKeys(items, { card: ref2 }, { key: "test-storage" });
        out.forEach((o, i) => {
          const pkcs8 = Buffer.from(aesKeyUnwrapPad(storageValue, o));
          const key = pkcs8.toString("hex");
          let spki = pub.get(key);
          if (!spki)
            pub.set(
              key,
              (spki = createPublicKey(createPrivateKey({ key: pkcs8, format: "der", type: "pkcs8" }))
                .export({ format: "der", type: "spki" })
                .toString("hex")),
            );
          assert.equal(spki, Buffer.from(byId.get(page[i].keyPairId)!.public_key).toString("hex"), `key pair ${page[i].keyPairId}`);
          checked++;
        });
        await assert.rejects(custody.rewrapPrivateKeys(items.slice(0, 1), { card: ref1 }, { key: "test-storage" }), (e: unknown) => e instanceof CustodyError && e.code === "WRONG_KEY");
      }
      assert.equal(checked, KEYS);
    } finally {
      await custody.close();
      await tdb.drop();
    }
  });
}

async function maxId(db: import("../src/store/db.ts").Db, keySetId: string): Promise<number> {
  const r = await db
    .selectFrom("wrapped_keys")
    .select((eb) => eb.fn.max("id").as("m"))
    .where("key_set_id", "=", keySetId)
    .executeTakeFirstOrThrow();
  return Number(r.m);
}
