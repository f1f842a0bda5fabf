// Validity scan (FIG. 5, para 0062) against SQLite and PostgreSQL: what is found, the events it emits once each,
// and the rotation proposals it queues but never starts.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, test } from "node:test";
import pg from "pg";
import { auditEntries } from "../store/audit.ts";
import { Store, type StoredEvent } from "../store/store.ts";
import { testEngines, type TestDatabase } from "../../test/support/store-testing.ts";
import { scanValidity, validityDedupKey, ValidityScheduler, type ValidityScanResult } from "./validity.ts";

const DAY = 86_400_000;
const NOW = Date.UTC(2026, 5, 1);
const WINDOW = 30;

let serial = 1;

/** A user with a card valid until `cardUntil` whose current key set is valid until `keyUntil`. */
async function cardWithKey(store: Store, cardUntil: number, keyUntil: number, opts: { cardStatus?: "issued" | "retired" } = {}) {
  const user = await store.createUser({ personalData: { cn: "Ada" } });
  const card = await store.registerCard({ userId: user.id, validFrom: NOW - 400 * DAY, validUntil: cardUntil, status: opts.cardStatus });
  const ks = await store.addKeySet({ cardId: card.id, kvn: 1, version: 1, validFrom: NOW - 400 * DAY, validUntil: keyUntil, custodyRef: `master:v1/${card.id}`, makeCurrent: true });
  return { user, card, ks };
}

/** Slots taken per card: one active key pair per card and slot (issue 15 §1), so each certificate gets its own. */
const slotsUsed = new Map<string, number>();

async function certificate(store: Store, userId: string, cardId: string, notAfter: number) {
  const n = slotsUsed.get(cardId) ?? 0;
  slotsUsed.set(cardId, n + 1);
  const rec = await store.recordCredential({
    keyPair: { userId, cardId, slot: (0x82 + n).toString(16), algorithm: "ec-p256", publicKey: randomBytes(91) },
    wrapped: [],
    certificate: { serial: (serial++).toString(16), der: randomBytes(64), subject: "CN=Ada", notBefore: NOW - 400 * DAY, notAfter },
  });
  return rec.certificate!;
}

const byKey = (events: StoredEvent[]) => new Map(events.map((e) => [e.dedupKey, e]));

for (const engine of testEngines()) {
  describe(`validity scan on ${engine.name}`, () => {
    let t: TestDatabase;
    let store: Store;
    before(async () => {
      t = await engine.create();
      store = new Store(t.db, { now: () => NOW });
    });
    after(async () => {
      await t?.drop();
    });

    test("finds expiring and expired cards, key sets and certificates, emits each event once, proposes rotations once and never starts them", async () => {
      const far = NOW + 400 * DAY;
      // Cards: A expiring, B far, C expired, R retired (ignored), E ends exactly now, W ends exactly at the window's edge.
      const a = await cardWithKey(store, NOW + 10 * DAY, far);
      const b = await cardWithKey(store, far, NOW + 5 * DAY); // its current key set expiring
      const c = await cardWithKey(store, NOW - DAY, NOW - 2 * DAY); // card and key both expired
      const r = await cardWithKey(store, NOW - DAY, NOW - DAY, { cardStatus: "retired" }); // key expired, card retired: event, no proposal
      const e = await cardWithKey(store, NOW, far);
      const w = await cardWithKey(store, NOW + WINDOW * DAY, far);
      const beyond = await cardWithKey(store, NOW + WINDOW * DAY + 1, far);
      // Key sets on card A: an old active one that is not current, and a pending one; both expiring, neither proposed.
      const old = await store.addKeySet({ cardId: a.card.id, kvn: 2, version: 2, validFrom: NOW - DAY, validUntil: NOW + 3 * DAY, custodyRef: "old" });
      const pending = await store.addKeySet({ cardId: a.card.id, kvn: 3, version: 3, validFrom: NOW, validUntil: NOW + 7 * DAY, custodyRef: "pending", status: "pending" });
      // A retired key set is never reported.
      const retired = await store.addKeySet({ cardId: a.card.id, kvn: 4, version: 4, validFrom: NOW - DAY, validUntil: NOW + DAY, custodyRef: "retired", status: "retired" });
      // Certificates: X expiring, Y expired, Z revoked (ignored), V beyond the window (ignored).
      const x = await certificate(store, b.user.id, b.card.id, NOW + 20 * DAY);
      const y = await certificate(store, b.user.id, b.card.id, NOW - 1);
      const z = await certificate(store, b.user.id, b.card.id, NOW + 2 * DAY);
      await store.revokeCertificate(z.id, "superseded");
      const v = await certificate(store, b.user.id, b.card.id, NOW + 60 * DAY);

      // Small pages, so the scan has to page through every list.
      const first = await scanValidity({ store, now: NOW, windowDays: WINDOW, pageSize: 2 });
      assert.deepEqual(first.cards, { expiring: 3, expired: 1 }); // A, E, W; C
      assert.deepEqual(first.keySets, { expiring: 3, expired: 2 }); // b.ks, old, pending; c.ks, r.ks
      assert.deepEqual(first.certificates, { expiring: 1, expired: 1 });
      assert.equal(first.rotationsProposed, 2); // b.ks (expiring) and c.ks (expired); not r (retired card), old (not current), pending
      assert.equal(first.eventsEmitted, 4 + 5 + 2 + 2);
      assert.equal(first.until, NOW + WINDOW * DAY);

      const events = await store.listEvents({ limit: 1000 });
      assert.equal(events.length, first.eventsEmitted);
      const keys = byKey(events);
      const expect = (phase: "expiring" | "expired", item: "card" | "keyset" | "certificate", id: string, until: number) => {
        const ev = keys.get(validityDedupKey(phase, item, id, until));
        assert.ok(ev, `${phase} ${item} ${id}`);
        assert.equal(ev.type, `${item}.${phase}`);
        assert.equal(ev.subject, id);
        return ev;
      };
      expect("expiring", "card", a.card.id, a.card.validUntil);
      expect("expiring", "card", e.card.id, NOW);
      expect("expiring", "card", w.card.id, w.card.validUntil);
      expect("expired", "card", c.card.id, c.card.validUntil);
      const ksEvent = expect("expiring", "keyset", b.ks.id, b.ks.validUntil);
      assert.deepEqual(ksEvent.payload, { keySetId: b.ks.id, cardId: b.card.id, kvn: 1, version: 1, status: "active", validUntil: b.ks.validUntil, detectedAt: NOW });
      expect("expired", "keyset", c.ks.id, c.ks.validUntil);
      expect("expired", "keyset", r.ks.id, r.ks.validUntil);
      expect("expiring", "keyset", old.id, old.validUntil);
      expect("expiring", "keyset", pending.id, pending.validUntil);
      expect("expiring", "certificate", x.id, x.notAfter);
      expect("expired", "certificate", y.id, y.notAfter);
      // Already expired items get no "expiring" event; ignored items get none at all.
      assert.equal(keys.get(validityDedupKey("expiring", "card", c.card.id, c.card.validUntil)), undefined);
      const subjects = new Set(events.map((ev) => ev.subject));
      for (const id of [b.card.id, r.card.id, beyond.card.id, retired.id, z.id, v.id, a.ks.id]) assert.ok(!subjects.has(id), id);

      // The proposals: once per key set, with the default strategy, waiting for an operator.
      const rotations = await store.listRotations();
      assert.deepEqual(rotations.map((rot) => rot.fromKeySetId).sort(), [b.ks.id, c.ks.id].sort());
      for (const rot of rotations) {
        assert.equal(rot.status, "proposed");
        assert.equal(rot.strategy, "embodiment3");
        assert.equal(rot.approvedBy, null);
        assert.equal(rot.toKeySetId, null);
        assert.equal(rot.done, 0);
      }
      const proposedEvents = events.filter((ev) => ev.type === "rotation.proposed");
      assert.deepEqual(proposedEvents.map((ev) => ev.subject).sort(), rotations.map((rot) => rot.id).sort());
      const forB = rotations.find((rot) => rot.fromKeySetId === b.ks.id)!;
      assert.equal((proposedEvents.find((ev) => ev.subject === forB.id)!.payload as { reason: string }).reason, "keyset.expiring");
      // Every proposal is audited by the scan.
      const audit = [];
      for await (const entry of auditEntries(t.db)) audit.push(entry);
      const proposals = audit.filter((entry) => entry.action === "rotation.proposed");
      assert.deepEqual(proposals.map((entry) => entry.subject).sort(), rotations.map((rot) => rot.id).sort());
      for (const entry of proposals) {
        assert.equal(entry.actor, "validity-scan");
        assert.equal(entry.at, NOW);
      }

      // Again at the same instant: the same findings, nothing new.
      const second = await scanValidity({ store, now: NOW, windowDays: WINDOW });
      assert.deepEqual({ ...second, eventsEmitted: 0, rotationsProposed: 0 }, second);
      assert.deepEqual(second.cards, first.cards);
      assert.equal((await store.listEvents({ limit: 1000 })).length, events.length);
      assert.equal((await store.listRotations()).length, 2);

      // Fifteen days later A's card and b's key set have expired: one "expired" event each, no second proposal.
      const later = NOW + 15 * DAY;
      const third = await scanValidity({ store, now: later, windowDays: WINDOW });
      const newEvents = await store.listEvents({ afterId: events[events.length - 1].id, limit: 1000 });
      const newKeys = newEvents.map((ev) => ev.dedupKey);
      assert.ok(newKeys.includes(validityDedupKey("expired", "card", a.card.id, a.card.validUntil)));
      assert.ok(newKeys.includes(validityDedupKey("expired", "keyset", b.ks.id, b.ks.validUntil)));
      assert.ok(newKeys.includes(validityDedupKey("expired", "certificate", z.id, z.notAfter)) === false); // revoked stays out
      assert.equal(third.eventsEmitted, newEvents.length);
      assert.equal(third.rotationsProposed, 0);
      assert.equal((await scanValidity({ store, now: later, windowDays: WINDOW })).eventsEmitted, 0);

      // An operator cancels b's proposal: the next scan proposes again, once; an approved one is left alone.
      await store.cancelRotation(forB.id);
      const forC = rotations.find((rot) => rot.fromKeySetId === c.ks.id)!;
      await store.approveRotation(forC.id, "olga");
      const fourth = await scanValidity({ store, now: later, windowDays: WINDOW });
      assert.equal(fourth.rotationsProposed, 1);
      assert.equal((await scanValidity({ store, now: later, windowDays: WINDOW })).rotationsProposed, 0);
      const open = await store.openRotationForKeySet(b.ks.id);
      assert.equal(open?.status, "proposed");
      assert.notEqual(open?.id, forB.id);
      assert.equal((await store.getRotation(forC.id))?.status, "approved"); // the scan never runs or re-approves
      assert.equal((await store.listRotations({ status: "running" })).length, 0);
    });

    test("concurrent scans (two processes on PostgreSQL) still propose once and emit once", async () => {
      const { ks, card } = await cardWithKey(store, NOW + 400 * DAY, NOW + DAY);
      const other = t.engine === "postgres" ? new Store(t.reopen(), { now: () => NOW }) : store;
      const results = await Promise.all(Array.from({ length: 6 }, (_, i) => scanValidity({ store: i % 2 ? other : store, now: NOW, windowDays: 2 })));
      const proposals = (await store.listRotations({ cardId: card.id })).filter((r) => r.fromKeySetId === ks.id);
      assert.equal(proposals.length, 1);
      const events = (await store.listEvents({ limit: 10_000 })).filter((e) => e.subject === ks.id || e.subject === proposals[0].id);
      assert.deepEqual(events.map((e) => e.type).sort(), ["keyset.expiring", "rotation.proposed"]);
      assert.equal(
        results.reduce((n, r) => n + r.rotationsProposed, 0),
        1,
      );
    });

    test("strategy and window are configurable; bad options are refused", async () => {
      const { ks } = await cardWithKey(store, NOW + 400 * DAY, NOW + 50 * DAY);
      assert.equal((await scanValidity({ store, now: NOW, windowDays: 40, strategy: "embodiment5" })).rotationsProposed, 0);
      const r = await scanValidity({ store, now: NOW, windowDays: 60, strategy: "embodiment5" });
      assert.ok(r.rotationsProposed >= 1);
      assert.equal((await store.openRotationForKeySet(ks.id))?.strategy, "embodiment5");
      await assert.rejects(scanValidity({ store, now: NOW, windowDays: -1 }), /windowDays/);
      await assert.rejects(scanValidity({ store, now: NOW, windowDays: Number.NaN }), /windowDays/);
      await assert.rejects(scanValidity({ store, now: NOW, windowDays: 1, strategy: "embodiment9" as "embodiment3" }), /strategy/);
      await assert.rejects(scanValidity({ store, now: NOW, windowDays: 1, pageSize: 0 }), /pageSize/);
      assert.throws(() => new ValidityScheduler({ store, windowDays: 1, scanIntervalSeconds: 0 }), /scanIntervalSeconds/);
    });

    test("the scheduler scans repeatedly on its clock, never two scans at once, and stop() waits for the one running", { timeout: 10 * 60_000 }, async () => {
      let clock = NOW + 1000 * DAY; // far enough that earlier tests' items are all expired: each scan has work to do
      let active = 0;
      let maxActive = 0;
      const scans: ValidityScanResult[] = [];
      let wake: () => void = () => {};
      const scheduler = new ValidityScheduler({
        store,
        windowDays: 1,
        scanIntervalSeconds: 0.01,
        clock: () => {
          active++;
          maxActive = Math.max(maxActive, active);
          return (clock += 1);
        },
        onScan: (r) => {
          active--;
          scans.push(r);
          wake();
        },
      });
      // The scheduler's timer is unref'd (it never keeps a process alive), so the test keeps the loop alive itself.
      const keepAlive = setInterval(() => {}, 1000);
      const until = async (cond: () => boolean) => {
        while (!cond()) await new Promise<void>((res) => (wake = res));
      };

      // PostgreSQL: hold a lock the scan needs, so ticks come while it is blocked and must be skipped.
      let locker: pg.Client | undefined;
      if (t.engine === "postgres") {
        locker = new pg.Client({ connectionString: t.url });
        await locker.connect();
        await locker.query("begin");
        await locker.query("lock table events in access exclusive mode");
      }
      scheduler.start();
      if (locker) {
        while (scheduler.skippedTicks < 3) await new Promise((res) => setTimeout(res, 10));
        assert.equal(scans.length, 0);
        await locker.query("rollback");
        await locker.end();
      }
      const manual = scheduler.runNow(); // waits for a scan in progress, then runs its own
      await until(() => scans.length >= 3);
      const m = await manual;
      assert.ok(m.now > NOW + 1000 * DAY);
      await scheduler.stop();
      const count = scans.length;
      assert.equal(scheduler.running, false);
      assert.equal(maxActive, 1);
      assert.ok(scans[0].cards.expired > 0);
      assert.ok(scans.slice(1).every((s) => s.eventsEmitted === 0)); // the first scan emitted it all
      // Stopped means stopped: a pause of several intervals adds no scan.
      await new Promise((res) => setTimeout(res, 50));
      assert.equal(scans.length, count);
      clearInterval(keepAlive);
    });
  });
}
