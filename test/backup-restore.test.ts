// Seed 001, modification of embodiment 3 (FIG. 11-12), claims 41 and 48, end to end on both storage engines with
// the software keystore and real virtual cards: the user's card gets a key management key pair and certificate
// (slot 9D) from the issuer; the user enciphers data to it and keeps it on the card and in the terminal's store;
// backs it up to the back-up device (S10); the card is destroyed (S5'); a new card is issued with the SAME
// private key (S11); the backup is restored into the new card and a fresh terminal store (S12); and the new card
// deciphers what was written before the loss, byte-exact. Another card cannot, a tampered envelope is refused,
// and no table of the DB ever held the plaintext.
//
// S11 here is the issuer's existing path that puts a card's stored wrapped keys on a new card: card-key rotation,
// embodiment 3 (src/issuer/rotation.ts — Sk1[PRk] re-wrapped to the new card's Sk2, sent as packages). It is
// `reissueWithSameKey` below, the one place to swap for the reproduction service (src/recovery) once that
// delivers a reproduced key into a reissued card.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes, X509Certificate } from "node:crypto";
import { existsSync, rmSync } from "node:fs";
import { join } from "node:path";
import { sql } from "kysely";
import { createCard } from "../src/card/card.ts";
import type { KeyAlg } from "../src/card/state.ts";
import { CertificationAuthority } from "../src/ca/authority.ts";
import { LocalCaClient } from "../src/ca/client.ts";
import { MemoryCaRepository } from "../src/ca/repository.ts";
import { keyPair } from "./support/ca-testing.ts";
import { nodeSigner } from "../src/ca/signer.ts";
import { runScript } from "../src/issuer/card-scripts.ts";
import { Issuer } from "../src/issuer/issuer.ts";
import { CardRotation } from "../src/issuer/rotation.ts";
import { verifyAuditLog } from "../src/store/audit.ts";
import { BackupRepository } from "../src/store/backup-repository.ts";
import type { Db, Engine } from "../src/store/db.ts";
import { Store } from "../src/store/store.ts";
import { testEngines } from "./support/store-testing.ts";
import { ApduError, type Transmit } from "../src/protocol/apdu-client.ts";
import { backup, CardEncipheredStore, preferCard, restore, TerminalEncipheredStore, type CardObjectWriter } from "../src/terminal/backup.ts";
import { decipherWithCard, encipherForCard, EncipheredError, recipientOf } from "../src/protocol/enciphered.ts";
import { PIV_AID, PivClient, putDataCommand, SLOT } from "../src/protocol/piv/client.ts";
import { softwareCustody } from "./custody-env.ts";
import { importTestKmc, TEST_KMC } from "./kmc.ts";
import { tempDir } from "./helpers.ts";

const dir = tempDir("cardkms-backup-restore-");
const PIN = "123456";

/** The issuer writing the card's enciphered-data object: PUT DATA inside its SCP03 session on the card's key set. */
async function issuerWriter(issuer: Issuer, cardId: string, transmit: Transmit): Promise<CardObjectWriter> {
  const keys = issuer.keysOf(await issuer.currentKeySet(await issuer.card(cardId)));
  return async (tag, value) => {
    await runScript(transmit, {
      keys,
      aid: PIV_AID,
      commands: [putDataCommand(tag, value)],
      check: (r) => {
        if (r[0].sw !== 0x9000) throw new ApduError(r[0].sw, "PUT DATA enciphered objects");
      },
    });
  };
}

/** Loads the card's waiting packages through its terminal and acknowledges them (ST22-ST25). */
async function syncPackages(issuer: Issuer, cardId: string, piv: PivClient): Promise<number> {
  const pending = await issuer.packagesFor(cardId);
  for (const p of pending) {
    await piv.loadPackage(p.body);
    await issuer.acknowledgePackage(cardId, p.seq, "terminal");
  }
  return pending.length;
}

/**
 * S11: a new card for the same user holding the same key pairs as the destroyed one. Today: card-key rotation,
 * embodiment 3 — the stored Sk1[PRk] of every pair re-wrapped under the new card's Sk2 and delivered as packages;
 * the old card is not needed (it is gone). To be replaced by the reproduction service's reissue.
 */
async function reissueWithSameKey(issuer: Issuer, oldCardId: string, imagePath: string) {
  const rotations = new CardRotation(issuer);
  const r = await rotations.propose({ cardId: oldCardId, strategy: "embodiment3" }, "olga");
  await rotations.approve(r.id, "otto"); // four eyes: not its proposer
  const { card } = await rotations.issueNewCard(r.id, "olga");
  const vc = createCard(imagePath, randomBytes(32), { kmc: TEST_KMC, cardId: Buffer.from(card.id, "hex") });
  const transmit = (a: Uint8Array) => vc.transmit(a);
  await rotations.personaliseNewCard(r.id, transmit, "olga");
  await rotations.rewrap(r.id);
  await rotations.distribute(r.id, "olga");
  const piv = new PivClient(transmit);
  await piv.select();
  await syncPackages(issuer, card.id, piv);
  return { card, vc, transmit, piv };
}

/** Every byte form of `secret` worth looking for: raw, hex, and base64 / base64url at each 3-byte alignment. */
function forms(secret: Uint8Array): Buffer[] {
  const s = Buffer.from(secret);
  const out = [s, Buffer.from(s.toString("hex")), Buffer.from(s.toString("hex").toUpperCase())];
  for (let k = 0; k < 3; k++) for (const enc of ["base64", "base64url"] as const) out.push(Buffer.from(s.subarray(k).toString(enc).slice(0, 16)));
  return out;
}

/** Tables (and columns) of the whole DB holding any form of `secret`. */
async function scanDb(db: Db, engine: Engine, secret: Uint8Array): Promise<string[]> {
  const tables =
    engine === "sqlite"
      ? (await sql<{ name: string }>`select name from sqlite_master where type = 'table'`.execute(db)).rows.map((r) => r.name)
      : (await sql<{ name: string }>`select table_name as name from information_schema.tables where table_schema = current_schema()`.execute(db)).rows.map((r) => r.name);
  const needles = forms(secret);
  const hits: string[] = [];
  for (const t of tables)
    for (const row of (await sql<Record<string, unknown>>`select * from ${sql.table(t)}`.execute(db)).rows)
      for (const [col, v] of Object.entries(row)) {
        if (v === null || v === undefined) continue;
        const b = v instanceof Uint8Array ? Buffer.from(v) : Buffer.from(String(v), "utf8");
        if (needles.some((nd) => b.includes(nd))) hits.push(`${t}.${col}`);
      }
  return hits;
}

/** The key management key: P-256 (ECIES, the card does ECDH) and RSA-2048 (RSA-OAEP, the card does raw RSA). */
const ALGS: KeyAlg[] = ["P256", "RSA2048"];

for (const engine of testEngines()) {
  for (const alg of ALGS) {
    test(`backup before the loss, restore after reissue: the new card reads the old data (${alg}, ${engine.name})`, { timeout: 10 * 60_000 }, async (t) => {
      const tdb = await engine.create();
      const custody = await softwareCustody()();
      const cards: { close(): void }[] = [];
      try {
        const store = new Store(tdb.db);
        const authority = await CertificationAuthority.createRoot({
          signer: nodeSigner(keyPair("P256").privateKey),
          repository: new MemoryCaRepository(),
          subject: { commonName: "backup CA" },
          validityDays: 3650,
        });
        const issuer = await Issuer.open({ store, custody, ca: new LocalCaClient(authority) });
        await importTestKmc(custody);
        const repo = new BackupRepository(tdb.db);

        // The user's card and its key management key pair (9D), delivered by the issuer as a package.
        const user = await issuer.registerUser({ commonName: "Hanako Yamada", email: "hanako@example.test" }, "olga");
        const { card: old } = await issuer.issueCard({ userId: user.id }, "olga");
        const oldImage = join(dir, `${engine.name}-${alg}-${old.id}.card`);
        const oldVc = createCard(oldImage, randomBytes(32), { kmc: TEST_KMC, cardId: Buffer.from(old.id, "hex") });
        cards.push(oldVc);
        const oldTx = (a: Uint8Array) => oldVc.transmit(a);
        await issuer.personaliseCard(old.id, oldTx, "olga");
        const km = await issuer.requestCredential({ cardId: old.id, slot: "9d", alg }, "olga");
        const oldPiv = new PivClient(oldTx);
        await oldPiv.select();
        assert.equal(await syncPackages(issuer, old.id, oldPiv), 1);

        // The user enciphers data to the card's key (its certificate, read from the card) and keeps it: a small
        // record in the card's own memory (written by the issuer's secure channel), a larger one on the terminal.
        const cert = (await oldPiv.readCertificate(SLOT.keyManagement))!;
        assert.ok(Buffer.from(cert).equals(Buffer.from(km.certificate.der)), "the card holds the certificate the issuer made");
        const recipient = recipientOf(cert);
        const data: Record<string, Uint8Array> = {
          "bank-pins": new Uint8Array(Buffer.from(`bank A: 4711, bank B: 0815 — ${randomBytes(6).toString("hex")}`)),
          "medical-record.json": new Uint8Array(Buffer.from(JSON.stringify({ patient: "Hanako Yamada", notes: randomBytes(900).toString("base64") }))),
          "photo.bin": new Uint8Array(randomBytes(5000)),
        };
        const envelopes = Object.fromEntries(Object.entries(data).map(([id, p]) => [id, encipherForCard(recipient, p, Buffer.from(`${user.id}/${id}`))]));
        const terminal = new TerminalEncipheredStore(join(dir, `${engine.name}-${alg}-terminal`));
        const oldCardStore = new CardEncipheredStore({ piv: oldPiv, write: await issuerWriter(issuer, old.id, oldTx) });
        await oldCardStore.put([{ objectId: "bank-pins", envelope: envelopes["bank-pins"] }]);
        await terminal.put([
          { objectId: "medical-record.json", envelope: envelopes["medical-record.json"] },
          { objectId: "photo.bin", envelope: envelopes["photo.bin"] },
        ]);
        await oldPiv.verifyPin(PIN);
        for (const [id, p] of Object.entries(data)) {
          const env = id === "bank-pins" ? (await oldCardStore.get(id))! : (await terminal.get(id))!;
          assert.deepEqual(await decipherWithCard(oldPiv, SLOT.keyManagement, env, { aad: Buffer.from(`${user.id}/${id}`) }), p, `the card reads ${id} before the loss`);
        }

        // S10: backup of everything the user keeps, to the back-up device (the server's repository).
        const report = await backup({ userId: user.id, cardId: old.id, from: [oldCardStore, terminal], to: repo });
        assert.deepEqual(
          report.stored.map((s) => [s.objectId, s.version, s.from]),
          [
            ["bank-pins", 1, "card"],
            ["medical-record.json", 1, "terminal"],
            ["photo.bin", 1, "terminal"],
          ],
        );

        // S5': the card is destroyed — and the terminal's disk with it; only the backup is left.
        oldVc.close();
        rmSync(oldImage, { force: true });
        assert.equal(existsSync(oldImage), false);
        rmSync(terminal.dir, { recursive: true, force: true });

        // S11: a new card with the same private key.
        const fresh = await reissueWithSameKey(issuer, old.id, join(dir, `${engine.name}-${alg}-new.card`));
        cards.push(fresh.vc);
        assert.notEqual(fresh.card.id, old.id);
        const newCert = (await fresh.piv.readCertificate(SLOT.keyManagement))!;
        assert.equal(recipientOf(newCert).kid, recipient.kid, "the new card's 9D key is the same key pair");
        assert.match(new X509Certificate(newCert).subject, /CN=Hanako Yamada/);
        assert.equal((await store.getKeyPair(km.keyPair.id))!.cardId, fresh.card.id, "the key pair is recorded on the new card");
        assert.equal((await store.getCard(old.id))!.status, "retired");

        // S12: restore into the reissued card (small objects, through the issuer) and a fresh terminal store.
        const newCardStore = new CardEncipheredStore({ piv: fresh.piv, write: await issuerWriter(issuer, fresh.card.id, fresh.transmit) });
        const terminal2 = new TerminalEncipheredStore(join(dir, `${engine.name}-${alg}-terminal2`));
        const restored = await restore({ userId: user.id, from: repo, into: preferCard(newCardStore, terminal2, 1024), forCard: { piv: fresh.piv, slot: SLOT.keyManagement } });
        assert.deepEqual(
          restored.restored.map((r) => [r.objectId, r.into]),
          [
            ["bank-pins", "card"],
            ["medical-record.json", "terminal"],
            ["photo.bin", "terminal"],
          ],
        );
        assert.deepEqual(restored.skipped, []);

        // Data written before the loss is readable after it, byte-exact, by the new card.
        await fresh.piv.verifyPin(PIN);
        for (const [id, p] of Object.entries(data)) {
          const env = id === "bank-pins" ? (await newCardStore.get(id))! : (await terminal2.get(id))!;
          assert.deepEqual(await decipherWithCard(fresh.piv, SLOT.keyManagement, env, { aad: Buffer.from(`${user.id}/${id}`) }), p, `the new card reads ${id}`);
        }

        await t.test("another card (another key) cannot decipher the backup: a clear error, no crash", async () => {
          const { card: third } = await issuer.issueCard({ userId: user.id }, "olga");
          const vc = createCard(join(dir, `${engine.name}-${alg}-third.card`), randomBytes(32), { kmc: TEST_KMC, cardId: Buffer.from(third.id, "hex") });
          cards.push(vc);
          const tx = (a: Uint8Array) => vc.transmit(a);
          await issuer.personaliseCard(third.id, tx, "olga");
          await issuer.requestCredential({ cardId: third.id, slot: "9d", alg }, "olga");
          const piv = new PivClient(tx);
          await piv.select();
          await syncPackages(issuer, third.id, piv);
          await piv.verifyPin(PIN);
          const env = (await repo.latest(user.id, "bank-pins"))!.envelope;
          await assert.rejects(decipherWithCard(piv, SLOT.keyManagement, env), (e: unknown) => e instanceof EncipheredError && e.code === "wrong-card" && /another card/.test(e.message));
          await assert.rejects(decipherWithCard(piv, SLOT.keyManagement, env, { checkKid: false }), (e: unknown) => e instanceof EncipheredError && e.code === "tampered");
          const none = await restore({ userId: user.id, from: repo, into: new TerminalEncipheredStore(join(dir, `${engine.name}-${alg}-third-terminal`)), forCard: { piv, slot: SLOT.keyManagement } });
          assert.deepEqual([none.restored.length, none.skipped.length], [0, 3], "nothing of the backup is for the third card's key");
        });

        await t.test("a tampered envelope from the back-up device is refused", async () => {
          const env = (await repo.latest(user.id, "medical-record.json"))!.envelope;
          const o = JSON.parse(Buffer.from(env).toString()) as Record<string, string>;
          for (const field of ["ct", "tag", alg === "RSA2048" ? "ek" : "epk", "aad"]) {
            const b = Buffer.from(o[field], "base64url");
            b[b.length >> 1] ^= 0x80;
            const bad = Buffer.from(JSON.stringify({ ...o, [field]: b.toString("base64url") }));
            await assert.rejects(decipherWithCard(fresh.piv, SLOT.keyManagement, bad), (e: unknown) => e instanceof EncipheredError && e.code === "tampered", field);
          }
        });

        await t.test("the server never held the plaintext; every backup is in the audit log", async () => {
          for (const [id, p] of Object.entries(data)) assert.deepEqual(await scanDb(tdb.db, engine.name, p), [], `plaintext of ${id} in the DB`);
          assert.deepEqual(
            (await repo.list(user.id)).map((b) => [b.objectId, b.version, b.cardId, b.recipientKid]),
            Object.keys(data).map((id) => [id, 1, old.id, recipient.kid]),
          );
          const actions = (await tdb.db.selectFrom("audit_log").select("action").where("subject", "=", user.id).execute()).map((r) => r.action);
          assert.equal(actions.filter((a) => a === "backup.stored").length, 3);
          assert.equal((await verifyAuditLog(tdb.db)).ok, true);
        });
      } finally {
        for (const c of cards) c.close();
        await custody.close();
        await tdb.drop();
      }
    });
  }
}
