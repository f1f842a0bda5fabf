import { test } from "node:test";
import assert from "node:assert/strict";
import { buildServer, type ServerOptions } from "./app.ts";
import { installAuth, newToken, type Principal } from "./auth.ts";
import { ApiProblem, boundedProblem, MAX_PROBLEM_BYTES, PROBLEM_TYPE_BASE } from "./problem.ts";

async function server(o: ServerOptions = {}) {
  const { app } = await buildServer(o);
  app.post(
    "/things",
    {
      schema: {
        body: { type: "object", additionalProperties: false, required: ["name"], properties: { name: { type: "string", maxLength: 10 }, n: { type: "integer" } } },
        response: { 201: { type: "object", properties: { id: { type: "string" } } }, "4xx": { $ref: "Problem#" } },
      },
    },
    async (req, reply) => {
      const b = req.body as { name: string };
      if (b.name === "taken") throw new ApiProblem(409, "conflict", "Conflict", "name taken");
      if (b.name === "boom") throw new Error("secret-key-material 0xDEADBEEF");
      return reply.code(201).send({ id: "t1" });
    },
  );
  await app.ready();
  return app;
}

const isProblem = (r: { statusCode: number; headers: Record<string, unknown>; json: () => Record<string, unknown> }, status: number) => {
  assert.equal(r.statusCode, status);
  assert.match(String(r.headers["content-type"]), /^application\/problem\+json/);
  const p = r.json();
  assert.equal(p.status, status);
  assert.equal(typeof p.type, "string");
  assert.equal(typeof p.title, "string");
  return p;
};

test("bad input gets problem+json 4xx, never a 500", async () => {
  const app = await server();
  const post = (payload: string, headers: Record<string, string> = { "content-type": "application/json" }) => app.inject({ method: "POST", url: "/things", payload, headers });
  isProblem(await post("{not json"), 400);
  isProblem(await post(""), 400);
  const unknown = isProblem(await post(JSON.stringify({ name: "a", extra: 1 })), 400);
  assert.ok(Array.isArray(unknown.errors));
  isProblem(await post(JSON.stringify({ name: 5 })), 400);
  isProblem(await post(JSON.stringify({ name: "x".repeat(11) })), 400);
  isProblem(await post(JSON.stringify({ name: "a" + "x".repeat(2 << 20) })), 413);
  isProblem(await post("name=a", { "content-type": "application/x-www-form-urlencoded" }), 415);
  isProblem(await app.inject({ method: "GET", url: "/nowhere" }), 404);
  isProblem(await post(JSON.stringify({ name: "taken" })), 409);
  assert.equal((await post(JSON.stringify({ name: "ok" }))).statusCode, 201);
  await app.close();
});

test("an unexpected error is a 500 problem that leaks nothing; metrics and OpenAPI are served", async () => {
  const app = await server({ metricsAccess: "public" });
  const r = await app.inject({ method: "POST", url: "/things", payload: { name: "boom" } });
  const p = isProblem(r, 500);
  assert.doesNotMatch(JSON.stringify(p), /DEADBEEF|secret/);
  const m = await app.inject({ method: "GET", url: "/metrics" });
  assert.match(m.body, /cardkms_http_errors_total\{status="500"\} 1/);
  assert.match(m.body, /cardkms_http_request_duration_seconds_bucket/);
  const doc = (await app.inject({ method: "GET", url: "/openapi.json" })).json();
  assert.equal(doc.openapi.startsWith("3."), true);
  assert.ok(doc.paths["/things"].post);
  await app.close();
});

// ---- issue 9: limits ---------------------------------------------------------------------------------------------

/** A body of `n` unknown keys: about 11 bytes a key, 870 KB for 80,000. */
const unknownKeys = (n: number) => JSON.stringify(Object.fromEntries(Array.from({ length: n }, (_, i) => [`k${i}`, 0])));

test("validation stops at the first error: 80,000 unknown keys answer one small 400, not 8.6 MB", async () => {
  const app = await server({ publicBodyLimit: 1 << 20 });
  const payload = unknownKeys(80_000);
  assert.ok(payload.length > 800_000);
  const r = await app.inject({ method: "POST", url: "/things", payload, headers: { "content-type": "application/json" } });
  const p = isProblem(r, 400);
  assert.ok(r.body.length < 1024, `${r.body.length} bytes`);
  // One error: validation stopped at the first (allErrors off), so the work is one key's, not 80,000 (timed by no test).
  assert.equal((p.errors as unknown[]).length, 1);
  await app.close();
});

test("a problem body stays under a few KB whatever it carries", () => {
  const p = boundedProblem({
    type: PROBLEM_TYPE_BASE + "x",
    title: "T",
    status: 400,
    detail: "d".repeat(100_000),
    instance: "/" + "i".repeat(100_000),
    huge: "h".repeat(100_000),
    errors: Array.from({ length: 1000 }, () => ({ pointer: "/p".repeat(1000), detail: "e".repeat(1000) })),
  });
  assert.ok(Buffer.byteLength(JSON.stringify(p)) <= MAX_PROBLEM_BYTES, String(Buffer.byteLength(JSON.stringify(p))));
  assert.deepEqual([p.type, p.title, p.status], [PROBLEM_TYPE_BASE + "x", "T", 400]);
  const small = boundedProblem({ type: "t", title: "T", status: 409, detail: "short", check: "card_rollback" });
  assert.deepEqual(small, { type: "t", title: "T", status: 409, detail: "short", check: "card_rollback" }, "a small problem is left as it is");
});

test("public routes are rate-limited per client address (429 problem, Retry-After, counted); token routes are not", async () => {
  const op = newToken();
  const principals = new Map<string, Principal>([[op.hash, { name: "olga", roles: ["operator", "auditor"] }]]);
  const { app } = await buildServer({ rateLimit: { max: 3, windowMs: 60_000 } });
  installAuth(app, async (h) => principals.get(h));
  app.post("/open", { schema: { body: { type: "object" } } }, async () => ({ ok: true }));
  app.get("/mine", { config: { roles: ["operator"] } }, async () => ({ ok: true }));
  await app.ready();
  const from = (remoteAddress: string) => app.inject({ method: "POST", url: "/open", payload: {}, remoteAddress });
  for (let i = 0; i < 3; i++) assert.equal((await from("203.0.113.7")).statusCode, 200);
  const refused = await from("203.0.113.7");
  const p = isProblem(refused, 429);
  assert.equal(p.type, PROBLEM_TYPE_BASE + "rate-limited");
  assert.match(String(p.detail), /at most 3 requests per 60 s from one client address/);
  assert.ok(Number(refused.headers["retry-after"]) > 0);
  // another client is not affected; one IPv6 client is its /64
  assert.equal((await from("203.0.113.8")).statusCode, 200);
  for (let i = 0; i < 3; i++) assert.equal((await from(`2001:db8:1:2::${i + 1}`)).statusCode, 200);
  assert.equal((await from("2001:db8:1:2::ffff")).statusCode, 429);
  // a route with roles is not rate-limited
  for (let i = 0; i < 4; i++) assert.equal((await app.inject({ method: "GET", url: "/mine", headers: { authorization: `Bearer ${op.token}` }, remoteAddress: "203.0.113.7" })).statusCode, 200);
  const m = await app.inject({ method: "GET", url: "/metrics", headers: { authorization: `Bearer ${op.token}` } });
  assert.equal(m.statusCode, 200);
  assert.match(m.body, /cardkms_http_refusals_total\{reason="rate-limited",route="\/open"\} 2/);
  await app.close();
});

test("public routes take small bodies (413 over publicBodyLimit); /metrics needs an auditor token", async () => {
  const aud = newToken();
  const op = newToken();
  const principals = new Map<string, Principal>([
    [aud.hash, { name: "arno", roles: ["auditor"] }],
    [op.hash, { name: "olga", roles: ["operator"] }],
  ]);
  const { app } = await buildServer({ publicBodyLimit: 1024 });
  installAuth(app, async (h) => principals.get(h));
  app.post("/open", { schema: { body: { type: "object" } } }, async () => ({ ok: true }));
  app.post("/mine", { config: { roles: ["operator"] }, schema: { body: { type: "object" } } }, async () => ({ ok: true }));
  await app.ready();
  const big = JSON.stringify({ pad: "x".repeat(2000) });
  isProblem(await app.inject({ method: "POST", url: "/open", payload: big, headers: { "content-type": "application/json" } }), 413);
  assert.equal((await app.inject({ method: "POST", url: "/mine", payload: big, headers: { "content-type": "application/json", authorization: `Bearer ${op.token}` } })).statusCode, 200);
  isProblem(await app.inject({ method: "GET", url: "/metrics" }), 401);
  isProblem(await app.inject({ method: "GET", url: "/metrics", headers: { authorization: `Bearer ${op.token}` } }), 403);
  const m = await app.inject({ method: "GET", url: "/metrics", headers: { authorization: `Bearer ${aud.token}` } });
  assert.equal(m.statusCode, 200);
  assert.match(m.body, /cardkms_http_refusals_total\{reason="body-too-large",route="\/open"\} 1/);
  await app.close();
  // a shell without authentication serves /metrics to nobody, unless told it is public
  const bare = await server();
  isProblem(await bare.inject({ method: "GET", url: "/metrics" }), 401);
  await bare.close();
});
