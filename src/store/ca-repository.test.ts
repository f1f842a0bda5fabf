// The CaRepository contract (src/ca/repository.ts), written once and run against the in-memory repository, SQLite
// and PostgreSQL (each SQL run on a database of its own, see testing.ts; an unreachable PostgreSQL FAILS the suite).

import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { after, before, describe, test } from "node:test";
import type { CaRepository, IssuedCertificateRecord, RevocationRecord } from "../ca/repository.ts";
import { MemoryCaServiceRepository, type CaCertificateStore } from "../ca/service.ts";
import { SqlCaRepository } from "./ca-repository.ts";
import { testEngines, type TestDatabase } from "../../test/support/store-testing.ts";

type Repo = CaRepository & CaCertificateStore;

interface Subject {
  /** A repository for a CA of its own (fresh ids per call). */
  fresh(): Promise<Repo>;
  /** The same CA's records through an independent connection, as after a restart. */
  reopen?(repo: Repo): Repo;
  /**
   * The same CA's records through a connection that may run concurrently with `repo`'s, as a second server
   * process would. Not for SQLite: better-sqlite3 waits for the file lock synchronously, so two connections in
   * one process would wait on each other; one process has one connection and its transactions queue on it.
   */
  peer?(repo: Repo): Repo;
}

const DAY = 86_400_000;
const T0 = Date.UTC(2026, 0, 1);
const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
const serial = () => "7" + randomBytes(15).toString("hex");

function record(over: Partial<IssuedCertificateRecord> = {}): IssuedCertificateRecord {
  const certificate = new Uint8Array(randomBytes(64));
  return {
    serial: serial(),
    subject: { commonName: "Hanako Yamada", serialNumber: "CARD-1", organizationalUnit: ["a", "b"] },
    publicKeySha256: sha(randomBytes(32)),
    profile: "signature",
    notBefore: new Date(T0),
    notAfter: new Date(T0 + 365 * DAY),
    issuedAt: new Date(T0 + 1000),
    certificate,
    ...over,
  };
}

function caRepositoryContract(name: string, s: Subject): void {
  describe(`CaRepository contract: ${name}`, () => {
    test("a recorded certificate is found whole; serial and key are then in use", async () => {
      const repo = await s.fresh();
      const a = record({ applicantId: "user-1" });
      const b = record({ subject: { commonName: "B", organizationalUnit: "one" } });
      assert.equal(await repo.findIssued(a.serial), undefined);
      assert.equal(await repo.isSerialUsed(a.serial), false);
      assert.equal(await repo.isPublicKeyCertified(a.publicKeySha256), false);
      assert.equal(await repo.recordIssued(a, { uniquePublicKey: true }), "recorded");
      assert.equal(await repo.recordIssued(b, { uniquePublicKey: true }), "recorded");
      assert.deepStrictEqual(await repo.findIssued(a.serial), a);
      assert.deepStrictEqual(await repo.findIssued(b.serial), b);
      assert.equal(await repo.isSerialUsed(a.serial), true);
      assert.equal(await repo.isPublicKeyCertified(a.publicKeySha256), true);
      assert.equal(await repo.isSerialUsed(serial()), false);
    });

    test("a used serial is refused first, a certified key next; nothing of a refused record is written", async () => {
      const repo = await s.fresh();
      const a = record();
      assert.equal(await repo.recordIssued(a, { uniquePublicKey: true }), "recorded");

      const sameSerial = record({ serial: a.serial });
      assert.equal(await repo.recordIssued(sameSerial, { uniquePublicKey: true }), "duplicate-serial");
      assert.equal(await repo.recordIssued(sameSerial, { uniquePublicKey: false }), "duplicate-serial");
      assert.equal(await repo.isPublicKeyCertified(sameSerial.publicKeySha256), false, "the refused record's key was not claimed");
      assert.deepStrictEqual(await repo.findIssued(a.serial), a, "the first record is unchanged");

      const sameKey = record({ publicKeySha256: a.publicKeySha256 });
      assert.equal(await repo.recordIssued(sameKey, { uniquePublicKey: true }), "duplicate-public-key");
      assert.equal(await repo.isSerialUsed(sameKey.serial), false, "the refused record's serial was not used");
      assert.equal(await repo.recordIssued(record({ serial: a.serial, publicKeySha256: a.publicKeySha256 }), { uniquePublicKey: true }), "duplicate-serial");

      // A CA that allows re-certifying keys records the second certificate for the same key.
      assert.equal(await repo.recordIssued(sameKey, { uniquePublicKey: false }), "recorded");
      assert.deepStrictEqual(await repo.findIssued(sameKey.serial), sameKey);
      // ...and the key stays certified for a CA that does not.
      assert.equal(await repo.recordIssued(record({ publicKeySha256: a.publicKeySha256 }), { uniquePublicKey: true }), "duplicate-public-key");
    });

    test("8 concurrent recordIssued for one public key: exactly one is recorded", async () => {
      const repo = await s.fresh();
      const key = sha(randomBytes(32));
      const others = s.peer ? [repo, s.peer(repo)] : [repo];
      const records = Array.from({ length: 8 }, () => record({ publicKeySha256: key }));
      const results = await Promise.all(records.map((r, i) => others[i % others.length].recordIssued(r, { uniquePublicKey: true })));
      assert.deepEqual(results.filter((r) => r === "recorded").length, 1, JSON.stringify(results));
      assert.deepEqual(results.filter((r) => r === "duplicate-public-key").length, 7, JSON.stringify(results));
      const winner = records[results.indexOf("recorded")];
      for (const r of records) assert.equal(await repo.isSerialUsed(r.serial), r === winner);
      assert.deepStrictEqual(await repo.findIssued(winner.serial), winner);
    });

    test("concurrent recordIssued with one serial: exactly one is recorded", async () => {
      const repo = await s.fresh();
      const sn = serial();
      const others = s.peer ? [repo, s.peer(repo)] : [repo];
      const records = Array.from({ length: 8 }, () => record({ serial: sn }));
      const results = await Promise.all(records.map((r, i) => others[i % others.length].recordIssued(r, { uniquePublicKey: false })));
      assert.equal(results.filter((r) => r === "recorded").length, 1, JSON.stringify(results));
      assert.equal(results.filter((r) => r === "duplicate-serial").length, 7, JSON.stringify(results));
      const winner = records[results.indexOf("recorded")];
      for (const r of records) assert.equal(await repo.isPublicKeyCertified(r.publicKeySha256), r === winner);
    });

    test("revocation keeps the first record; expired certificates leave the list", async () => {
      const repo = await s.fresh();
      const live = record({ notAfter: new Date(T0 + 30 * DAY) });
      const expiring = record({ notAfter: new Date(T0 + 2 * DAY) });
      const untouched = record();
      for (const r of [live, expiring, untouched]) assert.equal(await repo.recordIssued(r, { uniquePublicKey: true }), "recorded");
      const first: RevocationRecord = { serial: live.serial, reason: "keyCompromise", revokedAt: new Date(T0 + DAY), invalidityDate: new Date(T0 + DAY / 2) };
      assert.deepStrictEqual(await repo.revoke(first), first);
      assert.deepStrictEqual(await repo.revoke({ serial: live.serial, reason: "superseded", revokedAt: new Date(T0 + 2 * DAY) }), first);
      const second: RevocationRecord = { serial: expiring.serial, reason: "unspecified", revokedAt: new Date(T0 + DAY + 1000) };
      assert.deepStrictEqual(await repo.revoke(second), second);

      const byserial = (l: RevocationRecord[]) => [...l].sort((x, y) => x.serial.localeCompare(y.serial));
      assert.deepStrictEqual(byserial(await repo.listRevoked(new Date(T0 + DAY + 2000))), byserial([first, second]));
      // notAfter is inclusive (RFC 5280 §4.1.2.5): listed at that instant, dropped after it
      assert.deepStrictEqual(byserial(await repo.listRevoked(new Date(T0 + 2 * DAY))), byserial([first, second]));
      assert.deepStrictEqual(await repo.listRevoked(new Date(T0 + 2 * DAY + 1)), [first]);
      assert.deepStrictEqual(await repo.listRevoked(new Date(T0 + 31 * DAY)), []);
    });

    test("CRL numbers are 1, 2, 3 … and never repeat, also for concurrent callers", async () => {
      const repo = await s.fresh();
      assert.deepEqual([await repo.nextCrlNumber(), await repo.nextCrlNumber(), await repo.nextCrlNumber()], [1, 2, 3]);
      const others = s.peer ? [repo, s.peer(repo)] : [repo];
      const got = await Promise.all(Array.from({ length: 20 }, (_, i) => others[i % others.length].nextCrlNumber()));
      assert.deepEqual(
        [...got].sort((a, b) => a - b),
        Array.from({ length: 20 }, (_, i) => i + 4),
      );
      assert.equal(await repo.nextCrlNumber(), 24);
    });

    test("the CA's own certificate: the first stored wins", async () => {
      const repo = await s.fresh();
      assert.equal(await repo.loadCaCertificate(), undefined);
      const first = { keyLabel: "ca/root", certificate: new Uint8Array(randomBytes(300)), issuerChain: [new Uint8Array(randomBytes(200)), new Uint8Array(randomBytes(100))] };
      assert.deepStrictEqual(await repo.saveCaCertificate(first), first);
      assert.deepStrictEqual(await repo.saveCaCertificate({ keyLabel: "ca/other", certificate: new Uint8Array(10), issuerChain: [] }), first);
      assert.deepStrictEqual(await repo.loadCaCertificate(), first);
    });

    if (s.reopen) {
      test("everything survives a restart: records, revocations, the CRL counter, the CA certificate", async () => {
        const repo = await s.fresh();
        const a = record();
        await repo.recordIssued(a, { uniquePublicKey: true });
        const rev: RevocationRecord = { serial: a.serial, reason: "cessationOfOperation", revokedAt: new Date(T0 + DAY) };
        await repo.revoke(rev);
        const n = await repo.nextCrlNumber();
        const own = { keyLabel: "ca/root", certificate: new Uint8Array(randomBytes(300)), issuerChain: [] };
        await repo.saveCaCertificate(own);

        const again = s.reopen!(repo);
        assert.deepStrictEqual(await again.findIssued(a.serial), a);
        assert.equal(await again.recordIssued(record({ publicKeySha256: a.publicKeySha256 }), { uniquePublicKey: true }), "duplicate-public-key");
        assert.deepStrictEqual(await again.listRevoked(new Date(T0)), [rev]);
        assert.equal(await again.nextCrlNumber(), n + 1);
        assert.deepStrictEqual(await again.loadCaCertificate(), own);
      });
    }
  });
}

caRepositoryContract("memory", { fresh: async () => new MemoryCaServiceRepository() });

for (const engine of testEngines()) {
  describe(`SQL on ${engine.name}`, () => {
    let t: TestDatabase;
    // one database per engine; each repository is a CA of its own in it
    before(async () => {
      t = await engine.create();
    });
    after(async () => {
      await t?.drop();
    });
    const ids = new WeakMap<Repo, string>();
    caRepositoryContract(engine.name, {
      async fresh() {
        const repo = new SqlCaRepository(t.db, `ca-${randomBytes(4).toString("hex")}`);
        ids.set(repo, repo.caId);
        return repo;
      },
      reopen(repo) {
        return new SqlCaRepository(t.reopen(), ids.get(repo)!);
      },
      peer: engine.name === "postgres" ? (repo) => new SqlCaRepository(t.reopen(), ids.get(repo)!) : undefined,
    });

    test("CAs sharing a database keep their own serials, keys and CRL numbers", async () => {
      const a = new SqlCaRepository(t.db, "root");
      const b = new SqlCaRepository(t.db, "issuing");
      const r = record();
      assert.equal(await a.recordIssued(r, { uniquePublicKey: true }), "recorded");
      assert.equal(await b.isSerialUsed(r.serial), false);
      assert.equal(await b.recordIssued(r, { uniquePublicKey: true }), "recorded");
      await a.revoke({ serial: r.serial, reason: "superseded", revokedAt: new Date(T0) });
      assert.deepEqual(await b.listRevoked(new Date(T0)), []);
      assert.deepEqual([await a.nextCrlNumber(), await a.nextCrlNumber(), await b.nextCrlNumber()], [1, 2, 1]);
    });

    test("a CA id is checked", () => {
      assert.throws(() => new SqlCaRepository(t.db, ""), /CA id/);
      assert.throws(() => new SqlCaRepository(t.db, "a b"), /CA id/);
    });
  });
}
