import { test } from "node:test";
import assert from "node:assert/strict";
import { buildServer } from "./app.ts";
import { installAuth, newToken, type Principal } from "./auth.ts";

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
