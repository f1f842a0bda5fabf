// Issue 15 §1, concurrent requests duplicate keys: many clients at once against the issuer server in processes of
// its own (`cardkms issuer serve`, two of them on one database, the clients spread over both), on SQLite and on
// PostgreSQL (one pair of servers per engine, reused by the tests).
//   - 10 concurrent POST /cards/{id}/credentials for one slot without `replace`: exactly one key pair, one package
//     and one certificate; the nine others get a 409 problem and certify nothing (the slot is claimed first).
//   - 20 concurrent POST /rotations/{id}/distribute, per embodiment (3: packages; 4 and 5: the approved addition):
//     exactly the packages, key pairs and certificates one call makes; every answer is that result or a 409.
// And the database underneath: at most one active key pair per card and slot, whatever writes it; migration 0012
// on a database written before it (duplicates from the race superseded, old approvals kept).
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { sql } from "kysely";
import { createCard } from "../src/card/card.ts";
import type { CardRuntime } from "../src/card/runtime.ts";
import { openDatabase } from "../src/store/db.ts";
import { migrateToLatest, migratorFor } from "../src/store/migrate.ts";
import { RotationRepository } from "../src/store/rotation-repository.ts";
import { isConstraintViolation, Store, StoreError } from "../src/store/store.ts";
import { testEngines } from "./support/store-testing.ts";
import { api, expect, relay } from "./api-env.ts";
import { tempDir } from "./helpers.ts";
import { TEST_KMC } from "./kmc.ts";
import { startProcessServer, type ProcessServer, type Res } from "./rotation-server.ts";

type Post = ReturnType<typeof api>["post"];
/** api-env's expect() on an answer over HTTP. */
const want = (r: Res, status: number) => expect(r as never, status);
const dir = tempDir("cardkms-races-");

/** Every answer is one of `allowed`; error answers are problem+json with their status. */
function statuses(rs: Res[], allowed: number[]): Map<number, number> {
  const count = new Map<number, number>();
  for (const r of rs) {
    assert.ok(allowed.includes(r.statusCode), `${r.statusCode}: ${r.body}`);
    if (r.statusCode >= 400) {
      assert.match(String(r.headers["content-type"]), /^application\/problem\+json/);
      assert.equal(r.json().status, r.statusCode);
    }
    count.set(r.statusCode, (count.get(r.statusCode) ?? 0) + 1);
  }
  return count;
}

async function caCertificates(srv: ProcessServer): Promise<number> {
  const r = await sql<{ n: number | string }>`select count(*) as n from ca_issued_certificates`.execute(srv.tdb.db);
  return Number(r.rows[0].n);
}

/** A user's card, personalised through the relay (the test is the card issuing machine). */
async function personalisedCard(srv: ProcessServer, cards: CardRuntime[]): Promise<{ userId: string; cardId: string }> {
  const post = srv.post as unknown as Post;
  const user = expect(await post("/v1/users", srv.tokens.olga, { personalData: { commonName: "Race Runner" } }), 201) as { id: string };
  const issued = expect(await post("/v1/cards", srv.tokens.olga, { userId: user.id }), 201) as { card: { id: string } };
  const card = createCard(join(dir, `${issued.card.id}.card`), randomBytes(32), { kmc: TEST_KMC, cardId: Buffer.from(issued.card.id, "hex") });
  cards.push(card);
  const start = expect(await post(`/v1/cards/${issued.card.id}/personalisation`, srv.tokens.olga), 201) as { sessionId: string; apdus: string[] };
  expect(await relay(post, srv.tokens.olga, start, card), 200);
  return { userId: user.id, cardId: issued.card.id };
}

for (const engine of testEngines()) {
  describe(`races against a server in its own process, ${engine.name}`, { timeout: 10 * 60_000 }, () => {
    let srv: ProcessServer;
    const cards: CardRuntime[] = [];
    before(async () => {
      srv = await startProcessServer(engine);
    });
    after(async () => {
      for (const c of cards) c.close();
      await srv?.close();
    });

    test("10 concurrent credential requests for one slot: one key pair, one package, one certificate; nine 409s", async () => {
      const { cardId } = await personalisedCard(srv, cards);
      const certs0 = await caCertificates(srv);
      const rs = await Promise.all(Array.from({ length: 10 }, (_, i) => srv.post(`/v1/cards/${cardId}/credentials`, srv.tokens.olga, { slot: "9a", alg: "P256" }, i)));
      assert.deepEqual(Object.fromEntries(statuses(rs, [201, 409])), { 201: 1, 409: 9 });
      for (const r of rs.filter((x) => x.statusCode === 409)) assert.match(String(r.json().detail), /slot 9a of card [0-9a-f]+ (is being issued by another request|holds a key)/);
      assert.equal((await srv.store.listKeyPairs({ cardId, slot: "9a" })).length, 1, "one key pair in the slot, active");
      assert.equal((await srv.store.listPackages(cardId)).length, 1);
      assert.equal((await caCertificates(srv)) - certs0, 1, "the losers certified nothing");
      // And with replace, one after the other as before: the slot's pair is superseded.
      want(await srv.post(`/v1/cards/${cardId}/credentials`, srv.tokens.olga, { slot: "9a", alg: "P256", replace: true }), 201);
      assert.deepEqual(
        (await srv.store.listKeyPairs({ cardId, slot: "9a" })).map((k) => k.status),
        ["superseded", "active"],
      );
    });

    for (const strategy of ["embodiment3", "embodiment4", "embodiment5"] as const) {
      test(`20 concurrent distributes of one ${strategy} rotation: the keys of one call`, async () => {
        const post = srv.post as unknown as Post;
        const { olga, otto } = srv.tokens;
        const old = await personalisedCard(srv, cards);
        for (const slot of ["9a", "9c"]) want(await srv.post(`/v1/cards/${old.cardId}/credentials`, olga, { slot, alg: "P256" }), 201);
        const add = strategy === "embodiment3" ? [] : [{ slot: "82", alg: "P256" }];
        const proposed = want(await srv.post(`/v1/cards/${old.cardId}/rotations`, olga, { strategy, ...(add.length ? { add } : {}) }), 201) as { id: string };
        const id = proposed.id;
        want(await srv.post(`/v1/rotations/${id}/approve`, otto), 200);
        const fresh = want(await srv.post(`/v1/rotations/${id}/new-card`, olga), 201) as { card: { id: string }; personalisation: { sessionId: string; apdus: string[] } };
        const newCard = createCard(join(dir, `${fresh.card.id}.card`), randomBytes(32), { kmc: TEST_KMC, cardId: Buffer.from(fresh.card.id, "hex") });
        cards.push(newCard);
        expect(await relay(post, olga, fresh.personalisation, newCard), 200);
        for (let r = await srv.post(`/v1/rotations/${id}/rewrap`, olga); r.statusCode === 202; r = await srv.post(`/v1/rotations/${id}/rewrap`, olga)) await new Promise((res) => setTimeout(res, 20));
        const certs0 = await caCertificates(srv);

        const rs = await Promise.all(Array.from({ length: 20 }, (_, i) => srv.post(`/v1/rotations/${id}/distribute`, olga, add.length ? { add } : {}, i)));
        const count = statuses(rs, [200, 409]);
        assert.ok((count.get(200) ?? 0) >= 1, "at least one call distributes");
        const expected = strategy === "embodiment3" ? ["9a", "9c"] : ["82"];
        for (const r of rs.filter((x) => x.statusCode === 200)) {
          const body = r.json() as { packages: { slot: string; cardId: string }[] };
          assert.deepEqual(
            body.packages.map((p) => p.slot),
            expected,
            "every successful answer is the one result",
          );
        }
        for (const r of rs.filter((x) => x.statusCode === 409)) assert.match(String(r.json().detail), /another call is distributing it|slot .* is being issued by another request/);

        // What is recorded: the packages, key pairs and certificates of one call.
        const pkgs = await srv.store.listPackages(fresh.card.id);
        assert.deepEqual(
          pkgs.map((p) => p.seq),
          expected.map((_, i) => i + 1),
          "one package per slot owed",
        );
        const active = await srv.store.listKeyPairs({ cardId: fresh.card.id, status: "active" });
        assert.deepEqual(active.map((k) => k.slot).sort(), ["9a", "9c", ...add.map((a) => a.slot)].sort(), "one active key pair per slot");
        assert.equal(await srv.store.listKeyPairs({ cardId: fresh.card.id, status: "superseded" }).then((l) => l.length), 0);
        assert.equal((await caCertificates(srv)) - certs0, add.length, "one certificate per addition, none for a losing call");
        const items = await new RotationRepository(srv.tdb.db).items(id);
        assert.deepEqual(
          items.map((i) => i.slot),
          strategy === "embodiment3" ? ["9a", "9c"] : ["82", "9a", "9c"],
          "one item per slot",
        );
        assert.equal((await srv.store.getCard(old.cardId))!.status, "retired");
        // A later call answers the same result.
        const again = want(await srv.post(`/v1/rotations/${id}/distribute`, olga), 200) as { packages: { seq: number }[] };
        assert.deepEqual(
          again.packages.map((p) => p.seq),
          pkgs.map((p) => p.seq),
        );
      });
    }
  });

  test(`at most one active key pair per card and slot, enforced by the database (${engine.name})`, async () => {
    const tdb = await engine.create();
    try {
      const store = new Store(tdb.db);
      const user = await store.createUser({ personalData: { commonName: "Slot" } });
      const card = await store.registerCard({ userId: user.id, validFrom: 0, validUntil: 1 });
      const kp = (status?: "superseded") => ({ userId: user.id, cardId: card.id, slot: "9c", algorithm: "P256", publicKey: randomBytes(65), status });
      await store.recordCredential({ keyPair: kp(), wrapped: [] });
      await assert.rejects(
        store.recordCredential({ keyPair: kp(), wrapped: [] }),
        (e: unknown) => e instanceof StoreError && e.code === "conflict" && /slot 9c of card .* holds an active key pair/.test(e.message),
      );
      await store.recordCredential({ keyPair: kp("superseded"), wrapped: [] });
      const [first] = await store.listKeyPairs({ cardId: card.id, status: "active" });
      const other = await store.registerCard({ userId: user.id, validFrom: 0, validUntil: 1 });
      await store.recordCredential({ keyPair: { ...kp(), cardId: other.id }, wrapped: [] });
      // moving a pair into an occupied slot (what a rotation does) is refused too
      await assert.rejects(store.updateKeyPair(first.id, { cardId: other.id }), isConstraintViolation);
    } finally {
      await tdb.drop();
    }
  });
}

test("migration 0012 on a database written before it: duplicates superseded, approvals kept, one open rotation per key set", async () => {
  const db = openDatabase(`sqlite:${join(tempDir("cardkms-0012-"), "issuer.db")}`);
  try {
    const to11 = await migratorFor(db).migrateTo("0011_audit_checkpoints");
    assert.equal(to11.error, undefined);
    const now = 1_700_000_000_000;
    await db.insertInto("users").values({ id: "u1", personal_data: "{}", created_at: now }).execute();
    await db
      .insertInto("cards")
      .values({ id: "c1", user_id: "u1", status: "active", valid_from: 0, valid_until: now * 2, current_key_set_id: null, created_at: now, updated_at: now } as never)
      .execute();
    await db
      .insertInto("card_key_sets")
      .values({ id: "ks1", card_id: "c1", kvn: 1, version: 1, status: "active", valid_from: 0, valid_until: now * 2, custody_ref: "x", label: null, created_at: now })
      .execute();
    for (const [id, at] of [
      ["kp-old", now],
      ["kp-new", now + 5],
      ["kp-mid", now + 1],
    ] as const)
      await db
        .insertInto("key_pairs")
        .values({ id, user_id: "u1", card_id: "c1", slot: "9a", algorithm: "P256", public_key: randomBytes(65), status: "active", created_at: at })
        .execute();
    const rot = (id: string, status: string, approvedBy: string | null, at: number) =>
      db
        .insertInto("rotations")
        .values({
          id,
          card_id: "c1",
          to_card_id: null,
          from_key_set_id: "ks1",
          to_key_set_id: null,
          strategy: "embodiment3",
          status,
          cursor: 0,
          total: 0,
          done: 0,
          approved_by: approvedBy,
          approved_at: approvedBy ? at : null,
          error: null,
          created_at: at,
          updated_at: at,
        } as never)
        .execute();
    await rot("r-approved", "approved", "olga", now);
    await rot("r-proposed", "proposed", null, now + 1);

    await migrateToLatest(db);
    const store = new Store(db);
    assert.deepEqual((await store.listKeyPairs({ cardId: "c1", slot: "9a" })).map((k) => [k.id, k.status]).sort(), [
      ["kp-mid", "superseded"],
      ["kp-new", "active"],
      ["kp-old", "superseded"],
    ]);
    const kept = (await store.getRotation("r-approved"))!;
    assert.equal(kept.status, "approved");
    assert.match(kept.newCardId ?? "", /^[0-9a-f]{16}$/);
    assert.deepEqual([kept.added, kept.dropped, kept.distribution], [[], [], "none"]);
    const approvals = await new RotationRepository(db).approvals("r-approved");
    assert.deepEqual(
      approvals.map((a) => a.operator),
      ["olga"],
    );
    const { rotationBinding } = await import("../src/issuer/rotation-records.ts");
    assert.equal(approvals[0].bindingHash, rotationBinding(kept).hash, "the approval given before covers the binding it now has");
    const dup = (await store.getRotation("r-proposed"))!;
    assert.equal(dup.status, "failed", "a second open rotation of the same key set");
  } finally {
    await db.destroy();
  }
});
