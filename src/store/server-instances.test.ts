// The registry of issuer servers and the rows of their live relay sessions (issue 16 §1-2), the same suite on SQLite
// and PostgreSQL: register, heartbeat, deregister (which takes the server's session rows along) and reap; the live
// relay bounds counted in the DB across servers — per principal on every live server, in total per server — where
// expired sessions and the sessions of a server whose heartbeat is stale no longer count; concurrent adds from two
// connections (two servers) never go over a bound.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { randomBytes } from "node:crypto";
import { SqlLiveRelaySessions, SqlServerInstances } from "./server-instances.ts";
import { testEngines, type TestDatabase } from "../../test/support/store-testing.ts";

const T0 = Date.UTC(2026, 11, 1);
const STALE = 15_000;

for (const engine of testEngines()) {
  describe(`server instances and live relay rows on ${engine.name}`, () => {
    let t: TestDatabase;
    let servers: SqlServerInstances;
    let rows: SqlLiveRelaySessions;
    before(async () => {
      t = await engine.create();
      servers = new SqlServerInstances(t.db);
      rows = new SqlLiveRelaySessions(t.db);
    });
    after(async () => {
      await t?.drop();
    });

    const id = () => randomBytes(16).toString("hex");
    const row = (o: { owner: string; instanceId: string; kind?: string; at?: number; ttl?: number }) => ({
      id: id(),
      kind: o.kind ?? "keygen",
      owner: o.owner,
      instanceId: o.instanceId,
      createdAt: o.at ?? T0,
      expiresAt: (o.at ?? T0) + (o.ttl ?? 300_000),
    });
    const bounds = (perOwner: number, max: number, now = T0) => ({ perOwner, max, now, liveSince: now - STALE });

    test("register, heartbeat, get, deregister; a heartbeat for a row gone says so; reap deletes the long gone", async () => {
      await servers.register({ id: "srv-a", advertiseUrl: "http://10.0.0.1:8443", at: T0 });
      assert.deepEqual(await servers.get("srv-a"), { id: "srv-a", advertiseUrl: "http://10.0.0.1:8443", startedAt: T0, heartbeatAt: T0 });
      assert.equal(await servers.heartbeat("srv-a", T0 + 5000), true);
      assert.equal((await servers.get("srv-a"))?.heartbeatAt, T0 + 5000);
      // registering again (after a reap) keeps started_at, takes the new URL and heartbeat
      await servers.register({ id: "srv-a", advertiseUrl: "http://10.0.0.9:8443", at: T0 + 6000 });
      assert.deepEqual(await servers.get("srv-a"), { id: "srv-a", advertiseUrl: "http://10.0.0.9:8443", startedAt: T0, heartbeatAt: T0 + 6000 });
      const mine = row({ owner: "olga", instanceId: "srv-a" });
      assert.equal(await rows.add(mine, bounds(8, 100)), undefined);
      await servers.deregister("srv-a");
      assert.equal(await servers.get("srv-a"), undefined);
      assert.equal(await rows.get(mine.id), undefined, "its sessions' rows went with it");
      assert.equal(await servers.heartbeat("srv-a", T0 + 7000), false);
      await servers.register({ id: "old", advertiseUrl: "http://10.0.0.2:8443", at: T0 - 2 * 86_400_000 });
      await servers.register({ id: "new", advertiseUrl: "http://10.0.0.3:8443", at: T0 });
      assert.equal(await servers.reap(T0 - 86_400_000), 1);
      assert.equal(await servers.get("old"), undefined);
      assert.ok(await servers.get("new"));
      await servers.deregister("new");
    });

    test("per principal on every live server, in total per server; expired rows and a stale server's rows do not count", async () => {
      await servers.register({ id: "a", advertiseUrl: "http://a", at: T0 });
      await servers.register({ id: "b", advertiseUrl: "http://b", at: T0 });
      const r1 = row({ owner: "olga", instanceId: "a" });
      assert.equal(await rows.add(r1, bounds(2, 100)), undefined);
      assert.deepEqual(await rows.get(r1.id), r1);
      assert.equal(await rows.add(row({ owner: "olga", instanceId: "b" }), bounds(2, 100)), undefined);
      const third = row({ owner: "olga", instanceId: "b" });
      assert.equal(await rows.add(third, bounds(2, 100)), "principal", "the principal's two sessions on two servers count together");
      assert.equal(await rows.get(third.id), undefined, "a refused row is not kept");
      // another kind has bounds of its own; another principal too
      assert.equal(await rows.add(row({ owner: "olga", instanceId: "b", kind: "reproduction" }), bounds(2, 100)), undefined);
      assert.equal(await rows.add(row({ owner: "ada", instanceId: "b" }), bounds(2, 100)), undefined);
      // total: what one server runs
      assert.equal(await rows.add(row({ owner: "arno", instanceId: "b" }), bounds(8, 2)), "total");
      assert.equal(await rows.add(row({ owner: "arno", instanceId: "a" }), bounds(8, 2)), undefined);
      // server a stops heartbeating: its sessions stop counting for olga once its heartbeat is stale
      await servers.heartbeat("b", T0 + 60_000);
      assert.equal(await rows.add(row({ owner: "olga", instanceId: "b", at: T0 + 60_000 }), bounds(2, 100, T0 + 60_000)), undefined);
      // expired rows count for nobody (and are deleted)
      const later = T0 + 300_001;
      await servers.heartbeat("b", later);
      assert.equal(await rows.add(row({ owner: "olga", instanceId: "b", at: later }), bounds(2, 100, later)), undefined);
      assert.equal(await rows.get(r1.id), undefined);
      await servers.deregister("a");
      await servers.deregister("b");
    });

    test("two servers adding at once never go over a bound", async () => {
      const other = new SqlLiveRelaySessions(t.reopen());
      await servers.register({ id: "c", advertiseUrl: "http://c", at: T0 });
      await servers.register({ id: "d", advertiseUrl: "http://d", at: T0 });
      const adds = Array.from({ length: 12 }, (_, i) => (i % 2 ? rows : other).add(row({ owner: "race", instanceId: i % 2 ? "c" : "d" }), bounds(3, 100)));
      const results = await Promise.all(adds);
      const accepted = results.filter((r) => r === undefined).length;
      assert.ok(accepted <= 3, `accepted ${accepted} of 12 with a bound of 3`);
      // the refused ones left nothing behind: adding one at a time fills the bound exactly
      let more = 0;
      while ((await rows.add(row({ owner: "race", instanceId: "c" }), bounds(3, 100))) === undefined) more++;
      assert.equal(accepted + more, 3);
      await servers.deregister("c");
      await servers.deregister("d");
    });
  });
}
