// The server registry as a server uses it (cluster.ts, issue 16 §1): the default advertise URL, its configuration
// (server.advertiseUrl / CARDKMS_ADVERTISE_URL, refused when it is no http(s) origin), and ServerPresence on SQLite
// and PostgreSQL — start registers (and reaps the long gone), halt leaves the row as a crash would, a heartbeat
// after the row was reaped registers again, stop deletes the row and the server's session rows.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { testEngines, type TestDatabase } from "../../test/support/store-testing.ts";
import { SqlLiveRelaySessions, SqlServerInstances } from "../store/server-instances.ts";
import { defaultAdvertiseUrl, isLive, ServerPresence } from "./cluster.ts";
import { ConfigError, loadConfig } from "./config.ts";
import { newInstanceId } from "./instance.ts";

test("the default advertise URL: the listen address, the unspecified ones read as loopback, IPv6 in brackets", () => {
  assert.equal(defaultAdvertiseUrl("127.0.0.1", 8443), "http://127.0.0.1:8443");
  assert.equal(defaultAdvertiseUrl("0.0.0.0", 8443), "http://127.0.0.1:8443");
  assert.equal(defaultAdvertiseUrl("::", 9000), "http://[::1]:9000");
  assert.equal(defaultAdvertiseUrl("fd12::5", 9000), "http://[fd12::5]:9000");
  assert.equal(defaultAdvertiseUrl("10.0.0.5", 1), "http://10.0.0.5:1");
});

test("config: server.advertiseUrl from CARDKMS_ADVERTISE_URL, an http(s) origin only; heartbeatSeconds", () => {
  const c = loadConfig({ env: { CARDKMS_ADVERTISE_URL: "http://10.0.0.5:8443", CARDKMS_HEARTBEAT_SECONDS: "2" } });
  assert.deepEqual(c.server, { advertiseUrl: "http://10.0.0.5:8443", heartbeatSeconds: 2 });
  assert.equal(loadConfig({ env: {} }).server.heartbeatSeconds, 5);
  for (const bad of ["10.0.0.5:8443", "http://10.0.0.5:8443/v1", "ftp://x", "http://a b"])
    assert.throws(
      () => loadConfig({ env: { CARDKMS_ADVERTISE_URL: bad } }),
      (e) => e instanceof ConfigError && /\/server\/advertiseUrl/.test(e.message) && /CARDKMS_ADVERTISE_URL/.test(e.message),
      bad,
    );
  assert.throws(() => loadConfig({ env: { CARDKMS_HEARTBEAT_SECONDS: "0" } }), ConfigError);
});

for (const engine of testEngines()) {
  describe(`server presence on ${engine.name}`, () => {
    let t: TestDatabase;
    let servers: SqlServerInstances;
    before(async () => {
      t = await engine.create();
      servers = new SqlServerInstances(t.db);
    });
    after(async () => {
      await t?.drop();
    });

    test("start registers and reaps servers gone for a day; halt leaves the row; stop deletes it and its sessions' rows", async () => {
      let now = Date.UTC(2026, 11, 3);
      await servers.register({ id: "long-gone", advertiseUrl: "http://10.0.0.9:8443", at: now - 2 * 86_400_000 });
      const id = newInstanceId();
      const presence = new ServerPresence(servers, { instanceId: id, advertiseUrl: "http://10.0.0.5:8443/", heartbeatMs: 60_000, now: () => now });
      assert.equal(presence.staleAfterMs, 180_000);
      await presence.start();
      assert.deepEqual(await servers.get(id), { id, advertiseUrl: "http://10.0.0.5:8443", startedAt: now, heartbeatAt: now });
      assert.equal(await servers.get("long-gone"), undefined);
      assert.ok(isLive(await servers.get(id), now + 179_999, presence.staleAfterMs));
      assert.ok(!isLive(await servers.get(id), now + 180_000, presence.staleAfterMs));
      await presence.halt();
      assert.ok(await servers.get(id), "a halted server's row stays, as a crashed one's does");
      // reaped meanwhile (another server started a day later): the next start registers again
      await servers.reap(now + 1);
      now += 1000;
      await presence.start();
      assert.equal((await servers.get(id))?.heartbeatAt, now);
      const rows = new SqlLiveRelaySessions(t.db);
      await rows.add({ id: "s1", kind: "keygen", owner: "olga", instanceId: id, createdAt: now, expiresAt: now + 60_000 }, { perOwner: 8, max: 100, now, liveSince: 0 });
      await presence.stop();
      assert.equal(await servers.get(id), undefined);
      assert.equal(await rows.get("s1"), undefined);
    });
  });
}
