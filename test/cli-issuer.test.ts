// The issuing flows through the cardkms command as an operator and a user run it (child processes) against a
// running issuer server: bootstrap a token, register a user, issue a card into a virtual card image, request
// credentials, sync the terminal, deliver online, revoke, verify the audit log — with --json everywhere, and the
// exit codes of usage errors (2) and refusals (1).
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { startTestServer } from "./terminal-server.ts";
import { cliJson, runCli, tempDir } from "./helpers.ts";

const dir = tempDir("cardkms-cli-issuer-");
const IMAGE_KEY = "33".repeat(32);

const cli = (args: string[], env: Record<string, string> = {}) => runCli(args, { CARDKMS_IMAGE_KEY: IMAGE_KEY, ...env });
const json = cliJson;

test("operator and terminal flows through the CLI against a running server", { timeout: 10 * 60_000 }, async (t) => {
  const srv = await startTestServer(dir);
  t.after(() => srv.close());
  const db = srv.config.database;

  const created = json(await cli(["issuer", "token", "create", "--name", "cli-operator", "--role", "operator", "auditor", "--database", db, "--json"]), "token create");
  assert.deepEqual(created.roles, ["operator", "auditor"]);
  assert.match(created.token, /^ckms_/);
  const token: string = created.token;
  const server = { CARDKMS_SERVER: srv.url, CARDKMS_TOKEN: token, CARDKMS_KMC_FILE: srv.kmcFile };
  const outputs: string[] = [];
  const run = async (args: string[], env: Record<string, string> = server) => {
    const r = await cli(args, env);
    outputs.push(r.stdout, r.stderr);
    return r;
  };

  // A user, then a card issued into a fresh virtual card image and personalised through the relay.
  const user = json(await run(["user", "register", "--server", srv.url, "--token", token, "--name", "Taro Suzuki", "--email", "taro@example.test", "--json"], {}), "user register");
  assert.equal(user.personalData.commonName, "Taro Suzuki");
  const image = join(dir, "taro.card");
  const issued = json(await run(["card", "issue", "--user", user.id, "--image", image, "--json"]), "card issue");
  assert.equal(issued.status, "active");
  assert.match(issued.cardId, /^([0-9a-f]{2}){8,16}$/);
  const blank = json(await run(["card", "show", image, "--json"]), "card show");
  assert.equal(blank.cardId, issued.cardId);
  assert.equal(blank.lifecycle, "SECURED");
  assert.deepEqual(blank.certificates, []);

  // A credential by package: requested by the operator, fetched and loaded by the terminal (no operator token).
  const cred = json(await run(["credential", "request", "--card", issued.cardId, "--slot", "9a", "--alg", "P256", "--json"]), "credential request");
  assert.match(cred.certificate, /^-----BEGIN CERTIFICATE-----/);
  const termDir = join(dir, "terminal");
  const synced = json(await run(["terminal", "sync", "--card-image", image, "--dir", termDir, "--json"], { CARDKMS_SERVER: srv.url }), "terminal sync");
  assert.deepEqual(synced.packages, [{ seq: cred.packageSeq, slot: "9a", status: "loaded" }]);
  const human = await run(["terminal", "sync", "--card-image", image, "--dir", termDir], { CARDKMS_SERVER: srv.url });
  assert.equal(human.code, 0, human.stderr);
  assert.match(human.stdout, /0 new package\(s\)/);

  // Online delivery into the same image (addition, claim 7).
  const online = json(await run(["credential", "request", "--card", issued.cardId, "--slot", "9c", "--alg", "P384", "--json"]), "credential request 9c");
  const delivered = json(await run(["credential", "online", "--card", issued.cardId, "--key-pair", online.keyPairId, "--image", image, "--json"]), "credential online");
  assert.deepEqual(delivered.results, ["9000", "9000"]);

  const shown = json(await run(["card", "show", image, "--json"]), "card show");
  assert.deepEqual(
    shown.certificates.map((c: { slot: string; subject: string }) => [c.slot, /CN=Taro Suzuki/.test(c.subject)]),
    [
      ["9a (authentication)", true],
      ["9c (signature)", true],
    ],
  );
  assert.equal(shown.packageSeq, cred.packageSeq);
  const status = json(await run(["terminal", "status", "--card-image", image, "--dir", termDir, "--json"], {}), "terminal status");
  assert.deepEqual({ lastSeq: status.lastSeq, slots: status.slots, overflow: status.overflow }, { lastSeq: cred.packageSeq, slots: ["9a"], overflow: [] });

  // Revocation and the audit log (through the API and directly in the DB).
  const revoked = json(await run(["certificate", "revoke", cred.serial, "--reason", "keyCompromise", "--json"]), "revoke");
  assert.equal(revoked.reason, "keyCompromise");
  assert.equal(json(await run(["audit", "verify", "--json"]), "audit verify").ok, true);
  const offline = json(await run(["audit", "verify", "--database", db, "--json"], {}), "audit verify --database");
  assert.equal(offline.ok, true);
  assert.ok(offline.entries >= 6, `audit entries: ${offline.entries}`);

  // Errors: usage (2) before anything is sent, refusals (1) with the server's problem detail.
  const noServer = await run(["user", "register", "--name", "X"], {});
  assert.equal(noServer.code, 2);
  assert.match(noServer.stderr, /CARDKMS_SERVER/);
  const missing = await run(["credential", "request", "--slot", "9a"]);
  assert.equal(missing.code, 2);
  assert.match(missing.stderr, /--card/);
  const badToken = await run(["user", "register", "--name", "X"], { CARDKMS_SERVER: srv.url, CARDKMS_TOKEN: "ckms_not-a-real-token" });
  assert.equal(badToken.code, 1);
  assert.match(badToken.stderr, /Authentication required/);
  const occupied = await run(["credential", "request", "--card", issued.cardId, "--slot", "9c"]);
  assert.equal(occupied.code, 1);
  assert.match(occupied.stderr, /slot 9c .* holds a key; ask for replace/);
  const unreachable = await run(["audit", "verify"], { CARDKMS_SERVER: "http://127.0.0.1:1", CARDKMS_TOKEN: token });
  assert.equal(unreachable.code, 1);
  assert.match(unreachable.stderr, /unreachable/);

  // The token was printed once, at creation, and never again.
  for (const o of outputs) assert.ok(!o.includes(token), "a later command printed the token");

  const helpFor = [
    ["issuer"],
    ["issuer", "serve"],
    ["issuer", "token", "create"],
    ["user", "register"],
    ["card", "issue"],
    ["credential", "request"],
    ["credential", "online"],
    ["certificate", "revoke"],
    ["certificate", "crl"],
    ["audit", "verify"],
    ["terminal", "sync"],
    ["terminal", "bring-back"],
    ["terminal", "move-out"],
    ["terminal", "status"],
  ];
  const helps = await Promise.all(helpFor.map((cmd) => cli([...cmd, "--help"])));
  helps.forEach((h, i) => {
    assert.equal(h.code, 0, `${helpFor[i].join(" ")} --help`);
    assert.match(h.stdout, /Usage: cardkms/);
  });
});
