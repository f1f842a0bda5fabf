import { test } from "node:test";
import assert from "node:assert/strict";
import { buildServer } from "./app.ts";
import { ApiProblem } from "./problem.ts";

async function server() {
  const { app } = await buildServer();
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
  const app = await server();
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
