// Backups of the user's enciphered data over HTTP (src/server/backup-routes.ts, src/terminal/backup-client.ts;
// seed 001 FIG. 11-12, claims 41, 48, steps S10 / S12), on SQLite and PostgreSQL × software keystore and SoftHSM2, the server as its process wires
// it: a card issued and personalised through the API gets a key management key (9D) as a package its terminal
// loads; the user enciphers data to it; the terminal, with the card-bound token it got from the card's own proof,
// backs it up (PUT, versions, 200 when unchanged), lists and fetches versions; plaintext is refused and nothing
// stored; another card's terminal is 403, an auditor sees no envelope. Then the card is replaced — an
// embodiment-3 card-key rotation onto a new card of the same user, with the same key pairs, all over HTTP — and
// the new card's terminal fetches what was written through the old card (HttpBackupTarget over a listening
// server), restores it (S12) and the new card deciphers it, byte-exact. The old card's terminal is shut out.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { sql } from "kysely";
import { createCard } from "../src/card/card.ts";
import type { CardRuntime } from "../src/card/runtime.ts";
import { PUT_BODY_LIMIT } from "../src/server/backup-routes.ts";
import { createOperatorToken } from "../src/server/main.ts";
import type { Db } from "../src/store/db.ts";
import { testEngines } from "./support/store-testing.ts";
import { IssuerApiClient } from "../src/terminal/api-client.ts";
import { BackupClientError, HttpBackupTarget } from "../src/terminal/backup-client.ts";
import { backup, restore, TerminalEncipheredStore } from "../src/terminal/backup.ts";
import { decipherWithCard, encipherForCard, EncipheredError, MAX_PLAINTEXT, recipientOf } from "../src/protocol/enciphered.ts";
import { PivClient, SLOT } from "../src/protocol/piv/client.ts";
import { api, API_CUSTODIES, type ApiEnv, authenticate, expect, issueAndPersonalise, issuerApiEnv, relay } from "./api-env.ts";
import { tempDir } from "./helpers.ts";
import { TEST_KMC } from "./kmc.ts";

const PIN = "123456";
const b64 = (b: Uint8Array) => Buffer.from(b).toString("base64");
const utf8 = (s: string) => new Uint8Array(Buffer.from(s, "utf8"));

type Res = Awaited<ReturnType<ApiEnv["server"]["app"]["inject"]>>;

function calls(env: ApiEnv) {
  const { get, post } = api(env);
  const put = (url: string, token: string | undefined, body: unknown) =>
    env.server.app.inject({ method: "PUT", url, headers: token ? { authorization: `Bearer ${token}` } : {}, payload: body as object });
  return { get, post, put };
}

/** The terminal's part of ST22-ST25: fetch the card's packages with its token, load each, acknowledge. */
async function syncPackages(env: ApiEnv, cardId: string, card: CardRuntime, token: string): Promise<number> {
  const { get, post } = api(env);
  const r = expect(await get(`/v1/cards/${cardId}/packages`, token), 200) as { packages: { seq: number; body: string }[] };
  const piv = new PivClient((a) => card.transmit(a));
  await piv.select();
  for (const p of r.packages) {
    await piv.loadPackage(new Uint8Array(Buffer.from(p.body, "base64")));
    expect(await post(`/v1/cards/${cardId}/packages/${p.seq}/ack`, token), 204);
  }
  return r.packages.length;
}

/** A refusal: 4xx problem+json whose detail does not echo `secret`. */
function refused(r: Res, status: number, secret?: string): Record<string, unknown> {
  const p = expect(r, status);
  if (secret) assert.ok(!r.body.includes(secret), `the refusal echoes the body: ${r.body}`);
  return p;
}

for (const [engine, custody] of testEngines().flatMap((e) => API_CUSTODIES.map((c) => [e, c] as const))) {
  test(`${engine.name}, ${custody} custody: back up over HTTP with the card's token, refusals, then a reissued card restores and deciphers`, { timeout: 10 * 60_000 }, async (t) => {
    const env = await issuerApiEnv(engine, { custody });
    const cards: CardRuntime[] = [];
    t.after(async () => {
      for (const c of cards) c.close();
      await env.close();
    });
    const dir = tempDir("cardkms-backup-api-");
    const { get, post, put } = calls(env);
    const op = env.tokens.operator;

    // ---- the card, its 9D key as a package through its terminal, and a second user's card ----------------------------
    const hanako = await issueAndPersonalise(env, "Hanako Yamada");
    const taro = await issueAndPersonalise(env, "Taro Suzuki");
    cards.push(hanako.card, taro.card);
    const userId = hanako.user.id as string;
    const cardId = hanako.cardId;
    expect(await post(`/v1/cards/${cardId}/credentials`, op, { slot: "9d", alg: "P256" }), 201);
    const token = (expect(await authenticate(post, cardId, hanako.card), 200) as { token: string }).token;
    const taroToken = (expect(await authenticate(post, taro.cardId, taro.card), 200) as { token: string }).token;
    assert.equal(await syncPackages(env, cardId, hanako.card, token), 1);
    const piv = new PivClient((a) => hanako.card.transmit(a));
    await piv.select();
    const recipient = recipientOf((await piv.readCertificate(SLOT.keyManagement))!);

    // The user's data, enciphered to the card's key; each envelope bound to its object ID.
    const data: Record<string, Uint8Array> = {
      "bank-pins": utf8(`bank A: 4711, bank B: 0815 — ${randomBytes(6).toString("hex")}`),
      "medical-record.json": utf8(JSON.stringify({ patient: "Hanako Yamada", notes: randomBytes(600).toString("base64") })),
      "photo.bin": new Uint8Array(randomBytes(3000)),
    };
    const seal = (id: string) => encipherForCard(recipient, data[id], utf8(id));
    const first = seal("bank-pins");
    const url = (objectId?: string, q = "") => `/v1/cards/${cardId}/backups${objectId ? `/${objectId}` : ""}${q}`;

    await t.test("S10: PUT with the card-bound token stores version 1; the same envelope again is 200 unchanged; a new one is version 2", async () => {
      const r1 = expect(await put(url("bank-pins"), token, { envelope: b64(first) }), 201) as { backup: Record<string, unknown>; created: boolean };
      assert.equal(r1.created, true);
      assert.deepEqual(
        [r1.backup.userId, r1.backup.cardId, r1.backup.objectId, r1.backup.version, r1.backup.recipientKid, r1.backup.size],
        [userId, cardId, "bank-pins", 1, recipient.kid, first.length],
      );
      assert.equal("envelope" in r1.backup, false, "a put answers no envelope");
      const again = expect(await put(url("bank-pins"), token, { envelope: b64(first) }), 200) as { backup: Record<string, unknown>; created: boolean };
      assert.deepEqual([again.created, again.backup.version, again.backup.id], [false, 1, r1.backup.id]);
      const r2 = expect(await put(url("bank-pins"), token, { envelope: b64(seal("bank-pins")) }), 201) as { backup: Record<string, unknown> };
      assert.equal(r2.backup.version, 2);
    });

    await t.test("S10 through HttpBackupTarget: backup() of the terminal's store; the client checks what it sends", async () => {
      await env.server.app.listen({ host: "127.0.0.1", port: 0 });
      const addr = env.server.app.server.address();
      assert.ok(addr && typeof addr === "object");
      const target = new HttpBackupTarget(new IssuerApiClient({ server: `http://127.0.0.1:${addr.port}`, token }), cardId);
      const terminal = new TerminalEncipheredStore(join(dir, "terminal"));
      await terminal.put(["medical-record.json", "photo.bin"].map((id) => ({ objectId: id, envelope: seal(id) })));
      const report = await backup({ userId, cardId, from: [terminal], to: target });
      assert.deepEqual(
        report.stored.map((s) => [s.objectId, s.version]),
        [
          ["medical-record.json", 1],
          ["photo.bin", 1],
        ],
      );
      assert.deepEqual((await backup({ userId, cardId, from: [terminal], to: target })).unchanged.length, 2, "a second run adds nothing");
      await assert.rejects(target.put({ userId, objectId: "note", envelope: data["bank-pins"] }), (e: unknown) => e instanceof BackupClientError && /only enciphered data/.test(e.message));
      await assert.rejects(target.put({ userId: "someone-else", objectId: "photo.bin", envelope: (await terminal.get("photo.bin"))! }), BackupClientError, "another user is refused");
      const v1 = await target.get("bank-pins", 1);
      assert.deepEqual(v1.envelope, first);
      assert.equal((await target.list()).userId, userId);
    });

    await t.test("list (every version, no envelopes), one version with its envelope, latest=true, 404s", async () => {
      const all = expect(await get(url(), token), 200) as { cardId: string; userId: string; backups: Record<string, unknown>[] };
      assert.deepEqual([all.cardId, all.userId], [cardId, userId]);
      assert.deepEqual(
        all.backups.map((b) => [b.objectId, b.version]),
        [
          ["bank-pins", 1],
          ["bank-pins", 2],
          ["medical-record.json", 1],
          ["photo.bin", 1],
        ],
      );
      assert.ok(all.backups.every((b) => !("envelope" in b)));
      const one = expect(await get(url(undefined, "?objectId=bank-pins"), token), 200) as { backups: unknown[] };
      assert.equal(one.backups.length, 2);
      const v1 = expect(await get(url("bank-pins", "?version=1"), token), 200);
      assert.deepEqual([v1.version, Buffer.from(v1.envelope as string, "base64").equals(Buffer.from(first))], [1, true]);
      assert.equal(expect(await get(url("bank-pins"), token), 200).version, 2);
      const latest = expect(await get(url(undefined, "?latest=true"), token), 200) as { backups: Record<string, unknown>[] };
      assert.deepEqual(
        latest.backups.map((b) => [b.objectId, b.version, typeof b.envelope]),
        [
          ["bank-pins", 2, "string"],
          ["medical-record.json", 1, "string"],
          ["photo.bin", 1, "string"],
        ],
      );
      refused(await get(url("bank-pins", "?version=9"), token), 404);
      refused(await get(url("nothing-here"), token), 404);
      refused(await get(`/v1/cards/${"ab".repeat(8)}/backups`, op), 404);
    });

    await t.test("plaintext and other non-envelopes are refused (4xx problem+json, never echoed) and nothing is stored", async () => {
      const before = (expect(await get(url(), op), 200) as { backups: unknown[] }).backups.length;
      const secret = Buffer.from(data["bank-pins"]).toString("utf8");
      refused(await put(url("leak"), token, { envelope: b64(data["bank-pins"]) }), 400, secret);
      refused(await put(url("leak"), token, { envelope: b64(utf8(JSON.stringify({ format: "cardkms-enciphered", v: 2, note: secret }))) }), 400, secret);
      refused(await put(url("leak"), token, { envelope: "not base64!" }), 400);
      refused(await put(url("leak"), token, { envelope: b64(first).replace(/=+$/, "") + "A" }), 400);
      refused(await put(url("leak"), token, { envelope: b64(first), plaintext: "x" }), 400);
      refused(await put(url("..%2Fetc"), token, { envelope: b64(first) }), 400);
      refused(await env.server.app.inject({ method: "PUT", url: url("leak"), headers: { authorization: `Bearer ${token}`, "content-type": "text/plain" }, payload: secret }), 400, secret);
      assert.equal((expect(await get(url(), op), 200) as { backups: unknown[] }).backups.length, before);
      const rows = await (env.server.store.db as Db).withTables<{ backups: { object_id: string } }>().selectFrom("backups").select("object_id").where("object_id", "=", "leak").execute();
      assert.deepEqual(rows, []);
    });

    await t.test("authorization: another card's terminal 403, auditors see no envelope, no token 401; users are kept apart", async () => {
      refused(await put(url("bank-pins"), taroToken, { envelope: b64(first) }), 403);
      refused(await get(url(), taroToken), 403);
      refused(await get(url("bank-pins"), taroToken), 403);
      refused(await get(url(undefined, "?latest=true"), taroToken), 403);
      const audited = expect(await get(url(), env.tokens.auditor), 200) as { backups: Record<string, unknown>[] };
      assert.equal(audited.backups.length, 4);
      assert.ok(audited.backups.every((b) => !("envelope" in b)));
      refused(await get(url(undefined, "?latest=true"), env.tokens.auditor), 403);
      refused(await get(url("bank-pins"), env.tokens.auditor), 403);
      refused(await put(url("bank-pins"), env.tokens.auditor, { envelope: b64(first) }), 403);
      refused(await get(url()), 401);
      refused(await put(url("bank-pins"), undefined, { envelope: b64(first) }), 401);
      // Taro's card reaches Taro's (empty) backups only; the operator writes for Hanako's card, named in the audit log
      assert.deepEqual((expect(await get(`/v1/cards/${taro.cardId}/backups`, taroToken), 200) as { backups: unknown[] }).backups, []);
      expect(await put(url("operator-copy"), op, { envelope: b64(seal("photo.bin")) }), 201);
      const audit = await (env.server.store.db as Db).selectFrom("audit_log").select(["actor", "details"]).where("action", "=", "backup.stored").where("subject", "=", userId).execute();
      const actors = audit.map((a) => a.actor);
      assert.deepEqual([actors.filter((a) => a === `terminal:${cardId}`).length, actors.filter((a) => a === "olga").length], [4, 1]);
      for (const a of audit) for (const p of Object.values(data)) assert.ok(!String(a.details).includes(b64(p).slice(0, 16)));
    });

    await t.test("S11-S12: a new card of the same user with the same key; its terminal fetches the old card's backups over HTTP and the new card deciphers them", async () => {
      // An embodiment-3 rotation onto a new card, over HTTP: the key pairs (9D included) re-wrapped to its Sk2.
      const rot = expect(await post(`/v1/cards/${cardId}/rotations`, op, { strategy: "embodiment3" }), 201) as { id: string };
      expect(await post(`/v1/rotations/${rot.id}/approve`, (await createOperatorToken(env.server.store, "otto", ["operator"])).token, {}), 200); // four eyes
      const fresh = expect(await post(`/v1/rotations/${rot.id}/new-card`, op, {}), 201) as { card: { id: string; userId: string }; personalisation: { sessionId: string; apdus: string[] } };
      assert.equal(fresh.card.userId, userId);
      const newCard = createCard(join(dir, "new.card"), randomBytes(32), { kmc: TEST_KMC, cardId: Buffer.from(fresh.card.id, "hex") });
      cards.push(newCard);
      expect(await relay(post, op, fresh.personalisation, newCard), 200);
      for (let i = 0; i < 200; i++) {
        const r = await post(`/v1/rotations/${rot.id}/rewrap`, op, {});
        if (r.statusCode === 200) break;
        expect(r, 202);
        await new Promise((res) => setTimeout(res, 25));
      }
      expect(await post(`/v1/rotations/${rot.id}/distribute`, op, {}), 200);
      const newToken = (expect(await authenticate(post, fresh.card.id, newCard), 200) as { token: string }).token;
      assert.ok((await syncPackages(env, fresh.card.id, newCard, newToken)) >= 1);
      const newPiv = new PivClient((a) => newCard.transmit(a));
      await newPiv.select();
      assert.equal(recipientOf((await newPiv.readCertificate(SLOT.keyManagement))!).kid, recipient.kid, "the same 9D key pair");

      // the old card is retired: its terminal no longer reaches the user's backups
      refused(await get(url(), token), 409);
      refused(await put(url("bank-pins"), token, { envelope: b64(first) }), 409);

      // S12 over a real socket: the new card's terminal, its own token, the old card's writes
      const addr = env.server.app.server.address();
      assert.ok(addr && typeof addr === "object");
      const target = new HttpBackupTarget(new IssuerApiClient({ server: `http://127.0.0.1:${addr.port}`, token: newToken }), fresh.card.id);
      const latest = await target.latestAll(userId);
      assert.deepEqual(
        latest.map((b) => [b.objectId, b.cardId]),
        [
          ["bank-pins", cardId],
          ["medical-record.json", cardId],
          ["operator-copy", cardId],
          ["photo.bin", cardId],
        ],
      );
      await assert.rejects(target.latestAll(taro.user.id as string), BackupClientError, "a restore for another user is refused");
      const store = new TerminalEncipheredStore(join(dir, "terminal-after"));
      const report = await restore({ userId, from: target, into: store, forCard: { piv: newPiv, slot: SLOT.keyManagement } });
      assert.deepEqual(
        report.restored.map((r) => r.objectId),
        ["bank-pins", "medical-record.json", "operator-copy", "photo.bin"],
      );
      assert.deepEqual(report.skipped, []);
      await newPiv.verifyPin(PIN);
      for (const [id, plain] of Object.entries(data)) {
        assert.deepEqual(await decipherWithCard(newPiv, SLOT.keyManagement, (await store.get(id))!, { aad: utf8(id) }), plain, `the new card reads ${id}`);
      }
      // version 1 of bank-pins, written before, still opens on the new card; bound to its name
      const old = await target.get("bank-pins", 1);
      assert.deepEqual(await decipherWithCard(newPiv, SLOT.keyManagement, old.envelope, { aad: utf8("bank-pins") }), data["bank-pins"]);
      await assert.rejects(decipherWithCard(newPiv, SLOT.keyManagement, old.envelope, { aad: utf8("photo.bin") }), (e: unknown) => e instanceof EncipheredError && e.code === "aad-mismatch");
      // a backup through the new card is recorded as the new card's, in the same user's history
      const put3 = await target.put({ userId, objectId: "bank-pins", envelope: seal("bank-pins") });
      assert.deepEqual([put3.created, put3.backup.version, put3.backup.cardId], [true, 3, fresh.card.id]);
    });

    await t.test("bodies up to the envelope limit are taken (the largest plaintext an envelope holds); larger ones are 413", async () => {
      const taroUrl = `/v1/cards/${taro.cardId}/backups/big.bin`;
      const big = new Uint8Array(randomBytes(MAX_PLAINTEXT));
      const env1 = encipherForCard(recipient, big, utf8("big.bin"));
      const body = JSON.stringify({ envelope: b64(env1) });
      assert.ok(body.length > 1 << 20 && body.length <= PUT_BODY_LIMIT, `${body.length} bytes of body`);
      const r = expect(await env.server.app.inject({ method: "PUT", url: taroUrl, headers: { authorization: `Bearer ${taroToken}`, "content-type": "application/json" }, payload: body }), 201) as {
        backup: { size: number };
      };
      assert.equal(r.backup.size, env1.length);
      const back = await get(taroUrl, taroToken);
      assert.equal(back.statusCode, 200);
      assert.ok(Buffer.from((back.json() as { envelope: string }).envelope, "base64").equals(Buffer.from(env1)));
      const over = `{"envelope":"${"A".repeat(PUT_BODY_LIMIT)}"}`;
      refused(await env.server.app.inject({ method: "PUT", url: taroUrl, headers: { authorization: `Bearer ${taroToken}`, "content-type": "application/json" }, payload: over }), 413);
    });

    await t.test("no plaintext anywhere in the DB tables of backups and audit, nor in the server's log", async () => {
      const db = env.server.store.db as Db;
      const rows = [...(await sql<Record<string, unknown>>`select * from backups`.execute(db)).rows, ...(await sql<Record<string, unknown>>`select * from audit_log`.execute(db)).rows];
      const logs = env.logs.join("\n");
      for (const [id, plain] of Object.entries(data)) {
        const needles = [Buffer.from(plain), Buffer.from(b64(plain).slice(4, 28)), Buffer.from(Buffer.from(plain).toString("base64url").slice(4, 28))];
        for (const row of rows)
          for (const v of Object.values(row)) {
            if (v === null || v === undefined) continue;
            const bytes = v instanceof Uint8Array ? Buffer.from(v) : Buffer.from(String(v));
            assert.ok(!needles.some((n) => bytes.includes(n)), `plaintext of ${id} in the DB`);
          }
        assert.ok(!needles.some((n) => logs.includes(n.toString())), `plaintext of ${id} in the log`);
      }
      assert.ok(!logs.includes(token), "no terminal token in the log");
    });

    await t.test("object IDs up to the 128 characters the repository allows work in the path; longer paths are 414 problems", async () => {
      const long = "o".repeat(128);
      const env128 = encipherForCard(recipient, utf8("long name"), utf8(long));
      const taroUrl = (objectId: string) => `/v1/cards/${taro.cardId}/backups/${objectId}`;
      assert.equal((expect(await put(taroUrl(long), op, { envelope: b64(env128) }), 201) as { backup: { objectId: string } }).backup.objectId, long);
      const p = expect(await get(taroUrl("o".repeat(300)), op), 414);
      assert.equal(p.type, "https://cardkms.dev/problems/bad-request");
    });
  });
}
