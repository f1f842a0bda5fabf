// Validity (FIG. 5, para 0062) through the CLI: a card key set near its end is found by `validity scan`, the
// events are listed by `events list`, a webhook registered with `webhook add` receives the rotation proposal signed as
// Standard Webhooks say (verified by the reference receiver check, which also refuses the same delivery replayed), and
// `webhook dead-letters` / `webhook retry` list and queue again what delivery gave up on (issue 15 §6).
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { verifyWebhook, WebhookReplayCache, WebhookVerificationError } from "../src/issuer/webhook-receiver.ts";
import { startTestServer } from "./terminal-server.ts";
import { execCli, tempDir, type CliResult } from "./helpers.ts";

function cli(args: string[], env: Record<string, string>): Promise<CliResult> {
  return execCli(args, { env: { ...process.env, ...env } });
}

test("validity scan, events and webhooks through the CLI", { timeout: 10 * 60_000 }, async (t) => {
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
  const received: { body: string; headers: Record<string, string | string[] | undefined> }[] = [];
  const receiver = createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      received.push({ body, headers: req.headers });
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
  await store.db
    .updateTable("card_key_sets")
    .set({ valid_until: Date.now() + 5 * 86_400_000 })
    .where("id", "=", ks.id)
    .execute();

  const scan = await json(["validity", "scan"]);
  assert.equal(scan.keySets.expiring, 1);
  assert.equal(scan.rotationsProposed, 1);
  assert.equal((await json(["validity", "scan"])).eventsEmitted, 0, "a second scan emits nothing new");
  const listed = await json(["events", "list", "--type", "keyset.expiring"]);
  assert.equal(listed.events.length, 1);
  assert.equal(listed.events[0].subject, ks.id);

  // The server's dispatcher delivers every 5 s: wait for the rotation proposal to arrive (bounded).
  for (let i = 0; i < 100 && !received.some((r) => JSON.parse(r.body).type === "rotation.proposed"); i++) await new Promise((r) => setTimeout(r, 200));
  const seen = new WebhookReplayCache();
  for (const r of received) assert.equal(verifyWebhook({ secret: hook.secret, headers: r.headers, body: r.body, replay: seen }).id, r.headers["webhook-id"], "a valid signature");
  assert.throws(
    () => verifyWebhook({ secret: hook.secret, headers: received[0].headers, body: received[0].body, replay: seen }),
    (e) => e instanceof WebhookVerificationError && e.reason === "duplicate",
  );
  assert.ok(received.some((r) => JSON.parse(r.body).type === "rotation.proposed"));

  // The dead-letter record: a delivery the dispatcher gave up on (as after its last attempt) is listed and queued again.
  const [proposal] = (await json(["events", "list", "--type", "rotation.proposed"])).events as { id: number }[];
  await store.db.updateTable("webhook_queue").set({ status: "dead", attempts: 24, last_error: "HTTP 500", dead_at: Date.now() }).where("event_id", "=", proposal.id).execute();
  const letters = await json(["webhook", "dead-letters", "--webhook", hook.id]);
  const id = `msg_${proposal.id}_${hook.id}`;
  assert.deepEqual(
    letters.deadLetters.map((d: { deliveryId: string; lastError: string }) => [d.deliveryId, d.lastError]),
    [[id, "HTTP 500"]],
  );
  assert.equal((await cli(["webhook", "retry"], env)).code, 2, "retry names what to retry");
  assert.deepEqual((await json(["webhook", "retry", "--delivery", id])).retried, [id]);
  const redelivered = received.length;
  for (let i = 0; i < 100 && received.length === redelivered; i++) await new Promise((r) => setTimeout(r, 200));
  assert.equal(received[received.length - 1].headers["webhook-id"], id, "delivered again, under the same webhook-id");

  await json(["webhook", "remove", hook.id]);
  assert.equal((await json(["webhook", "list"])).webhooks.length, 0);
  const bad = await cli(["events", "list", "--after", "x"], env);
  assert.equal(bad.code, 2);
});
