// The software keystore in the store and the custody binding (issue 16 §3), on SQLite and PostgreSQL: the custody
// contract over the store backend, the sharing suite (custodies on separate connections to one database, as servers
// are), what the rows hold (sealed entries only, one per key), and the binding's first-writer record.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { custodyContract, rejects } from "../../test/support/custody-contract.ts";
import { keystoreSharingSuite } from "../../test/support/keystore-sharing.ts";
import { testEngines, type TestDatabase } from "../../test/support/store-testing.ts";
import { bindingRefusal, checkCustodyBinding } from "../custody/binding.ts";
import { SoftwareCustody } from "../custody/software.ts";
import { FileKeystoreBackend } from "../custody/keystore-file-backend.ts";
import { copyKeystoreToStore, SqlCustodyBindings, StoreKeystoreBackend } from "./custody-keystore.ts";

for (const engine of testEngines()) {
  describe(`custody keystore in the store on ${engine.name}`, () => {
    let t: TestDatabase;
    const key = randomBytes(32).toString("hex");
    before(async () => {
      t = await engine.create();
    });
    after(async () => {
      await t?.drop();
    });

    // The contract's own database, so that its keys do not mix with the tests below.
    let contractDb: TestDatabase | undefined;
    custodyContract(`software keystore in the store (${engine.name})`, async () => {
      contractDb ??= await engine.create();
      return SoftwareCustody.open({ backend: new StoreKeystoreBackend(contractDb.db), key });
    });
    after(async () => {
      await contractDb?.drop();
    });

    test("one row per key, holding only the sealed entry; the header row holds no key; a deleted key's row is gone", async () => {
      const c = await SoftwareCustody.open({ backend: new StoreKeystoreBackend(t.db), key });
      assert.equal(c.keystore.kind, "store");
      assert.equal(c.path, "the store");
      const value = randomBytes(16);
      await c.importSecretKey("rows-master", { type: "aes", bits: 128, usage: ["derive"] }, value);
      await c.generateKeyPair("rows-pair", "P256", { ephemeral: true });
      const rows = await t.db.withTables<{ custody_keystore_entries: { label: string; entry: string } }>().selectFrom("custody_keystore_entries").selectAll().execute();
      assert.deepEqual(
        rows.map((r) => r.label),
        ["rows-master"],
        "ephemeral key pairs are never written",
      );
      const head = await t.db.withTables<{ custody_keystore: { keystore_id: string; header: string } }>().selectFrom("custody_keystore").selectAll().execute();
      assert.equal(head.length, 1);
      assert.equal(head[0].keystore_id, c.keystore.id);
      const all = JSON.stringify(rows) + JSON.stringify(head);
      for (const form of [value.toString("hex"), value.toString("base64"), key]) assert.equal(all.includes(form), false, "no key in clear");
      assert.equal(await c.deleteKey("rows-master"), true);
      assert.equal((await t.db.withTables<{ custody_keystore_entries: { label: string } }>().selectFrom("custody_keystore_entries").selectAll().execute()).length, 0);
      await c.close();
    });

    test("a row altered in the database does not authenticate: CORRUPT, not a different key", async () => {
      const c = await SoftwareCustody.open({ backend: new StoreKeystoreBackend(t.db), key, recheckMs: 0 });
      await c.importSecretKey("altered", { type: "aes", bits: 128, usage: ["derive"] }, randomBytes(16));
      const db = t.db.withTables<{ custody_keystore_entries: { label: string; entry: string } }>();
      const row = await db.selectFrom("custody_keystore_entries").selectAll().where("label", "=", "altered").executeTakeFirstOrThrow();
      const entry = JSON.parse(row.entry);
      entry.extractable = "wrapped";
      await db
        .updateTable("custody_keystore_entries")
        .set({ entry: JSON.stringify(entry) })
        .where("label", "=", "altered")
        .execute();
      await rejects(c.keySetKcvs({ kind: "derived", master: "altered", cardId: "0102", kvn: 1 }), "CORRUPT", /altered/);
      await c.close();
    });

    test("the binding: the first server's record is kept; a different keystore is refused with what is recorded and the fix", async () => {
      const bindings = new SqlCustodyBindings(t.db);
      const other = new SqlCustodyBindings(t.reopen());
      assert.equal(await bindings.get(), undefined);
      const first = { keystoreId: "ks_aaaa", kind: "file", host: "host-a", path: "/srv/ks.json" } as const;
      const [r1, r2] = await Promise.all([checkCustodyBinding(bindings, first), other.recordFirst({ keystoreId: "ks_bbbb", kind: "file", host: "host-b", path: "/x.json" })]);
      const kept = await bindings.get();
      assert.deepEqual(r1, kept);
      assert.deepEqual(r2, kept, "one record, whoever came first");
      if (kept?.keystoreId === "ks_aaaa") {
        await checkCustodyBinding(other, { ...first });
        await assert.rejects(checkCustodyBinding(other, { ...first, host: "host-b" }), /another host.*custody\.keystoreBackend "store"/s);
        await assert.rejects(checkCustodyBinding(other, { keystoreId: "ks_cccc", kind: "file", host: "host-a", path: "/srv/other.json" }), /\/srv\/ks\.json.*ks_aaaa.*\/srv\/other\.json.*ks_cccc/s);
      }
      await bindings.replace({ keystoreId: "ks_store", kind: "store" });
      assert.deepEqual(await other.get(), { keystoreId: "ks_store", kind: "store" });
      assert.equal(bindingRefusal({ keystoreId: "ks_store", kind: "store" }, { keystoreId: "ks_store", kind: "store" }), undefined);
      assert.match(bindingRefusal({ keystoreId: "ks_store", kind: "store" }, { keystoreId: "ks_x", kind: "file", host: "h", path: "/p" }) ?? "", /keystore in the store/);
      assert.equal(bindingRefusal({ keystoreId: "ks_store", kind: "store" }, { keystoreId: "tok", kind: "pkcs11", token: "tok" }), undefined, "an HSM is not refused here");
    });

    test("copying a keystore file into the store: entries still sealed, same keys, same id; again copies nothing; another keystore refused", async () => {
      const d = await engine.create();
      const dir = mkdtempSync(join(tmpdir(), "cardkms-copy-"));
      try {
        const path = join(dir, "keystore.json");
        const f = await SoftwareCustody.open({ path, key });
        const value = randomBytes(16);
        await f.importSecretKey("copy-master", { type: "aes", bits: 128, usage: ["derive"] }, value);
        await f.generateKeyPair("copy-ca", "P256");
        const ref = { kind: "derived", master: "copy-master", cardId: "0102030405060708", kvn: 1 } as const;
        const kcvs = await f.keySetKcvs(ref);
        const spki = await f.publicKey("copy-ca");
        const id = f.keystore.id;
        await f.close();
        await checkCustodyBinding(new SqlCustodyBindings(d.db), { keystoreId: id, kind: "file", host: "h", path });

        const r = await copyKeystoreToStore(new FileKeystoreBackend(path), d.db);
        assert.deepEqual({ id: r.keystoreId, copied: r.copied.sort(), present: r.present }, { id, copied: ["copy-ca", "copy-master"], present: [] });
        const rows = JSON.stringify(await d.db.withTables<{ custody_keystore_entries: { label: string } }>().selectFrom("custody_keystore_entries").selectAll().execute());
        assert.equal(rows.includes(value.toString("base64")) || rows.includes(value.toString("hex")), false, "sealed, not in clear");
        const s = await SoftwareCustody.open({ backend: new StoreKeystoreBackend(d.db), key });
        assert.equal(s.keystore.id, id, "one keystore, moved");
        assert.deepEqual(await s.keySetKcvs(ref), kcvs);
        assert.deepEqual(await s.publicKey("copy-ca"), spki);
        await s.close();
        assert.deepEqual(await new SqlCustodyBindings(d.db).get(), { keystoreId: id, kind: "store" });
        // The old file is now refused at server start (it would diverge from the store).
        await assert.rejects(checkCustodyBinding(new SqlCustodyBindings(d.db), { keystoreId: id, kind: "file", host: "h", path }), /moved into the store/);
        assert.deepEqual((await copyKeystoreToStore(new FileKeystoreBackend(path), d.db)).copied, []);
        const other = join(dir, "other.json");
        await (await SoftwareCustody.open({ path: other, key })).close();
        await rejects(copyKeystoreToStore(new FileKeystoreBackend(other), d.db), "EXISTS", /another keystore/);
      } finally {
        rmSync(dir, { recursive: true, force: true });
        await d.drop();
      }
    });
  });

  // Servers on one database: each its own connection pool, one keystore in the store.
  keystoreSharingSuite(`the store on ${engine.name}`, async () => {
    const t = await engine.create();
    return {
      open: (o = {}) => SoftwareCustody.open({ backend: new StoreKeystoreBackend(t.reopen()), ...o }),
      cleanup: () => t.drop(),
    };
  });
}
