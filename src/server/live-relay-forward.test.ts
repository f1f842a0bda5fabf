// Forwarding a live relay round to the server that runs the session (live-relay-forward.ts, issue 16 §3-5), on SQLite
// and PostgreSQL: the round goes to the advertise URL the owner registered, on the same route, with the same body,
// the client's Authorization and the forwarded mark, and its answer comes back as it is. An owner that is not
// registered, whose heartbeat is stale (not even asked), that does not answer in time, or that answers a redirect
// (not followed) is gone: 410 relay_server_gone, the session's row deleted. The peers here are plain HTTP listeners
// standing in for another server: one that answers, one that hangs, one that redirects.
import assert from "node:assert/strict";
import { createServer, type IncomingMessage, type Server } from "node:http";
import { randomBytes } from "node:crypto";
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";
import Fastify, { type FastifyInstance } from "fastify";
import { testEngines, type TestDatabase } from "../../test/support/store-testing.ts";
import { SqlLiveRelaySessions, SqlServerInstances } from "../store/server-instances.ts";
import { LiveRelaySessions } from "./live-relay.ts";
import { FORWARDED_HEADER, LiveRelayForwarder } from "./live-relay-forward.ts";
import { installProblemHandlers } from "./problem.ts";

interface Seen {
  url: string;
  headers: IncomingMessage["headers"];
  body: string;
}

/** A plain HTTP peer on 127.0.0.1 that records what reached it and answers with `answer` (or never). */
async function peer(answer: ((res: import("node:http").ServerResponse) => void) | "hang"): Promise<{ url: string; seen: Seen[]; server: Server }> {
  const seen: Seen[] = [];
  const server = createServer((req, res) => {
    let body = "";
    req.on("data", (c: Buffer) => (body += c.toString("utf8")));
    req.on("end", () => {
      seen.push({ url: req.url ?? "", headers: req.headers, body });
      if (answer !== "hang") answer(res);
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen, server };
}

for (const engine of testEngines()) {
  describe(`live relay forwarding on ${engine.name}`, () => {
    let t: TestDatabase;
    let app: FastifyInstance;
    let servers: SqlServerInstances;
    let rows: SqlLiveRelaySessions;
    const peers: Server[] = [];
    const lives = new LiveRelaySessions<unknown>({ kind: "keygen" });
    before(async () => {
      t = await engine.create();
      servers = new SqlServerInstances(t.db);
      rows = new SqlLiveRelaySessions(t.db);
      const forwarder = new LiveRelayForwarder({ instances: servers, records: rows, staleAfterMs: 15_000, timeoutMs: 500 });
      app = Fastify();
      installProblemHandlers(app);
      app.post<{ Params: { sessionId: string } }>("/v1/keygen/sessions/:sessionId", async (req, reply) => forwarder.forward(req, reply, lives, req.params.sessionId, "olga"));
      await app.ready();
    });
    after(async () => {
      for (const p of peers) p.closeAllConnections();
      for (const p of peers) await new Promise((r) => p.close(r));
      await app.close();
      await lives.close();
      await t?.drop();
    });

    /** A session of `instance` (registered at `url` with a heartbeat `age` ms old, unless url is undefined) owned by olga. */
    async function sessionOn(url: string | undefined, age = 0): Promise<string> {
      const instanceId = randomBytes(8).toString("hex");
      if (url !== undefined) await servers.register({ id: instanceId, advertiseUrl: url, at: Date.now() - age });
      const id = randomBytes(16).toString("hex");
      const now = Date.now();
      assert.equal(await rows.add({ id, kind: "keygen", owner: "olga", instanceId, createdAt: now, expiresAt: now + 300_000 }, { perOwner: 100, max: 100, now, liveSince: 0 }), undefined);
      return id;
    }
    const round = (id: string, headers: Record<string, string> = {}) =>
      app.inject({ method: "POST", url: `/v1/keygen/sessions/${id}`, headers: { authorization: "Bearer tok-olga", ...headers }, payload: { responses: ["9000"] } });
    const gone = async (id: string, res: Awaited<ReturnType<typeof round>>, reason: RegExp) => {
      assert.equal(res.statusCode, 410, res.body);
      assert.match(String(res.headers["content-type"]), /^application\/problem\+json/);
      const p = res.json();
      assert.equal(p.type, "https://cardkms.dev/problems/relay-server-gone");
      assert.equal(p.check, "relay_server_gone");
      assert.match(p.detail, reason);
      assert.equal(await rows.get(id), undefined, "the lost session's row is deleted");
    };

    test("to the owner's registered URL, same route and body, the client's Authorization, marked; its answer relayed as it is", async () => {
      const p = await peer((res) => res.writeHead(422, { "content-type": "application/problem+json" }).end(JSON.stringify({ type: "x", title: "Refused", status: 422, check: "personal-data" })));
      peers.push(p.server);
      const id = await sessionOn(p.url);
      const res = await round(id);
      assert.equal(res.statusCode, 422);
      assert.match(String(res.headers["content-type"]), /^application\/problem\+json/);
      assert.equal(res.json().check, "personal-data");
      assert.equal(p.seen.length, 1);
      assert.equal(p.seen[0].url, `/v1/keygen/sessions/${id}`);
      assert.equal(p.seen[0].headers.authorization, "Bearer tok-olga");
      assert.equal(p.seen[0].headers[FORWARDED_HEADER], "1");
      assert.deepEqual(JSON.parse(p.seen[0].body), { responses: ["9000"] });
      assert.ok(await rows.get(id), "a session whose owner answered keeps its row");
      // a round that was forwarded already is never forwarded again
      assert.equal((await round(id, { [FORWARDED_HEADER]: "1" })).statusCode, 404);
      assert.equal(p.seen.length, 1);
    });

    test("an owner whose heartbeat is stale is gone without being asked; one not registered too", async () => {
      const p = await peer((res) => res.writeHead(200, { "content-type": "application/json" }).end("{}"));
      peers.push(p.server);
      const stale = await sessionOn(p.url, 60_000);
      await gone(stale, await round(stale), /heartbeat is stale/);
      assert.equal(p.seen.length, 0, "the stale server was not asked");
      const unregistered = await sessionOn(undefined);
      await gone(unregistered, await round(unregistered), /not registered/);
    });

    test("an owner that does not answer in time, or answers a redirect (not followed), is gone", async () => {
      const hung = await peer("hang");
      peers.push(hung.server);
      const a = await sessionOn(hung.url);
      await gone(a, await round(a), /did not answer in time/);
      const target = await peer((res) => res.writeHead(200, { "content-type": "application/json" }).end("{}"));
      peers.push(target.server);
      const redirecting = await peer((res) => res.writeHead(307, { location: `${target.url}/elsewhere` }).end());
      peers.push(redirecting.server);
      const b = await sessionOn(redirecting.url);
      await gone(b, await round(b), /redirect/);
      assert.equal(target.seen.length, 0, "the redirect was not followed");
    });

    test("a session nobody runs, or of another kind, is 404; another principal's is 403, not forwarded", async () => {
      assert.equal((await round(randomBytes(16).toString("hex"))).statusCode, 404);
      const now = Date.now();
      const other = randomBytes(16).toString("hex");
      await rows.add({ id: other, kind: "reproduction", owner: "olga", instanceId: "x", createdAt: now, expiresAt: now + 60_000 }, { perOwner: 100, max: 100, now, liveSince: 0 });
      assert.equal((await round(other)).statusCode, 404);
      const ada = randomBytes(16).toString("hex");
      await rows.add({ id: ada, kind: "keygen", owner: "ada", instanceId: "x", createdAt: now, expiresAt: now + 60_000 }, { perOwner: 100, max: 100, now, liveSince: 0 });
      assert.equal((await round(ada)).statusCode, 403);
      assert.ok(await rows.get(ada), "refused before anything else: the row stays");
    });
  });
}
