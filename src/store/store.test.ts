// The store suite, run unchanged against SQLite and PostgreSQL (see testing.ts for how each gets its DB).

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { Store, StoreError, type NewKeyPair } from "./store.ts";
import { openDatabase, engineForUrl, sqlitePath, redactUrl } from "./db.ts";
import { ensurePostgres, testEngines, type TestDatabase } from "../../test/support/store-testing.ts";

const DAY = 86_400_000;
const T0 = Date.UTC(2026, 0, 1);

test("database URLs: engine and SQLite path", () => {
  assert.equal(engineForUrl("postgres://u@h/db"), "postgres");
  assert.equal(engineForUrl("postgresql://u@h/db"), "postgres");
  assert.equal(engineForUrl("sqlite:/var/lib/cardkms/issuer.db"), "sqlite");
  assert.equal(engineForUrl("./issuer.db"), "sqlite");
  assert.throws(() => engineForUrl("mysql://h/db"), /unsupported scheme/);
  assert.equal(sqlitePath("sqlite:/a/b.db"), "/a/b.db");
  assert.equal(sqlitePath("sqlite:///a/b.db"), "/a/b.db");
  assert.equal(sqlitePath("/a/b.db"), "/a/b.db");
  assert.throws(() => sqlitePath("sqlite:"), /empty/);
  assert.equal(redactUrl("postgres://u:hunter2@h/db"), "postgres://u:***@h/db");
  assert.throws(() => openDatabase("sqlite::memory:", { sqliteSynchronous: "off" as "full" }), /sqliteSynchronous/);
});

test("an unreachable PostgreSQL makes the suite fail, not skip", async () => {
  if (!testEngines().some((e) => e.name === "postgres")) return;
  await assert.rejects(ensurePostgres("postgres://postgres@127.0.0.1:1/postgres"), /unreachable/);
});

for (const engine of testEngines()) {
  describe(`store on ${engine.name}`, () => {
    let t: TestDatabase;
    let store: Store;
    const clock = T0;
    before(async () => {
      t = await engine.create();
      store = new Store(t.db, { now: () => clock });
    });
    after(async () => {
      await t?.drop();
    });

    async function userCard(validDays = 5 * 365) {
      const user = await store.createUser({ personalData: { cn: "Ada Lovelace", email: "ada@example.org" } });
      const card = await store.registerCard({ userId: user.id, validFrom: clock, validUntil: clock + validDays * DAY });
      const ks = await store.addKeySet({ cardId: card.id, kvn: 1, version: 1, validFrom: clock, validUntil: clock + 365 * DAY, custodyRef: `master:v1/${card.id}`, makeCurrent: true });
      return { user, card, ks };
    }

    // No slot: many active pairs per card (at most one active pair per card and slot: migration 0012).
    const keyPair = (userId: string, cardId: string, id?: string): NewKeyPair => ({ id, userId, cardId, slot: null, algorithm: "ec-p256", publicKey: randomBytes(91) });

    test("users, cards and key sets; the current key set must belong to the card", async () => {
      const { user, card, ks } = await userCard();
      assert.deepEqual((await store.getUser(user.id))?.personalData, { cn: "Ada Lovelace", email: "ada@example.org" });
      const got = await store.getCard(card.id);
      assert.equal(got?.currentKeySetId, ks.id);
      assert.equal(got?.status, "issued");
      assert.equal(typeof got?.validUntil, "number");
      await store.setCardStatus(card.id, "active");
      assert.equal((await store.getCard(card.id))?.status, "active");
      assert.deepEqual(
        (await store.listKeySets(card.id)).map((k) => k.custodyRef),
        [`master:v1/${card.id}`],
      );

      const other = await userCard();
      await assert.rejects(store.setCurrentKeySet(card.id, other.ks.id), (e: unknown) => e instanceof StoreError && e.code === "not_found");
      await assert.rejects(store.addKeySet({ cardId: card.id, kvn: 1, version: 2, validFrom: 0, validUntil: 1, custodyRef: "x" }), (e: unknown) => e instanceof StoreError && e.code === "conflict");
      await assert.rejects(store.registerCard({ userId: "nobody", validFrom: 0, validUntil: 1 }), (e: unknown) => e instanceof StoreError && e.code === "conflict");
      await assert.rejects(store.createUser({ id: user.id, personalData: {} }), (e: unknown) => e instanceof StoreError && e.code === "conflict");
      await assert.rejects(store.registerCard({ userId: user.id, validFrom: 2, validUntil: 1 }), /starts .* after it ends/);
      assert.equal(await store.getCard("nope"), undefined);
    });

    test("getCardContext: the card, its current key set and its user in one read, equal to the separate reads", async () => {
      const { user, card, ks } = await userCard();
      const ctx = await store.getCardContext(card.id);
      assert.deepEqual(ctx, { card: await store.getCard(card.id), keySet: await store.getKeySet(ks.id), user: await store.getUser(user.id) });
      const bare = await store.registerCard({ userId: user.id, validFrom: clock, validUntil: clock + DAY });
      assert.deepEqual(await store.getCardContext(bare.id), { card: bare, user: await store.getUser(user.id) }, "no key set yet");
      assert.equal(await store.getCardContext("nope"), undefined);
    });

    test("a credential (key pair + wrapped keys + certificate) lands in one transaction, bytes round-trip as Buffers", async () => {
      const { user, card, ks } = await userCard();
      const ks2 = await store.addKeySet({ cardId: card.id, kvn: 2, version: 2, validFrom: clock, validUntil: clock + 2 * 365 * DAY, custodyRef: "master:v2" });
      const wrapped1 = randomBytes(48);
      const wrapped2 = randomBytes(48);
      const der = randomBytes(400);
      const rec = await store.recordCredential({
        keyPair: keyPair(user.id, card.id),
        wrapped: [
          { keySetId: ks.id, wrapped: wrapped1 },
          { keySetId: ks2.id, wrapped: new Uint8Array(wrapped2) },
        ],
        certificate: { serial: randomBytes(8).toString("hex").replace(/^0+/, "") || "1", der, subject: "CN=Ada Lovelace", notBefore: clock, notAfter: clock + 365 * DAY },
      });
      const kp = await store.getKeyPair(rec.keyPair.id);
      assert.ok(Buffer.isBuffer(kp?.publicKey));
      assert.deepEqual(kp?.publicKey, rec.keyPair.publicKey);
      const w = await store.getWrappedKey(rec.keyPair.id, ks2.id);
      assert.ok(Buffer.isBuffer(w?.wrapped));
      assert.deepEqual(w?.wrapped, wrapped2);
      assert.deepEqual((await store.getWrappedKey(rec.keyPair.id, ks.id))?.wrapped, wrapped1);
      const c = await store.getCertificateBySerial(rec.certificate!.serial);
      assert.deepEqual(c?.der, der);
      assert.equal(c?.keyPairId, rec.keyPair.id);

      // A certificate serial that already exists makes the whole credential roll back: no key pair, no wrapped key.
      const kpId = "kp-rolled-back";
      await assert.rejects(
        store.recordCredential({
          keyPair: keyPair(user.id, card.id, kpId),
          wrapped: [{ keySetId: ks.id, wrapped: randomBytes(48) }],
          certificate: { serial: rec.certificate!.serial, der, subject: "CN=x", notBefore: clock, notAfter: clock + DAY },
        }),
        (e: unknown) => e instanceof StoreError && e.code === "conflict",
      );
      assert.equal(await store.getKeyPair(kpId), undefined);
      assert.equal(await store.getWrappedKey(kpId, ks.id), undefined);
      // The same key set twice is refused too, and leaves nothing behind.
      await assert.rejects(
        store.recordCredential({
          keyPair: keyPair(user.id, card.id, kpId),
          wrapped: [
            { keySetId: ks.id, wrapped: randomBytes(4) },
            { keySetId: ks.id, wrapped: randomBytes(4) },
          ],
        }),
        StoreError,
      );
      assert.equal(await store.getKeyPair(kpId), undefined);

      // Revocation once; the CRL lists it while unexpired.
      const revoked = await store.revokeCertificate(c!.id, "keyCompromise", clock + 1);
      assert.equal(revoked.revokedAt, clock + 1);
      await assert.rejects(store.revokeCertificate(c!.id, "again"), (e: unknown) => e instanceof StoreError && e.code === "conflict");
      assert.ok((await store.listRevokedCertificates(clock + 2)).some((x) => x.id === c!.id));
      assert.ok(!(await store.listRevokedCertificates(clock + 400 * DAY)).some((x) => x.id === c!.id));
    });

    test("package sequence numbers: concurrent allocations never collide, strictly increasing per card", async () => {
      const { card } = await userCard();
      // PostgreSQL: a second pool, like a second server process. SQLite: one connection per process by design
      // (better-sqlite3 waits for a lock synchronously, so two connections in one process would block each other).
      const second = t.engine === "postgres" ? new Store(t.reopen(), { now: () => clock }) : store;
      const n = 60;
      const pkgs = await Promise.all(Array.from({ length: n }, (_, i) => (i % 2 === 0 ? store : second).createPackage(card.id, (seq) => Buffer.from(`package ${seq}`))));
      const seqs = pkgs.map((p) => p.seq).sort((a, b) => a - b);
      assert.deepEqual(
        seqs,
        Array.from({ length: n }, (_, i) => i + 1),
      );
      for (const p of pkgs) assert.equal(p.body.toString(), `package ${p.seq}`);
      const bare = await Promise.all(Array.from({ length: 20 }, (_, i) => (i % 2 ? store : second).allocatePackageSeq(card.id)));
      assert.equal(new Set(bare).size, 20);
      assert.ok(Math.min(...bare) > n);
      // The unique constraint stands behind the allocator.
      await assert.rejects(
        t.db
          .insertInto("packages")
          .values({ card_id: card.id, seq: 1, body: Buffer.from("dup"), status: "pending", created_at: clock, fetched_at: null, acknowledged_at: null })
          .execute(),
      );
      // Listing and the status ladder.
      const listed = await store.listPackages(card.id, { afterSeq: 10, limit: 5 });
      assert.deepEqual(
        listed.map((p) => p.seq),
        [11, 12, 13, 14, 15],
      );
      assert.equal(await store.advancePackage(card.id, 11, "fetched"), true);
      assert.equal(await store.advancePackage(card.id, 11, "fetched"), false);
      assert.equal(await store.advancePackage(card.id, 11, "acknowledged"), true);
      assert.equal(await store.advancePackage(card.id, 11, "fetched"), false);
      assert.equal((await store.getPackage(card.id, 11))?.status, "acknowledged");
      await assert.rejects(store.advancePackage(card.id, 9999, "fetched"), (e: unknown) => e instanceof StoreError && e.code === "not_found");
      await assert.rejects(store.allocatePackageSeq("no-card"), (e: unknown) => e instanceof StoreError && e.code === "not_found");
    });

    test("wrapped keys of a key set stream in primary-key pages and resume after a cursor", async () => {
      const { user, card, ks } = await userCard();
      const other = await store.addKeySet({ cardId: card.id, kvn: 3, version: 2, validFrom: clock, validUntil: clock + DAY, custodyRef: "other" });
      const n = 2345;
      await store.transaction(async (s) => {
        for (let i = 0; i < n; i++) {
          const wrapped = [{ keySetId: ks.id, wrapped: Buffer.from(`k${i}`) }];
          if (i % 3 === 0) wrapped.push({ keySetId: other.id, wrapped: Buffer.from(`o${i}`) });
          await s.recordCredential({ keyPair: keyPair(user.id, card.id, `${card.id}-kp-${String(i).padStart(5, "0")}`), wrapped });
        }
      });
      assert.equal(await store.countWrappedKeys(ks.id), n);
      const pages: number[] = [];
      const seen: string[] = [];
      let last = 0;
      for await (const page of store.wrappedKeyPages(ks.id, { pageSize: 500 })) {
        pages.push(page.length);
        for (const w of page) {
          assert.ok(w.id > last, "ascending ids");
          last = w.id;
          assert.equal(w.keySetId, ks.id);
          seen.push(w.wrapped.toString());
        }
      }
      assert.deepEqual(pages, [500, 500, 500, 500, 345]);
      assert.deepEqual(
        seen,
        Array.from({ length: n }, (_, i) => `k${i}`),
      );
      // Resume after the 1000th row.
      const all: number[] = [];
      for await (const page of store.wrappedKeyPages(ks.id, { pageSize: 1000 })) all.push(...page.map((w) => w.id));
      let rest = 0;
      for await (const page of store.wrappedKeyPages(ks.id, { afterId: all[999], pageSize: 700 })) rest += page.length;
      assert.equal(rest, n - 1000);
      assert.equal(await store.countWrappedKeys(ks.id, all[999]), n - 1000);
      await assert.rejects(async () => {
        for await (const _ of store.wrappedKeyPages(ks.id, { pageSize: 0 })) break;
      }, /pageSize/);
    });

    test("rotation job: approval, checkpointed re-wrap that cannot be applied twice, completion", async () => {
      const { user, card, ks } = await userCard();
      const n = 1200;
      await store.transaction(async (s) => {
        for (let i = 0; i < n; i++) await s.recordCredential({ keyPair: keyPair(user.id, card.id), wrapped: [{ keySetId: ks.id, wrapped: Buffer.from(`sk1-${i}`) }] });
      });
      const newCard = await store.registerCard({ userId: user.id, validFrom: clock, validUntil: clock + 5 * 365 * DAY });
      const ks2 = await store.addKeySet({ cardId: newCard.id, kvn: 2, version: 2, validFrom: clock, validUntil: clock + 2 * 365 * DAY, custodyRef: "master:v2" });

      const r = await store.proposeRotation({ cardId: card.id, fromKeySetId: ks.id, strategy: "embodiment3" });
      assert.equal(r.status, "proposed");
      assert.equal((await store.openRotationForKeySet(ks.id))?.id, r.id);
      await assert.rejects(store.startRotation(r.id, { toKeySetId: ks2.id, total: n }), (e: unknown) => e instanceof StoreError && e.code === "conflict");
      const approved = await store.approveRotation(r.id, "alice");
      assert.equal(approved.approvedBy, "alice");
      let job = await store.startRotation(r.id, { toCardId: newCard.id, toKeySetId: ks2.id, total: await store.countWrappedKeys(ks.id) });
      assert.equal(job.status, "running");
      assert.equal(job.total, n);

      let pagesDone = 0;
      for await (const page of store.wrappedKeyPages(ks.id, { afterId: job.cursor, pageSize: 250 })) {
        const step = {
          expectedCursor: job.cursor,
          cursor: page[page.length - 1].id,
          rewrapped: page.map((w) => ({ keyPairId: w.keyPairId, wrapped: Buffer.from(w.wrapped.toString().replace("sk1", "sk2")) })),
        };
        job = await store.checkpointRotation(r.id, step);
        // Replaying the same step (a crashed worker retrying, a second worker) is refused and changes nothing.
        await assert.rejects(store.checkpointRotation(r.id, step), (e: unknown) => e instanceof StoreError && e.code === "conflict");
        if (++pagesDone === 2) break; // "crash" after two pages
      }
      // Resume from the stored checkpoint, like a restarted server.
      job = (await store.getRotation(r.id))!;
      assert.equal(job.done, 500);
      assert.equal(await store.countWrappedKeys(ks2.id), 500);
      assert.equal((await store.startRotation(r.id, { toKeySetId: ks2.id, total: n })).cursor, job.cursor, "restart keeps the cursor");
      for await (const page of store.wrappedKeyPages(ks.id, { afterId: job.cursor, pageSize: 300 })) {
        job = await store.checkpointRotation(r.id, {
          expectedCursor: job.cursor,
          cursor: page[page.length - 1].id,
          rewrapped: page.map((w) => ({ keyPairId: w.keyPairId, wrapped: Buffer.from(w.wrapped.toString().replace("sk1", "sk2")) })),
        });
      }
      assert.equal(job.done, n);
      assert.equal(await store.countWrappedKeys(ks2.id), n);
      // Every key is wrapped exactly once under each key set, and the new wrapping belongs to the same key pair.
      for await (const page of store.wrappedKeyPages(ks2.id, { pageSize: 600 })) {
        for (const w of page) {
          const old = await store.getWrappedKey(w.keyPairId, ks.id);
          assert.equal(w.wrapped.toString(), old!.wrapped.toString().replace("sk1", "sk2"));
        }
      }
      job = await store.completeRotation(r.id);
      assert.equal(job.status, "completed");
      assert.equal(await store.openRotationForKeySet(ks.id), undefined);
      await assert.rejects(store.checkpointRotation(r.id, { expectedCursor: job.cursor, cursor: job.cursor, rewrapped: [] }), StoreError);
      await assert.rejects(store.proposeRotation({ cardId: card.id, fromKeySetId: ks.id, strategy: "embodiment9" as "embodiment3" }), /strategy/);
      const cancelled = await store.proposeRotation({ cardId: card.id, fromKeySetId: ks.id, strategy: "embodiment4" });
      assert.equal((await store.cancelRotation(cancelled.id)).status, "cancelled");
      assert.deepEqual((await store.listRotations({ cardId: card.id })).map((x) => x.status).sort(), ["cancelled", "completed"]);
    });

    test("expiry queries find cards, key sets and certificates ending within a window", async () => {
      const now = clock + 1000 * DAY;
      const user = await store.createUser({ personalData: {} });
      const soon = await store.registerCard({ userId: user.id, validFrom: now - DAY, validUntil: now + 10 * DAY });
      const late = await store.registerCard({ userId: user.id, validFrom: now - DAY, validUntil: now + 100 * DAY });
      const retired = await store.registerCard({ userId: user.id, validFrom: now - DAY, validUntil: now + DAY, status: "retired" });
      const ksSoon = await store.addKeySet({ cardId: late.id, kvn: 1, version: 1, validFrom: now - DAY, validUntil: now + 5 * DAY, custodyRef: "a" });
      const ksLate = await store.addKeySet({ cardId: late.id, kvn: 2, version: 2, validFrom: now - DAY, validUntil: now + 50 * DAY, custodyRef: "b" });
      const mk = (notAfter: number) =>
        store.recordCredential({
          keyPair: keyPair(user.id, late.id),
          wrapped: [],
          certificate: { serial: randomBytes(9).toString("hex"), der: randomBytes(10), subject: "CN=x", notBefore: now - DAY, notAfter },
        });
      const certSoon = (await mk(now + 20 * DAY)).certificate!;
      const certLate = (await mk(now + 60 * DAY)).certificate!;
      const certRevoked = (await mk(now + 2 * DAY)).certificate!;
      await store.revokeCertificate(certRevoked.id, "superseded");

      const until = now + 30 * DAY;
      const cards = (await store.expiringCards(until)).map((c) => c.id);
      assert.ok(cards.includes(soon.id) && !cards.includes(late.id) && !cards.includes(retired.id));
      const sets = (await store.expiringKeySets(until)).map((k) => k.id);
      assert.ok(sets.includes(ksSoon.id) && !sets.includes(ksLate.id));
      const certs = (await store.expiringCertificates(until)).map((c) => c.id);
      assert.ok(certs.includes(certSoon.id) && !certs.includes(certLate.id) && !certs.includes(certRevoked.id));
      // Keyset pagination over the results.
      const firstTwo = await store.expiringCertificates(clock + 10_000 * DAY, { limit: 2 });
      const next = await store.expiringCertificates(clock + 10_000 * DAY, { afterId: firstTwo[1].id, limit: 1000 });
      assert.ok(next.every((c) => c.id > firstTwo[1].id));
    });

    test("events outbox: dedup keys, listing by cursor, delivery bookkeeping; webhooks; operators hold only hashes", async () => {
      const e1 = await store.enqueueEvent({ type: "keyset.expiring", subject: "ks-1", payload: { validUntil: 5 }, dedupKey: "keyset.expiring:ks-1:5" });
      assert.ok(e1);
      assert.equal(await store.enqueueEvent({ type: "keyset.expiring", subject: "ks-1", payload: { validUntil: 5 }, dedupKey: "keyset.expiring:ks-1:5" }), null);
      const e2 = await store.enqueueEvent({ type: "card.expiring", subject: "c-1", payload: [1, "two", null] });
      assert.ok(e2 && e2.id > e1.id);
      assert.deepEqual(
        (await store.listEvents({ afterId: e1.id - 1 })).map((e) => e.payload),
        [{ validUntil: 5 }, [1, "two", null]],
      );
      assert.deepEqual(
        (await store.listEvents({ type: "card.expiring" })).map((e) => e.id),
        [e2.id],
      );
      await store.markEventFailed(e1.id, "HTTP 503");
      await store.markEventDelivered(e2.id);
      const pending = await store.undeliveredEvents();
      assert.deepEqual(
        pending.map((e) => [e.id, e.attempts, e.lastError]),
        [[e1.id, 1, "HTTP 503"]],
      );

      const hook = await store.addWebhook({ url: "https://ops.example.org/hook", eventTypes: ["card.expiring"] });
      await store.addWebhook({ url: "http://127.0.0.1:9/all", eventTypes: ["*"] });
      assert.equal((await store.listWebhooks("card.expiring")).length, 2);
      assert.equal((await store.listWebhooks("keyset.expiring")).length, 1);
      await store.disableWebhook(hook.id);
      assert.equal((await store.listWebhooks("card.expiring")).length, 1);
      await assert.rejects(store.addWebhook({ url: "file:///etc/passwd", eventTypes: ["*"] }), /http/);

      const op = await store.createOperator({ name: "alice", tokenHash: "ab".repeat(32), roles: ["operator", "auditor"] });
      assert.deepEqual((await store.getOperatorByTokenHash("ab".repeat(32)))?.roles, ["operator", "auditor"]);
      assert.equal((await store.getOperatorByName("alice"))?.id, op.id);
      await assert.rejects(store.createOperator({ name: "alice", passwordHash: "x", roles: [] }), (e: unknown) => e instanceof StoreError && e.code === "conflict");
      await assert.rejects(store.createOperator({ name: "bob", roles: [] }), /hash/);
      await store.disableOperator(op.id);
      assert.equal(await store.getOperatorByName("alice"), undefined);
    });
  });
}
