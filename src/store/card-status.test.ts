// The card lifecycle where the store keeps it (issue 15 §5; migration 0013), on SQLite and PostgreSQL: the statuses a
// card may move between (CARD_STATUS_FROM), each change bumping status_version and recording who and why; and the
// migration that allows 'destroyed', run over a database that already holds cards and what refers to them.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { sql } from "kysely";
import { migrateToLatest, migrations, migratorFor } from "./migrate.ts";
import { Store, StoreError, type CardStatusChange } from "./store.ts";
import { testEngines } from "../../test/support/store-testing.ts";

const DAY = 86_400_000;
const isConflict = (e: unknown) => e instanceof StoreError && e.code === "conflict";

for (const engine of testEngines()) {
  test(`${engine.name}: card statuses move only as the lifecycle allows; each change bumps the version and says who and why`, async (t) => {
    const tdb = await engine.create();
    t.after(() => tdb.drop());
    let now = 1_000;
    const store = new Store(tdb.db, { now: () => now });
    const user = await store.createUser({ personalData: { commonName: "Ada" } });
    const card = await store.registerCard({ userId: user.id, validFrom: 0, validUntil: 10 * DAY });
    assert.deepEqual([card.status, card.statusVersion, card.statusChangedAt, card.statusChangedBy, card.statusReason], ["issued", 0, null, null, null]);

    const change = async (to: "active" | "suspended" | "retired" | "destroyed" | "issued"): Promise<CardStatusChange> => {
      now += 1;
      return store.changeCardStatus(card.id, to, { actor: "olga", reason: `to ${to}` });
    };
    await assert.rejects(change("suspended"), isConflict, "issued is not suspended");
    assert.equal((await change("active")).from, "issued");
    await assert.rejects(change("issued"), isConflict, "nothing goes back to issued");
    assert.equal((await change("suspended")).from, "active");
    const resumed = await change("active");
    assert.deepEqual([resumed.from, resumed.card.statusVersion, resumed.card.statusChangedAt, resumed.card.statusReason], ["suspended", 3, now, "to active"]);
    assert.equal((await change("retired")).from, "active");
    for (const to of ["active", "suspended", "retired", "issued"] as const) await assert.rejects(change(to), isConflict, `retired -> ${to}`);
    assert.equal((await change("destroyed")).from, "retired");
    for (const to of ["active", "suspended", "retired", "destroyed", "issued"] as const) await assert.rejects(change(to), isConflict, `destroyed -> ${to}`);
    assert.equal((await store.getCard(card.id))!.statusVersion, 5);
    // setCardStatus (what the personalisation and a rotation use) keeps to the lifecycle, and is idempotent
    await store.setCardStatus(card.id, "destroyed");
    await assert.rejects(store.setCardStatus(card.id, "active"), isConflict);
    assert.equal((await store.getCard(card.id))!.statusVersion, 5);
    await assert.rejects(store.changeCardStatus("00".repeat(8), "active", { actor: null, reason: null }), (e: unknown) => e instanceof StoreError && e.code === "not_found");
    // the expiry scan leaves destroyed cards alone, as retired ones
    assert.deepEqual(
      (await store.expiringCards(20 * DAY)).map((c) => c.id),
      [],
    );
  });

  test(`${engine.name}: migration 0013 keeps every card and what refers to it, and then allows 'destroyed'`, async (t) => {
    const tdb = await engine.create();
    t.after(() => tdb.drop());
    const names = Object.keys(migrations(engine.name));
    const before = names[names.indexOf("0013_card_lifecycle") - 1];
    // an empty database brought up to the migration before 0013 (not down from the latest: that needs every later
    // migration's down)
    const db = tdb.db;
    if (engine.name === "postgres") await sql`drop schema public cascade; create schema public`.execute(db);
    else {
      await sql`pragma foreign_keys = off`.execute(db);
      const tables = await sql<{ name: string }>`select name from sqlite_master where type = 'table' and name not like 'sqlite_%'`.execute(db);
      for (const { name } of tables.rows) await sql.raw(`drop table "${name}"`).execute(db);
      await sql`pragma foreign_keys = on`.execute(db);
    }
    const up = await migratorFor(db).migrateTo(before);
    assert.equal(up.error, undefined, String(up.error));
    // cards in every status there was, with key sets, key pairs and packages referring to them
    await sql`insert into users (id, personal_data, created_at) values ('u1', '{}', 1)`.execute(db);
    const statuses = ["issued", "active", "suspended", "retired"];
    for (const [i, status] of statuses.entries()) {
      const id = `c${i}`;
      await sql`insert into cards (id, user_id, status, valid_from, valid_until, current_key_set_id, last_package_seq, created_at, updated_at) values (${id}, 'u1', ${status}, 0, 10, null, 1, 5, 6)`.execute(
        db,
      );
      await sql`insert into card_key_sets (id, card_id, kvn, version, status, valid_from, valid_until, custody_ref, label, created_at) values (${`k${i}`}, ${id}, 1, 1, 'active', 0, 10, 'ref', null, 1)`.execute(
        db,
      );
      await sql`update cards set current_key_set_id = ${`k${i}`} where id = ${id}`.execute(db);
      await sql`insert into key_pairs (id, user_id, card_id, slot, algorithm, public_key, status, created_at) values (${`p${i}`}, 'u1', ${id}, null, 'P256', ${randomBytes(65)}, 'active', 1)`.execute(
        db,
      );
      await sql`insert into packages (card_id, seq, body, status, created_at) values (${id}, 1, ${randomBytes(8)}, 'pending', 1)`.execute(db);
    }
    await assert.rejects(sql`update cards set status = 'destroyed' where id = 'c0'`.execute(db), "0012 and before: no destroyed");

    const up13 = await migratorFor(db).migrateTo("0013_card_lifecycle");
    assert.deepEqual([up13.error, up13.results?.map((r) => [r.migrationName, r.status])], [undefined, [["0013_card_lifecycle", "Success"]]]);
    const store = new Store(db);
    for (const [i, status] of statuses.entries()) {
      const c = (await store.getCard(`c${i}`))!;
      assert.deepEqual([c.status, c.currentKeySetId, c.lastPackageSeq, c.createdAt, c.updatedAt, c.statusVersion, c.statusChangedAt], [status, `k${i}`, 1, 5, 6, 0, null]);
      assert.equal((await store.listKeyPairs({ cardId: c.id })).length, 1);
      assert.equal((await store.listPackages(c.id)).length, 1);
    }
    await store.changeCardStatus("c3", "destroyed", { actor: "olga", reason: "shredded" });
    assert.equal((await store.getCard("c3"))!.status, "destroyed");
    await assert.rejects(sql`update cards set status = 'lost' where id = 'c0'`.execute(db), "the status check still holds");
    // the foreign keys still hold, both ways
    await assert.rejects(
      sql`insert into key_pairs (id, user_id, card_id, slot, algorithm, public_key, status, created_at) values ('p9', 'u1', 'nope', null, 'P256', ${randomBytes(65)}, 'active', 1)`.execute(db),
    );
    await assert.rejects(sql`update cards set current_key_set_id = 'nope' where id = 'c0'`.execute(db));
    await assert.rejects(sql`delete from cards where id = 'c1'`.execute(db));
    await assert.rejects(sql`insert into cards (id, user_id, status, valid_from, valid_until, created_at, updated_at) values ('c9', 'nobody', 'issued', 0, 1, 1, 1)`.execute(db));

    // and back down: a destroyed card is retired (the nearest final status there was), the rest as it was
    const back = await migratorFor(db).migrateTo(before);
    assert.equal(back.error, undefined, String(back.error));
    const rows = await sql<{ id: string; status: string }>`select id, status from cards order by id`.execute(db);
    assert.deepEqual(
      rows.rows.map((r) => [r.id, r.status]),
      [
        ["c0", "issued"],
        ["c1", "active"],
        ["c2", "suspended"],
        ["c3", "retired"],
      ],
    );
    await assert.rejects(sql`update cards set status = 'destroyed' where id = 'c0'`.execute(db));
    assert.deepEqual(await migrateToLatest(db), names.slice(names.indexOf("0013_card_lifecycle")));
  });
}
