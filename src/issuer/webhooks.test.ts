// Webhook delivery against real local HTTP receivers, with the outbox on SQLite and PostgreSQL: signatures,
// headers, retries with backoff on an injected clock, at-least-once with stable delivery ids.

import assert from "node:assert/strict";
import { createHmac, randomBytes } from "node:crypto";
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";
import { Store } from "../store/store.ts";
import { testEngines, type TestDatabase } from "../store/testing.ts";
import {
  checkWebhookUrl,
  registerWebhook,
  signWebhookBody,
  verifyWebhookSignature,
  WebhookDispatcher,
  WebhookError,
  WebhookSecrets,
} from "./webhooks.ts";

const NOW = Date.UTC(2026, 5, 1);

interface Received {
  headers: IncomingHttpHeaders;
  body: string;
  method: string;
  url: string;
}

/** A real HTTP receiver on 127.0.0.1 answering each request with the next status of `plan` (then the last one). */
async function receiver(plan: number[] | "hang", extraHeaders: Record<string, string> = {}) {
  const got: Received[] = [];
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      got.push({ headers: req.headers, body: Buffer.concat(chunks).toString("utf8"), method: req.method ?? "", url: req.url ?? "" });
      if (plan === "hang") return; // never answers
      const status = plan[Math.min(got.length - 1, plan.length - 1)];
      res.writeHead(status, { "content-type": "text/plain", ...extraHeaders }).end("ok");
    });
  });
  await new Promise<void>((res) => server.listen(0, "127.0.0.1", res));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/hooks/cardkms?tenant=a`,
    got,
    close: () => new Promise<void>((res) => (server.closeAllConnections(), server.close(() => res()))),
  };
}

/** What a receiver does: HMAC-SHA256 over the raw body under the secret, compared with the header. */
function expectSigned(r: Received, secret: string) {
  const mac = createHmac("sha256", secret).update(r.body).digest("hex");
  assert.equal(r.headers["x-cardkms-signature"], `sha256=${mac}`);
  assert.equal(verifyWebhookSignature(secret, r.body, r.headers["x-cardkms-signature"] as string), true);
}

for (const engine of testEngines()) {
  describe(`webhooks on ${engine.name}`, () => {
    let t: TestDatabase;
    let store: Store;
    const secrets = new WebhookSecrets(randomBytes(32));
    const closers: (() => Promise<void>)[] = [];
    before(async () => {
      t = await engine.create();
      store = new Store(t.db, { now: () => NOW });
    });
    after(async () => {
      for (const c of closers) await c();
      await t?.drop();
    });
    const open = async (plan: number[] | "hang", extra?: Record<string, string>) => {
      const r = await receiver(plan, extra);
      closers.push(r.close);
      return r;
    };
    const drain = async () => {
      // Earlier tests' leftovers are not this test's business: mark them delivered through a dispatcher with no
      // receivers left subscribed.
      for (const h of await store.listWebhooks()) await store.disableWebhook(h.id);
      await new WebhookDispatcher({ store, secrets }).deliverPending();
    };

    test("signed deliveries to subscribed webhooks; a failing receiver gets retries with backoff until it answers", async () => {
      await drain();
      const good = await open([204]);
      const flaky = await open([500, 500, 503, 503, 200]);
      const a = await registerWebhook(store, secrets, { url: good.url, eventTypes: ["keyset.expiring"] });
      const b = await registerWebhook(store, secrets, { url: flaky.url, eventTypes: ["*"] });
      assert.match(a.secret, /^whsec_[A-Za-z0-9_-]{43}$/);
      assert.notEqual(a.secret, b.secret);
      // The secret is not stored: the row holds only a reference to how it is derived.
      const row = await t.db.selectFrom("webhooks").selectAll().where("id", "=", a.webhook.id).executeTakeFirstOrThrow();
      assert.equal(row.secret_ref, secrets.ref);
      assert.ok(!JSON.stringify(row).includes(a.secret.slice(6)));

      const e1 = (await store.enqueueEvent({ type: "keyset.expiring", subject: "ks-1", payload: { keySetId: "ks-1", validUntil: NOW + 5 } }))!;
      const e2 = (await store.enqueueEvent({ type: "card.expired", subject: "card-1", payload: { cardId: "card-1" } }))!;

      let clock = 0;
      const failures: string[] = [];
      const d = new WebhookDispatcher({ store, secrets, clock: () => clock, backoffBaseMs: 1000, onFailure: (f) => failures.push(f.error) });

      const p1 = await d.deliverPending();
      assert.deepEqual(p1, { delivered: 0, failed: 2, waiting: 0, requests: 3 });
      // The good receiver: one POST for the event type it subscribes to, to exactly the registered URL.
      assert.equal(good.got.length, 1);
      const r = good.got[0];
      assert.equal(r.method, "POST");
      assert.equal(r.url, "/hooks/cardkms?tenant=a");
      assert.equal(r.headers["content-type"], "application/json");
      assert.equal(r.headers["x-cardkms-event"], "keyset.expiring");
      assert.equal(r.headers["x-cardkms-delivery"], `${e1.id}.${a.webhook.id}`);
      expectSigned(r, a.secret);
      assert.deepEqual(JSON.parse(r.body), { id: e1.id, type: "keyset.expiring", subject: "ks-1", payload: { keySetId: "ks-1", validUntil: NOW + 5 }, createdAt: NOW });
      // Signed under B's secret, not A's.
      assert.equal(flaky.got.length, 2);
      expectSigned(flaky.got[0], b.secret);
      assert.equal(verifyWebhookSignature(a.secret, flaky.got[0].body, flaky.got[0].headers["x-cardkms-signature"] as string), false);
      // Both events stay undelivered: B has not acknowledged them.
      const pending = await store.undeliveredEvents();
      assert.deepEqual(pending.map((e) => [e.id, e.attempts]), [[e1.id, 1], [e2.id, 1]]);
      assert.match(pending[0].lastError ?? "", new RegExp(`webhook ${b.webhook.id}: HTTP 500`));
      assert.ok(!(pending[0].lastError ?? "").includes("127.0.0.1"), "errors never carry the URL");
      assert.deepEqual(failures, ["HTTP 500", "HTTP 500"]);

      // Not due yet: nothing is sent.
      clock = 999;
      assert.deepEqual(await d.deliverPending(), { delivered: 0, failed: 0, waiting: 2, requests: 0 });
      assert.equal(flaky.got.length, 2);

      // A restart (a new dispatcher on the same DB) keeps both the schedule and who acknowledged what.
      const restarted = new WebhookDispatcher({ store, secrets, clock: () => clock, backoffBaseMs: 1000, onFailure: (f) => failures.push(f.error) });
      assert.deepEqual(await restarted.deliverPending(), { delivered: 0, failed: 0, waiting: 2, requests: 0 });
      assert.deepEqual([...(await store.webhookAcks(e1.id))], [a.webhook.id]);

      // Due: retried to B only (A already answered 2xx to e1); B fails again, so the next delay doubles.
      clock = 1000;
      assert.deepEqual(await restarted.deliverPending(), { delivered: 0, failed: 2, waiting: 0, requests: 2 });
      assert.equal(good.got.length, 1);
      assert.equal(flaky.got.length, 4);
      clock = 2999;
      assert.equal((await d.deliverPending()).requests, 0);
      clock = 3000;
      assert.deepEqual(await d.deliverPending(), { delivered: 2, failed: 0, waiting: 0, requests: 2 });
      assert.deepEqual(await store.undeliveredEvents(), []);
      const delivered = await store.listEvents({ afterId: e1.id - 1, limit: 2 });
      assert.deepEqual(delivered.map((e) => [e.attempts, e.lastError, e.deliveredAt]), [[3, null, NOW], [3, null, NOW]]);
      // Every retry of one event to one webhook carried the same delivery id, for the receiver to de-duplicate on.
      const ids = flaky.got.map((x) => x.headers["x-cardkms-delivery"]);
      assert.deepEqual(ids, [`${e1.id}.${b.webhook.id}`, `${e2.id}.${b.webhook.id}`, `${e1.id}.${b.webhook.id}`, `${e2.id}.${b.webhook.id}`, `${e1.id}.${b.webhook.id}`, `${e2.id}.${b.webhook.id}`]);
      for (const x of flaky.got) expectSigned(x, b.secret);
      assert.equal((await d.deliverPending()).requests, 0);
    });

    test("an event that keeps failing waits in the DB and does not hold newer events back", async () => {
      await drain();
      const bad = await open([500, 500, 500, 500]);
      const good = await open([200, 200]);
      await registerWebhook(store, secrets, { url: bad.url, eventTypes: ["t.stuck"] });
      await registerWebhook(store, secrets, { url: good.url, eventTypes: ["t.fine"] });
      const stuck = (await store.enqueueEvent({ type: "t.stuck", subject: "s", payload: null }))!;
      const fine = (await store.enqueueEvent({ type: "t.fine", subject: "f", payload: null }))!;
      const clock = 0;
      const d = new WebhookDispatcher({ store, secrets, clock: () => clock, batchSize: 1 });
      assert.deepEqual(await d.deliverPending(), { delivered: 0, failed: 1, waiting: 0, requests: 1 }, "the oldest goes first and fails");
      assert.deepEqual(await d.deliverPending(), { delivered: 1, failed: 0, waiting: 1, requests: 1 }, "with a batch of one, the newer event is next");
      assert.equal(good.got.length, 1);
      assert.equal((await store.listEvents({ type: "t.fine" }))[0].deliveredAt !== null, true);
      assert.equal((await store.listEvents({ type: "t.stuck" }))[0].nextAttemptAt, 1000);
      assert.equal(stuck.id < fine.id, true);
    });

    test("an event nobody subscribes to is marked delivered without a request; disabled webhooks get nothing", async () => {
      await drain();
      const rec = await open([200]);
      const w = await registerWebhook(store, secrets, { url: rec.url, eventTypes: ["certificate.expired"] });
      const other = await registerWebhook(store, secrets, { url: rec.url, eventTypes: ["card.expiring"] });
      await store.disableWebhook(other.webhook.id);
      await store.enqueueEvent({ type: "card.expiring", subject: "c", payload: null });
      const r = await new WebhookDispatcher({ store, secrets }).deliverPending();
      assert.deepEqual(r, { delivered: 1, failed: 0, waiting: 0, requests: 0 });
      assert.equal(rec.got.length, 0);
      await store.enqueueEvent({ type: "certificate.expired", subject: "x", payload: null });
      assert.equal((await new WebhookDispatcher({ store, secrets }).deliverPending()).requests, 1);
      assert.equal(rec.got[0].headers["x-cardkms-delivery"]?.toString().endsWith(`.${w.webhook.id}`), true);
    });

    test("timeouts, redirects and network errors are failures; nothing follows a redirect; a foreign secret is never used", async () => {
      await drain();
      const hang = await open("hang");
      const target = await open([200]);
      const redirect = await open([302], { location: target.url });
      await registerWebhook(store, secrets, { url: hang.url, eventTypes: ["t.hang"] });
      await registerWebhook(store, secrets, { url: redirect.url, eventTypes: ["t.redirect"] });
      // A port nothing listens on (a receiver opened and closed again).
      const gone = await receiver([200]);
      await gone.close();
      await registerWebhook(store, secrets, { url: gone.url, eventTypes: ["t.gone"] });
      for (const type of ["t.hang", "t.redirect", "t.gone"]) await store.enqueueEvent({ type, subject: type, payload: null });
      const errors: string[] = [];
      const d = new WebhookDispatcher({ store, secrets, timeoutMs: 200, onFailure: (f) => errors.push(f.error) });
      assert.deepEqual(await d.deliverPending(), { delivered: 0, failed: 3, waiting: 0, requests: 3 });
      assert.deepEqual(errors, ["timed out after 200 ms", "HTTP 302", "network error ECONNREFUSED"]);
      assert.equal(target.got.length, 0, "the redirect was not followed");
      assert.equal(redirect.got.length, 1);

      // A dispatcher holding another server secret refuses to sign for these webhooks: no request at all.
      await drain();
      const rec = await open([200]);
      await registerWebhook(store, secrets, { url: rec.url, eventTypes: ["t.foreign"] });
      await store.enqueueEvent({ type: "t.foreign", subject: "f", payload: null });
      const foreign = new WebhookDispatcher({ store, secrets: new WebhookSecrets(randomBytes(32)) });
      const r = await foreign.deliverPending();
      assert.equal(r.failed, 1);
      assert.equal(rec.got.length, 0);
      const [foreignEvent] = await store.listEvents({ type: "t.foreign" });
      assert.equal(foreignEvent.deliveredAt, null);
      assert.match(foreignEvent.lastError ?? "", /another server secret/);
      assert.deepEqual(await store.undeliveredEvents(), [], "not due again before its backoff");
    });

    test("registration refuses what is not a plain http(s) URL or a list of event types", async () => {
      for (const url of ["ftp://example.org/x", "file:///etc/passwd", "http://user:pw@example.org/", "https://example.org/#frag", "not a url", "https://" + "a".repeat(2100)]) {
        await assert.rejects(registerWebhook(store, secrets, { url, eventTypes: ["*"] }), WebhookError, url);
      }
      for (const eventTypes of [[], ["Card.Expired"], ["a", "a"], ["x y"], Array.from({ length: 33 }, (_, i) => `t${i}`)]) {
        await assert.rejects(registerWebhook(store, secrets, { url: "https://example.org/hook", eventTypes }), WebhookError, JSON.stringify(eventTypes));
      }
      assert.equal(checkWebhookUrl("https://example.org:8443/a?b=c").port, "8443");
    });
  });
}

test("signatures and secrets", () => {
  const s = new WebhookSecrets(Buffer.alloc(32, 7));
  // Deterministic: the same server secret derives the same webhook secret (so none is stored) ...
  assert.equal(new WebhookSecrets(Buffer.alloc(32, 7)).secretFor("w1"), s.secretFor("w1"));
  assert.equal(s.secretFor("w1"), "whsec_" + createHmac("sha256", Buffer.alloc(32, 7)).update("cardkms/webhook-secret/v1\0w1").digest("base64url"));
  // ... and distinct per webhook and per server secret.
  assert.notEqual(s.secretFor("w1"), s.secretFor("w2"));
  assert.notEqual(new WebhookSecrets(Buffer.alloc(32, 8)).secretFor("w1"), s.secretFor("w1"));
  assert.notEqual(new WebhookSecrets(Buffer.alloc(32, 8)).ref, s.ref);
  assert.throws(() => new WebhookSecrets(Buffer.alloc(16)), /at least 32 bytes/);
  const body = '{"id":1}';
  const sig = signWebhookBody("whsec_x", body);
  assert.equal(verifyWebhookSignature("whsec_x", body, sig), true);
  assert.equal(verifyWebhookSignature("whsec_y", body, sig), false);
  assert.equal(verifyWebhookSignature("whsec_x", body + " ", sig), false);
  assert.equal(verifyWebhookSignature("whsec_x", body, sig.toUpperCase()), false);
  assert.equal(verifyWebhookSignature("whsec_x", body, undefined), false);
  assert.equal(verifyWebhookSignature("whsec_x", body, "sha256=00"), false);
  const d = new WebhookDispatcher({ store: undefined as unknown as Store, secrets: s, backoffBaseMs: 1000, backoffMaxMs: 5000 });
  assert.deepEqual([1, 2, 3, 4, 10].map((n) => d.backoffMs(n)), [1000, 2000, 4000, 5000, 5000]);
});
