// Issue 15 §6: every administrative change is in the audit log with enough to act on — who, what, which IDs — and
// never a secret. Operator API tokens: created and disabled (by the server's bootstrap helpers and by `cardkms issuer
// token create|disable` on the DB), on SQLite and PostgreSQL. (Webhooks: src/issuer/webhooks.test.ts and
// src/server/event-routes.test.ts; keygen.refused: test/keygen-refused.test.ts.)
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { userInfo } from "node:os";
import { createOperatorToken, disableOperatorToken, operatorLookup } from "../src/server/main.ts";
import { auditEntries, verifyAuditLog, type AuditEntry } from "../src/store/audit.ts";
import { Store } from "../src/store/store.ts";
import { testEngines } from "./support/store-testing.ts";
import { cliJson, runCli, tempDir } from "./helpers.ts";

async function entries(store: Store, subject: string): Promise<AuditEntry[]> {
  const out: AuditEntry[] = [];
  for await (const e of auditEntries(store.db)) if (e.subject === subject) out.push(e);
  return out;
}

const sha256 = (s: string) => createHash("sha256").update(s).digest("hex");

for (const engine of testEngines()) {
  test(`${engine.name}: creating and disabling an operator token are audited — who, which operator, its roles; never the token or its hash`, async (t) => {
    const db = await engine.create();
    t.after(() => db.drop());
    const store = new Store(db.db);
    const { token, operator } = await createOperatorToken(store, "olga", ["operator", "auditor"], "ada");
    assert.ok(await operatorLookup(store)(sha256(token)), "the token works");
    assert.equal(await disableOperatorToken(store, "olga", "ada"), true);
    assert.equal(await operatorLookup(store)(sha256(token)), undefined, "and no longer");
    assert.equal(await disableOperatorToken(store, "olga", "ada"), false, "nothing left to disable: nothing audited");

    const log = await entries(store, operator.id);
    assert.deepEqual(
      log.map((e) => [e.action, e.actor, e.details]),
      [
        ["operator.created", "ada", { operatorId: operator.id, name: "olga", roles: ["operator", "auditor"] }],
        ["operator.disabled", "ada", { operatorId: operator.id, name: "olga" }],
      ],
    );
    const text = JSON.stringify(log);
    const row = await db.db.selectFrom("operators").select("token_hash").where("id", "=", operator.id).executeTakeFirstOrThrow();
    assert.ok(!text.includes(token) && !text.includes(row.token_hash!), "never the token, nor its hash");
    assert.equal((await verifyAuditLog(db.db)).ok, true);
  });
}

test("cardkms issuer token create|disable on the DB: audited as the local account that ran it", { timeout: 10 * 60_000 }, async () => {
  const database = join(tempDir("cardkms-admin-audit-"), "issuer.db");
  const created = cliJson(await runCli(["issuer", "token", "create", "--name", "otto", "--role", "operator", "--database", database, "--json"]), "token create");
  const disabled = cliJson(await runCli(["issuer", "token", "disable", "--name", "otto", "--database", database, "--json"]), "token disable");
  assert.deepEqual(disabled, { name: "otto", disabled: true });
  const again = await runCli(["issuer", "token", "disable", "--name", "otto", "--database", database]);
  assert.equal(again.code, 2, "no such enabled operator: a usage error");
  const store = await Store.open(database);
  try {
    const actor = `local:${userInfo().username}`;
    assert.deepEqual(
      (await entries(store, created.id)).map((e) => [e.action, e.actor, e.details.name]),
      [
        ["operator.created", actor, "otto"],
        ["operator.disabled", actor, "otto"],
      ],
    );
    assert.ok(!JSON.stringify(await entries(store, created.id)).includes(created.token));
  } finally {
    await store.close();
  }
});
