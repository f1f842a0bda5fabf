// Three `cardkms issuer serve` processes on one PostgreSQL behave as one (issue 16): the proof the cluster work is
// measured by (test/cluster-env.ts starts the cluster, once for this file).
//
//   - Many concurrent privileged writes spread round-robin over the servers (users, cards, personalisations,
//     credentials on two slots of a card at once, revocations, retirements, suspend on one server and resume on
//     another) make ONE audit log: `cardkms audit verify` passes on the database and through every server, the
//     sequence numbers are exactly 1..n, and the entries are exactly the writes made, by action.
//   - One issuance crosses the servers: card created on server 0, personalised through server 1, credential
//     requested on server 2, packages loaded by the card's terminal, the delivery seen through the other servers,
//     the revocation made on one server in the CRL the others serve.
//   - A server SIGKILLed in the middle of a burst of writes leaves the log whole (no gap, no fork): every card the
//     database holds has its one entry; the restarted server takes writes again on the same address.
//   - credential requests at once through different servers: groups of different servers that lose a deadlock to
//     each other run again (store/group.ts), so every request succeeds.
// Relay sessions are opened on one server and advanced on another (they live in the store, issue 16 §1).
// CARDKMS_CLUSTER_LOGS=1 prints the servers' logs when the file ends (level warn and above, and their {url} line).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { sql } from "kysely";
import { createCard } from "../src/card/card.ts";
import { ApiError, IssuerApiClient } from "../src/terminal/api-client.ts";
import { OverflowStore } from "../src/terminal/overflow.ts";
import { relaySession, UserTerminal } from "../src/terminal/terminal.ts";
import { InProcessTransport } from "../src/transport/transport.ts";
import * as x509 from "../src/x509.ts";
import { startCluster, type Cluster } from "./cluster-env.ts";
import { cliJson, runCli, tempDir } from "./helpers.ts";
import { TEST_KMC } from "./kmc.ts";
import { testEngines } from "./support/store-testing.ts";

const dir = tempDir("cardkms-cluster-audit-");

// One cluster for the file (starting three servers is most of its time); the tests run one after the other on it and
// count what each wrote from where the log stood when it began.
// CARDKMS_TEST_PG=off leaves PostgreSQL out on purpose: then these tests say they are skipped, and why.
const PG_OFF = !testEngines().some((e) => e.name === "postgres") && "CARDKMS_TEST_PG=off: a cluster runs on PostgreSQL";
const HANG = { timeout: 10 * 60_000, skip: PG_OFF };
let c: Cluster;
before(async () => {
  if (!PG_OFF) c = await startCluster();
});
after(async () => {
  if (process.env.CARDKMS_CLUSTER_LOGS) for (const i of c?.urls.keys() ?? []) process.stderr.write(`---- server ${i}\n${c.logs(i)}\n`);
  await c?.stop();
});

const clients = (c: Cluster, token: string) => c.urls.map((server) => new IssuerApiClient({ server, token }));

/** Every entry's (seq, action) in order, straight from the shared database. */
async function auditRows(c: Cluster): Promise<{ seq: number; action: string }[]> {
  const rows = await c.tdb.db.selectFrom("audit_log").select(["seq", "action"]).orderBy("seq").execute();
  return rows.map((r) => ({ seq: Number(r.seq), action: r.action }));
}

const count = async (table: "users" | "cards" | "certificates") =>
  Number(
    (
      await c.tdb.db
        .selectFrom(table)
        .select(sql<string>`count(*)`.as("n"))
        .executeTakeFirstOrThrow()
    ).n,
  );

const tally = (actions: string[]) => {
  const m: Record<string, number> = {};
  for (const a of actions) m[a] = (m[a] ?? 0) + 1;
  return m;
};

/**
 * The log checked: seq 1..n, then `cardkms audit verify` on the database and through the servers `via` (auditor
 * token) — or, with `via` "in-process", the same verification (verifyAuditLog) without starting the CLI.
 */
async function assertOneLog(c: Cluster, via: number[] | "in-process"): Promise<{ seq: number; action: string }[]> {
  const rows = await auditRows(c);
  assert.deepEqual(
    rows.map((r) => r.seq),
    rows.map((_, i) => i + 1),
    "sequence numbers are 1..n: no gap, no duplicate",
  );
  if (via === "in-process") {
    const v = await c.store.verifyAuditLog();
    assert.deepEqual(v.ok && { ok: v.ok, entries: v.entries, head: v.head?.seq }, { ok: true, entries: rows.length, head: rows.length }, JSON.stringify(v));
    return rows;
  }
  const [offline, ...online] = await Promise.all([
    runCli(["audit", "verify", "--database", c.database, "--json"]),
    ...via.map((i) => runCli(["audit", "verify", "--server", c.urls[i], "--token", c.tokens.auditor, "--json"])),
  ]);
  const v = cliJson(offline, "audit verify --database");
  assert.deepEqual({ ok: v.ok, entries: v.entries, head: v.head?.seq }, { ok: true, entries: rows.length, head: rows.length });
  online.forEach((r, i) => {
    const s = cliJson(r, `audit verify through server ${via[i]}`);
    assert.deepEqual({ ok: s.ok, entries: s.entries, head: s.head }, { ok: true, entries: rows.length, head: v.head }, `server ${via[i]} verifies the same log`);
  });
  return rows;
}

/** A blank virtual card from the tests' factory for the card the issuer recorded. */
function blankCard(cardId: string) {
  const vc = createCard(join(dir, `${cardId}.card`), randomBytes(32), { kmc: TEST_KMC, cardId: new Uint8Array(Buffer.from(cardId, "hex")) });
  return { vc, transport: new InProcessTransport(vc) };
}

test("three servers on one PostgreSQL: concurrent writes round-robin make one audit log", HANG, async (t) => {
  const op = clients(c, c.tokens.operator);
  const op2 = clients(c, c.tokens.operator2);
  const rr = (i: number) => op[i % op.length];
  const start = await auditRows(c);
  const rowsBefore = { users: await count("users"), cards: await count("cards"), certificates: await count("certificates") };

  // Users, all at once, request i through server i mod 3.
  const USERS = 45;
  const users = await Promise.all(Array.from({ length: USERS }, (_, i) => rr(i).registerUser({ commonName: `Cluster User ${i}`, email: `u${i}@example.test` })));
  // A card for each of the first 12 users, through the next server along.
  const CARDS = 12;
  const cards = await Promise.all(users.slice(0, CARDS).map((u, i) => rr(i + 1).createCard({ userId: u.id })));
  const ids = cards.map((x) => x.card.id);
  // Half of them personalised: each relay opened through the server after that, its rounds through the next one.
  const active = ids.slice(0, CARDS / 2);
  const vcs = active.map(blankCard);
  t.after(() => vcs.forEach((x) => x.vc.close()));
  await Promise.all(active.map(async (id, i) => relaySession(rr(i + 3), (a) => vcs[i].transport.transmit(a), await rr(i + 2).startPersonalisation(id))));
  // Two credentials per active card, slots 9a (olga) and 9c (otto), all at once, each through another server.
  const creds = await Promise.all(
    active.flatMap((id, i) => [op[i % op.length].requestCredential(id, { slot: "9a", alg: "P256" }), op2[(i + 1) % op2.length].requestCredential(id, { slot: "9c", alg: "P256" })]),
  );
  const authCerts = creds.filter((_, k) => k % 2 === 0);
  // Then, all together: each 9a certificate revoked through yet another server; the cards never personalised
  // retired; three active cards suspended through one server and resumed through another.
  await Promise.all([
    ...authCerts.map((cr, i) => rr(i + 2).revokeCertificate(cr.serial, "superseded")),
    ...ids.slice(CARDS / 2).map((id, i) => rr(i).request("POST", `/v1/cards/${id}/retire`, { reason: "cluster test: never personalised" })),
    ...active.slice(0, 3).map(async (id, i) => {
      await rr(i).request("POST", `/v1/cards/${id}/suspend`, { reason: "cluster test" });
      await rr(i + 1).request("POST", `/v1/cards/${id}/resume`, { reason: "cluster test" });
    }),
  ]);

  const rows = await assertOneLog(c, [0, 1, 2]);
  const written = tally(rows.slice(start.length).map((r) => r.action));
  assert.deepEqual(written, {
    "user.registered": USERS,
    "card.issued": CARDS,
    "card.personalised": CARDS / 2,
    "credential.issued": CARDS,
    "certificate.revoked": CARDS / 2,
    "card.retired": CARDS / 2,
    "card.suspended": 3,
    "card.resumed": 3,
  });
  // The data behind the entries agrees: one row per user, card and certificate written.
  assert.deepEqual(
    { users: await count("users"), cards: await count("cards"), certificates: await count("certificates") },
    { users: rowsBefore.users + USERS, cards: rowsBefore.cards + CARDS, certificates: rowsBefore.certificates + CARDS },
  );
});

test("one issuance across the servers: created on 0, personalised through 1, requested on 2, loaded by the terminal", HANG, async (t) => {
  const start = (await auditRows(c)).length;
  const [op0, op1, op2] = clients(c, c.tokens.operator);
  const auditor = clients(c, c.tokens.auditor);

  const user = await op0.registerUser({ commonName: "Kenji Sato", email: "kenji@example.test" });
  const { card } = await op0.createCard({ userId: user.id });
  const { vc, transport } = blankCard(card.id);
  t.after(() => vc.close());
  // The personalisation relay opened on server 1, its rounds through server 2.
  await relaySession(op2, (a) => transport.transmit(a), await op1.startPersonalisation(card.id));
  assert.equal((await op2.getCard(card.id)).status, "active", "server 2 sees what server 1 did");
  const cred = await op2.requestCredential(card.id, { slot: "9a", alg: "P256" });

  // The card's terminal: login, packages, acknowledgements, through server 0 here (test/cluster-flows.test.ts sends
  // each of the terminal's steps to another server).
  const terminal = await UserTerminal.open({
    api: new IssuerApiClient({ server: c.urls[0] }),
    transport,
    stateFile: join(dir, `terminal-${card.id}.json`),
    overflow: new OverflowStore(join(dir, `overflow-${card.id}`)),
    pin: "123456",
  });
  const synced = await terminal.sync();
  assert.deepEqual(
    synced.packages.map((p) => [p.seq, p.slot, p.status]),
    [[cred.packageSeq, "9a", "loaded"]],
  );
  // Through the other servers: the acknowledgement made on server 0 is the one every server answers with.
  for (const [i, o] of [op1, op2].entries()) {
    const listed = (await o.request<{ packages: { seq: number; status?: string }[] }>("GET", `/v1/cards/${card.id}/packages`)).packages;
    assert.deepEqual(
      listed.map((p) => [p.seq, p.status]),
      [[cred.packageSeq, "acknowledged"]],
      `server ${i + 1} sees the package acknowledged`,
    );
  }

  // Revoked through server 1; the CRL served by servers 0 and 2 lists it.
  await op1.revokeCertificate(cred.serial, "keyCompromise");
  for (const i of [0, 2]) {
    const crl = await auditor[i].crl();
    assert.ok(crlHasSerial(crl.body, cred.serial), `server ${i}'s CRL lists the certificate revoked through server 1`);
  }

  const rows = await assertOneLog(c, "in-process");
  assert.deepEqual(
    rows.slice(start).map((r) => r.action),
    ["user.registered", "card.issued", "card.personalised", "credential.issued", "terminal.authenticated", "credential.delivered", "certificate.revoked"],
  );
});

test("a server SIGKILLed in a burst of writes: the log stays whole, the restarted server writes again", HANG, async () => {
  const op = clients(c, c.tokens.operator);
  const BURST = 45;
  const users = await Promise.all(Array.from({ length: BURST }, (_, i) => op[i % 3].registerUser({ commonName: `Burst User ${i}` })));
  const start = (await auditRows(c)).length;
  const cardsBefore = await count("cards");

  // Card issues (each one transaction: the card, its key set and its entry) round-robin, server 1 killed mid-way.
  const results = Promise.allSettled(users.map((u, i) => op[i % 3].createCard({ userId: u.id })));
  await new Promise((r) => setTimeout(r, 50));
  await c.kill(1);
  assert.equal(c.running(1), false);
  const settled = await results;
  const ok = settled.filter((r) => r.status === "fulfilled").length;
  settled.forEach((r, i) => {
    if (i % 3 !== 1) assert.equal(r.status, "fulfilled", `request ${i} to a live server: ${r.status === "rejected" ? r.reason : ""}`);
    else if (r.status === "rejected") assert.ok(r.reason instanceof ApiError && r.reason.status === 0, `a request to the killed server fails as unreachable: ${r.reason}`);
  });

  // The killed server's requests: some may have committed before it died, none is half there.
  const issued = (await auditRows(c)).slice(start).filter((r) => r.action === "card.issued").length;
  assert.equal(issued, (await count("cards")) - cardsBefore, "every card recorded has its one audit entry, and no entry names a card not recorded");
  assert.ok(issued >= ok && issued <= BURST, `${issued} entries for ${ok} acknowledged of ${BURST} sent`);

  // Restarted on its address, it takes writes again; the log is one chain through the crash.
  const url = c.urls[1];
  assert.equal(await c.restart(1), url, "same address after the restart");
  const after = await op[1].registerUser({ commonName: "After The Crash" });
  assert.equal((await op[0].request<{ id: string }>("GET", `/v1/users/${after.id}`)).id, after.id);
  await assertOneLog(c, [1]);
});

/** Whether a DER CRL lists the certificate `serial` (hex). */
function crlHasSerial(der: Uint8Array, serial: string): boolean {
  const bare = (x: string) => x.toLowerCase().replace(/^0+/, "");
  return new x509.X509Crl(der.slice().buffer as ArrayBuffer).entries.some((e) => bare(e.serialNumber) === bare(serial));
}

// Each server's group commit (store/group.ts) keeps one transaction over several requests, so groups of different
// servers can lock the same card rows in opposite orders: PostgreSQL aborts one with 40P01. The loser's calls were
// rolled back and run again alone; no request fails for it.
test("credential requests at once through different servers all succeed", HANG, async () => {
  const op = clients(c, c.tokens.operator);
  const user = await op[0].registerUser({ commonName: "Deadlock Probe" });
  const ids: string[] = [];
  for (let i = 0; i < 6; i++) {
    const { card } = await op[i % 3].createCard({ userId: user.id });
    const { vc, transport } = blankCard(card.id);
    try {
      await relaySession(op[i % 3], (a) => transport.transmit(a), await op[i % 3].startPersonalisation(card.id));
    } finally {
      vc.close();
    }
    ids.push(card.id);
  }
  const settled = await Promise.allSettled(ids.flatMap((id, i) => ["9a", "9c"].map((slot, k) => op[(i + k) % 3].requestCredential(id, { slot, alg: "P256" }))));
  const failed = settled.flatMap((r) => (r.status === "rejected" ? [String(r.reason)] : []));
  assert.deepEqual(failed, [], "every request succeeds");
  await assertOneLog(c, "in-process");
});
