// Webhook delivery against real local HTTP receivers, with the outbox on SQLite and PostgreSQL: Standard Webhooks
// signatures (and what a receiver refuses), retries with backoff on an injected clock, at-least-once with stable
// delivery ids, one lane per receiver (a hanging receiver holds nobody else back), the dead-letter record and its
// retry, and claims in the DB (two servers never send one delivery at once; a dead server's claims are taken over).

import assert from "node:assert/strict";
import { createHmac, randomBytes } from "node:crypto";
import { createServer, type IncomingHttpHeaders, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";
import { auditEntries } from "../store/audit.ts";
import { migrateToLatest, migrations, migratorFor } from "../store/migrate.ts";
import { Store } from "../store/store.ts";
import { testEngines, type TestDatabase } from "../../test/support/store-testing.ts";
import { checkWebhookUrl, deliveryId, disableWebhook, registerWebhook, retryDeadLetters, WebhookDispatcher, WebhookError, WebhookSecrets } from "./webhooks.ts";
import { verifyWebhook, webhookSignature, WebhookReplayCache, WebhookVerificationError, type WebhookRefusal } from "./webhook-receiver.ts";
import { WebhookAddressPolicy, type ResolvedAddress } from "./webhook-addresses.ts";

const NOW = Date.UTC(2026, 5, 1);
/** The receivers below listen on 127.0.0.1: the address policy must permit it (config webhooks.allowAddresses). */
const loopback = new WebhookAddressPolicy({ allow: ["127.0.0.1/32"] });

interface Received {
  headers: IncomingHttpHeaders;
  body: string;
  method: string;
  url: string;
}

/**
 * A real HTTP receiver on 127.0.0.1 answering each request with the next status of `plan` (then the last one);
 * "hang": never answers; "gate": holds every answer until release() — or until a delivery id arrives a second time
 * while held (then it answers everything at once, so a test of "never twice at once" cannot deadlock).
 */
async function receiver(plan: number[] | "hang" | "gate", extraHeaders: Record<string, string> = {}) {
  const got: Received[] = [];
  const held: ServerResponse[] = [];
  const release = () => {
    for (const r of held.splice(0)) r.writeHead(200).end("ok");
  };
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const r = { headers: req.headers, body: Buffer.concat(chunks).toString("utf8"), method: req.method ?? "", url: req.url ?? "" };
      const twice = got.some((g) => g.headers["webhook-id"] === r.headers["webhook-id"]);
      got.push(r);
      if (plan === "hang") return; // never answers
      if (plan === "gate") {
        held.push(res);
        if (twice) release();
        return;
      }
      const status = plan[Math.min(got.length - 1, plan.length - 1)];
      res.writeHead(status, { "content-type": "text/plain", ...extraHeaders }).end("ok");
    });
  });
  await new Promise<void>((res) => server.listen(0, "127.0.0.1", res));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/hooks/cardkms?tenant=a`,
    got,
    release,
    close: () => new Promise<void>((res) => (release(), server.closeAllConnections(), server.close(() => res()))),
  };
}

/** What a receiver does (webhook-receiver.ts): the Standard Webhooks signature over id, timestamp and raw body. */
function expectSigned(r: Received, secret: string, nowSeconds: number) {
  const key = Buffer.from(secret.slice("whsec_".length), "base64");
  const signed = `${r.headers["webhook-id"]}.${r.headers["webhook-timestamp"]}.${r.body}`;
  assert.equal(r.headers["webhook-signature"], `v1,${createHmac("sha256", key).update(signed).digest("base64")}`);
  assert.equal(r.headers["webhook-timestamp"], String(nowSeconds));
  const v = verifyWebhook({ secret, headers: r.headers, body: r.body, now: nowSeconds });
  assert.equal(v.id, r.headers["webhook-id"]);
  assert.equal(r.headers["x-cardkms-signature"], undefined, "the old body-only signature is no longer sent");
}

/** Waits (bounded: a hang detector, not a speed check) until `cond` holds. */
async function until(what: string, cond: () => boolean | Promise<boolean>, bound = 30_000) {
  const end = Date.now() + bound;
  while (!(await cond())) {
    if (Date.now() > end) assert.fail(`never happened: ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const ids = (got: Received[]) => got.map((x) => String(x.headers["webhook-id"])).sort();

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
    const open = async (plan: number[] | "hang" | "gate", extra?: Record<string, string>) => {
      const r = await receiver(plan, extra);
      closers.push(r.close);
      return r;
    };
    const drain = async () => {
      // Earlier tests' leftovers are not this test's business: disable their webhooks and settle their events.
      for (const h of await store.listWebhooks()) await store.disableWebhook(h.id);
      await new WebhookDispatcher({ store, secrets, addresses: loopback }).deliverPending();
    };

    test("signed deliveries to subscribed webhooks; a failing receiver gets retries with backoff until it answers", async () => {
      await drain();
      const good = await open([204]);
      const flaky = await open([500, 500, 503, 503, 200]);
      const a = await registerWebhook(store, secrets, { url: good.url, eventTypes: ["keyset.expiring"] }, loopback);
      const b = await registerWebhook(store, secrets, { url: flaky.url, eventTypes: ["*"] }, loopback);
      assert.match(a.secret, /^whsec_[A-Za-z0-9+/]{43}=$/, "Standard Webhooks: whsec_ and base64 of 32 bytes");
      assert.notEqual(a.secret, b.secret);
      // The secret is not stored: the row holds only a reference to how it is derived.
      const row = await t.db.selectFrom("webhooks").selectAll().where("id", "=", a.webhook.id).executeTakeFirstOrThrow();
      assert.equal(row.secret_ref, secrets.ref);
      assert.ok(!JSON.stringify(row).includes(a.secret.slice(6)));

      const e1 = (await store.enqueueEvent({ type: "keyset.expiring", subject: "ks-1", payload: { keySetId: "ks-1", validUntil: NOW + 5 } }))!;
      const e2 = (await store.enqueueEvent({ type: "card.expired", subject: "card-1", payload: { cardId: "card-1" } }))!;

      let clock = 0;
      const failures: string[] = [];
      const d = new WebhookDispatcher({ store, secrets, addresses: loopback, clock: () => clock, backoffBaseMs: 1000, onFailure: (f) => failures.push(f.error) });

      assert.deepEqual(await d.deliverPending(), { delivered: 1, failed: 2, deadLettered: 0, waiting: 0, requests: 3 });
      // The good receiver: one POST for the event type it subscribes to, to exactly the registered URL.
      assert.equal(good.got.length, 1);
      const r = good.got[0];
      assert.equal(r.method, "POST");
      assert.equal(r.url, "/hooks/cardkms?tenant=a");
      assert.equal(r.headers["content-type"], "application/json");
      assert.equal(r.headers["x-cardkms-event"], "keyset.expiring");
      assert.equal(r.headers["webhook-id"], `msg_${e1.id}_${a.webhook.id}`);
      expectSigned(r, a.secret, 0);
      assert.deepEqual(JSON.parse(r.body), { id: e1.id, type: "keyset.expiring", subject: "ks-1", payload: { keySetId: "ks-1", validUntil: NOW + 5 }, createdAt: NOW });
      // Signed under B's secret, not A's.
      assert.equal(flaky.got.length, 2);
      for (const x of flaky.got) expectSigned(x, b.secret, 0);
      assert.throws(
        () => verifyWebhook({ secret: a.secret, headers: flaky.got[0].headers, body: flaky.got[0].body, now: 0 }),
        (e: unknown) => e instanceof WebhookVerificationError && e.reason === "signature",
      );
      // Both events stay undelivered: B has not acknowledged them; each delivery has its own schedule.
      const events = await store.listEvents({ afterId: e1.id - 1, limit: 2 });
      assert.deepEqual(
        events.map((e) => [e.id, e.attempts, e.deliveredAt]),
        [
          [e1.id, 2, null],
          [e2.id, 1, null],
        ],
      );
      assert.match(events[0].lastError ?? "", new RegExp(`webhook ${b.webhook.id}: HTTP 500`));
      assert.ok(!(events[0].lastError ?? "").includes("127.0.0.1"), "errors never carry the URL");
      assert.deepEqual(failures, ["HTTP 500", "HTTP 500"]);
      const pendingB = await store.listWebhookDeliveries({ status: "pending", webhookId: b.webhook.id });
      assert.deepEqual(
        pendingB.map((p) => [p.eventId, p.attempts, p.nextAttemptAt, p.leaseOwner]),
        [
          [e1.id, 1, 1000, null],
          [e2.id, 1, 1000, null],
        ],
      );

      // Not due yet: nothing is sent.
      clock = 999;
      assert.deepEqual(await d.deliverPending(), { delivered: 0, failed: 0, deadLettered: 0, waiting: 2, requests: 0 });
      assert.equal(flaky.got.length, 2);

      // A restart (a new dispatcher on the same DB) keeps both the schedule and who acknowledged what.
      const restarted = new WebhookDispatcher({ store, secrets, addresses: loopback, clock: () => clock, backoffBaseMs: 1000, onFailure: (f) => failures.push(f.error) });
      assert.deepEqual(await restarted.deliverPending(), { delivered: 0, failed: 0, deadLettered: 0, waiting: 2, requests: 0 });
      assert.deepEqual([...(await store.webhookAcks(e1.id))], [a.webhook.id]);

      // Due: retried to B only (A already answered 2xx to e1); B fails again, so the next delay doubles.
      clock = 1000;
      assert.deepEqual(await restarted.deliverPending(), { delivered: 0, failed: 2, deadLettered: 0, waiting: 0, requests: 2 });
      assert.equal(good.got.length, 1);
      assert.equal(flaky.got.length, 4);
      for (const x of flaky.got.slice(2)) expectSigned(x, b.secret, 1);
      clock = 2999;
      assert.equal((await d.deliverPending()).requests, 0);
      clock = 3000;
      assert.deepEqual(await d.deliverPending(), { delivered: 2, failed: 0, deadLettered: 0, waiting: 0, requests: 2 });
      const delivered = await store.listEvents({ afterId: e1.id - 1, limit: 2 });
      assert.deepEqual(
        delivered.map((e) => [e.attempts, e.lastError, e.deliveredAt]),
        [
          [4, null, NOW],
          [3, null, NOW],
        ],
      );
      // Every retry of one event to one webhook carried the same webhook-id, for the receiver to de-duplicate on, and
      // a fresh timestamp under a fresh signature.
      const fe1 = `msg_${e1.id}_${b.webhook.id}`;
      const fe2 = `msg_${e2.id}_${b.webhook.id}`;
      assert.deepEqual(ids(flaky.got), [fe1, fe1, fe1, fe2, fe2, fe2].sort());
      assert.deepEqual(
        flaky.got.filter((x) => x.headers["webhook-id"] === fe1).map((x) => x.headers["webhook-timestamp"]),
        ["0", "1", "3"],
      );
      for (const x of flaky.got.slice(4)) expectSigned(x, b.secret, 3);
      assert.equal((await d.deliverPending()).requests, 0);
    });

    test("a receiver answering 503 with Retry-After is retried no sooner than it asks", async () => {
      await drain();
      const busy = await open([503, 200], { "retry-after": "120" });
      await registerWebhook(store, secrets, { url: busy.url, eventTypes: ["t.busy"] }, loopback);
      const e = (await store.enqueueEvent({ type: "t.busy", subject: "s", payload: null }))!;
      let clock = 5000;
      const d = new WebhookDispatcher({ store, secrets, addresses: loopback, clock: () => clock, backoffBaseMs: 1000 });
      assert.equal((await d.deliverPending()).failed, 1);
      const [p] = await store.listWebhookDeliveries({ eventId: e.id });
      assert.equal(p.nextAttemptAt, 5000 + 120_000);
      clock = 5000 + 119_999;
      assert.equal((await d.deliverPending()).requests, 0);
      clock = 5000 + 120_000;
      assert.equal((await d.deliverPending()).delivered, 1);
    });

    test("an event that keeps failing waits in the DB and does not hold newer events to the same receiver back", async () => {
      await drain();
      const rec = await open([500, 200, 200]);
      await registerWebhook(store, secrets, { url: rec.url, eventTypes: ["t.stuck", "t.fine"] }, loopback);
      const stuck = (await store.enqueueEvent({ type: "t.stuck", subject: "s", payload: null }))!;
      const fine = (await store.enqueueEvent({ type: "t.fine", subject: "f", payload: null }))!;
      const d = new WebhookDispatcher({ store, secrets, addresses: loopback, clock: () => 0, queueLimit: 1 });
      assert.deepEqual(await d.deliverPending(), { delivered: 0, failed: 1, deadLettered: 0, waiting: 0, requests: 1 }, "the oldest goes first and fails");
      assert.deepEqual(await d.deliverPending(), { delivered: 1, failed: 0, deadLettered: 0, waiting: 1, requests: 1 }, "with a lane of one, the newer event is next");
      assert.deepEqual(
        rec.got.map((x) => String(x.headers["webhook-id"]).split("_")[1]),
        [String(stuck.id), String(fine.id)],
      );
      assert.notEqual((await store.listEvents({ type: "t.fine" }))[0].deliveredAt, null);
      const [s] = await store.listWebhookDeliveries({ eventId: stuck.id });
      assert.deepEqual([s.status, s.attempts, s.nextAttemptAt], ["pending", 1, 1000]);
    });

    test("an event nobody subscribes to is marked delivered without a request; disabled webhooks get nothing", async () => {
      await drain();
      const rec = await open([200]);
      const w = await registerWebhook(store, secrets, { url: rec.url, eventTypes: ["certificate.expired"] }, loopback);
      const other = await registerWebhook(store, secrets, { url: rec.url, eventTypes: ["card.expiring"] }, loopback);
      await store.disableWebhook(other.webhook.id);
      const e = (await store.enqueueEvent({ type: "card.expiring", subject: "c", payload: null }))!;
      const r = await new WebhookDispatcher({ store, secrets, addresses: loopback }).deliverPending();
      assert.deepEqual(r, { delivered: 0, failed: 0, deadLettered: 0, waiting: 0, requests: 0 });
      assert.equal(rec.got.length, 0);
      assert.equal((await store.listEvents({ afterId: e.id - 1, limit: 1 }))[0].deliveredAt, NOW);
      await store.enqueueEvent({ type: "certificate.expired", subject: "x", payload: null });
      assert.equal((await new WebhookDispatcher({ store, secrets, addresses: loopback }).deliverPending()).requests, 1);
      assert.equal(String(rec.got[0].headers["webhook-id"]).endsWith(`_${w.webhook.id}`), true);
    });

    test("timeouts, redirects and network errors are failures; nothing follows a redirect; a foreign secret is never used", async () => {
      await drain();
      const hang = await open("hang");
      const target = await open([200]);
      const redirect = await open([302], { location: target.url });
      await registerWebhook(store, secrets, { url: hang.url, eventTypes: ["t.hang"] }, loopback);
      await registerWebhook(store, secrets, { url: redirect.url, eventTypes: ["t.redirect"] }, loopback);
      // A port nothing listens on (a receiver opened and closed again).
      const gone = await receiver([200]);
      await gone.close();
      await registerWebhook(store, secrets, { url: gone.url, eventTypes: ["t.gone"] }, loopback);
      for (const type of ["t.hang", "t.redirect", "t.gone"]) await store.enqueueEvent({ type, subject: type, payload: null });
      const errors: string[] = [];
      const d = new WebhookDispatcher({ store, secrets, addresses: loopback, timeoutMs: 200, onFailure: (f) => errors.push(f.error) });
      assert.deepEqual(await d.deliverPending(), { delivered: 0, failed: 3, deadLettered: 0, waiting: 0, requests: 3 });
      assert.deepEqual(errors.sort(), ["HTTP 302", "network error ECONNREFUSED", "timed out after 200 ms"]);
      assert.equal(target.got.length, 0, "the redirect was not followed");
      assert.equal(redirect.got.length, 1);

      // A dispatcher holding another server secret refuses to sign for these webhooks: no request at all.
      await drain();
      const rec = await open([200]);
      await registerWebhook(store, secrets, { url: rec.url, eventTypes: ["t.foreign"] }, loopback);
      await store.enqueueEvent({ type: "t.foreign", subject: "f", payload: null });
      const foreign = new WebhookDispatcher({ store, secrets: new WebhookSecrets(randomBytes(32)) });
      const r = await foreign.deliverPending();
      assert.deepEqual([r.failed, r.requests], [1, 0]);
      assert.equal(rec.got.length, 0);
      const [foreignEvent] = await store.listEvents({ type: "t.foreign" });
      assert.equal(foreignEvent.deliveredAt, null);
      assert.match(foreignEvent.lastError ?? "", /another server secret/);
      assert.equal((await foreign.deliverPending()).requests + (await foreign.deliverPending()).failed, 0, "not due again before its backoff");
    });

    test("issue 15 §6: a receiver that hangs does not delay another receiver's deliveries", { timeout: 10 * 60_000 }, async () => {
      await drain();
      const hang = await open("hang");
      const good = await open([200]);
      // The hanging receiver is registered first: a serial dispatcher would send to it first and wait.
      const h = await registerWebhook(store, secrets, { url: hang.url, eventTypes: ["t.parallel"] }, loopback);
      const g = await registerWebhook(store, secrets, { url: good.url, eventTypes: ["t.parallel"] }, loopback);
      const events = [];
      for (let i = 0; i < 3; i++) events.push((await store.enqueueEvent({ type: "t.parallel", subject: `p${i}`, payload: i }))!);
      const outcomes: string[] = [];
      // The per-request timeout is far beyond what the test waits: only the lanes can get the good receiver served.
      const d = new WebhookDispatcher({
        store,
        secrets,
        addresses: loopback,
        timeoutMs: 600_000,
        onDelivered: (x) => outcomes.push(`delivered ${x.webhookId === g.webhook.id ? "good" : "hang"} ${x.eventId}`),
        onFailure: (x) => outcomes.push(`failed ${x.webhookId === g.webhook.id ? "good" : "hang"} ${x.eventId}`),
      });
      d.start(10);
      try {
        await until("every delivery to the good receiver completed", () => outcomes.filter((o) => o.startsWith("delivered good")).length === events.length);
        await until("the hanging receiver holds its requests", () => hang.got.length >= 1);
        assert.deepEqual(outcomes.sort(), events.map((e) => `delivered good ${e.id}`).sort(), "every good delivery completed; nothing to the hanging receiver completed");
        for (const e of events) assert.ok((await store.webhookAcks(e.id)).has(g.webhook.id), "acknowledged in the DB");
        assert.deepEqual(ids(good.got), events.map((e) => deliveryId(e.id, g.webhook.id)).sort());
        for (const e of events) assert.equal((await store.listEvents({ afterId: e.id - 1, limit: 1 }))[0].deliveredAt, null, "still owed to the hanging receiver");
      } finally {
        await d.stop();
      }
      // Stopping cut the hanging requests off without counting them as attempts, and gave their claims back.
      for (const p of await store.listWebhookDeliveries({ webhookId: h.webhook.id })) assert.deepEqual([p.status, p.attempts, p.leaseOwner], ["pending", 0, null]);
    });

    test("issue 15 §6: a receiver failing on every attempt lands in the dead-letter record; a retry queues it again (audited)", async () => {
      await drain();
      const bad = await open([500, 500, 500, 200]);
      const w = await registerWebhook(store, secrets, { url: bad.url, eventTypes: ["t.dead"] }, loopback, "olga");
      const e = (await store.enqueueEvent({ type: "t.dead", subject: "d", payload: { n: 1 } }))!;
      let clock = 0;
      const dead: boolean[] = [];
      const d = new WebhookDispatcher({ store, secrets, addresses: loopback, clock: () => clock, backoffBaseMs: 1000, maxAttempts: 3, onFailure: (f) => dead.push(f.deadLettered) });
      assert.deepEqual(await d.deliverPending(), { delivered: 0, failed: 1, deadLettered: 0, waiting: 0, requests: 1 });
      clock = 1000;
      assert.deepEqual(await d.deliverPending(), { delivered: 0, failed: 1, deadLettered: 0, waiting: 0, requests: 1 });
      clock = 3000;
      assert.deepEqual(await d.deliverPending(), { delivered: 0, failed: 1, deadLettered: 1, waiting: 0, requests: 1 });
      assert.deepEqual(dead, [false, false, true]);
      // Dead: no longer tried, however long one waits.
      clock = 10 ** 12;
      assert.deepEqual(await d.deliverPending(), { delivered: 0, failed: 0, deadLettered: 0, waiting: 0, requests: 0 });
      assert.equal(bad.got.length, 3);
      clock = NOW; // the retry queues it due at the store's clock
      const [letter] = await store.listWebhookDeliveries({ status: "dead" });
      assert.deepEqual([letter.eventId, letter.webhookId, letter.attempts, letter.lastError, letter.deadAt], [e.id, w.webhook.id, 3, "HTTP 500", NOW]);
      assert.equal((await store.listEvents({ type: "t.dead" }))[0].deliveredAt, null, "a dead letter keeps its event undelivered");

      // Retrying: refused without naming anything; a malformed id is a WebhookError; the named one is queued again.
      await assert.rejects(retryDeadLetters(store, {}, "olga"), WebhookError);
      await assert.rejects(retryDeadLetters(store, { deliveryIds: ["7.x"] }, "olga"), WebhookError);
      const retried = await retryDeadLetters(store, { deliveryIds: [deliveryId(e.id, w.webhook.id)] }, "olga");
      assert.deepEqual(
        retried.map((x) => [x.eventId, x.status, x.attempts]),
        [[e.id, "pending", 0]],
      );
      assert.deepEqual(await retryDeadLetters(store, { webhookId: w.webhook.id }, "olga"), [], "nothing dead any more");
      assert.deepEqual(await d.deliverPending(), { delivered: 1, failed: 0, deadLettered: 0, waiting: 0, requests: 1 });
      assert.notEqual((await store.listEvents({ type: "t.dead" }))[0].deliveredAt, null);
      assert.equal(bad.got[3].headers["webhook-id"], bad.got[0].headers["webhook-id"], "the same delivery id: the receiver de-duplicates on it");

      const audit = [];
      for await (const a of auditEntries(t.db)) if (a.subject === w.webhook.id) audit.push(a);
      assert.deepEqual(
        audit.map((a) => [a.action, a.actor]),
        [
          ["webhook.created", "olga"],
          ["webhook.dead-letters.retried", "olga"],
        ],
      );
      assert.deepEqual(audit[1].details, { deliveryIds: [deliveryId(e.id, w.webhook.id)], count: 1 });
      assert.ok(!JSON.stringify(audit).includes(secrets.secretFor(w.webhook.id).slice(6)), "never the secret");
    });

    test("issue 15 §6: two servers on one DB never send a delivery at once; a dead server's claims are taken over when they run out", { timeout: 10 * 60_000 }, async () => {
      await drain();
      const gate = await open("gate");
      const w = await registerWebhook(store, secrets, { url: gate.url, eventTypes: ["t.two"] }, loopback);
      const events = [];
      for (let i = 0; i < 3; i++) events.push((await store.enqueueEvent({ type: "t.two", subject: `t${i}`, payload: i }))!);
      const other = new Store(t.reopen(), { now: () => NOW }); // a second server process: its own connection
      const a = new WebhookDispatcher({ store, secrets, addresses: loopback, clock: () => 0 });
      const b = new WebhookDispatcher({ store: other, secrets, addresses: loopback, clock: () => 0 });
      const first = a.deliverPending();
      await until("server A's requests reach the receiver", () => gate.got.length >= 1);
      // Server B's pass while A's requests are in flight: everything due is claimed by A.
      const second = await b.deliverPending();
      assert.deepEqual([second.requests, second.delivered, second.failed], [0, 0, 0]);
      await until("server A's requests all reach the receiver", () => gate.got.length >= 3);
      gate.release();
      assert.equal((await first).delivered, 3);
      assert.deepEqual(ids(gate.got), events.map((e) => deliveryId(e.id, w.webhook.id)).sort(), "each delivery sent exactly once");

      // A server that claimed deliveries and died: nobody sends them before its claim runs out; then another server does.
      const e4 = (await other.enqueueEvent({ type: "t.two", subject: "t4", payload: 4 }))!;
      await other.fanOutEvent(e4.id, [w.webhook.id], 0);
      const stolen = await other.claimWebhookDeliveries({ webhookId: w.webhook.id, limit: 10, now: 0, owner: "crashed-server:1", leaseUntil: 50_000 });
      assert.deepEqual(
        stolen.map((s) => s.eventId),
        [e4.id],
      );
      assert.deepEqual(await other.claimWebhookDeliveries({ webhookId: w.webhook.id, limit: 10, now: 0, owner: "another:1", leaseUntil: 50_000 }), [], "claimed once");
      assert.equal((await new WebhookDispatcher({ store, secrets, addresses: loopback, clock: () => 49_999 }).deliverPending()).requests, 0);
      const takeover = new WebhookDispatcher({ store: other, secrets, addresses: loopback, clock: () => 50_000 }).deliverPending();
      await until("the takeover's request", () => gate.got.length >= 4);
      gate.release();
      assert.equal((await takeover).delivered, 1);
      assert.equal(gate.got.length, 4);
    });

    test("issue 15 §6: the upgrade (migration 0014) keeps who acknowledged what and the schedule; the rest is delivered", async () => {
      const old = await engine.create();
      try {
        const names = Object.keys(migrations(engine.name));
        const before = names[names.indexOf("0014_webhook_queue") - 1];
        assert.equal((await migratorFor(old.db).migrateTo(before)).error, undefined);
        const rec = await open([200]);
        const s0 = new Store(old.db, { now: () => NOW });
        const acked = await s0.addWebhook({ url: rec.url, eventTypes: ["*"], secretRef: secrets.ref });
        const owed = await s0.addWebhook({ url: rec.url, eventTypes: ["*"], secretRef: secrets.ref });
        const done = (await s0.enqueueEvent({ type: "t.old", subject: "done", payload: null }))!;
        const half = (await s0.enqueueEvent({ type: "t.old", subject: "half", payload: null }))!;
        const raw = old.db.withTables<{ webhook_deliveries: { event_id: number; webhook_id: string; delivered_at: number } }>();
        for (const [e, w] of [
          [done, acked],
          [done, owed],
          [half, acked],
        ] as const)
          await raw.insertInto("webhook_deliveries").values({ event_id: e.id, webhook_id: w.id, delivered_at: NOW }).execute();
        await old.db.updateTable("events").set({ delivered_at: NOW }).where("id", "=", done.id).execute();
        await old.db.updateTable("events").set({ attempts: 2, next_attempt_at: 7000 }).where("id", "=", half.id).execute();
        await migrateToLatest(old.db);
        const store1 = new Store(old.db, { now: () => NOW });
        assert.deepEqual([...(await store1.webhookAcks(done.id))].sort(), [acked.id, owed.id].sort());
        assert.deepEqual([...(await store1.webhookAcks(half.id))], [acked.id]);
        const d = (clock: number) => new WebhookDispatcher({ store: store1, secrets, addresses: loopback, clock: () => clock });
        assert.equal((await d(6999).deliverPending()).requests, 0, "the old schedule holds");
        assert.deepEqual(await d(7000).deliverPending(), { delivered: 1, failed: 0, deadLettered: 0, waiting: 0, requests: 1 });
        assert.deepEqual(ids(rec.got), [deliveryId(half.id, owed.id)], "only what was owed");
      } finally {
        await old.drop();
      }
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

    test("issue 15 §6: creating and disabling a webhook are audited with who, which webhook and where — never its path, query or secret", async () => {
      const noDns = new WebhookAddressPolicy({ resolve: resolverOf({ "hooks.example.com": ["93.184.215.14"] }) });
      const { webhook, secret } = await registerWebhook(store, secrets, { url: "https://hooks.example.com:8443/in?token=receiver-token-123", eventTypes: ["card.expired"] }, noDns, "olga");
      assert.equal(await disableWebhook(store, webhook.id, "arno"), true);
      assert.equal(await disableWebhook(store, webhook.id, "arno"), false, "already disabled: nothing to do, nothing audited");
      const audit = [];
      for await (const a of auditEntries(t.db)) if (a.subject === webhook.id) audit.push(a);
      assert.deepEqual(
        audit.map((a) => [a.action, a.actor, a.details]),
        [
          ["webhook.created", "olga", { webhookId: webhook.id, scheme: "https", host: "hooks.example.com:8443", eventTypes: ["card.expired"] }],
          ["webhook.disabled", "arno", { webhookId: webhook.id }],
        ],
      );
      const text = JSON.stringify(audit);
      assert.ok(!text.includes("receiver-token-123") && !text.includes(secret.slice(6)));
    });

    test("issue 9 §7: loopback, private, link-local, CGNAT, unspecified and metadata addresses are refused unless allow-listed", async () => {
      const noDns = new WebhookAddressPolicy({ resolve: resolverOf({}) });
      const refused = [
        ["http://127.0.0.1:8080/h", /loopback/],
        ["http://2130706433/h", /loopback/], // 127.0.0.1 spelled as a number
        ["http://localhost:9000/h", /loopback/],
        ["http://[::1]/h", /loopback/],
        ["http://[::ffff:127.0.0.1]/h", /loopback/],
        ["http://10.1.2.3/h", /private address \(10\.0\.0\.0\/8\)/],
        ["http://172.20.0.1/h", /private/],
        ["https://192.168.1.10/h", /private/],
        ["http://[fd12:3456::1]/h", /private address \(fc00::\/7\)/],
        ["http://169.254.169.254/latest/meta-data/", /cloud metadata/],
        ["http://[fd00:ec2::254]/", /cloud metadata/],
        ["http://169.254.10.1/h", /link-local/],
        ["http://[fe80::1]/h", /link-local/],
        ["http://100.64.0.1/h", /CGNAT/],
        ["http://0.0.0.0/h", /unspecified/],
        ["http://[::]/h", /unspecified/],
        ["http://[64:ff9b::a00:1]/h", /private/], // NAT64 of 10.0.0.1
        ["http://[2002:c0a8:0101::1]/h", /private/], // 6to4 of 192.168.1.1
        ["http://224.0.0.1/h", /multicast/],
      ] as const;
      for (const [url, why] of refused) await assert.rejects(registerWebhook(store, secrets, { url, eventTypes: ["*"] }, noDns), (e) => e instanceof WebhookError && why.test(e.message), url);
      // The default policy (no allow-list) refuses too; an allow-list permits exactly its ranges.
      await assert.rejects(registerWebhook(store, secrets, { url: "http://127.0.0.1:1/h", eventTypes: ["*"] }), /loopback/);
      const allowed = new WebhookAddressPolicy({ allow: ["127.0.0.1/32", "10.20.0.0/16"], resolve: resolverOf({}) });
      await registerWebhook(store, secrets, { url: "http://127.0.0.1:1/h", eventTypes: ["t.allowed"] }, allowed);
      await registerWebhook(store, secrets, { url: "http://10.20.3.4/h", eventTypes: ["t.allowed"] }, allowed);
      await assert.rejects(registerWebhook(store, secrets, { url: "http://127.0.0.2/h", eventTypes: ["*"] }, allowed), /loopback/);
      await assert.rejects(registerWebhook(store, secrets, { url: "http://10.21.0.1/h", eventTypes: ["*"] }, allowed), /private/);
      // Public addresses are fine, and so is a name that resolves to one (or does not resolve yet: checked at send).
      const dns = new WebhookAddressPolicy({ resolve: resolverOf({ "hooks.example.com": ["93.184.215.14"], "intranet.example.com": ["93.184.215.14", "10.0.0.7"] }) });
      await registerWebhook(store, secrets, { url: "https://93.184.215.14/h", eventTypes: ["t.public"] }, dns);
      await registerWebhook(store, secrets, { url: "https://hooks.example.com/h", eventTypes: ["t.public"] }, dns);
      await registerWebhook(store, secrets, { url: "https://not-yet.example.com/h", eventTypes: ["t.public"] }, dns);
      // A name any of whose addresses is refused is refused at registration, with a clear reason.
      await assert.rejects(registerWebhook(store, secrets, { url: "https://intranet.example.com/h", eventTypes: ["*"] }, dns), /resolves to a private address/);
      for (const h of await store.listWebhooks()) await store.disableWebhook(h.id);
    });

    test("issue 9 §7: the address is checked at every send, on what the name resolves to then (DNS rebinding)", async () => {
      await drain();
      const rec = await open([204]);
      const port = new URL(rec.url).port;
      // Registered while the name pointed at a public address ...
      const answers: Record<string, string[]> = { "hooks.rebind.example": ["93.184.215.14"] };
      const policy = new WebhookAddressPolicy({ resolve: resolverOf(answers) });
      await registerWebhook(store, secrets, { url: `http://hooks.rebind.example:${port}/hook`, eventTypes: ["t.rebind"] }, policy);
      // ... it now points at the service's own network: the delivery is refused, recorded, and no request is made.
      answers["hooks.rebind.example"] = ["10.0.0.1"];
      await store.enqueueEvent({ type: "t.rebind", subject: "s", payload: null });
      const errors: string[] = [];
      const d = new WebhookDispatcher({ store, secrets, addresses: policy, onFailure: (f) => errors.push(f.error) });
      const pass = await d.deliverPending();
      assert.deepEqual([pass.delivered, pass.failed, pass.requests], [0, 1, 1]);
      assert.equal(errors.length, 1);
      assert.match(errors[0], /webhook address refused: the host resolves to a private address \(10\.0\.0\.0\/8\)/);
      assert.ok(!errors[0].includes("rebind.example") && !errors[0].includes("10.0.0.1"), "the error names the range, not the URL or the address");
      const [e] = await store.listEvents({ type: "t.rebind" });
      assert.match(e.lastError ?? "", /address refused/);
      assert.equal(rec.got.length, 0);
      // Loopback the same way, unless allow-listed: then the connection goes to the address that was checked (the
      // name exists only in the injected resolver, so the request reached the receiver through it).
      answers["hooks.rebind.example"] = ["127.0.0.1"];
      await drain();
      await registerWebhook(
        store,
        secrets,
        { url: `http://hooks.rebind.example:${port}/hook`, eventTypes: ["t.rebind2"] },
        new WebhookAddressPolicy({ resolve: resolverOf({ "hooks.rebind.example": ["93.184.215.14"] }) }),
      );
      await store.enqueueEvent({ type: "t.rebind2", subject: "s", payload: null });
      const strict = new WebhookDispatcher({ store, secrets, addresses: policy, clock: () => 0 });
      assert.equal((await strict.deliverPending()).failed, 1);
      assert.equal(rec.got.length, 0);
      const permitted = new WebhookDispatcher({ store, secrets, clock: () => 10 ** 12, addresses: new WebhookAddressPolicy({ allow: ["127.0.0.1/32"], resolve: resolverOf(answers) }) });
      assert.equal((await permitted.deliverPending()).delivered, 1);
      assert.equal(rec.got.length, 1);
      assert.equal(rec.got[0].headers.host, `hooks.rebind.example:${port}`, "the request still names the registered host");
    });
  });
}

/** An injected resolver: the addresses of each name, ENOTFOUND for any other (no real DNS in tests). */
function resolverOf(table: Record<string, string[]>) {
  return async (name: string): Promise<ResolvedAddress[]> => {
    const list = table[name];
    if (!list) throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${name}`), { code: "ENOTFOUND" });
    return list.map((address) => ({ address, family: address.includes(":") ? 6 : 4 }));
  };
}

test("secrets: derived, per webhook and per server secret, in the Standard Webhooks form", () => {
  const s = new WebhookSecrets(Buffer.alloc(32, 7));
  // Deterministic: the same server secret derives the same webhook secret (so none is stored) ...
  assert.equal(new WebhookSecrets(Buffer.alloc(32, 7)).secretFor("w1"), s.secretFor("w1"));
  assert.equal(s.secretFor("w1"), "whsec_" + createHmac("sha256", Buffer.alloc(32, 7)).update("cardkms/webhook-secret/v1\0w1").digest("base64"));
  // ... and distinct per webhook and per server secret.
  assert.notEqual(s.secretFor("w1"), s.secretFor("w2"));
  assert.notEqual(new WebhookSecrets(Buffer.alloc(32, 8)).secretFor("w1"), s.secretFor("w1"));
  assert.notEqual(new WebhookSecrets(Buffer.alloc(32, 8)).ref, s.ref);
  assert.throws(() => new WebhookSecrets(Buffer.alloc(16)), /at least 32 bytes/);
  const d = new WebhookDispatcher({ store: undefined as unknown as Store, secrets: s, backoffBaseMs: 1000, backoffMaxMs: 5000 });
  assert.deepEqual(
    [1, 2, 3, 4, 10].map((n) => d.backoffMs(n)),
    [1000, 2000, 4000, 5000, 5000],
  );
  assert.throws(() => new WebhookDispatcher({ store: undefined as unknown as Store, secrets: s, maxAttempts: 0 }), WebhookError);
});

test("issue 15 §6: the signature is Standard Webhooks' (its published test vector), and a receiver refuses what is stale, altered or replayed", () => {
  // The vector every Standard Webhooks library checks against.
  const vector = { secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", id: "msg_p5jXN8AQM9LWM0D4loKWxJek", ts: 1614265330, body: '{"test": 2432232314}' };
  assert.equal(webhookSignature(vector.secret, vector.id, vector.ts, vector.body), "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");

  const secret = new WebhookSecrets(Buffer.alloc(32, 9)).secretFor("w1");
  const body = JSON.stringify({ id: 7, type: "card.expired", subject: "c1", payload: { cardId: "c1" }, createdAt: 1 });
  const at = 1_780_000_000;
  const headers = (id = "msg_7_w1", ts = at, b = body, s = secret) => ({ "webhook-id": id, "webhook-timestamp": String(ts), "webhook-signature": `v1,${webhookSignature(s, id, ts, b)}` });
  const refused = (why: WebhookRefusal) => (e: unknown) => e instanceof WebhookVerificationError && e.reason === why;

  const cache = new WebhookReplayCache();
  const ok = verifyWebhook({ secret, headers: headers(), body, now: at + 10, replay: cache });
  assert.deepEqual([ok.id, ok.timestamp, ok.event.type], ["msg_7_w1", at, "card.expired"]);
  // The same delivery again (a replay, or the issuer's retry of one whose answer was lost): refused as a duplicate.
  assert.throws(() => verifyWebhook({ secret, headers: headers(), body, now: at + 20, replay: cache }), refused("duplicate"));
  // Recorded and replayed after the tolerance window: stale, whatever the cache remembers; from the future: refused.
  assert.throws(() => verifyWebhook({ secret, headers: headers("msg_8_w1"), body, now: at + 301 }), refused("stale"));
  assert.throws(() => verifyWebhook({ secret, headers: headers("msg_8_w1"), body, now: at - 301 }), refused("future"));
  assert.equal(verifyWebhook({ secret, headers: headers("msg_8_w1"), body, now: at + 300 }).id, "msg_8_w1", "inside the window");
  // The timestamp cannot be refreshed without the key: the signature covers it.
  const replayed = { ...headers("msg_9_w1", at), "webhook-timestamp": String(at + 1000) };
  assert.throws(() => verifyWebhook({ secret, headers: replayed, body, now: at + 1000 }), refused("signature"));
  // Altered body, another webhook's secret, missing or malformed headers.
  assert.throws(() => verifyWebhook({ secret, headers: headers(), body: body.replace("c1", "c2"), now: at }), refused("signature"));
  assert.throws(() => verifyWebhook({ secret: new WebhookSecrets(Buffer.alloc(32, 9)).secretFor("w2"), headers: headers(), body, now: at }), refused("signature"));
  assert.throws(() => verifyWebhook({ secret, headers: { ...headers(), "webhook-signature": undefined }, body, now: at }), refused("headers"));
  assert.throws(() => verifyWebhook({ secret, headers: { ...headers(), "webhook-timestamp": "soon" }, body, now: at }), refused("headers"));
  assert.throws(() => verifyWebhook({ secret, headers: headers("msg.7.w1"), body, now: at }), refused("headers"));
  // Several signatures (a secret being rotated): one that matches is enough; an old-style v1 entry is ignored.
  const two = { ...headers("msg_10_w1"), "webhook-signature": `v1,AAAA ${headers("msg_10_w1")["webhook-signature"]}` };
  assert.equal(verifyWebhook({ secret, headers: two, body, now: at }).id, "msg_10_w1");
  // A secret issued before (shown in base64url) is the same key.
  const urlSafe = secret.replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  assert.equal(verifyWebhook({ secret: urlSafe, headers: headers("msg_11_w1"), body, now: at }).id, "msg_11_w1");
});
