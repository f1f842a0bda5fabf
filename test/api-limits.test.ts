// Issue 9 §2 and §7 through the API, as the server process wires it (config.ts limits, metrics, webhooks):
//
//   - one client flooding a card's public login cannot lock other cards out (per-client rate limit, handshakes
//     bounded per card and per card and client, the oldest retired), nor lock out the card's own terminal; many
//     clients flooding one card still leave every other card its logins;
//   - a card holds at most terminalTokensPerCard live tokens, a new one retiring the oldest;
//   - the public login answers an unknown card and one that is not active alike (no oracle of card IDs);
//   - /metrics answers auditor tokens only, or a listener of its own on loopback; the refusals are counted there;
//   - webhooks to loopback are refused by default and permitted by the config's allow-list.
// Client addresses are simulated with app.inject's remoteAddress.
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import type { CardRuntime } from "../src/card/runtime.ts";
import { transmitFollowing } from "../src/protocol/apdu-client.ts";
import { DEFAULT_CONFIG } from "../src/server/config.ts";
import { testEngines } from "./support/store-testing.ts";
import { api, apiEnvFor, authenticate, expect, issueAndPersonalise, type ApiEnv, type ApiEnvOptions } from "./api-env.ts";
import { tempDir } from "./helpers.ts";
import { startTestServer } from "./terminal-server.ts";

const engine = testEngines()[0];
const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
const unhex = (s: string) => new Uint8Array(Buffer.from(s, "hex"));

/** POST from a given client address (the terminal's or an attacker's). */
const postFrom = (env: ApiEnv, remoteAddress: string, url: string, body: unknown = {}) => env.server.app.inject({ method: "POST", url, payload: body as object, remoteAddress });

/** A card login split in its two halves, from one client address: begin, then (later) finish with the card's answers. */
async function beginLogin(env: ApiEnv, cardId: string, remoteAddress: string) {
  return expect(await postFrom(env, remoteAddress, `/v1/cards/${cardId}/auth`), 201) as { sessionId: string; apdus: string[] };
}
async function finishLogin(env: ApiEnv, cardId: string, card: CardRuntime, start: { sessionId: string; apdus: string[] }, remoteAddress: string) {
  const responses: string[] = [];
  for (const a of start.apdus) responses.push(hex(await transmitFollowing((x) => card.transmit(x), unhex(a))));
  const r = await postFrom(env, remoteAddress, `/v1/cards/${cardId}/auth/${start.sessionId}`, { responses });
  if (r.statusCode === 200) for (const a of r.json().apdus as string[]) await transmitFollowing((x) => card.transmit(x), unhex(a));
  return r;
}

async function metricsText(env: ApiEnv): Promise<string> {
  const r = await env.server.app.inject({ method: "GET", url: "/metrics", headers: { authorization: `Bearer ${env.tokens.auditor}` } });
  assert.equal(r.statusCode, 200, r.body);
  return r.body;
}

/** A server and two personalised cards, A and B, closed when the test ends. */
async function twoCards(t: TestContext, o: ApiEnvOptions = {}) {
  const { env, cards } = await apiEnvFor(t, engine, { logLevel: "silent", ...o });
  const a = await issueAndPersonalise(env, "Alice Card");
  const b = await issueAndPersonalise(env, "Bob Card");
  cards.push(a.card, b.card);
  return { env, a, b };
}

const counterValue = (text: string, series: string) => Number(new RegExp(`^${series.replace(/[{}"/.:]/g, "\\$&")} (\\d+)$`, "m").exec(text)?.[1] ?? 0);

test("after 1,005 anonymous handshakes from one client against card A, card B still logs in at once, and so does A's own terminal", { timeout: 10 * 60_000 }, async (t) => {
  const { env, a, b } = await twoCards(t);
  // Card A's terminal begins a login before the flood, from its own address.
  const pendingA = await beginLogin(env, a.cardId, "192.0.2.10");

  const statuses: Record<number, number> = {};
  const t0 = performance.now();
  for (let i = 0; i < 1005; i++) {
    const r = await postFrom(env, "198.51.100.66", `/v1/cards/${a.cardId}/auth`);
    statuses[r.statusCode] = (statuses[r.statusCode] ?? 0) + 1;
    if (r.statusCode === 429) assert.equal(r.json().type, "https://cardkms.dev/problems/rate-limited");
  }
  t.diagnostic(`1,005 handshakes in ${Math.round(performance.now() - t0)} ms: ${JSON.stringify(statuses)}`);
  const { rateLimitMax } = DEFAULT_CONFIG.limits;
  assert.deepEqual(statuses, { 201: rateLimitMax, 429: 1005 - rateLimitMax }, "the client is held to its rate; nobody else is");

  // Card B, through another client: at once, no 429.
  expect(await authenticate(api(env).post, b.cardId, b.card), 200);
  // The flood retired only the flooder's handshakes for A: A's own pending login completes, and A logs in again.
  expect(await finishLogin(env, a.cardId, a.card, pendingA, "192.0.2.10"), 200);
  expect(await finishLogin(env, a.cardId, a.card, await beginLogin(env, a.cardId, "192.0.2.10"), "192.0.2.10"), 200);

  const m = await metricsText(env);
  assert.equal(counterValue(m, 'cardkms_http_refusals_total{reason="rate-limited",route="/v1/cards/:id/auth"}'), 1005 - rateLimitMax);
  assert.equal(counterValue(m, 'cardkms_sessions_retired_total{table="handshakes",bound="card-client"}'), rateLimitMax - DEFAULT_CONFIG.limits.handshakesPerCardClient);
});

test("1,005 handshakes against card A from 1,005 addresses: A's oldest are retired, the table never fills, B and A log in at once", { timeout: 10 * 60_000 }, async (t) => {
  const { env, a, b } = await twoCards(t);
  const pendingB = await beginLogin(env, b.cardId, "192.0.2.20");
  const sessions: string[] = [];
  for (let i = 0; i < 1005; i++) sessions.push((await beginLogin(env, a.cardId, `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`)).sessionId);
  // B's pending login was not pushed out, and B begins another at once.
  expect(await finishLogin(env, b.cardId, b.card, pendingB, "192.0.2.20"), 200);
  expect(await finishLogin(env, b.cardId, b.card, await beginLogin(env, b.cardId, "192.0.2.20"), "192.0.2.20"), 200);
  // A holds only its newest handshakes: the first is gone, A's terminal logs in at once.
  const gone = await postFrom(env, "10.0.0.0", `/v1/cards/${a.cardId}/auth/${sessions[0]}`, { responses: ["9000", "9000", "9000"] });
  expect(gone, 404);
  expect(await finishLogin(env, a.cardId, a.card, await beginLogin(env, a.cardId, "192.0.2.10"), "192.0.2.10"), 200);
  const m = await metricsText(env);
  assert.ok(counterValue(m, 'cardkms_sessions_retired_total{table="handshakes",bound="card"}') >= 1005 - DEFAULT_CONFIG.limits.handshakesPerCard);
});

test("a card holds at most terminalTokensPerCard live tokens: a new login retires its oldest; other cards keep theirs", { timeout: 10 * 60_000 }, async (t) => {
  const { env, a, b } = await twoCards(t, { limits: { terminalTokensPerCard: 2 } });
  const { post, get } = api(env);
  const tokenOf = async (cardId: string, card: CardRuntime) => (expect(await authenticate(post, cardId, card), 200) as { token: string }).token;
  const tb = await tokenOf(b.cardId, b.card);
  const ta = [await tokenOf(a.cardId, a.card), await tokenOf(a.cardId, a.card), await tokenOf(a.cardId, a.card)];
  expect(await get(`/v1/cards/${a.cardId}/packages`, ta[0]), 401);
  expect(await get(`/v1/cards/${a.cardId}/packages`, ta[1]), 200);
  expect(await get(`/v1/cards/${a.cardId}/packages`, ta[2]), 200);
  expect(await get(`/v1/cards/${b.cardId}/packages`, tb), 200);
  assert.equal(counterValue(await metricsText(env), 'cardkms_sessions_retired_total{table="terminal-tokens",bound="card"}'), 1);
});

test("the public login answers an unknown card and an inactive one the same way", { timeout: 10 * 60_000 }, async (t) => {
  const { env } = await apiEnvFor(t, engine, { logLevel: "silent" });
  const { post } = api(env);
  const user = expect(await post("/v1/users", env.tokens.operator, { personalData: { commonName: "Not Yet" } }), 201) as { id: string };
  const issued = (expect(await post("/v1/cards", env.tokens.operator, { userId: user.id }), 201) as { card: { id: string; status: string } }).card;
  assert.equal(issued.status, "issued", "issued, not personalised: not active");
  const unknownId = randomBytes(8).toString("hex");
  const inactive = await post(`/v1/cards/${issued.id}/auth`);
  const unknown = await post(`/v1/cards/${unknownId}/auth`);
  assert.equal(inactive.statusCode, unknown.statusCode);
  assert.equal(inactive.statusCode, 404);
  const [pi, pu] = [inactive.json(), unknown.json()] as Record<string, string>[];
  assert.deepEqual(Object.keys(pi).sort(), Object.keys(pu).sort());
  assert.deepEqual({ ...pi, detail: pi.detail.replace(issued.id, "ID"), instance: "" }, { ...pu, detail: pu.detail.replace(unknownId, "ID"), instance: "" });
});

test("/metrics answers auditor (and admin) tokens only", { timeout: 10 * 60_000 }, async (t) => {
  const { env } = await apiEnvFor(t, engine, { logLevel: "silent" });
  const get = (token?: string) => env.server.app.inject({ method: "GET", url: "/metrics", headers: token ? { authorization: `Bearer ${token}` } : {} });
  expect(await get(), 401);
  expect(await get("ckms_not-a-real-token-at-all"), 401);
  expect(await get(env.tokens.operator), 403);
  assert.equal((await get(env.tokens.auditor)).statusCode, 200);
  assert.match((await get(env.tokens.admin)).body, /cardkms_http_errors_total/);
});

test("metrics.access loopback: /metrics on a listener of its own, bound to loopback, and not on the API", { timeout: 10 * 60_000 }, async () => {
  const { server } = await startTestServer(tempDir("cardkms-metrics-"), { config: { metrics: { access: "loopback", host: "127.0.0.1", port: 0 } } });
  try {
    assert.match(String(server.metricsUrl), /^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    const scraped = await fetch(server.metricsUrl!);
    assert.equal(scraped.status, 200);
    assert.match(await scraped.text(), /cardkms_http_request_duration_seconds/);
    assert.equal((await fetch(server.metricsUrl!.replace("/metrics", "/healthz"))).status, 404, "nothing else is served there");
    assert.equal((await fetch(`${server.url}/metrics`)).status, 404, "not on the API");
  } finally {
    await server.close();
  }
  assert.equal(
    await fetch(server.metricsUrl!).then(
      () => "open",
      () => "closed",
    ),
    "closed",
    "closed with the server",
  );
});

test("webhooks: a loopback URL is refused by default (400 naming the range) and accepted when config webhooks.allowAddresses permits it", { timeout: 10 * 60_000 }, async (t) => {
  const hook = { url: "http://127.0.0.1:9/hook", eventTypes: ["*"] };
  const strict = (await apiEnvFor(t, engine, { logLevel: "silent" })).env;
  const p = expect(await api(strict).post("/v1/webhooks", strict.tokens.operator, hook), 400);
  assert.equal(p.type, "https://cardkms.dev/problems/invalid-webhook");
  assert.match(String(p.detail), /loopback address \(127\.0\.0\.0\/8\).*webhooks\.allowAddresses/);
  const allowing = (await apiEnvFor(t, engine, { logLevel: "silent", webhooks: { allowAddresses: ["127.0.0.1/32"] } })).env;
  expect(await api(allowing).post("/v1/webhooks", allowing.tokens.operator, hook), 201);
  expect(await api(allowing).post("/v1/webhooks", allowing.tokens.operator, { ...hook, url: "http://10.0.0.1/hook" }), 400);
});
