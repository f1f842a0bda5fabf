// The user terminal against the real issuer server over HTTP (issue 3 §5, §6, §8): SQLite in a temp file, the
// software keystore, virtual cards. A card is issued and personalised through the relay, credentials arrive as
// packages the terminal loads after the card proved itself; a small card fills up and its least recently used
// slot moves to the overflow store, then comes back on demand; a terminal for card A is refused card B's
// packages; an old package replayed into the card is refused by the card (6985).
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes, verify, X509Certificate } from "node:crypto";
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createCard } from "../src/card/card.ts";
import type { KeyAlg } from "../src/card/state.ts";
import { ApduError } from "../src/protocol/apdu-client.ts";
import { ApiError, IssuerApiClient } from "../src/terminal/api-client.ts";
import { readCardInfo } from "../src/protocol/card-info.ts";
import { OverflowStore } from "../src/terminal/overflow.ts";
import { PivClient } from "../src/protocol/piv/client.ts";
import { relaySession, UserTerminal } from "../src/terminal/terminal.ts";
import { InProcessTransport } from "../src/transport/transport.ts";
import { startTestServer } from "./terminal-server.ts";
import { tempDir } from "./helpers.ts";
import { TEST_KMC } from "./kmc.ts";

const dir = tempDir("cardkms-terminal-http-");

test("the user terminal over HTTP: issue, deliver, overflow, bring back, card binding, replay", { timeout: 10 * 60_000 }, async (t) => {
  const srv = await startTestServer(dir);
  t.after(() => srv.close());
  const op = new IssuerApiClient({ server: srv.url, token: srv.operatorToken });
  const anonymous = new IssuerApiClient({ server: srv.url });

  // Operator routes need a token: a problem+json 401 becomes an ApiError.
  await assert.rejects(anonymous.registerUser({ commonName: "Nobody" }), (e: unknown) => e instanceof ApiError && e.status === 401 && /unauthenticated/.test(e.type));

  const user = await op.registerUser({ commonName: "Hanako Yamada", email: "hanako@example.test", organization: "Example Bank" });

  /** ST11-ST15 over HTTP: the card issuing machine creates the blank image and relays the personalisation. */
  async function issueCard(capacity: number) {
    const { card } = await op.createCard({ userId: user.id });
    assert.equal(card.status, "issued");
    const vc = createCard(join(dir, `${card.id}.card`), randomBytes(32), { kmc: TEST_KMC, cardId: new Uint8Array(Buffer.from(card.id, "hex")), capacity });
    const transport = new InProcessTransport(vc);
    await relaySession(op, (a) => transport.transmit(a), await op.startPersonalisation(card.id));
    assert.equal((await op.getCard(card.id)).status, "active");
    const info = await readCardInfo((a) => transport.transmit(a));
    assert.ok("cardId" in info && info.lifecycle === "SECURED" && info.keySets.some((k) => k.kvn === 1), "the card holds its own key set now");
    return { id: card.id, vc, transport };
  }

  const a = await issueCard(2600);
  const b = await issueCard(96 * 1024);
  t.after(() => {
    a.vc.close();
    b.vc.close();
  });

  const overflowDir = join(dir, "overflow");
  const stateFile = join(dir, "terminal-a.json");
  const terminal = await UserTerminal.open({ api: anonymous, transport: a.transport, stateFile, overflow: new OverflowStore(overflowDir), pin: "123456" });
  assert.equal(terminal.cardId, a.id);

  const pivA = new PivClient((x) => a.transport.transmit(x));
  const signsWith = async (piv: PivClient, slot: string, alg: KeyAlg, pem: string): Promise<boolean> => {
    await piv.select();
    await piv.verifyPin("123456");
    const msg = randomBytes(32);
    const { signature, hash } = await piv.sign(parseInt(slot, 16), alg, msg);
    return verify(hash, msg, { key: new X509Certificate(pem).publicKey, dsaEncoding: "der" }, signature);
  };

  // ST16-ST25 by package, slot after slot, until the small card is full and a slot has to move out.
  const certs = new Map<string, string>();
  const movedOut: string[] = [];
  for (const slot of ["9a", "9c", "9d", "9e", "82", "83", "84"]) {
    const c = await op.requestCredential(a.id, { slot, alg: "P256" });
    certs.set(slot, c.certificate);
    const r = await terminal.sync();
    assert.deepEqual(
      r.packages.map((p) => [p.seq, p.slot, p.status]),
      [[c.packageSeq, slot, "loaded"]],
    );
    assert.ok(await signsWith(pivA, slot, "P256", c.certificate), `the card signs with the key delivered to ${slot}`);
    terminal.touch(slot);
    movedOut.push(...r.movedOut);
    if (r.movedOut.length) break;
  }
  assert.deepEqual(movedOut, ["9a"], "the least recently used slot went out");
  assert.deepEqual(terminal.overflowSlots(), ["9a"]);
  assert.equal(await pivA.readCertificate(0x9a), undefined, "its certificate went with it");
  const state = JSON.parse(readFileSync(stateFile, "utf8"));
  assert.equal(state.cardId, a.id);
  assert.equal(state.lastSeq, certs.size);
  assert.deepEqual(state.pendingAcks, []);

  // Every package was acknowledged: the server has nothing new for the card.
  assert.deepEqual((await terminal.sync()).packages, []);
  const listed = (await op.request<{ packages: { seq: number; status: string }[] }>("GET", `/v1/cards/${a.id}/packages`)).packages;
  assert.ok(
    listed.every((p) => p.status === "acknowledged"),
    JSON.stringify(listed),
  );

  // On demand: 9A comes back (the card is full, so the next least recently used slot, 9C, goes out) and signs.
  terminal.touch("9d");
  terminal.touch("9e");
  const back = await terminal.bringBack("9a");
  assert.deepEqual(back, { slot: "9a", movedOut: ["9c"] });
  assert.ok(await signsWith(pivA, "9a", "P256", certs.get("9a")!), "9A signs with its original key again");
  assert.ok(await pivA.readCertificate(0x9a), "and has its certificate back");
  assert.deepEqual(terminal.overflowSlots(), ["9c"]);

  // The store holds the card's sealed exports only: nothing in it parses as a key or certificate in clear.
  const stored = readdirSync(overflowDir).map((f) => readFileSync(join(overflowDir, f)));
  assert.equal(stored.length, 1);
  const certDer = Buffer.from(new X509Certificate(certs.get("9c")!).raw);
  assert.equal(Buffer.concat(stored).indexOf(certDer.subarray(0, 64)), -1, "the certificate travels sealed too");

  // Card binding: A's terminal token reaches A's packages only.
  const c = await op.requestCredential(b.id, { slot: "9a", alg: "P256" });
  const asA = await terminal.cardClient();
  await assert.rejects(asA.packages(b.id), (e: unknown) => e instanceof ApiError && e.status === 403);
  await assert.rejects(asA.acknowledgePackage(b.id, c.packageSeq), (e: unknown) => e instanceof ApiError && e.status === 403);
  assert.deepEqual(await asA.packages(a.id, terminal.status.lastSeq), [], "its own card's route answers");
  // ... and B's card cannot pass as A: an authentication handshake for A answered by card B is refused.
  const hs = await anonymous.startCardAuth(a.id);
  const answers: Uint8Array[] = [];
  for (const apdu of hs.apdus) answers.push(await b.transport.transmit(apdu));
  await assert.rejects(anonymous.finishCardAuth(a.id, hs.sessionId, answers), (e: unknown) => e instanceof ApiError && e.status === 401);

  // B's own terminal gets it; online delivery through B's terminal works too (addition, claim 7).
  const termB = await UserTerminal.open({ api: anonymous, transport: b.transport });
  assert.deepEqual(
    (await termB.sync()).packages.map((p) => p.status),
    ["loaded"],
  );
  const pivB = new PivClient((x) => b.transport.transmit(x));
  assert.ok(await signsWith(pivB, "9a", "P256", c.certificate));
  const online = await op.requestCredential(b.id, { slot: "9e", alg: "P384" });
  const results = await termB.relay(await op.startOnlineDelivery(b.id, online.keyPairId), op);
  assert.ok(results.every((r) => r.sw === 0x9000));
  assert.ok(await signsWith(pivB, "9e", "P384", online.certificate), "the card signs with the key delivered online");

  // Replay: A's first package, fetched again and relayed into the card, is refused by the card itself.
  const first = (await op.packages(a.id, 0))[0];
  await pivA.select();
  await assert.rejects(pivA.loadPackage(first.body), (e: unknown) => e instanceof ApduError && e.sw === 0x6985);
  // A terminal that lost its state fetches everything again: the card refuses every old package, none is acked.
  writeFileSync(stateFile, JSON.stringify({ ...JSON.parse(readFileSync(stateFile, "utf8")), lastSeq: 0 }));
  const again = await UserTerminal.open({ api: anonymous, transport: a.transport, stateFile, overflow: new OverflowStore(overflowDir), pin: "123456" });
  const replayed = await again.sync();
  assert.equal(replayed.packages.length, certs.size);
  assert.ok(
    replayed.packages.every((p) => p.status === "refused" && p.sw === "6985"),
    JSON.stringify(replayed.packages),
  );
  assert.deepEqual(again.overflowSlots(), ["9c"], "a refused package leaves the overflow store alone");
  assert.ok(await signsWith(pivA, "9a", "P256", certs.get("9a")!), "and the card still holds its keys");

  // Update (claim 4) of a slot that waits in the overflow store: the new key goes onto the card and the stale
  // export leaves the store, so it can never be loaded back over the new key.
  const renewed = await op.requestCredential(a.id, { slot: "9c", alg: "P256", replace: true });
  const upd = await again.sync();
  assert.deepEqual(
    upd.packages.map((p) => [p.slot, p.status]),
    [["9c", "loaded"]],
  );
  assert.ok(!again.overflowSlots().includes("9c"), "the stale 9C export is gone from the store");
  await assert.rejects(again.bringBack("9c"), /no key for slot 9c/);
  assert.ok(await signsWith(pivA, "9c", "P256", renewed.certificate), "9C signs with its new key");

  // The audit chain saw all of it and is intact.
  const audit = await op.verifyAudit();
  assert.equal(audit.ok, true, JSON.stringify(audit));
});
