// SqlRecoveryRepository (the records of key reproduction, migrations/0003_recovery.ts) on SQLite and PostgreSQL,
// each on a database of its own (testing.ts; an unreachable PostgreSQL FAILS the suite). The constraints that
// carry the service's guarantees are exercised directly: one escrow per card, one card record per physical card,
// one unfinished request per card, one decision per arbitrator and chain position, conditional state moves.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { sql } from "kysely";
import { migrateToLatest, migrations, migratorFor } from "./migrate.ts";
import { SqlRecoveryRepository, type ArbitratorRecord, type DeviceRecord, type EnvelopeRow, type EscrowRow, type RequestRecord } from "./recovery-repository.ts";
import { Store } from "./store.ts";
import { testEngines, type TestDatabase } from "../../test/support/store-testing.ts";

const T0 = Date.UTC(2026, 0, 1);
const hex = (n: number) => randomBytes(n).toString("hex");

function arbitrator(id: string): ArbitratorRecord {
  return {
    id,
    roles: ["service provider"],
    displayName: `Arbitrator ${id}`,
    signingPublicKey: new Uint8Array(randomBytes(91)),
    encryptionPublicKey: new Uint8Array(randomBytes(91)),
    registeredBy: "op",
    registeredAt: T0,
  };
}

function escrow(cardId: string, over: Partial<EscrowRow> = {}): EscrowRow {
  return {
    escrowId: `esc-${hex(6)}`,
    cardId,
    applicantId: "user-1",
    policy: '{"version":1}',
    policyDigest: hex(32),
    record: '{"format":"cardkms.recovery.escrow/1"}',
    wrappedUnder: "recovery.escrow-kek",
    alg: "P256",
    slot: "9c",
    publicKey: new Uint8Array(randomBytes(91)),
    publicKeySha256: hex(32),
    certificate: new Uint8Array(randomBytes(300)),
    serial: "7" + hex(15),
    createdBy: "op",
    createdAt: T0,
    ...over,
  };
}

const device = (cardId: string, digest = hex(32)): DeviceRecord => ({ cardId, secretIdDigest: digest, keySet: '{"kind":"derived","kvn":1}', generation: 1, registeredAt: T0, cardRecordId: cardId });
const envelopes = (e: EscrowRow, arbitrators: string[]): EnvelopeRow[] => arbitrators.map((a) => ({ escrowId: e.escrowId, shareId: `ind/${a}`, arbitratorId: a, envelope: `{"a":"${a}"}` }));

function request(e: EscrowRow, over: Partial<RequestRecord> = {}): RequestRecord {
  return {
    requestId: `req-${hex(6)}`,
    cardId: e.cardId,
    escrowId: e.escrowId,
    kind: "key-lost",
    request: "{}",
    requestDigest: hex(32),
    status: "open",
    statusDetail: null,
    approverList: null,
    filedBy: "op",
    filedAt: T0,
    updatedAt: T0,
    reproducedBy: null,
    reproducedAt: null,
    ...over,
  };
}

for (const engine of testEngines()) {
  describe(`SqlRecoveryRepository on ${engine.name}`, () => {
    let t: TestDatabase;
    let repo: SqlRecoveryRepository;
    before(async () => {
      t = await engine.create();
      repo = new SqlRecoveryRepository(t.db);
      for (const id of ["a1", "a2", "a3"]) assert.equal(await repo.insertArbitrator(arbitrator(id)), true);
    });
    after(async () => t?.drop());

    /** Records an escrow (with its device) in a transaction, as the service does. */
    const record = (e: EscrowRow, dev: DeviceRecord, env = envelopes(e, ["a1", "a2"])) =>
      repo.transaction(async (tx) => {
        const r = await tx.insertEscrow(e, env, dev);
        if (r !== "recorded") throw new Error(r);
        return r;
      });

    test("arbitrators: recorded whole, ids never reused", async () => {
      const a = arbitrator("a-new");
      assert.equal(await repo.insertArbitrator(a), true);
      assert.deepStrictEqual(await repo.arbitrator("a-new"), a);
      assert.equal(await repo.insertArbitrator({ ...arbitrator("a-new"), roles: ["user"] }), false);
      assert.deepStrictEqual((await repo.arbitrator("a-new"))?.roles, ["service provider"], "the first registration stays");
      const noName = { ...arbitrator("a-anon"), displayName: undefined };
      delete noName.displayName;
      await repo.insertArbitrator(noName);
      assert.deepStrictEqual(await repo.arbitrator("a-anon"), noName);
      assert.deepEqual(
        (await repo.arbitrators()).map((x) => x.id).filter((id) => id.startsWith("a-")),
        ["a-anon", "a-new"],
      );
      assert.equal(await repo.arbitrator("nobody"), undefined);
    });

    test("policies: set, replaced, read back", async () => {
      const card = `card-${hex(4)}`;
      assert.equal(await repo.policy(card), undefined);
      await repo.putPolicy({ cardId: card, policy: '{"v":1}', policyDigest: "d1", setBy: "op", setAt: T0 });
      await repo.putPolicy({ cardId: card, policy: '{"v":2}', policyDigest: "d2", setBy: "op2", setAt: T0 + 1 });
      assert.deepStrictEqual(await repo.policy(card), { cardId: card, policy: '{"v":2}', policyDigest: "d2", setBy: "op2", setAt: T0 + 1 });
    });

    test("escrows: one per card, one card record per physical card, envelopes by arbitrator and card", async () => {
      const cardA = `card-${hex(4)}`;
      const cardB = `card-${hex(4)}`;
      const eA = escrow(cardA);
      const devA = device(cardA);
      await assert.rejects(repo.insertEscrow(eA, [], devA), /inside transaction/);
      await record(eA, devA);
      assert.deepStrictEqual(await repo.escrow(eA.escrowId), eA);
      assert.deepStrictEqual(await repo.escrowByCard(cardA), eA);
      assert.deepStrictEqual(await repo.device(cardA), devA);
      assert.deepStrictEqual(await repo.deviceByDigest(devA.secretIdDigest), devA);

      // a second escrow for the card, and the same physical card for another card record: refused, rolled back
      await assert.rejects(record(escrow(cardA), device(cardA)), /card-has-escrow/);
      const eB = escrow(cardB);
      await assert.rejects(record(eB, device(cardB, devA.secretIdDigest)), /device-in-use/);
      assert.equal(await repo.escrow(eB.escrowId), undefined, "the refused escrow was rolled back");
      await record(eB, device(cardB), envelopes(eB, ["a2", "a3"]));

      assert.deepEqual((await repo.envelopesFor("a2")).map((v) => v.escrowId).sort(), [eA.escrowId, eB.escrowId].sort());
      assert.deepEqual(
        (await repo.envelopesFor("a2", { cardId: cardB })).map((v) => [v.escrowId, v.shareId, v.envelope]),
        [[eB.escrowId, "ind/a2", '{"a":"a2"}']],
      );
      assert.deepEqual(await repo.envelopesFor("a1", { cardId: cardB }), []);

      assert.equal(await repo.transaction((tx) => tx.deleteEscrow(eB.escrowId)), true);
      assert.equal(await repo.escrow(eB.escrowId), undefined);
      assert.equal(await repo.device(cardB), undefined);
      assert.deepEqual(await repo.envelopesFor("a3", { cardId: cardB }), []);
      assert.equal(await repo.transaction((tx) => tx.deleteEscrow(eB.escrowId)), false);
    });

    test("devices: replaced only from the expected registration; a digest serves one card", async () => {
      const [c1, c2] = [`card-${hex(4)}`, `card-${hex(4)}`];
      const [d1, d2] = [device(c1), device(c2)];
      await record(escrow(c1), d1, []);
      await record(escrow(c2), d2, []);
      const next = { secretIdDigest: hex(32), keySet: '{"kind":"derived","kvn":2}', registeredAt: T0 + 5, cardRecordId: `card-${hex(4)}` };
      assert.equal(await repo.replaceDevice(c1, "not-the-registered-digest", next), false);
      assert.equal(await repo.replaceDevice(c1, d1.secretIdDigest, next), true);
      assert.deepStrictEqual(await repo.device(c1), { cardId: c1, secretIdDigest: next.secretIdDigest, keySet: next.keySet, generation: 2, registeredAt: T0 + 5, cardRecordId: next.cardRecordId });
      assert.deepStrictEqual(await repo.deviceByCardRecord(next.cardRecordId), await repo.device(c1), "the replacement card's record reaches it now");
      assert.equal(await repo.deviceByCardRecord(c1), undefined, "the destroyed card's record no longer does");
      assert.equal(await repo.replaceDevice(c1, d1.secretIdDigest, { ...next, secretIdDigest: hex(32) }), false, "a second replacement from the old registration");
      await assert.rejects(repo.replaceDevice(c2, d2.secretIdDigest, { ...next, registeredAt: T0 + 6 }), "c1's card cannot become c2's as well");
      assert.deepStrictEqual(await repo.device(c2), d2);
    });

    test("requests: one unfinished per card, conditional moves, filters", async () => {
      const e = escrow(`card-${hex(4)}`);
      await record(e, device(e.cardId), []);
      const r1 = request(e);
      assert.equal(await repo.insertRequest(r1), true);
      assert.deepStrictEqual(await repo.request(r1.requestId), r1);
      assert.equal(await repo.insertRequest(request(e, { kind: "card-destroyed" })), false, "a second unfinished request for the card");
      assert.equal(await repo.moveRequest(r1.requestId, ["satisfied"], "reproducing", T0 + 1), false, "not from open");
      assert.equal(await repo.moveRequest(r1.requestId, ["open"], "satisfied", T0 + 1, { approverList: "[list]" }), true);
      assert.equal(await repo.moveRequest(r1.requestId, ["satisfied"], "reproducing", T0 + 2, { statusDetail: null }), true);
      assert.equal(await repo.insertRequest(request(e)), false, "still unfinished while reproducing");
      assert.equal(await repo.moveRequest(r1.requestId, ["reproducing"], "reproduced", T0 + 3, { reproducedBy: "op", reproducedAt: T0 + 3 }), true);
      assert.equal(await repo.moveRequest(r1.requestId, ["satisfied"], "reproducing", T0 + 4), false, "a request is used once");
      const got = await repo.request(r1.requestId);
      assert.deepStrictEqual(got, { ...r1, status: "reproduced", approverList: "[list]", updatedAt: T0 + 3, reproducedBy: "op", reproducedAt: T0 + 3 });
      const r2 = request(e, { filedAt: T0 + 10, kind: "card-destroyed" });
      assert.equal(await repo.insertRequest(r2), true, "a finished request does not block a new one");
      assert.deepEqual(
        (await repo.requests({ cardId: e.cardId })).map((r) => r.requestId),
        [r2.requestId, r1.requestId],
        "newest first",
      );
      assert.deepEqual(
        (await repo.requests({ cardId: e.cardId, statuses: ["reproduced"] })).map((r) => r.requestId),
        [r1.requestId],
      );
      assert.deepEqual(await repo.requests({ statuses: [] }), []);
      assert.equal(await repo.lockRequest(r2.requestId, T0 + 11).catch((err: Error) => err.message), "lockRequest must run inside transaction()");
      assert.equal(await repo.transaction((tx) => tx.lockRequest(r2.requestId, T0 + 11)), true);
      assert.equal(await repo.transaction((tx) => tx.lockRequest("nope", T0 + 11)), false);
      assert.equal((await repo.request(r2.requestId))?.updatedAt, T0 + 11);
    });

    test("approvals and releases: one per chain position, one decision per arbitrator, one release per share", async () => {
      const e = escrow(`card-${hex(4)}`);
      await record(e, device(e.cardId), []);
      const r = request(e);
      await repo.insertRequest(r);
      const ap = (seq: number, arbitratorId: string) => ({
        requestId: r.requestId,
        seq,
        arbitratorId,
        decision: "approve" as const,
        approval: `{"seq":${seq}}`,
        approvalHash: hex(32),
        recordedAt: T0 + seq,
      });
      assert.equal(await repo.insertApproval(ap(0, "a1")), true);
      assert.equal(await repo.insertApproval(ap(0, "a2")), false, "position 0 is taken");
      assert.equal(await repo.insertApproval(ap(1, "a1")), false, "a1 decided already");
      assert.equal(await repo.insertApproval({ ...ap(1, "a2"), decision: "refuse" }), true);
      assert.deepEqual(
        (await repo.approvals(r.requestId)).map((a) => [a.seq, a.arbitratorId, a.decision, a.approval]),
        [
          [0, "a1", "approve", '{"seq":0}'],
          [1, "a2", "refuse", '{"seq":1}'],
        ],
      );
      const rel = (shareId: string) => ({ requestId: r.requestId, shareId, arbitratorId: "a1", release: `{"s":"${shareId}"}`, recordedAt: T0 });
      assert.equal(await repo.transaction((tx) => tx.insertReleases([rel("ind/a1"), rel("group/0/a1")])), true);
      assert.equal(await repo.transaction((tx) => tx.insertReleases([rel("ind/a1")])), false);
      assert.deepEqual(
        (await repo.releases(r.requestId)).map((x) => x.shareId),
        ["group/0/a1", "ind/a1"],
      );
    });

    if (engine.name === "postgres") {
      test("two server processes: one claims a request for reproduction, one approval takes a chain position", async () => {
        const e = escrow(`card-${hex(4)}`);
        await record(e, device(e.cardId), []);
        const r = request(e, { status: "satisfied" });
        await repo.insertRequest(r);
        const peers = [new SqlRecoveryRepository(t.reopen()), new SqlRecoveryRepository(t.reopen()), repo];
        const claims = await Promise.all(peers.map((p) => p.moveRequest(r.requestId, ["satisfied"], "reproducing", T0 + 1)));
        assert.equal(claims.filter(Boolean).length, 1, "exactly one claim");
        const approvals = await Promise.all(
          peers.map((p, i) => p.insertApproval({ requestId: r.requestId, seq: 0, arbitratorId: `a${i + 1}`, decision: "approve", approval: "{}", approvalHash: hex(32), recordedAt: T0 })),
        );
        assert.equal(approvals.filter(Boolean).length, 1, "exactly one approval at position 0");
      });
    }
  });
}

for (const engine of testEngines()) {
  test(`${engine.name}: migration 0010 records the card record of each registered device, from what was known before`, async () => {
    const tdb = await engine.create();
    try {
      const names = Object.keys(migrations(engine.name));
      const down = await migratorFor(tdb.db).migrateTo("0009_canonical_key_hashes");
      assert.equal(down.error, undefined, String(down.error));
      const store = new Store(tdb.db);
      const user = await store.createUser({ personalData: { commonName: "Before 0010" } });
      const replacement = await store.registerCard({ id: "00aa00aa00aa00aa", userId: user.id, validFrom: T0, validUntil: T0 + 1 });
      const row = (cardId: string, generation: number, keySet: string) =>
        sql`insert into recovery_devices (card_id, secret_id_digest, key_set, generation, registered_at) values (${cardId}, ${hex(32)}, ${keySet}, ${generation}, ${T0})`.execute(tdb.db);
      await row("first", 1, '{"kind":"derived","master":"m","cardId":"0102030405060708","kvn":1}');
      await row("replaced", 2, JSON.stringify({ kind: "derived", master: "m", cardId: replacement.id, kvn: 1 }));
      await row("replaced-unknown", 2, '{"kind":"derived","master":"m","cardId":"ffffffffffffffff","kvn":1}');
      await row("replaced-unreadable", 3, "not json");
      assert.deepEqual(await migrateToLatest(tdb.db), names.slice(names.indexOf("0010_recovery_device_card_record")));
      const repo = new SqlRecoveryRepository(tdb.db);
      assert.equal((await repo.device("first"))?.cardRecordId, "first", "generation 1: the escrow's own card record");
      assert.equal((await repo.device("replaced"))?.cardRecordId, replacement.id, "a replacement named by its key set, a card record of the issuer");
      assert.equal((await repo.device("replaced-unknown"))?.cardRecordId, undefined, "not a card record: unknown");
      assert.equal((await repo.device("replaced-unreadable"))?.cardRecordId, undefined);
      assert.equal((await repo.deviceByCardRecord(replacement.id))?.cardId, "replaced");
    } finally {
      await tdb.drop();
    }
  });
}
