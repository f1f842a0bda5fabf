// Validity (FIG. 5, para 0062) through the CLI: a card key set near its end is found by `validity scan`, the
// events are listed by `events list`, a webhook registered with `webhook add` receives the rotation proposal with a
// valid HMAC signature, and `rotation approve` approves it.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { verifyWebhookSignature } from "../src/issuer/webhooks.ts";
import { startTestServer } from "./terminal-server.ts";
import { tempDir } from "./helpers.ts";

function cli(args: string[], env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, ["--import", "tsx", "src/cli/main.ts", ...args], { env: { ...process.env, ...env }, timeout: 60_000 }, (err, stdout, stderr) =>
      resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

test("validity scan, events and webhooks through the CLI", { timeout: 180_000 }, async (t) => {
  const dir = tempDir("cardkms-cli-events-");
  const srv = await startTestServer(dir);
  t.after(() => srv.close());
  const env = { CARDKMS_SERVER: srv.url, CARDKMS_TOKEN: srv.operatorToken };
  const json = async (args: string[]) => {
    const r = await cli([...args, "--json"], env);
    assert.equal(r.code, 0, `${args.join(" ")}: ${r.stderr}`);
    return JSON.parse(r.stdout);
  };

  // A receiver for webhooks on loopback.
  const received: { body: string; signature: string }[] = [];
  const receiver = createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      received.push({ body, signature: String(req.headers["x-cardkms-signature"] ?? "") });
      res.writeHead(204).end();
    });
  });
  await new Promise<void>((r) => receiver.listen(0, "127.0.0.1", r));
  t.after(() => receiver.close());
  const hookUrl = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/hook`;

  const hook = await json(["webhook", "add", "--url", hookUrl, "--event-type", "rotation.proposed", "keyset.expiring"]);
  assert.match(hook.secret, /^whsec_/);
  assert.equal((await json(["webhook", "list"])).webhooks.length, 1);

  // A card whose key set ends within the scan window (the default window is 30 days).
  const user = await json(["user", "register", "--name", "Jiro Sato"]);
  const store = srv.server.store;
  const card = (await srv.server.issuer.issueCard({ userId: user.id }, "olga")).card;
  const ks = (await store.listKeySets(card.id))[0];
  await store.db.updateTable("card_key_sets").set({ valid_until: Date.now() + 5 * 86_400_000 }).where("id", "=", ks.id).execute();

  const scan = await json(["validity", "scan"]);
  assert.equal(scan.keySets.expiring, 1);
  assert.equal(scan.rotationsProposed, 1);
  assert.equal((await json(["validity", "scan"])).eventsEmitted, 0, "a second scan emits nothing new");
  const listed = await json(["events", "list", "--type", "keyset.expiring"]);
  assert.equal(listed.events.length, 1);
  assert.equal(listed.events[0].subject, ks.id);

  // The server's dispatcher delivers every 5 s: wait for the rotation proposal to arrive (bounded).
  for (let i = 0; i < 100 && !received.some((r) => JSON.parse(r.body).type === "rotation.proposed"); i++) await new Promise((r) => setTimeout(r, 200));
  for (const r of received) assert.ok(verifyWebhookSignature(hook.secret, r.body, r.signature), "valid HMAC signature");
  assert.ok(received.some((r) => JSON.parse(r.body).type === "rotation.proposed"));

  await json(["webhook", "remove", hook.id]);
  assert.equal((await json(["webhook", "list"])).webhooks.length, 0);
  const bad = await cli(["events", "list", "--after", "x"], env);
  assert.equal(bad.code, 2);
});
