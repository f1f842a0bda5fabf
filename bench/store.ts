// Rough storage throughput on this machine (not part of the test suite):
//   node --import tsx bench/store.ts [sqlite|postgres|all] [credentials] [rewrapKeys]
// - credential inserts: recordCredential (key pair + one Sk[PRk] + certificate) as one transaction each, the
//   shape of one issuance; sequential, and on PostgreSQL also with 8 in flight over the pool;
// - bulk re-wrap: wrappedKeyPages + checkpointRotation in pages of 5,000 (no crypto: storage cost only).
// PostgreSQL uses a throwaway database like the tests (CARDKMS_TEST_PG).

import { randomBytes } from "node:crypto";
import { Store } from "../src/store/store.ts";
import { testEngines } from "../test/support/store-testing.ts";

const which = process.argv[2] ?? "all";
const N = Number(process.argv[3] ?? 5000);
const REWRAP = Number(process.argv[4] ?? 200_000);

const spki = randomBytes(91);
const wrapped = randomBytes(64);
const der = randomBytes(520);

async function credentials(store: Store, userId: string, cardId: string, keySetId: string, n: number, inFlight: number): Promise<number> {
  let next = 0;
  const t0 = performance.now();
  const worker = async () => {
    while (next < n) {
      next++;
      await store.recordCredential({
        keyPair: { userId, cardId, slot: null, algorithm: "ec-p256", publicKey: spki },
        wrapped: [{ keySetId, wrapped }],
        certificate: { serial: randomBytes(16).toString("hex"), der, subject: "CN=bench", notBefore: 0, notAfter: 1 },
      });
    }
  };
  await Promise.all(Array.from({ length: inFlight }, worker));
  return n / ((performance.now() - t0) / 1000);
}

for (const engine of testEngines()) {
  if (which !== "all" && which !== engine.name) continue;
  const variants = engine.name === "sqlite" ? (["full", "normal"] as const) : (["-"] as const);
  for (const sync of variants) {
    const t = await engine.create(engine.name === "sqlite" ? { sqliteSynchronous: sync as "full" | "normal" } : {});
    try {
      const store = new Store(t.db);
      const user = await store.createUser({ personalData: { cn: "bench" } });
      const card = await store.registerCard({ userId: user.id, validFrom: 0, validUntil: 1 });
      const ks = await store.addKeySet({ cardId: card.id, kvn: 1, version: 1, validFrom: 0, validUntil: 1, custodyRef: "bench", makeCurrent: true });
      const label = engine.name === "sqlite" ? `sqlite (synchronous=${sync})` : "postgres";
      await credentials(store, user.id, card.id, ks.id, 200, 1); // warm-up
      const seq = await credentials(store, user.id, card.id, ks.id, N, 1);
      console.log(`${label}: ${seq.toFixed(0)} credential inserts/s sequential`);
      if (engine.name === "postgres") {
        const par = await credentials(store, user.id, card.id, ks.id, N, 8);
        console.log(`${label}: ${par.toFixed(0)} credential inserts/s with 8 in flight`);
      }
      if (sync === "normal" || engine.name === "postgres") {
        // Bulk re-wrap: seed REWRAP keys under ks in big transactions, then move them to ks2 page by page.
        const t1 = performance.now();
        await t.db.transaction().execute(async (trx) => {
          for (let i = 0; i < REWRAP; i += 1000) {
            const batch = Array.from({ length: Math.min(1000, REWRAP - i) }, (_, j) => ({
              id: `kp-${i + j}`,
              user_id: user.id,
              card_id: card.id,
              slot: null,
              algorithm: "ec-p256",
              public_key: spki,
              status: "active" as const,
              created_at: 0,
            }));
            await trx.insertInto("key_pairs").values(batch).execute();
            await trx
              .insertInto("wrapped_keys")
              .values(batch.map((b) => ({ key_pair_id: b.id, key_set_id: ks.id, wrapped, created_at: 0 })))
              .execute();
          }
        });
        const seeded = (performance.now() - t1) / 1000;
        const ks2 = await store.addKeySet({ cardId: card.id, kvn: 2, version: 2, validFrom: 0, validUntil: 1, custodyRef: "bench2" });
        const rot = await store.proposeRotation({ cardId: card.id, fromKeySetId: ks.id, strategy: "embodiment3" });
        await store.approveRotation(rot.id, "bench");
        let job = await store.startRotation(rot.id, { toKeySetId: ks2.id, total: await store.countWrappedKeys(ks.id) });
        const t2 = performance.now();
        for await (const page of store.wrappedKeyPages(ks.id, { pageSize: 5000 })) {
          job = await store.checkpointRotation(rot.id, { expectedCursor: job.cursor, cursor: page[page.length - 1].id, rewrapped: page.map((w) => ({ keyPairId: w.keyPairId, wrapped: w.wrapped })) });
        }
        const secs = (performance.now() - t2) / 1000;
        console.log(
          `${label}: bulk re-wrap storage path ${(job.done / secs).toFixed(0)} keys/s (${job.done} keys; seeding ${(REWRAP / seeded).toFixed(0)} rows/s); RSS ${(process.memoryUsage().rss / 2 ** 20).toFixed(0)} MB`,
        );
      }
    } finally {
      await t.drop();
    }
  }
}
