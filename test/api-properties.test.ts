// Issue 3 "Reliability": malformed JSON, unknown fields, wrong types, oversized bodies, unknown IDs get a 4xx
// problem+json, never a 500, on every route. Property-based (fast-check) over EVERY route the issuer server
// registers — its own, the event and CA routes, and the shell's — found from Fastify's route list and checked
// against the OpenAPI document, so a route added later is fuzzed without touching this file.
//
// Issue 9 §3: bodies built to amplify (80,000 unknown keys, deep arrays, long strings, long arrays) get a small
// 4xx — under 16 KB — on every route, never a 5xx: validation stops at the first error and problem bodies are bounded.
//
// Each request carries valid credentials for one of the route's roles (a terminal token bound to a real,
// authenticated card for terminal routes), so the fuzz reaches past authentication into validation and the
// handlers. Path parameters mix real IDs (so handlers run on existing rows) with random and hostile ones.
// Bodies are built from the route's own schema and then broken: unknown fields, wrong types, random JSON,
// JSON syntax errors, wrong media types, oversized payloads.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { testEngines } from "./support/store-testing.ts";
import { api, authenticate, expect, issueAndPersonalise, issuerApiEnv, type ApiEnv } from "./api-env.ts";
import type { CardRuntime } from "../src/card/runtime.ts";

const RUNS_PER_ROUTE = 45;

let env: ApiEnv;
let card: CardRuntime;
const known: Record<string, string[]> = {};
let terminalToken = "";

before(async () => {
  env = await issuerApiEnv(testEngines()[0], { logLevel: "silent" });
  const { post } = api(env);
  const issued = await issueAndPersonalise(env, "Fuzz Target");
  card = issued.card;
  const cred = expect(await post(`/v1/cards/${issued.cardId}/credentials`, env.tokens.operator, { slot: "9a", alg: "P256" }), 201) as { keyPairId: string; serial: string };
  terminalToken = (expect(await authenticate(post, issued.cardId, card), 200) as { token: string }).token;
  const pending = expect(await post("/v1/users", env.tokens.operator, { personalData: { commonName: "Pending Card" } }), 201) as { id: string };
  const pendingCard = (expect(await post("/v1/cards", env.tokens.operator, { userId: pending.id }), 201) as { card: { id: string } }).card.id;
  const online = expect(await post(`/v1/cards/${issued.cardId}/credentials/${cred.keyPairId}/online`, env.tokens.operator), 201) as { sessionId: string };
  Object.assign(known, {
    id: [issued.cardId, pendingCard, issued.user.id as string, pending.id],
    userId: [issued.user.id as string, pending.id],
    cardId: [issued.cardId, pendingCard],
    keyPairId: [cred.keyPairId],
    serial: [cred.serial],
    sessionId: [online.sessionId],
    seq: ["1", "2"],
  });
});

after(async () => {
  card?.close();
  await env?.close();
});

interface Schema {
  type?: string | string[];
  properties?: Record<string, Schema>;
  required?: string[];
  items?: Schema;
  enum?: unknown[];
  const?: unknown;
  pattern?: string;
  minItems?: number;
  maxItems?: number;
  oneOf?: Schema[];
  anyOf?: Schema[];
  $ref?: string;
}

/** Values that look right for a field of this schema (so handlers run), by schema, with known IDs mixed in. */
function valid(s: Schema | undefined, name = "", depth = 0): fc.Arbitrary<unknown> {
  if (!s || depth > 4) return fc.jsonValue({ maxDepth: 2 });
  // RSA key generation takes seconds: keep the fuzz fast with the EC algorithms.
  if (name === "alg") return fc.constantFrom("P256", "P384");
  if (s.const !== undefined) return fc.constant(s.const);
  if (s.enum) return fc.constantFrom(...s.enum);
  const alts = s.oneOf ?? s.anyOf;
  if (alts?.length) return fc.oneof(...alts.map((a) => valid(a, name, depth + 1)));
  const type = Array.isArray(s.type) ? s.type.find((t) => t !== "null") : s.type;
  switch (type) {
    case "object": {
      const props = s.properties ?? {};
      const entries = Object.entries(props).map(([k, v]) => [k, valid(v, k, depth + 1)] as const);
      return fc.record(Object.fromEntries(entries), { requiredKeys: (s.required ?? []).filter((k) => k in props) });
    }
    case "array":
      return fc.array(valid(s.items, name, depth + 1), { minLength: s.minItems ?? 0, maxLength: Math.min(s.maxItems ?? 4, 4) });
    case "integer":
      return fc.integer({ min: -5, max: 5000 });
    case "number":
      return fc.double({ noNaN: true });
    case "boolean":
      return fc.boolean();
    case "string": {
      const k = known[name];
      const gen = s.pattern ? fc.stringMatching(new RegExp(s.pattern), { maxLength: 80 }) : fc.string({ maxLength: 40 });
      return k ? fc.oneof(fc.constantFrom(...k), gen) : gen;
    }
    default:
      return fc.jsonValue({ maxDepth: 2 });
  }
}

/** A valid-looking body, then broken in one of the ways a client gets it wrong. */
function body(schema: Schema | undefined): fc.Arbitrary<{ payload: string; contentType?: string }> {
  const json = (v: unknown) => ({ payload: JSON.stringify(v), contentType: "application/json" });
  const good = valid(schema);
  const wrongType = fc.oneof(fc.integer(), fc.boolean(), fc.constant(null), fc.string(), fc.array(fc.jsonValue({ maxDepth: 1 })), fc.double());
  return fc.oneof(
    good.map(json),
    fc
      .tuple(good, fc.string({ minLength: 1, maxLength: 12 }), fc.jsonValue({ maxDepth: 1 }))
      .map(([v, k, x]) => json(v && typeof v === "object" && !Array.isArray(v) ? { ...v, [`x_${k}`]: x } : { [`x_${k}`]: x })),
    fc.tuple(good, wrongType).map(([v, w]) => {
      if (!v || typeof v !== "object" || Array.isArray(v) || Object.keys(v).length === 0) return json(w);
      const keys = Object.keys(v);
      return json({ ...v, [keys[0]]: w });
    }),
    fc.jsonValue({ maxDepth: 3 }).map(json),
    fc.string({ maxLength: 60 }).map((t) => ({ payload: t, contentType: "application/json" })),
    good.map((v) => ({ payload: JSON.stringify(v).slice(0, -1), contentType: "application/json" })),
    fc.constant({ payload: "", contentType: "application/json" }),
    good.map((v) => ({ payload: JSON.stringify(v), contentType: "text/plain" })),
    fc.constantFrom(1, 2).map(() => ({ payload: JSON.stringify({ responses: ["9000".repeat(150_000)], pad: "x".repeat(1 << 20) }), contentType: "application/json" })),
  );
}

/** Path parameter values: real IDs, plausible-looking junk, and hostile strings. */
function param(name: string, schema: Schema | undefined): fc.Arbitrary<string> {
  const options: fc.Arbitrary<string>[] = [
    fc.string({ minLength: 1, maxLength: 30 }),
    fc.stringMatching(/^[0-9a-f]{16,40}$/),
    fc.constantFrom("..", "%00", "0", "-1", "ffffffffffffffffffffffffffffffff", "x".repeat(300), "' or 1=1 --", "😀", "9999999999999999999999"),
  ];
  if (schema?.pattern) options.push(fc.stringMatching(new RegExp(schema.pattern), { maxLength: 40 }));
  if (known[name]) options.push(fc.constantFrom(...known[name]));
  return fc.oneof(...options).filter((v) => v.length > 0);
}

/** fc.assert, with the failed assertion's own message in the report (node's runner does not print causes). */
async function assertProperty<T>(p: fc.IAsyncProperty<T>, o: fc.Parameters<T>): Promise<void> {
  try {
    await fc.assert(p, o);
  } catch (e) {
    const cause = (e as Error).cause;
    throw new Error(`${(e as Error).message}\n${cause instanceof Error ? cause.message : ""}`, { cause: e });
  }
}

const query = fc.dictionary(fc.constantFrom("after", "limit", "type", "status", "cardId", "headSeq", "headHash", "zzz"), fc.oneof(fc.string({ maxLength: 12 }), fc.nat().map(String)), { maxKeys: 3 });

test("every route answers bad input with a 4xx problem+json, never a 500", { timeout: 600_000 }, async (t) => {
  const doc = (await env.server.app.inject({ method: "GET", url: "/openapi.json" })).json() as {
    paths: Record<string, Record<string, { parameters?: { in: string; name: string; schema?: Schema }[]; requestBody?: { content?: Record<string, { schema?: Schema }> } }>>;
  };
  const shell = [
    { method: "GET", url: "/openapi.json", roles: [] },
    { method: "GET", url: "/metrics", roles: ["auditor"] },
    { method: "GET", url: "/healthz", roles: [] },
  ];
  const routes = [...env.server.routes, ...shell];
  // The OpenAPI document and the route list agree: nothing served goes unfuzzed.
  const fastifyPath = (p: string) => p.replace(/\{(\w+)\}/g, ":$1");
  for (const [path, ops] of Object.entries(doc.paths))
    for (const m of Object.keys(ops))
      assert.ok(
        routes.some((r) => r.url === fastifyPath(path) && r.method === m.toUpperCase()),
        `${m} ${path} in the route list`,
      );
  assert.ok(routes.length >= 25, `routes: ${routes.length}`);

  const tokenFor = (roles: string[]) => {
    if (roles.length === 0) return undefined;
    if (roles.includes("operator")) return env.tokens.operator;
    if (roles.includes("auditor")) return env.tokens.auditor;
    if (roles.includes("terminal")) return terminalToken;
    return env.tokens.admin;
  };
  let requests = 0;
  const statuses = new Map<number, number>();
  for (const route of routes) {
    const op = doc.paths[route.url.replace(/:(\w+)/g, "{$1}")]?.[route.method.toLowerCase()];
    const bodySchema = op?.requestBody?.content?.["application/json"]?.schema;
    const paramSchema = (n: string) => op?.parameters?.find((p) => p.in === "path" && p.name === n)?.schema;
    const names = [...route.url.matchAll(/:(\w+)/g)].map((m) => m[1]);
    const arb = fc.record({
      params: fc.tuple(...names.map((n) => param(n, paramSchema(n)))),
      body: body(bodySchema),
      query,
      auth: fc.constantFrom("role", "role", "role", "role", "admin", "none", "junk"),
    });
    await assertProperty(
      fc.asyncProperty(arb, async ({ params, body: b, query: q, auth }) => {
        let url = route.url;
        names.forEach((n, i) => (url = url.replace(`:${n}`, encodeURIComponent(params[i]))));
        const qs = new URLSearchParams(q).toString();
        const token = auth === "role" ? tokenFor(route.roles) : auth === "admin" ? env.tokens.admin : auth === "junk" ? "ckms_junkjunkjunkjunk" : undefined;
        const headers: Record<string, string> = {};
        if (token) headers.authorization = `Bearer ${token}`;
        const hasBody = route.method !== "GET";
        if (hasBody && b.contentType) headers["content-type"] = b.contentType;
        const r = await env.server.app.inject({ method: route.method as "GET", url: qs ? `${url}?${qs}` : url, headers, ...(hasBody ? { payload: b.payload } : {}) });
        requests++;
        statuses.set(r.statusCode, (statuses.get(r.statusCode) ?? 0) + 1);
        const where = `${route.method} ${url}${qs ? "?" + qs : ""} body ${b.payload.slice(0, 200)} -> ${r.statusCode} ${r.body.slice(0, 300)}`;
        assert.ok(r.statusCode < 500, where);
        if (r.statusCode >= 400) {
          assert.match(String(r.headers["content-type"]), /^application\/problem\+json/, where);
          const p = r.json() as { status: number; type: string; title: string };
          assert.equal(p.status, r.statusCode, where);
          assert.equal(typeof p.title, "string", where);
        }
      }),
      { numRuns: RUNS_PER_ROUTE, endOnFailure: true },
    );
  }
  t.diagnostic(`${routes.length} routes, ${requests} requests; statuses ${JSON.stringify([...statuses].sort((a, b) => a[0] - b[0]))}`);
  // The fuzz reached the handlers, not only the validators and the auth hook.
  assert.ok(requests >= routes.length * RUNS_PER_ROUTE, `requests: ${requests}`);
  for (const s of [200, 400, 401, 404]) assert.ok((statuses.get(s) ?? 0) > 0, `some ${s}s: ${JSON.stringify([...statuses])}`);
});

// ---- issue 9 §3: inputs that amplify --------------------------------------------------------------------------

/** The largest problem body any route may answer an amplifying request with. */
const MAX_ERROR_BODY = 16 * 1024;

/** Bodies built to make a server spend or answer much for little: each about 100-900 KB. */
function amplifiers(schema: Schema | undefined): { name: string; payload: string }[] {
  const wide = "{" + Array.from({ length: 80_000 }, (_, i) => `"k${i}":0`).join(",") + "}";
  const deep = (n: number) => "[".repeat(n) + "]".repeat(n);
  const long = JSON.stringify("x".repeat(860_000));
  const many = JSON.stringify(Array.from({ length: 80_000 }, () => "00"));
  const props = Object.keys(schema?.properties ?? {});
  const inEach = (v: string) => "{" + props.map((p) => `${JSON.stringify(p)}:${v}`).join(",") + "}";
  const list = [
    { name: "80,000 unknown keys", payload: wide },
    { name: "arrays 200,000 deep", payload: deep(200_000) },
    { name: "arrays 100,000 deep with __proto__", payload: "[".repeat(100_000) + '{"__proto__":{"x":1}}' + "]".repeat(100_000) },
    { name: "an 860 KB string", payload: long },
    { name: "an 860 KB key", payload: `{${long}:1}` },
    { name: "80,000 unknown keys, one level down", payload: `{"a":${wide}}` },
  ];
  if (props.length)
    list.push(
      { name: "each field 80,000 unknown keys", payload: inEach(wide.slice(0, Math.floor(800_000 / props.length / 11) * 11 - 1) + "}") },
      { name: "each field arrays 20,000 deep", payload: inEach(deep(Math.floor(40_000 / props.length))) },
      { name: "each field an 860 KB string", payload: inEach(JSON.stringify("x".repeat(Math.floor(860_000 / props.length)))) },
      { name: "each field 80,000 array items", payload: inEach(JSON.stringify(Array.from({ length: Math.floor(80_000 / props.length) }, () => "00"))) },
    );
  else list.push({ name: "80,000 array items", payload: many });
  return list;
}

test("every route answers bodies that amplify with a 4xx under 16 KB, never a 5xx (issue 9 §3)", { timeout: 600_000 }, async (t) => {
  const doc = (await env.server.app.inject({ method: "GET", url: "/openapi.json" })).json() as {
    paths: Record<string, Record<string, { parameters?: { in: string; name: string; schema?: Schema }[]; requestBody?: { content?: Record<string, { schema?: Schema }> } }>>;
  };
  const routes = [...env.server.routes, { method: "GET", url: "/openapi.json", roles: [] }, { method: "GET", url: "/metrics", roles: ["auditor"] }, { method: "GET", url: "/healthz", roles: [] }];
  const tokenFor = (roles: string[]) =>
    roles.length === 0 ? undefined : roles.includes("operator") ? env.tokens.operator : roles.includes("auditor") ? env.tokens.auditor : roles.includes("terminal") ? terminalToken : env.tokens.admin;
  let slowest = { ms: 0, where: "" };
  let largest = { bytes: 0, where: "" };
  let requests = 0;
  for (const route of routes) {
    const op = doc.paths[route.url.replace(/:(\w+)/g, "{$1}")]?.[route.method.toLowerCase()];
    const bodySchema = op?.requestBody?.content?.["application/json"]?.schema;
    let url = route.url;
    for (const [, n] of route.url.matchAll(/:(\w+)/g)) {
      const pattern = op?.parameters?.find((p) => p.in === "path" && p.name === n)?.schema?.pattern;
      const value = known[n]?.[0] ?? (pattern ? fc.sample(fc.stringMatching(new RegExp(pattern), { maxLength: 40 }), { numRuns: 1, seed: 9 })[0] : "x");
      url = url.replace(`:${n}`, encodeURIComponent(value));
    }
    const token = tokenFor(route.roles);
    for (const a of amplifiers(bodySchema)) {
      const t0 = performance.now();
      const r = await env.server.app.inject({
        method: route.method as "POST",
        url,
        payload: a.payload,
        headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
      });
      const ms = performance.now() - t0;
      requests++;
      const where = `${route.method} ${url} with ${a.name} (${a.payload.length} bytes) -> ${r.statusCode} ${r.body.length} bytes: ${r.body.slice(0, 200)}`;
      if (ms > slowest.ms) slowest = { ms, where };
      if (r.body.length > largest.bytes) largest = { bytes: r.body.length, where };
      assert.ok(r.statusCode >= 400 && r.statusCode < 500, where);
      assert.match(String(r.headers["content-type"]), /^application\/problem\+json/, where);
      assert.ok(Buffer.byteLength(r.body) < MAX_ERROR_BODY, where);
      assert.equal((r.json() as { status: number }).status, r.statusCode, where);
    }
  }
  t.diagnostic(
    `${routes.length} routes, ${requests} requests; slowest ${Math.round(slowest.ms)} ms: ${slowest.where.slice(0, 160)}; largest answer ${largest.bytes} bytes: ${largest.where.slice(0, 160)}`,
  );
});
