// The events, webhooks, validity-scan and rotation-approval routes over the real server shell (problem+json,
// auth with roles) and a real store on SQLite and PostgreSQL.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, test } from "node:test";
import type { FastifyInstance } from "fastify";
import { auditEntries, verifyAuditLog } from "../store/audit.ts";
import { Store } from "../store/store.ts";
import { testEngines, type TestDatabase } from "../../test/support/store-testing.ts";
import { WebhookAddressPolicy } from "../issuer/webhook-addresses.ts";
import { WebhookSecrets } from "../issuer/webhooks.ts";
import { buildServer } from "./app.ts";
import { installAuth, newToken, type Principal } from "./auth.ts";
import { eventRoutes } from "./event-routes.ts";

const DAY = 86_400_000;
const NOW = Date.UTC(2026, 5, 1);

for (const engine of testEngines()) {
  describe(`event routes on ${engine.name}`, () => {
    let t: TestDatabase;
    let store: Store;
    let app: FastifyInstance;
    const op = newToken();
    const aud = newToken();
    const term = newToken();
    const principals = new Map<string, Principal>([
      [op.hash, { name: "olga", roles: ["operator"] }],
      [aud.hash, { name: "arno", roles: ["auditor"] }],
      [term.hash, { name: "terminal-1", roles: ["terminal"] }],
    ]);

    before(async () => {
      t = await engine.create();
      store = new Store(t.db, { now: () => NOW });
      ({ app } = await buildServer());
      installAuth(app, async (h) => principals.get(h));
      // Webhook hosts resolve through an injected resolver (no real DNS): every name to a public address.
      const addresses = new WebhookAddressPolicy({ resolve: async () => [{ address: "93.184.215.14", family: 4 }] });
      await app.register(eventRoutes, { store, secrets: new WebhookSecrets(randomBytes(32)), addresses, validity: { windowDays: 30 } });
      await app.ready();
    });
    after(async () => {
      await app?.close();
      await t?.drop();
    });

    type Method = "GET" | "POST" | "DELETE";
    const call = (method: Method, url: string, token?: string, payload?: unknown) =>
      app.inject({ method, url, headers: token ? { authorization: `Bearer ${token}` } : {}, ...(payload === undefined ? {} : { payload: payload as object }) });
    const problem = (r: Awaited<ReturnType<typeof call>>, status: number) => {
      assert.equal(r.statusCode, status, r.body);
      assert.match(String(r.headers["content-type"]), /^application\/problem\+json/);
      const p = r.json() as { status: number; type: string; title: string };
      assert.equal(p.status, status);
      return p;
    };

    test("every route needs a token (401) and the right role (403)", async () => {
      const routes: [Method, string, unknown?][] = [
        ["GET", "/events"],
        ["POST", "/webhooks", { url: "https://example.org/h", eventTypes: ["*"] }],
        ["GET", "/webhooks"],
        ["DELETE", "/webhooks/w1"],
        ["GET", "/webhooks/dead-letters"],
        ["POST", "/webhooks/dead-letters/retry", { webhookId: "w1" }],
        ["POST", "/validity/scan", {}],
        ["GET", "/rotations"],
        ["POST", "/rotations/r1/approve", {}],
      ];
      for (const [m, u, body] of routes) {
        problem(await call(m, u, undefined, body), 401);
        problem(await call(m, u, newToken().token, body), 401);
        problem(await call(m, u, term.token, body), 403);
      }
      // Auditors read; only operators change anything.
      for (const [m, u, body] of routes) {
        const r = await call(m, u, aud.token, body);
        if (m === "GET") assert.equal(r.statusCode, 200, `${m} ${u}`);
        else problem(r, 403);
      }
    });

    test("webhooks: register (secret once), list (no secret), delete; schemas refuse unknown fields and bad values", async () => {
      const created = await call("POST", "/webhooks", op.token, { url: "https://hooks.example.org/cardkms", eventTypes: ["keyset.expiring", "rotation.proposed"] });
      assert.equal(created.statusCode, 201, created.body);
      const w = created.json() as { id: string; secret: string; url: string; eventTypes: string[] };
      assert.match(w.secret, /^whsec_/);
      assert.deepEqual(w.eventTypes, ["keyset.expiring", "rotation.proposed"]);
      const listed = (await call("GET", "/webhooks", aud.token)).json() as { webhooks: Record<string, unknown>[] };
      const mine = listed.webhooks.find((x) => x.id === w.id);
      assert.deepEqual(mine, { id: w.id, url: "https://hooks.example.org/cardkms", eventTypes: ["keyset.expiring", "rotation.proposed"], createdAt: NOW });
      assert.ok(!JSON.stringify(listed).includes(w.secret));

      for (const body of [
        { url: "https://a.example/h", eventTypes: ["*"], secret: "mine" },
        { url: "ftp://a.example/h", eventTypes: ["*"] },
        { url: "https://a.example/h", eventTypes: [] },
        { url: "https://a.example/h", eventTypes: ["Not A Type"] },
        { url: "https://a.example/h", eventTypes: ["*", "*"] },
        { url: "https://a.example/h" },
        { url: 5, eventTypes: ["*"] },
      ]) {
        problem(await call("POST", "/webhooks", op.token, body), 400);
      }
      // Past the schema, the domain's URL checks still answer 400, not 500.
      const creds = problem(await call("POST", "/webhooks", op.token, { url: "https://u:p@a.example/h", eventTypes: ["*"] }), 400);
      assert.match(creds.type, /invalid-webhook$/);
      // Issue 9 §7: a URL to the service's own networks is a clear 400 naming the range, and nothing is registered.
      const before = ((await call("GET", "/webhooks", op.token)).json() as { webhooks: unknown[] }).webhooks.length;
      for (const [url, why] of [
        ["http://127.0.0.1:8080/h", /loopback address \(127\.0\.0\.0\/8\)/],
        ["http://169.254.169.254/latest/meta-data/", /cloud metadata/],
        ["http://[fd00::1]/h", /private/],
      ] as const) {
        const p = problem(await call("POST", "/webhooks", op.token, { url, eventTypes: ["*"] }), 400) as { type: string; detail?: string };
        assert.match(p.type, /invalid-webhook$/);
        assert.match(String(p.detail), why);
      }
      assert.equal(((await call("GET", "/webhooks", op.token)).json() as { webhooks: unknown[] }).webhooks.length, before);
      problem(await app.inject({ method: "POST", url: "/webhooks", headers: { authorization: `Bearer ${op.token}`, "content-type": "application/json" }, payload: "{nope" }), 400);

      assert.equal((await call("DELETE", `/webhooks/${w.id}`, op.token)).statusCode, 204);
      problem(await call("DELETE", `/webhooks/${w.id}`, op.token), 404);
      problem(await call("DELETE", "/webhooks/no%20such", op.token), 400);
      assert.ok(!((await call("GET", "/webhooks", op.token)).json() as { webhooks: { id: string }[] }).webhooks.some((x) => x.id === w.id));
    });

    test("scan now, list the proposals, approve one as the operator (audited); the events endpoint pages and filters", async () => {
      const user = await store.createUser({ personalData: { cn: "Ada" } });
      const card = await store.registerCard({ userId: user.id, validFrom: NOW - DAY, validUntil: NOW + 400 * DAY });
      const ks = await store.addKeySet({ cardId: card.id, kvn: 1, version: 1, validFrom: NOW - DAY, validUntil: NOW + 3 * DAY, custodyRef: "m/1", makeCurrent: true });

      problem(await call("POST", "/validity/scan", op.token, { windowDays: 5 }), 400);
      const scan = await call("POST", "/validity/scan", op.token, {});
      assert.equal(scan.statusCode, 200, scan.body);
      assert.deepEqual(scan.json(), {
        now: NOW,
        until: NOW + 30 * DAY,
        cards: { expiring: 0, expired: 0 },
        keySets: { expiring: 1, expired: 0 },
        certificates: { expiring: 0, expired: 0 },
        eventsEmitted: 2,
        rotationsProposed: 1,
      });
      // Without a body too.
      const again = await app.inject({ method: "POST", url: "/validity/scan", headers: { authorization: `Bearer ${op.token}` } });
      assert.equal(again.statusCode, 200, again.body);
      assert.equal((again.json() as { eventsEmitted: number }).eventsEmitted, 0);

      const proposed = (await call("GET", "/rotations?status=proposed", aud.token)).json() as { rotations: { id: string; fromKeySetId: string; status: string }[] };
      assert.equal(proposed.rotations.length, 1);
      const rot = proposed.rotations[0];
      assert.equal(rot.fromKeySetId, ks.id);
      problem(await call("GET", "/rotations?status=bogus", op.token), 400);
      problem(await call("GET", "/rotations?state=proposed", op.token), 400);

      problem(await call("POST", `/rotations/${rot.id}/approve`, op.token, { force: true }), 400);
      const approved = await call("POST", `/rotations/${rot.id}/approve`, op.token, {});
      assert.equal(approved.statusCode, 200, approved.body);
      assert.deepEqual((({ status, approvedBy, approvedAt, toKeySetId }) => ({ status, approvedBy, approvedAt, toKeySetId }))(approved.json() as Record<string, unknown>), {
        status: "approved",
        approvedBy: "olga",
        approvedAt: NOW,
        toKeySetId: null,
      });
      problem(await call("POST", `/rotations/${rot.id}/approve`, op.token, {}), 409);
      problem(await call("POST", "/rotations/nope/approve", op.token, {}), 404);
      assert.equal((await store.getRotation(rot.id))?.status, "approved"); // approved, not started: the rotation runner starts it
      assert.equal(((await call("GET", "/rotations?status=proposed", op.token)).json() as { rotations: unknown[] }).rotations.length, 0);

      const audit = [];
      for await (const e of auditEntries(t.db)) audit.push(e);
      const approval = audit.find((e) => e.action === "rotation.approved" && e.subject === rot.id);
      assert.equal(approval?.actor, "olga");
      assert.ok(audit.some((e) => e.action === "rotation.proposed" && e.subject === rot.id && e.actor === "validity-scan"));
      assert.equal((await verifyAuditLog(t.db)).ok, true);

      // Events: all of them, by type, paged.
      const all = (await call("GET", "/events", aud.token)).json() as { events: { id: number; type: string; subject: string; payload: unknown }[]; next: number | null };
      assert.deepEqual(
        all.events.map((e) => e.type),
        ["keyset.expiring", "rotation.proposed", "rotation.approved"],
      );
      assert.equal(all.next, null);
      assert.deepEqual(all.events[2].payload, { rotationId: rot.id, approvedBy: "olga", cardId: card.id, fromKeySetId: ks.id, strategy: "embodiment3" });
      const byType = (await call("GET", "/events?type=rotation.proposed", aud.token)).json() as { events: { subject: string }[] };
      assert.deepEqual(
        byType.events.map((e) => e.subject),
        [rot.id],
      );
      const page1 = (await call("GET", "/events?limit=2", aud.token)).json() as { events: { id: number }[]; next: number };
      assert.equal(page1.events.length, 2);
      const page2 = (await call("GET", `/events?limit=2&after=${page1.next}`, aud.token)).json() as { events: { id: number }[]; next: number | null };
      assert.deepEqual(
        page2.events.map((e) => e.id),
        [all.events[2].id],
      );
      assert.equal(page2.next, null);
      assert.deepEqual((await call("GET", "/events?after=999999999999999", aud.token)).json(), { events: [], next: null });
      for (const q of ["limit=0", "limit=1001", "limit=x", "after=-1", "type=Bad%20Type", "foo=1"]) problem(await call("GET", `/events?${q}`, aud.token), 400);
    });

    test("issue 15 §6: webhook create and disable are audited (who, which, where; never the secret or the URL's path); dead letters are listed and retried, audited", async () => {
      const created = await call("POST", "/webhooks", op.token, { url: "https://hooks.example.org/in?key=abc123", eventTypes: ["t.routes"] });
      assert.equal(created.statusCode, 201, created.body);
      const w = created.json() as { id: string; secret: string };
      const e = (await store.enqueueEvent({ type: "t.routes", subject: "s", payload: null }))!;
      await store.fanOutEvent(e.id, [w.id], NOW);
      // The dispatcher gave up on it (as after its last attempt): a dead letter.
      await t.db.updateTable("webhook_queue").set({ status: "dead", attempts: 24, last_error: "HTTP 500", dead_at: NOW }).where("event_id", "=", e.id).execute();
      const id = `msg_${e.id}_${w.id}`;

      const listed = await call("GET", `/webhooks/dead-letters?webhookId=${w.id}`, aud.token);
      assert.equal(listed.statusCode, 200, listed.body);
      assert.deepEqual(listed.json(), { deadLetters: [{ deliveryId: id, eventId: e.id, webhookId: w.id, eventType: "t.routes", attempts: 24, lastError: "HTTP 500", deadAt: NOW }], next: null });
      const paged = (await call("GET", "/webhooks/dead-letters?limit=1", aud.token)).json() as { deadLetters: unknown[]; next: string };
      assert.deepEqual([paged.deadLetters.length, paged.next], [1, id]);
      assert.deepEqual((await call("GET", `/webhooks/dead-letters?after=${id}`, aud.token)).json(), { deadLetters: [], next: null });
      for (const q of ["limit=0", "after=7.x", "webhookId=a%20b", "status=dead"]) problem(await call("GET", `/webhooks/dead-letters?${q}`, aud.token), 400);
      for (const body of [{}, { deliveryIds: [] }, { deliveryIds: ["7.x"] }, { webhookId: w.id, extra: 1 }, { deliveryIds: [id, id] }])
        problem(await call("POST", "/webhooks/dead-letters/retry", op.token, body), 400);

      const retried = await call("POST", "/webhooks/dead-letters/retry", op.token, { deliveryIds: [id] });
      assert.equal(retried.statusCode, 200, retried.body);
      assert.deepEqual(retried.json(), { retried: [id] });
      assert.deepEqual((await call("POST", "/webhooks/dead-letters/retry", op.token, { webhookId: w.id })).json(), { retried: [] });
      const [row] = await store.listWebhookDeliveries({ eventId: e.id });
      assert.deepEqual([row.status, row.attempts, row.nextAttemptAt], ["pending", 0, NOW]);

      assert.equal((await call("DELETE", `/webhooks/${w.id}`, op.token)).statusCode, 204);
      const audit = [];
      for await (const a of auditEntries(t.db)) if (a.subject === w.id) audit.push(a);
      assert.deepEqual(
        audit.map((a) => [a.action, a.actor, a.details]),
        [
          ["webhook.created", "olga", { webhookId: w.id, scheme: "https", host: "hooks.example.org", eventTypes: ["t.routes"] }],
          ["webhook.dead-letters.retried", "olga", { deliveryIds: [id], count: 1 }],
          ["webhook.disabled", "olga", { webhookId: w.id }],
        ],
      );
      const text = JSON.stringify(audit);
      assert.ok(!text.includes("abc123") && !text.includes(w.secret.slice(6)), "no URL path or query, no secret");
      assert.equal((await verifyAuditLog(t.db)).ok, true);
    });

    test("the OpenAPI document lists every route with its schemas", async () => {
      const doc = (await app.inject({ method: "GET", url: "/openapi.json" })).json() as { paths: Record<string, Record<string, unknown>> };
      for (const [p, m] of [
        ["/events", "get"],
        ["/webhooks", "post"],
        ["/webhooks", "get"],
        ["/webhooks/{id}", "delete"],
        ["/webhooks/dead-letters", "get"],
        ["/webhooks/dead-letters/retry", "post"],
        ["/validity/scan", "post"],
        ["/rotations", "get"],
        ["/rotations/{id}/approve", "post"],
      ]) {
        assert.ok(doc.paths[p]?.[m], `${m} ${p}`);
      }
    });
  });
}
