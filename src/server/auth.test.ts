import { test } from "node:test";
import assert from "node:assert/strict";
import { buildServer } from "./app.ts";
import { cachedLookup, installAuth, newToken, type Principal } from "./auth.ts";

test("tokens carry roles: 401 without or with an unknown token, 403 for the wrong role", async () => {
  const op = newToken();
  const aud = newToken();
  const principals = new Map<string, Principal>([
    [op.hash, { name: "olga", roles: ["operator"] }],
    [aud.hash, { name: "arno", roles: ["auditor"] }],
  ]);
  const { app } = await buildServer();
  installAuth(app, async (h) => principals.get(h));
  app.post("/cards", { config: { roles: ["operator"] } }, async (req) => ({ by: req.principal?.name }));
  app.get("/audit", { config: { roles: ["auditor"] } }, async (req) => ({ by: req.principal?.name }));
  await app.ready();
  const call = (method: "GET" | "POST", url: string, token?: string) =>
    app.inject({ method, url, headers: token ? { authorization: `Bearer ${token}` } : {}, ...(method === "POST" ? { payload: {} } : {}) });
  assert.equal((await call("POST", "/cards")).statusCode, 401);
  assert.equal((await call("POST", "/cards", newToken().token)).statusCode, 401);
  assert.equal((await call("POST", "/cards", aud.token)).statusCode, 403);
  assert.deepEqual((await call("POST", "/cards", op.token)).json(), { by: "olga" });
  assert.equal((await call("GET", "/audit", op.token)).statusCode, 403);
  assert.deepEqual((await call("GET", "/audit", aud.token)).json(), { by: "arno" });
  assert.equal((await call("GET", "/healthz")).statusCode, 200);
  const r = await call("POST", "/cards");
  assert.match(String(r.headers["content-type"]), /problem\+json/);
  await app.close();
});

test("cachedLookup: a hit is served from memory until it expires; misses are not remembered", async () => {
  let t = 0;
  let calls = 0;
  const table = new Map<string, Principal>([["h1", { name: "olga", roles: ["operator"] }]]);
  const lookup = cachedLookup(async (h) => (calls++, table.get(h)), { ttlMs: 1000, now: () => t });
  assert.equal((await lookup("h1"))?.name, "olga");
  assert.equal((await lookup("h1"))?.name, "olga");
  assert.equal(calls, 1, "the second call did not reach the table");
  table.delete("h1"); // disabled
  t = 999;
  assert.equal((await lookup("h1"))?.name, "olga", "still cached within the window");
  t = 1000;
  assert.equal(await lookup("h1"), undefined, "gone once the window ends");
  assert.equal(await lookup("h2"), undefined);
  table.set("h2", { name: "new", roles: ["auditor"] });
  assert.equal((await lookup("h2"))?.name, "new", "a miss was not cached: a new token works at once");
});
