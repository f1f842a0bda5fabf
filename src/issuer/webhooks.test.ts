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
      await new WebhookDispatcher({ store, secrets, addresses: loopback }).deliverPending();
    };

    test("signed deliveries to subscribed webhooks; a failing receiver gets retries with backoff until it answers", async () => {
      await drain();
      const good = await open([204]);
      const flaky = await open([500, 500, 503, 503, 200]);
      const a = await registerWebhook(store, secrets, { url: good.url, eventTypes: ["keyset.expiring"] }, loopback);
      const b = await registerWebhook(store, secrets, { url: flaky.url, eventTypes: ["*"] }, loopback);
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
      const d = new WebhookDispatcher({ store, secrets, addresses: loopback, clock: () => clock, backoffBaseMs: 1000, onFailure: (f) => failures.push(f.error) });

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
      const restarted = new WebhookDispatcher({ store, secrets, addresses: loopback, clock: () => clock, backoffBaseMs: 1000, onFailure: (f) => failures.push(f.error) });
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
      await registerWebhook(store, secrets, { url: bad.url, eventTypes: ["t.stuck"] }, loopback);
      await registerWebhook(store, secrets, { url: good.url, eventTypes: ["t.fine"] }, loopback);
      const stuck = (await store.enqueueEvent({ type: "t.stuck", subject: "s", payload: null }))!;
      const fine = (await store.enqueueEvent({ type: "t.fine", subject: "f", payload: null }))!;
      const clock = 0;
      const d = new WebhookDispatcher({ store, secrets, addresses: loopback, clock: () => clock, batchSize: 1 });
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
      const w = await registerWebhook(store, secrets, { url: rec.url, eventTypes: ["certificate.expired"] }, loopback);
      const other = await registerWebhook(store, secrets, { url: rec.url, eventTypes: ["card.expiring"] }, loopback);
      await store.disableWebhook(other.webhook.id);
      await store.enqueueEvent({ type: "card.expiring", subject: "c", payload: null });
      const r = await new WebhookDispatcher({ store, secrets, addresses: loopback }).deliverPending();
      assert.deepEqual(r, { delivered: 1, failed: 0, waiting: 0, requests: 0 });
      assert.equal(rec.got.length, 0);
      await store.enqueueEvent({ type: "certificate.expired", subject: "x", payload: null });
      assert.equal((await new WebhookDispatcher({ store, secrets, addresses: loopback }).deliverPending()).requests, 1);
      assert.equal(rec.got[0].headers["x-cardkms-delivery"]?.toString().endsWith(`.${w.webhook.id}`), true);
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
      assert.deepEqual(await d.deliverPending(), { delivered: 0, failed: 3, waiting: 0, requests: 3 });
      assert.deepEqual(errors, ["timed out after 200 ms", "HTTP 302", "network error ECONNREFUSED"]);
      assert.equal(target.got.length, 0, "the redirect was not followed");
      assert.equal(redirect.got.length, 1);

      // A dispatcher holding another server secret refuses to sign for these webhooks: no request at all.
      await drain();
      const rec = await open([200]);
      await registerWebhook(store, secrets, { url: rec.url, eventTypes: ["t.foreign"] }, loopback);
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
      for (const [url, why] of refused)
        await assert.rejects(registerWebhook(store, secrets, { url, eventTypes: ["*"] }, noDns), (e) => e instanceof WebhookError && why.test(e.message), url);
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
      await registerWebhook(store, secrets, { url: `http://hooks.rebind.example:${port}/hook`, eventTypes: ["t.rebind2"] }, new WebhookAddressPolicy({ resolve: resolverOf({ "hooks.rebind.example": ["93.184.215.14"] }) }));
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
