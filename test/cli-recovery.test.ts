// Key reproduction by arbitrators through the cardkms command (child processes) against a running issuer server:
// arbitrators make their key pairs, an operator registers them and issues their tokens, sets a card's policy and
// files a request; each arbitrator lists what is pending and approves with its own key files (its shares opened
// and released in its own process); the policy's author signs the approver list; the operator reproduces the key
// into the card image through the CLI, which relays the server's APDUs. The key itself was issued into the card
// through the CLI by the key generation device, escrowed. --json everywhere; refusals exit 1.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createPublicKey } from "node:crypto";
import { readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { openCard } from "../src/card/card.ts";
import { startTestServer } from "./terminal-server.ts";
import { cliJson, runCli, tempDir } from "./helpers.ts";
import { fromPem } from "../src/ca/pem.ts";
import { cardSignsFor, loseKey } from "./recovery-fixture.ts";

const dir = tempDir("cardkms-cli-recovery-");
const IMAGE_KEY = "33".repeat(32);

const cli = (args: string[], env: Record<string, string> = {}) => runCli(args, { CARDKMS_IMAGE_KEY: IMAGE_KEY, ...env });
const json = cliJson;

test("arbitrators, policy, request, approvals and the reproduction through the CLI", { timeout: 10 * 60_000 }, async (t) => {
  const srv = await startTestServer(dir);
  t.after(() => srv.close());
  const outputs: string[] = [];
  const run = async (args: string[], token = srv.operatorToken) => {
    const r = await cli(args, { CARDKMS_SERVER: srv.url, CARDKMS_TOKEN: token, CARDKMS_KMC_FILE: srv.kmcFile });
    outputs.push(r.stdout, r.stderr);
    return r;
  };
  const ids = ["user", "mgr-a", "mgr-b"];
  const keyDir = (id: string) => join(dir, "arbitrators", id);

  // ---- arbitrators: key pairs (0600, never overwritten), registration, list, tokens ------------------------------------
  const made = await Promise.all(ids.map((id) => run(["recovery", "arbitrator", "keygen", "--out", keyDir(id), "--json"])));
  made.forEach((r, i) => {
    const files = json(r, `keygen ${ids[i]}`);
    for (const f of [files.signingKey, files.encryptionKey]) assert.equal(statSync(f).mode & 0o777, 0o600, f);
    assert.match(readFileSync(files.signingPublicKey, "utf8"), /BEGIN PUBLIC KEY/);
  });
  // mgr-b registers from its private key files: only the public halves are sent
  const [again, ...added] = await Promise.all([
    run(["recovery", "arbitrator", "keygen", "--out", keyDir("user")]),
    ...ids.map((id) => {
      const suffix = id === "mgr-b" ? "key" : "pub";
      return run([
        "recovery",
        "arbitrator",
        "add",
        "--id",
        id,
        "--signing-key",
        join(keyDir(id), `signing.${suffix}.pem`),
        "--encryption-key",
        join(keyDir(id), `encryption.${suffix}.pem`),
        "--role",
        id === "user" ? "user" : "manager",
        "--json",
      ]);
    }),
  ]);
  assert.equal(again.code, 2, "keys are never overwritten");
  added.forEach((r, i) => assert.equal(json(r, `add ${ids[i]}`).id, ids[i]));
  const mgrB = json(added[2], "add mgr-b");
  const mgrBPublic = createPublicKey(readFileSync(join(keyDir("mgr-b"), "signing.key.pem")))
    .export({ format: "der", type: "spki" })
    .toString("base64");
  assert.equal(mgrB.signingPublicKey, mgrBPublic);
  // ---- tokens; a card and its policy ---------------------------------------------------------------------------------------
  const user = await srv.server.issuer.registerUser({ commonName: "Hanako Yamada" }, "test");
  const image = join(dir, "hanako.card");
  const policyFile = join(dir, "policy.json");
  const policy = { version: 1, author: "mgr-a", indispensable: ["user"], groups: [{ name: "managers", members: ["mgr-a", "mgr-b"], threshold: 1 }], order: [{ before: "user", after: "mgr-b" }] };
  writeFileSync(policyFile, JSON.stringify(policy));
  const badFile = join(dir, "bad-policy.json");
  writeFileSync(badFile, JSON.stringify({ ...policy, author: "nobody" }));
  const [listedRun, card, bad, ...issuedTokens] = await Promise.all([
    run(["recovery", "arbitrator", "list", "--json"]),
    run(["card", "issue", "--user", user.id, "--image", image, "--json"]),
    run(["recovery", "policy", "set", "some-card", "--file", badFile]),
    ...ids.map((id) => run(["recovery", "arbitrator", "token", id, "--json"])),
  ]);
  const listed = json(listedRun, "arbitrator list");
  assert.deepEqual(listed.map((a: { id: string }) => a.id).sort(), [...ids].sort());
  const tokens = new Map<string, string>();
  issuedTokens.forEach((r, i) => tokens.set(ids[i], json(r, `token ${ids[i]}`).token));
  const afterTokens = outputs.length;
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /\/author: arbitrator nobody is not registered/);

  const cardId: string = json(card, "card issue").cardId;
  const set = json(await run(["recovery", "policy", "set", cardId, "--file", policyFile, "--json"]), "policy set");
  const shown = json(await run(["recovery", "policy", "show", cardId, "--json"]), "policy show");
  assert.deepEqual([shown.policy, shown.digest], [policy, set.digest]);

  // the key generation device issues the key into the card image through the CLI, escrowed under the policy;
  // personal data that differ from the user's registration are refused by the center, by name
  const mismatch = await run(["keygen", "issue", cardId, "--card-image", image, "--slot", "9c", "--alg", "P256", "--common-name", "Hanako Yamata", "--escrow"]);
  assert.equal(mismatch.code, 1);
  assert.match(mismatch.stderr, /personal-data/);
  const issued = json(
    await run(["keygen", "issue", cardId, "--card-image", image, "--slot", "9c", "--alg", "P256", "--personal-data", JSON.stringify({ commonName: "Hanako Yamada" }), "--escrow", "--json"]),
    "keygen issue",
  );
  assert.ok(issued.escrowId);
  assert.equal(issued.slot, "9c");
  const certificate = fromPem(issued.certificate, "CERTIFICATE");
  await (async () => {
    const c = openCard(image, new Uint8Array(Buffer.from(IMAGE_KEY, "hex")));
    try {
      const transmit = (a: Uint8Array) => c.transmit(a);
      assert.equal(await cardSignsFor(transmit, "9c", "P256", certificate), true, "the card signs with the issued key");
      await loseKey(transmit, "9c");
      assert.equal(await cardSignsFor(transmit, "9c", "P256", certificate), false, "the key is gone");
    } finally {
      c.close();
    }
  })();

  // ---- the request and the arbitrators' decisions ---------------------------------------------------------------------------
  const filed = json(await run(["recovery", "request", "file", "--card", cardId, "--kind", "key-lost", "--requester", "user", "--reason", "lost PIN card", "--json"]), "request file");
  const rid: string = filed.requestId;
  const approve = (id: string, extra: string[] = []) =>
    run(
      ["recovery", "approve", rid, "--arbitrator", id, "--signing-key", join(keyDir(id), "signing.key.pem"), "--encryption-key", join(keyDir(id), "encryption.key.pem"), ...extra, "--json"],
      tokens.get(id),
    );
  const [openRun, pendingRun, early, wrongDevice, deviceKeyRun] = await Promise.all([
    run(["recovery", "request", "list", "--status", "open", "--card", cardId, "--json"]),
    run(["recovery", "pending", "--arbitrator", "mgr-b", "--json"], tokens.get("mgr-b")),
    run(
      ["recovery", "approve", rid, "--arbitrator", "mgr-b", "--signing-key", join(keyDir("mgr-b"), "signing.key.pem"), "--encryption-key", join(keyDir("mgr-b"), "encryption.key.pem")],
      tokens.get("mgr-b"),
    ),
    approve("user", ["--device-key-id", "00".repeat(32)]),
    run(["recovery", "device-key", "--json"], tokens.get("user")),
  ]);
  assert.deepEqual(
    json(openRun, "request list").map((v: { requestId: string }) => v.requestId),
    [rid],
  );
  const pendingB = json(pendingRun, "pending mgr-b");
  assert.equal(pendingB.length, 1);
  assert.deepEqual([pendingB[0].action, pendingB[0].mayApproveNow, pendingB[0].waitingFor, pendingB[0].envelopes.length], ["decide", false, ["user"], 1]);
  assert.equal(early.code, 1, "the order condition is checked on the arbitrator's side before signing");
  assert.match(early.stderr, /may approve request .* only after user/);
  assert.equal(wrongDevice.code, 1);
  assert.match(wrongDevice.stderr, /no share released/);
  const deviceKey = json(deviceKeyRun, "device-key");
  const byUser = json(await approve("user", ["--device-key-id", deviceKey.keyId]), "approve user");
  assert.deepEqual(byUser.evaluation.approvers, ["user"]);
  const byB = json(await approve("mgr-b"), "approve mgr-b");
  assert.equal(byB.status, "satisfied");
  const [twice, signedRun] = await Promise.all([
    approve("user"),
    run(["recovery", "approver-list", "sign", rid, "--author", "mgr-a", "--signing-key", join(keyDir("mgr-a"), "signing.key.pem"), "--json"], tokens.get("mgr-a")),
  ]);
  assert.equal(twice.code, 1);
  assert.match(twice.stderr, /nothing pending for user|has nothing pending/);
  const signed = json(signedRun, "approver-list sign");
  assert.deepEqual(signed.approverList.approvers, ["user", "mgr-b"]);

  // ---- the reproduction into the card image, relayed by the CLI ---------------------------------------------------------------
  const done = json(await run(["recovery", "reproduce", rid, "--card-image", image, "--json"]), "reproduce");
  assert.deepEqual([done.approvers, done.author, done.deviceReplaced], [["user", "mgr-b"], "mgr-a", false]);
  {
    const c = openCard(image, new Uint8Array(Buffer.from(IMAGE_KEY, "hex")));
    try {
      assert.ok(await cardSignsFor((a) => c.transmit(a), "9c", "P256", certificate), "the card signs again under its original certificate");
    } finally {
      c.close();
    }
  }
  // a second request, refused by the user: it ends, naming the condition
  const next = await srv.server.recovery.fileRequest({ cardId, kind: "key-lost", requester: "user" }, "olga");
  const [statusRun, refusedAgain, help, refusal] = await Promise.all([
    run(["recovery", "request", "show", rid, "--json"]),
    run(["recovery", "reproduce", rid, "--card-image", image]),
    cli(["recovery", "--help"]),
    run(["recovery", "refuse", next.requestId, "--arbitrator", "user", "--signing-key", join(keyDir("user"), "signing.key.pem"), "--reason", "not me", "--json"], tokens.get("user")),
  ]);
  const ended = json(refusal, "refuse");
  assert.deepEqual([ended.status, ended.approvals[0].reason], ["ended", "not me"]);
  assert.match(ended.statusDetail, /indispensable party user refused/);
  assert.equal(json(statusRun, "request show").status, "reproduced");
  assert.equal(refusedAgain.code, 1);
  assert.match(refusedAgain.stderr, /request_closed/);
  assert.equal(help.code, 0);
  for (const sub of ["arbitrator", "policy", "escrow", "device-key", "request", "pending", "approve", "refuse", "approver-list", "reproduce"])
    assert.match(help.stdout, new RegExp(`\\n  ${sub} `), sub);

  // tokens printed once, at creation; no private key ever printed
  const later = outputs.slice(afterTokens);
  for (const o of later) for (const tok of tokens.values()) assert.ok(!o.includes(tok), "a later command printed an arbitrator token");
  for (const o of outputs) assert.ok(!o.includes("PRIVATE KEY"), "a command printed a private key");
});

test("the lifecycle through the CLI: key rotation signed on the arbitrator's side, deregistration, dependents, paged lists, reset", { timeout: 10 * 60_000 }, async (t) => {
  const home = tempDir("cardkms-cli-reclife-");
  const srv = await startTestServer(home);
  t.after(() => srv.close());
  const run = (args: string[], token = srv.operatorToken) => cli(args, { CARDKMS_SERVER: srv.url, CARDKMS_TOKEN: token });
  const keyDir = (name: string) => join(home, "keys", name);
  const ids = ["a1", "a2", "a3"];
  await Promise.all([...ids, "a1-next"].map(async (k) => json(await run(["recovery", "arbitrator", "keygen", "--out", keyDir(k), "--json"]), `keygen ${k}`)));
  for (const id of ids)
    json(
      await run(["recovery", "arbitrator", "add", "--id", id, "--signing-key", join(keyDir(id), "signing.pub.pem"), "--encryption-key", join(keyDir(id), "encryption.pub.pem"), "--json"]),
      `add ${id}`,
    );
  const policyFile = join(home, "policy.json");
  writeFileSync(policyFile, JSON.stringify({ version: 1, author: "a1", indispensable: ["a1"], groups: [{ name: "others", members: ["a2", "a3"], threshold: 1 }], order: [] }));
  json(await run(["recovery", "policy", "set", "card-L", "--file", policyFile, "--json"]), "policy set");

  // paged lists: one page and the cursor of the next; without --limit, every page
  const [page1, all, noRequests, badCursor, a3Token] = await Promise.all([
    run(["recovery", "arbitrator", "list", "--limit", "2", "--json"]),
    run(["recovery", "arbitrator", "list", "--json"]),
    run(["recovery", "request", "list", "--limit", "5", "--json"]),
    run(["recovery", "request", "list", "--after", "not a cursor!"]),
    run(["recovery", "arbitrator", "token", "a3", "--json"]),
  ]);
  const p1 = json(page1, "arbitrator list --limit 2");
  assert.deepEqual(
    p1.items.map((a: { id: string }) => a.id),
    ["a1", "a2"],
  );
  assert.equal(typeof p1.next, "string");
  const p2 = json(await run(["recovery", "arbitrator", "list", "--limit", "2", "--after", p1.next, "--json"]), "arbitrator list --after");
  assert.deepEqual([p2.items.map((a: { id: string }) => a.id), p2.next], [["a3"], undefined]);
  assert.deepEqual(
    json(all, "arbitrator list").map((a: { id: string }) => a.id),
    ids,
  );
  assert.deepEqual(json(noRequests, "request list --limit"), { items: [] });
  assert.equal(badCursor.code, 2, "a malformed cursor is a usage error");
  const textPage = await run(["recovery", "arbitrator", "list", "--limit", "1"]);
  assert.match(textPage.stdout, /^a1\nnext page: --after [A-Za-z0-9_-]+\n$/);

  // a1 rotates both keys: signed here with its current signing key file and the new one
  const rotated = json(
    await run([
      "recovery",
      "arbitrator",
      "rotate",
      "a1",
      "--signing-key",
      join(keyDir("a1"), "signing.key.pem"),
      "--new-signing-key",
      join(keyDir("a1-next"), "signing.key.pem"),
      "--new-encryption-key",
      join(keyDir("a1-next"), "encryption.pub.pem"),
      "--json",
    ]),
    "rotate",
  );
  assert.equal(rotated.keyVersion, 2);
  assert.equal(rotated.keys.length, 2);
  const [stale, wrongKey, shown, deps] = await Promise.all([
    // the old key is no longer current: nothing is signed or sent
    run(["recovery", "arbitrator", "rotate", "a1", "--signing-key", join(keyDir("a1"), "signing.key.pem"), "--new-encryption-key", join(keyDir("a3"), "encryption.pub.pem")]),
    // another arbitrator's key file: refused on this side too
    run(["recovery", "arbitrator", "rotate", "a2", "--signing-key", join(keyDir("a1"), "signing.key.pem"), "--new-signing-key", join(keyDir("a1-next"), "signing.key.pem")]),
    run(["recovery", "arbitrator", "show", "a1"]),
    run(["recovery", "arbitrator", "dependents", "a2", "--json"]),
  ]);
  assert.equal(stale.code, 1);
  assert.match(stale.stderr, /not a1's current signing key \(version 2\)/);
  assert.equal(wrongKey.code, 1);
  assert.match(shown.stdout, /key version 2/);
  assert.match(shown.stdout, /keys v1: .*retired/);
  assert.deepEqual(json(deps, "dependents"), [
    { cardId: "card-L", policyDigest: json(await run(["recovery", "policy", "show", "card-L", "--json"]), "policy show").digest, as: ["group:others"], satisfiableWithout: true },
  ]);

  // a3 deregistered: its token revoked, it is marked in the list, a policy may no longer name it
  const gone = json(await run(["recovery", "arbitrator", "deregister", "a3", "--reason", "left the company", "--json"]), "deregister");
  assert.deepEqual([gone.arbitrator.status, gone.tokensRevoked, gone.endedRequests], ["deregistered", [json(a3Token, "token a3").tokenId], []]);
  const [listed, again, badPolicy, reset, pending] = await Promise.all([
    run(["recovery", "arbitrator", "list"]),
    run(["recovery", "arbitrator", "deregister", "a3", "--reason", "again"]),
    run(["recovery", "policy", "set", "card-M", "--file", policyFile]),
    run(["recovery", "request", "reset", "00000000-0000-7000-8000-000000000000", "--reason", "stuck"]),
    run(["recovery", "pending", "--arbitrator", "a1", "--limit", "5", "--json"]),
  ]);
  assert.match(listed.stdout, /^a3 \[deregistered\]$/m);
  assert.equal(again.code, 1);
  assert.match(again.stderr, /arbitrator_disabled/);
  assert.equal(badPolicy.code, 1);
  assert.match(badPolicy.stderr, /\/groups\/0\/members\/1: arbitrator a3 is deregistered/);
  assert.equal(reset.code, 1);
  assert.match(reset.stderr, /not_found|no request/);
  assert.deepEqual(json(pending, "pending --limit"), { items: [] });
  const help = await cli(["recovery", "arbitrator", "--help"]);
  for (const sub of ["rotate", "deregister", "dependents"]) assert.match(help.stdout, new RegExp(`\\n  ${sub} `), sub);
});

test("issue 9: a destroyed card through the CLI — the replacement card named when filing, pinned by the arbitrator, the only card the key goes into", { timeout: 10 * 60_000 }, async (t) => {
  const home = tempDir("cardkms-cli-recreplace-");
  const srv = await startTestServer(home);
  t.after(() => srv.close());
  const run = (args: string[], token = srv.operatorToken) => cli(args, { CARDKMS_SERVER: srv.url, CARDKMS_TOKEN: token, CARDKMS_KMC_FILE: srv.kmcFile });
  const keys = join(home, "alice-keys");
  const alice = await srv.server.issuer.registerUser({ commonName: "Alice Abe" }, "test");
  const bob = await srv.server.issuer.registerUser({ commonName: "Bob Baba" }, "test");
  const image = (name: string) => join(home, `${name}.card`);
  const [made, oldRun, newRun, bobRun] = await Promise.all([
    run(["recovery", "arbitrator", "keygen", "--out", keys, "--json"]),
    run(["card", "issue", "--user", alice.id, "--image", image("old"), "--json"]),
    run(["card", "issue", "--user", alice.id, "--image", image("new"), "--json"]),
    run(["card", "issue", "--user", bob.id, "--image", image("bob"), "--json"]),
  ]);
  json(made, "keygen");
  const [oldCard, newCard, bobCard] = [json(oldRun, "old").cardId as string, json(newRun, "new").cardId as string, json(bobRun, "bob").cardId as string];
  const policyFile = join(home, "policy.json");
  writeFileSync(policyFile, JSON.stringify({ version: 1, author: "alice", indispensable: ["alice"], groups: [], order: [] }));
  json(await run(["recovery", "arbitrator", "add", "--id", "alice", "--signing-key", join(keys, "signing.pub.pem"), "--encryption-key", join(keys, "encryption.pub.pem"), "--json"]), "add");
  const [tokenRun, policySet] = await Promise.all([run(["recovery", "arbitrator", "token", "alice", "--json"]), run(["recovery", "policy", "set", oldCard, "--file", policyFile, "--json"])]);
  const token = json(tokenRun, "token").token as string;
  json(policySet, "policy set");
  const issued = json(
    await run(["keygen", "issue", oldCard, "--card-image", image("old"), "--slot", "9c", "--alg", "P256", "--personal-data", JSON.stringify({ commonName: "Alice Abe" }), "--escrow", "--json"]),
    "keygen issue",
  );
  const certificate = fromPem(issued.certificate, "CERTIFICATE");

  // the old card is destroyed; the request names the card that receives the key — Alice's new card, not Bob's
  const file = (extra: string[]) => run(["recovery", "request", "file", "--card", oldCard, "--kind", "card-destroyed", "--requester", "alice", ...extra, "--json"]);
  const [unnamed, bobs, help, good] = await Promise.all([
    file([]),
    file(["--replacement-card", bobCard]),
    cli(["recovery", "request", "file", "--help"]),
    file(["--replacement-card", newCard, "--reason", "card broken"]),
  ]);
  assert.equal(unnamed.code, 2, "a card-destroyed request names its replacement card");
  assert.match(unnamed.stderr, /--replacement-card/);
  assert.equal(bobs.code, 1);
  assert.match(bobs.stderr, /target_other_user/);
  assert.match(help.stdout, /--replacement-card <id>/);
  const filed = json(good, "request file");
  assert.deepEqual(filed.request.target, { cardId: newCard, userId: alice.id });
  const rid: string = filed.requestId;

  // the arbitrator pins the card it approves: a request naming another card is not signed
  const approve = (target: string) =>
    run(
      ["recovery", "approve", rid, "--arbitrator", "alice", "--signing-key", join(keys, "signing.key.pem"), "--encryption-key", join(keys, "encryption.key.pem"), "--target-card", target, "--json"],
      token,
    );
  const pinnedElsewhere = await approve(bobCard);
  assert.equal(pinnedElsewhere.code, 1);
  assert.match(pinnedElsewhere.stderr, new RegExp(`into card ${newCard}, not the expected ${bobCard}; nothing signed`));
  assert.equal(json(await approve(newCard), "approve").status, "satisfied");
  json(await run(["recovery", "approver-list", "sign", rid, "--author", "alice", "--signing-key", join(keys, "signing.key.pem"), "--json"], token), "approver-list sign");
  // the operator reproduces the approved request into Bob's card: refused by name, nothing written
  const [shown, redirected] = await Promise.all([run(["recovery", "request", "show", rid]), run(["recovery", "reproduce", rid, "--card", bobCard, "--card-image", image("bob")])]);
  assert.match(shown.stdout, new RegExp(`the key goes into card ${newCard} \\(user ${alice.id}\\), the replacement card`));
  assert.equal(redirected.code, 1);
  assert.match(redirected.stderr, /target_not_approved/);
  // into the approved card
  const done = json(await run(["recovery", "reproduce", rid, "--card-image", image("new"), "--json"]), "reproduce");
  assert.deepEqual([done.targetCardId, done.deviceReplaced, done.deviceGeneration], [newCard, true, 2]);
  for (const [name, signs] of [
    ["new", true],
    ["bob", false],
  ] as const) {
    const c = openCard(image(name), new Uint8Array(Buffer.from(IMAGE_KEY, "hex")));
    try {
      assert.equal(await cardSignsFor((a) => c.transmit(a), "9c", "P256", certificate), signs, `${name}'s card ${signs ? "signs" : "holds nothing"}`);
    } finally {
      c.close();
    }
  }
});
