// Issue 3 §8: no private key is ever in clear in the database, packages, the keystore file or anything the
// terminal sees. The test learns every credential private key the issuer creates (a test-only view into custody:
// each key is also wrapped under a storage key whose value the test imported, and unwrapped here), runs the
// issuing flows end to end, then scans every byte it can find for any form of any of those keys.
// Issue 4: the same for seed 001's flows (the third test) — a key generated with escrow, reproduced into a new card
// after the arbitrators' approvals, the user's enciphered data backed up and restored: neither the key, nor K, nor
// any share of it, nor the data in clear is anywhere but in custody, the card or the test's own hands.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createPrivateKey, createPublicKey, randomBytes, X509Certificate, type KeyObject } from "node:crypto";
import { readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { sql, type Kysely } from "kysely";
import { combine } from "shamir-secret-sharing";
import { createCard } from "../src/card/card.ts";
import { aesKeyUnwrapPad } from "../src/protocol/derivation.ts";
import { CertificationAuthority } from "../src/ca/authority.ts";
import { LocalCaClient } from "../src/ca/client.ts";
import { MemoryCaRepository } from "../src/ca/repository.ts";
import { keyPair } from "./support/ca-testing.ts";
import { nodeSigner } from "../src/ca/signer.ts";
import type { SubjectName } from "../src/ca/name.ts";
import type { DerivedKeySetRef, KeyCustody, WrapTarget } from "../src/custody/custody.ts";
import { SoftwareCustody } from "../src/custody/software.ts";
import { personaliseFromTransport, runScript } from "../src/issuer/card-scripts.ts";
import { importTestKmc, TEST_KMC } from "./kmc.ts";
import { Issuer } from "../src/issuer/issuer.ts";
import { CertificationCenter, MemoryRegistrationBook } from "../src/keygen/center.ts";
import { KeyGenerationDevice, type InsertedCard } from "../src/keygen/device.ts";
import { signApproval, signApproverList } from "../src/recovery/approvals.ts";
import { ESCROW_KEK_LABEL, RecoveryService, releaseSharesFor, type PendingItem } from "../src/recovery/service.ts";
import { openShare, unsealEscrow, type EscrowRecord, type ShareEnvelope } from "../src/recovery/shares.ts";
import { fig9Policy, FIG9_ARBITRATORS, makeArbitrators, registerCardRecord } from "./support/recovery-testing.ts";
import { appendAudit, auditEntries, verifyAuditLog } from "../src/store/audit.ts";
import { BackupRepository } from "../src/store/backup-repository.ts";
import { SqlIssuedKeyRegistry } from "../src/store/keygen-registry.ts";
import type { RecoveryTables } from "../src/store/recovery-repository.ts";
import { openDatabase, type Db } from "../src/store/db.ts";
import { migrateToLatest } from "../src/store/migrate.ts";
import { Store } from "../src/store/store.ts";
import { moveOut, OverflowStore } from "../src/terminal/overflow.ts";
import { ApduError, type Transmit } from "../src/protocol/apdu-client.ts";
import { backup, CardEncipheredStore, preferCard, restore, TerminalEncipheredStore, type CardObjectWriter } from "../src/terminal/backup.ts";
import { decipherWithCard, encipherForCard, EncipheredError, recipientOf } from "../src/protocol/enciphered.ts";
import { PIV_AID, PivClient, putDataCommand, SLOT } from "../src/protocol/piv/client.ts";
import { tempDir } from "./helpers.ts";
import { testEngines } from "./support/store-testing.ts";
import { api, authenticate, expect, issuerApiEnv, issueAndPersonalise, liveRelay, registeredData, relay } from "./api-env.ts";
import { recoveryStoreOf } from "../src/store/recovery-store.ts";

/** Every byte form of a private key worth looking for: PKCS#8 DER, and each private JWK component. */
function secretForms(k: KeyObject): Buffer[] {
  const jwk = k.export({ format: "jwk" });
  const parts = ["d", "p", "q", "dp", "dq", "qi"].map((n) => (jwk as Record<string, string | undefined>)[n]).filter((v): v is string => !!v);
  const raw = parts.map((v) => Buffer.from(v, "base64url"));
  // scan a 16-byte window of each component: any copy, whatever its framing, contains it
  return [k.export({ format: "der", type: "pkcs8" }) as Buffer, ...raw.map((b) => b.subarray(0, 16)), ...parts.map((v) => Buffer.from(v.slice(0, 22)))];
}

/**
 * A view of custody that, whenever a credential key is wrapped for a card (or for any other target), also wraps
 * it under a spy key whose value the test knows, and learns the private key from that (the spy key is imported on
 * first use). A key pair brought into custody by unwrapPrivateKey is learned the same way when it may be wrapped.
 * `wraps[i]` says what `learned[i]` was being wrapped for ("unwrap" for one learned at unwrapPrivateKey).
 */
function spyOn(inner: KeyCustody): { custody: KeyCustody; learned: KeyObject[]; wraps: { keyLabel: string; to: WrapTarget | "unwrap" }[] } {
  const spyKey = randomBytes(32);
  const label = `leak-scan-spy-${randomBytes(4).toString("hex")}`;
  let imported: Promise<unknown> | undefined;
  const learned: KeyObject[] = [];
  const wraps: { keyLabel: string; to: WrapTarget | "unwrap" }[] = [];
  const learn = async (target: KeyCustody, keyLabel: string, to: WrapTarget | "unwrap") => {
    await (imported ??= target.importSecretKey(label, { type: "aes", bits: 256, usage: ["wrap"] }, spyKey));
    const spied = await target.wrapPrivateKey(keyLabel, { key: label });
    learned.push(createPrivateKey({ key: Buffer.from(aesKeyUnwrapPad(spyKey, spied)), format: "der", type: "pkcs8" }));
    wraps.push({ keyLabel, to });
  };
  const custody = new Proxy(inner, {
    get(target, prop, recv) {
      if (prop === "wrapPrivateKey")
        return async (keyLabel: string, to: WrapTarget) => {
          await learn(target, keyLabel, to);
          return target.wrapPrivateKey(keyLabel, to);
        };
      if (prop === "unwrapPrivateKey")
        return async (...a: Parameters<KeyCustody["unwrapPrivateKey"]>) => {
          const info = await target.unwrapPrivateKey(...a);
          if (a[4]?.extractable === "wrapped") await learn(target, a[0], "unwrap");
          return info;
        };
      const v = Reflect.get(target, prop, recv);
      return typeof v === "function" ? v.bind(target) : v;
    },
  }) as KeyCustody;
  return { custody, learned, wraps };
}

/** Fails when any form of any learned key is in `haystack`; and shows the scan would find one. */
function assertNoKey(haystack: Buffer[], learned: KeyObject[]): void {
  const all = Buffer.concat(haystack);
  assert.ok(all.length > 10_000);
  for (const k of learned) for (const form of secretForms(k)) assert.equal(all.indexOf(form), -1, `a ${k.asymmetricKeyType} private key was found in clear`);
  // the scan can find a key: the same check on a buffer holding one must fail
  assert.notEqual(Buffer.concat([all, secretForms(learned[0])[1]]).indexOf(secretForms(learned[0])[1]), -1);
}

const TABLES = [
  "users",
  "cards",
  "card_key_sets",
  "key_pairs",
  "wrapped_keys",
  "certificates",
  "packages",
  "rotations",
  "events",
  "audit_log",
  "operators",
  "webhooks",
  "ca_issued_certificates",
  "ca_certified_keys",
  "ca_authorities",
];

/** Every value of every row of the given tables of the system DB (by default TABLES). */
async function tableBytes(db: Kysely<unknown>, tables: readonly string[] = TABLES): Promise<Buffer[]> {
  const out: Buffer[] = [];
  for (const t of tables) {
    const rows = await sql<Record<string, unknown>>`select * from ${sql.table(t)}`.execute(db);
    for (const row of rows.rows) for (const v of Object.values(row)) out.push(Buffer.isBuffer(v) ? v : Buffer.from(String(v)));
  }
  return out;
}

test("no private key in clear in the DB, packages, keystore, overflow store or terminal traffic", { timeout: 10 * 60_000 }, async () => {
  const dir = tempDir("cardkms-leak-");
  const dbUrl = `sqlite:${join(dir, "issuer.db")}`;
  const db = openDatabase(dbUrl);
  await migrateToLatest(db);
  const store = new Store(db);
  const inner = await SoftwareCustody.open({ path: join(dir, "keystore.json"), key: randomBytes(32).toString("hex") });
  const { custody, learned, wraps } = spyOn(inner);

  const authority = await CertificationAuthority.createRoot({
    signer: nodeSigner(keyPair("P256").privateKey),
    repository: new MemoryCaRepository(),
    subject: { commonName: "leak CA" },
    validityDays: 365,
  });
  const issuer = await Issuer.open({ store, custody, ca: new LocalCaClient(authority) });
  await importTestKmc(inner);
  const user = await issuer.registerUser({ commonName: "Leak Scan", email: "scan@example.test" }, "olga");
  const { card } = await issuer.issueCard({ userId: user.id }, "olga");
  const vc = createCard(join(dir, "card.img"), randomBytes(32), { kmc: TEST_KMC, cardId: Buffer.from(card.id, "hex") });
  const traffic: Buffer[] = [];
  const transmit = (a: Uint8Array) => {
    const r = vc.transmit(a);
    traffic.push(Buffer.from(a), Buffer.from(r));
    return r;
  };
  await issuer.personaliseCard(card.id, transmit, "olga");
  const piv = new PivClient(transmit);
  const packages: Buffer[] = [];
  for (const [slot, alg] of [
    ["9a", "P256"],
    ["9c", "P384"],
    ["9d", "RSA2048"],
  ] as const) {
    const c = await issuer.requestCredential({ cardId: card.id, slot, alg }, "olga");
    packages.push(Buffer.from(c.package.body));
    await piv.select();
    await piv.loadPackage(c.package.body);
  }
  const online = await issuer.requestCredential({ cardId: card.id, slot: "9e", alg: "P256" }, "olga");
  await issuer.deliverOnline(card.id, online.keyPair.id, transmit, "olga");
  await piv.select();
  await piv.verifyPin("123456");
  await moveOut(piv, new OverflowStore(join(dir, "overflow")), 0x9c);
  assert.equal(learned.length, 4, "the spy saw every credential key");
  assert.ok(
    wraps.every((w) => w.to !== "unwrap" && "card" in w.to && w.to.card.cardId === card.id),
    "each wrapped for the card",
  );

  // everything there is to scan
  const haystack: Buffer[] = [...traffic, ...packages];
  haystack.push(...(await tableBytes(db as unknown as Kysely<unknown>)));
  await db.destroy();
  for (const f of readdirSync(dir, { recursive: true }) as string[]) {
    const p = join(dir, f);
    if (statSync(p).isFile()) haystack.push(readFileSync(p));
  }
  assertNoKey(haystack, learned);
  vc.close();
  await inner.close();
});

test(
  "through the server: no private key in its log lines (at trace level), its responses or its DB — credentials, and seed 001 keygen with escrow, backup, reproduction",
  { timeout: 10 * 60_000 },
  async () => {
    let spy: ReturnType<typeof spyOn> | undefined;
    const env = await issuerApiEnv(testEngines()[0], { logLevel: "trace", wrapCustody: (c) => (spy = spyOn(c)).custody });
    try {
      const responses: Buffer[] = [];
      const { post: rawPost, get: rawGet } = api(env);
      const post: typeof rawPost = async (...a) => {
        const r = await rawPost(...a);
        responses.push(r.rawPayload);
        return r;
      };
      const get: typeof rawGet = async (...a) => {
        const r = await rawGet(...a);
        responses.push(r.rawPayload);
        return r;
      };
      const { cardId, card } = await issueAndPersonalise(env, "Leak Server");
      for (const [slot, alg] of [
        ["9a", "P256"],
        ["9c", "P384"],
        ["9d", "RSA2048"],
      ] as const)
        expect(await post(`/v1/cards/${cardId}/credentials`, env.tokens.operator, { slot, alg }), 201);
      const online = expect(await post(`/v1/cards/${cardId}/credentials`, env.tokens.operator, { slot: "9e", alg: "P256" }), 201) as { keyPairId: string };
      const session = expect(await post(`/v1/cards/${cardId}/credentials/${online.keyPairId}/online`, env.tokens.operator), 201) as { sessionId: string; apdus: string[] };
      expect(await relay(post, env.tokens.operator, session, card), 200);
      const terminal = (expect(await authenticate(post, cardId, card), 200) as { token: string }).token;
      const pkgs = expect(await get(`/v1/cards/${cardId}/packages`, terminal), 200) as { packages: { seq: number; body: string }[] };
      const piv = new PivClient((a) => card.transmit(a));
      for (const p of pkgs.packages) {
        await piv.select();
        await piv.loadPackage(Buffer.from(p.body, "base64"));
      }
      // seed 001 through the same server: the key generation device issues an escrowed key into the card over the live
      // relay, the user backs up an envelope with the card's token, loses the key, and one arbitrator's approval has
      // it reproduced into the card again — the escrowed, the reproduced and the device's own keys are scanned for too
      const op = env.tokens.operator;
      const { registry, keys } = makeArbitrators(["user"]);
      const u = registry.require("user");
      const spkiPem = (k: KeyObject) => k.export({ format: "pem", type: "spki" }) as string;
      expect(await post("/v1/recovery/arbitrators", op, { id: "user", signingPublicKey: spkiPem(u.signingKey), encryptionPublicKey: spkiPem(u.encryptionKey) }), 201);
      const arbToken = (expect(await post("/v1/recovery/arbitrators/user/tokens", op), 201) as { token: string }).token;
      const policy = await env.server.app.inject({
        method: "PUT",
        url: `/v1/cards/${cardId}/recovery-policy`,
        headers: { authorization: `Bearer ${op}` },
        payload: { version: 1, author: "user", indispensable: ["user"], groups: [], order: [] },
      });
      assert.equal(policy.statusCode, 200, policy.body);
      const keygen = expect(
        await liveRelay(post, op, await post(`/v1/cards/${cardId}/keygen`, op, { slot: "9c", alg: "RSA2048", personalData: registeredData("Leak Server"), escrow: true }), "/v1/keygen/sessions", card),
        200,
      ) as { result: { certificate: string } };
      const recipient = recipientOf(new X509Certificate(keygen.result.certificate));
      const put = await env.server.app.inject({
        method: "PUT",
        url: `/v1/cards/${cardId}/backups/diary`,
        headers: { authorization: `Bearer ${terminal}` },
        payload: { envelope: Buffer.from(encipherForCard(recipient, randomBytes(64))).toString("base64") },
      });
      assert.equal(put.statusCode, 201, put.body);
      responses.push(put.rawPayload);
      await piv.select();
      await piv.verifyPin("123456");
      assert.equal((await piv.apdu.send({ cla: 0x80, ins: 0xf6, p1: 0, p2: 0x9c })).sw, 0x9000, "the key is lost (DELETE KEY)");
      const filed = expect(await post("/v1/recovery/requests", op, { cardId, kind: "key-lost", requester: "user" }), 201) as { requestId: string };
      const item = (expect(await get("/v1/recovery/arbitrators/user/pending", arbToken), 200) as { pending: PendingItem[] }).pending[0] as Extract<PendingItem, { action: "decide" }>;
      const device = Buffer.from((expect(await get("/v1/recovery/device-key", arbToken), 200) as { spki: string }).spki, "base64");
      const v = item.request;
      const approval = signApproval(v.request, v.chainHead, { arbitrator: "user", decision: "approve" }, keys.get("user")!.signing);
      const releases = releaseSharesFor(v.request, item.envelopes, (e) => openShare(e, keys.get("user")!.encryption, { escrowId: v.escrowId, cardId: v.cardId }), new Uint8Array(device));
      expect(await post(`/v1/recovery/requests/${filed.requestId}/approvals`, arbToken, { approval, releases }), 200);
      const chain = (expect(await get(`/v1/recovery/requests/${filed.requestId}`, arbToken), 200) as { approvals: Parameters<typeof signApproverList>[1] }).approvals;
      expect(await post(`/v1/recovery/requests/${filed.requestId}/approver-list`, arbToken, { approverList: signApproverList(v.request, chain, "user", keys.get("user")!.signing) }), 200);
      expect(await liveRelay(post, op, await post(`/v1/recovery/requests/${filed.requestId}/reproduce`, op, {}), "/v1/recovery/sessions", card), 200);

      expect(await get("/v1/audit", env.tokens.auditor), 200);
      // the four credential keys, the generated key and its reproduction, wrapped for the card; anything else the spy
      // learned (the escrow wrap) is scanned for as well
      assert.equal(spy?.wraps.filter((w) => w.to !== "unwrap" && "card" in w.to).length, 6, "the spy saw every key written to the card");
      assert.ok(
        spy!.wraps.some((w) => w.to === "unwrap"),
        "the spy saw the reproduced key",
      );
      assert.ok(env.logs.length > 20, `the server logged (${env.logs.length} lines)`);
      const serverDb = env.server.store.db as unknown as Db;
      const tables = [...new Set([...TABLES, ...(await sqliteTables(serverDb))])];
      assertNoKey([...env.logs.map((l) => Buffer.from(l)), ...responses, ...(await tableBytes(serverDb as unknown as Kysely<unknown>, tables))], spy!.learned);
      card.close();
    } finally {
      await env.close();
    }
  },
);

// --- seed 001: key generation with escrow, reproduction into a new card, backup and restore (issue 4) ----------------

/** The recovery service's tables (src/store/migrations/0003_recovery.ts). */
const RECOVERY_TABLES = [
  "recovery_arbitrators",
  "recovery_policies",
  "recovery_escrows",
  "recovery_share_envelopes",
  "recovery_devices",
  "recovery_requests",
  "recovery_approvals",
  "recovery_releases",
];
/** The back-up device's table (0004_backups.ts) and the key generation device's registry (0006_keygen_registry.ts). */
const BACKUP_TABLES = ["backups"];
const KEYGEN_TABLES = ["keygen_public_keys"];

/**
 * Every byte form of a raw secret (a share, K, a plaintext, a secret ID) worth looking for: 16-byte windows at its
 * start, middle and end — raw, hex in both cases, and base64 / base64url at each 3-byte alignment (16 characters
 * encode 12 bytes whatever the framing around them).
 */
function rawForms(secret: Uint8Array): Buffer[] {
  const s = Buffer.from(secret);
  assert.ok(s.length >= 16, "a secret worth scanning for is at least 16 bytes");
  const windows = [...new Set([0, (s.length - 16) >> 1, s.length - 16])].map((o) => s.subarray(o, o + 16));
  const out: Buffer[] = [];
  for (const w of windows) {
    out.push(Buffer.from(w), Buffer.from(w.toString("hex")), Buffer.from(w.toString("hex").toUpperCase()));
    for (let k = 0; k < 3; k++) for (const enc of ["base64", "base64url"] as const) out.push(Buffer.from(w.subarray(k).toString(enc).slice(0, 16)));
  }
  return out;
}

/** A private key's forms: secretForms, and its private components in hex too. */
function keyForms(k: KeyObject): Buffer[] {
  const d = (k.export({ format: "jwk" }) as { d?: string }).d;
  return [...secretForms(k), ...(d ? rawForms(Buffer.from(d, "base64url")) : [])];
}

interface Secret {
  name: string;
  forms: Buffer[];
}

/** The names of the secrets of which some form is in `haystack`. */
function leaks(haystack: readonly Buffer[], secrets: readonly Secret[]): string[] {
  const all = Buffer.concat(haystack);
  return secrets.filter((s) => s.forms.some((f) => all.includes(f))).map((s) => s.name);
}

/** Every file under `dir`. */
function filesUnder(dir: string): Buffer[] {
  const out: Buffer[] = [];
  for (const f of readdirSync(dir, { recursive: true }) as string[]) {
    const p = join(dir, f);
    if (statSync(p).isFile()) out.push(readFileSync(p));
  }
  return out;
}

const xor = (a: Uint8Array, b: Uint8Array): Buffer => Buffer.from(a.map((x, i) => x ^ b[i]));

test("seed 001: escrow at key generation, approvals, reproduction into a new card, backup and restore — no private key, K, share or plaintext in clear", { timeout: 10 * 60_000 }, async () => {
  const dir = tempDir("cardkms-leak-seed001-");
  const dbUrl = `sqlite:${join(dir, "system.db")}`;
  const db = openDatabase(dbUrl);
  await migrateToLatest(db);
  const inner = await SoftwareCustody.open({ path: join(dir, "keystore.json"), key: randomBytes(32).toString("hex") });
  const { custody, learned, wraps } = spyOn(inner);
  await importTestKmc(inner);
  const traffic: Buffer[] = [];
  /** What the services handed back to their callers (views, results, reports). */
  const returned: Buffer[] = [];
  const keep = <T>(v: T): T => {
    returned.push(Buffer.from(JSON.stringify(v, (_k, x: unknown) => (x instanceof Uint8Array ? Buffer.from(x).toString("base64") : x))));
    return v;
  };
  const runtimes: { close(): void }[] = [];
  try {
    // the certification center
    const rootCa = await CertificationAuthority.createRoot({
      signer: nodeSigner(keyPair("P256").privateKey),
      subject: { country: "JP", organization: "Certification Center", commonName: "Center Root CA" },
      validityDays: 3650,
      repository: new MemoryCaRepository(),
    });
    const HANAKO: SubjectName = { country: "JP", organization: "Example Bank", commonName: "Hanako Yamada", serialNumber: "P-1234567" };
    const book = new MemoryRegistrationBook();
    book.register("user-1", HANAKO);
    const center = new CertificationCenter({ authority: rootCa, registrations: book });

    // cards: every APDU and response recorded; each card's secret ID known to the test (the card's own state)
    const cards: { name: string; secretId: Buffer }[] = [];
    const blankCard = async (name: string): Promise<InsertedCard & { keySet: DerivedKeySetRef; piv: PivClient }> => {
      const cardId = randomBytes(8).toString("hex");
      const runtime = createCard(join(dir, `${name}.card`), randomBytes(32), { kmc: TEST_KMC, cardId: Buffer.from(cardId, "hex") });
      runtimes.push(runtime);
      cards.push({ name, secretId: Buffer.from(runtime.state.secretId, "hex") });
      const transmit: Transmit = (a) => {
        const r = runtime.transmit(a);
        traffic.push(Buffer.from(a), Buffer.from(r));
        return r;
      };
      const { keySet } = await personaliseFromTransport(transmit, custody, cardId);
      return { transmit, keySet, piv: new PivClient(transmit) };
    };
    /** PUT DATA of the enciphered-objects container inside an SCP03 session on the card's key set (in custody). */
    const writerFor =
      (card: InsertedCard): CardObjectWriter =>
      async (tag, value) => {
        await runScript(card.transmit, {
          keys: { custody, ref: card.keySet },
          aid: PIV_AID,
          commands: [putDataCommand(tag, value)],
          check: (r) => {
            if (r[0].sw !== 0x9000) throw new ApduError(r[0].sw, "PUT DATA enciphered objects");
          },
        });
      };

    // S1-S3: arbitrators, the FIG. 9 policy, the key generation device issuing the key management key with escrow
    const svc = await RecoveryService.open({ store: recoveryStoreOf(db), custody });
    const { keys: ARB } = makeArbitrators(FIG9_ARBITRATORS);
    for (const id of FIG9_ARBITRATORS) {
      const k = ARB.get(id)!;
      keep(await svc.registerArbitrator({ id, signingPublicKey: k.signing, encryptionPublicKey: k.encryption }, "operator"));
    }
    keep(await svc.setPolicy("card-A", fig9Policy(), "operator"));
    const device = await KeyGenerationDevice.create({ custody, ca: center, registry: new SqlIssuedKeyRegistry(db), trustAnchors: [rootCa.certificate], escrow: svc.escrowHook("keygen-device") });
    const cardA = await blankCard("card-A");
    await registerCardRecord(db, { cardId: "card-A", userId: "user-1", keySet: cardA.keySet });
    const issued = keep(await device.issue({ applicantId: "user-1", personalData: HANAKO, alg: "P256", profile: "keyManagement", slot: "9d", card: cardA, escrow: { cardId: "card-A" } }));
    const escrow = keep((await svc.escrowOf("card-A"))!);
    assert.equal(escrow.escrowId, issued.escrowId);

    // S10: the user enciphers data to the card's key (its certificate, read from the card), keeps the small record
    // on the card and the larger ones on the terminal, and backs everything up to the back-up device
    const user = await new Store(db).createUser({ personalData: { commonName: "Hanako Yamada" } });
    await cardA.piv.select();
    const recipient = recipientOf((await cardA.piv.readCertificate(SLOT.keyManagement))!);
    const data: Record<string, Uint8Array> = {
      "bank-pins": new Uint8Array(Buffer.from(`${randomBytes(8).toString("hex")} bank A: 4711, bank B: 0815`)),
      "medical-record.json": new Uint8Array(Buffer.from(JSON.stringify({ id: randomBytes(8).toString("hex"), patient: "Hanako Yamada", notes: randomBytes(600).toString("base64") }))),
      "photo.bin": new Uint8Array(randomBytes(3000)),
    };
    const aad = (id: string) => Buffer.from(`${user.id}/${id}`);
    const envelopes = Object.fromEntries(Object.entries(data).map(([id, p]) => [id, encipherForCard(recipient, p, aad(id))]));
    const terminal = new TerminalEncipheredStore(join(dir, "terminal"));
    await new CardEncipheredStore({ piv: cardA.piv, write: writerFor(cardA) }).put([{ objectId: "bank-pins", envelope: envelopes["bank-pins"] }]);
    await terminal.put(["medical-record.json", "photo.bin"].map((objectId) => ({ objectId, envelope: envelopes[objectId] })));
    const repo = new BackupRepository(db);
    const report = keep(await backup({ userId: user.id, from: [new CardEncipheredStore({ piv: cardA.piv }), terminal], to: repo }));
    assert.deepEqual(
      report.stored.map((s) => s.objectId),
      Object.keys(data),
    );

    // S5': the card is destroyed, and the terminal's disk with it (what was on that disk is scanned all the same)
    const lostTerminal = filesUnder(terminal.dir);
    rmSync(terminal.dir, { recursive: true, force: true });

    // S5-S7: the request; every arbitrator opens its shares on its side (the test keeps each value it sees);
    // the approvers release theirs to the reproduction device, in the policy's order; the author lists them
    // the new card, issued to the user before the request names it (issue 9: the arbitrators approve that card)
    const cardB = await blankCard("card-B");
    await registerCardRecord(db, { cardId: "card-B", userId: "user-1", keySet: cardB.keySet });
    const filed = keep(await svc.fileRequest({ cardId: "card-A", kind: "card-destroyed", requester: "user", reason: "card broken", replacementCardId: "card-B" }, "operator"));
    const shares = new Map<string, Buffer>();
    const open = (id: string) => (e: ShareEnvelope) => {
      const s = openShare(e, ARB.get(id)!.encryption, { escrowId: escrow.escrowId, cardId: "card-A" });
      shares.set(s.shareId, Buffer.from(s.value));
      return s;
    };
    const IN_ORDER = ["user", "credit-co", "sp-b", "mgr-c", "mgr-d"];
    for (const id of IN_ORDER) {
      const item = (await svc.pendingFor(id)).find((p): p is Extract<PendingItem, { action: "decide" }> => p.action === "decide" && p.request.requestId === filed.requestId);
      assert.ok(item, `${id} has the request pending`);
      const approval = signApproval(item.request.request, item.request.chainHead, { arbitrator: id, decision: "approve" }, ARB.get(id)!.signing);
      keep(await svc.approve(filed.requestId, approval, releaseSharesFor(item.request.request, item.envelopes, open(id), svc.deviceKey().spki)));
    }
    for (const id of FIG9_ARBITRATORS.filter((a) => !IN_ORDER.includes(a))) for (const e of await svc.shareEnvelopes(id, { cardId: "card-A" })) open(id)(e);
    assert.equal(shares.size, escrow.shares.length, "the test saw every share value");
    const list = (await svc.pendingFor("mgr-a")).find((p) => p.action === "sign-approver-list" && p.request.requestId === filed.requestId);
    assert.ok(list);
    keep(await svc.submitApproverList(filed.requestId, signApproverList(list.request.request, list.request.approvals, "mgr-a", ARB.get("mgr-a")!.signing)));

    // K and its components, from the shares (shares.ts: K = S_ind xor S_g1 xor S_g2 …); checked: K opens E
    const policy = escrow.policy;
    const components: Buffer[] = [];
    if (policy.indispensable.length) components.push(policy.indispensable.map((p) => shares.get(`ind/${p}`)!).reduce((a, b) => xor(a, b)));
    for (const [gi, g] of policy.groups.entries()) {
      const have = g.members.map((p) => shares.get(`group/${gi}/${p}`)!);
      components.push(g.threshold === 1 ? have[0] : Buffer.from(await combine(have.slice(0, g.threshold).map((v) => new Uint8Array(v)))));
    }
    const K = components.reduce((a, b) => xor(a, b));
    const record = JSON.parse(
      (await (db as unknown as Kysely<unknown>).withTables<RecoveryTables>().selectFrom("recovery_escrows").select("record").where("card_id", "=", "card-A").executeTakeFirstOrThrow()).record,
    ) as EscrowRecord;
    assert.ok(unsealEscrow(record, K), "the K rebuilt from the shares opens the escrow: it is the real K");
    assert.equal(unsealEscrow(record, xor(K, Buffer.alloc(32, 1))), undefined, "and another K does not");

    // S8, S11: the key reproduced into the new card, which becomes the registered device; not before
    await cardB.piv.select();
    await cardB.piv.verifyPin("123456");
    await assert.rejects(
      decipherWithCard(cardB.piv, SLOT.keyManagement, envelopes["bank-pins"]),
      (e: unknown) => e instanceof EncipheredError && e.code === "wrong-card",
      "the new card has no key yet",
    );
    const done = keep(await svc.reproduce(filed.requestId, cardB, "operator"));
    assert.equal(done.deviceReplaced, true);
    assert.deepEqual(done.approvers, IN_ORDER);
    assert.deepEqual(
      (await inner.listKeys()).map((k) => k.label).filter((l) => l.startsWith("keygen.") || l.startsWith("recovery.reproduce.")),
      [],
      "no generated or reproduced key is left in custody",
    );

    // S12: the backups restored into the new card's memory and a new terminal store; the new card reads them
    const cardBStore = new CardEncipheredStore({ piv: cardB.piv, write: writerFor(cardB) });
    const terminal2 = new TerminalEncipheredStore(join(dir, "terminal2"));
    const restored = keep(await restore({ userId: user.id, from: repo, into: preferCard(cardBStore, terminal2, 1024), forCard: { piv: cardB.piv, slot: SLOT.keyManagement } }));
    assert.deepEqual(
      restored.restored.map((r) => [r.objectId, r.into]),
      [
        ["bank-pins", "card"],
        ["medical-record.json", "terminal"],
        ["photo.bin", "terminal"],
      ],
    );
    await cardB.piv.verifyPin("123456");
    for (const [id, p] of Object.entries(data)) {
      const env = id === "bank-pins" ? (await cardBStore.get(id))! : (await terminal2.get(id))!;
      assert.deepEqual(await decipherWithCard(cardB.piv, SLOT.keyManagement, env, { aad: aad(id) }), p, `the new card reads ${id}`);
    }

    // What the spy learned: the card key — wrapped under the escrow KEK and for
    // card A at issue, brought back into custody by unwrapPrivateKey and wrapped for card B at reproduction.
    const spkiOf = (k: KeyObject) => Buffer.from(createPublicKey(k).export({ format: "der", type: "spki" }) as Buffer);
    const cardKey = learned.filter((k) => spkiOf(k).equals(Buffer.from(escrow.publicKey)));
    const cardKeyWraps = wraps
      .filter((_, i) => spkiOf(learned[i]).equals(Buffer.from(escrow.publicKey)))
      .map((w) => (w.to === "unwrap" ? "unwrap" : "card" in w.to ? `card ${w.to.card.cardId}` : `key ${w.to.key}`));
    assert.deepEqual(cardKeyWraps, [`key ${ESCROW_KEK_LABEL}`, `card ${cardA.keySet.cardId}`, "unwrap", `card ${cardB.keySet.cardId}`]);
    // The reproduction device's key is generated inside custody for ECDH and never extractable (issue 17 §2): it is
    // never wrapped, so not even the spy on custody's wraps ever holds it.
    assert.ok(!learned.some((k) => spkiOf(k).equals(Buffer.from(svc.deviceKey().spki))), "the reproduction device's key never leaves custody, even wrapped");

    const secrets: Secret[] = [
      ...learned.map((k, i) => ({ name: `private key ${i} (${wraps[i].keyLabel})`, forms: keyForms(k) })),
      { name: "K", forms: rawForms(K) },
      ...components.map((c, i) => ({ name: `K component ${i}`, forms: rawForms(c) })),
      ...[...shares].map(([id, v]) => ({ name: `share ${id}`, forms: rawForms(v) })),
      ...Object.entries(data).map(([id, p]) => ({ name: `plaintext of ${id}`, forms: rawForms(p) })),
      ...cards.map((c) => ({ name: `secret ID of ${c.name}`, forms: rawForms(c.secretId) })),
    ];
    assert.ok(cardKey.length >= 3 && secrets.length >= 1 + 1 + 3 + 10 + 3 + 2);

    // everything there is to scan: every table of the system DB (the named ones, and whatever else it has), the
    // audit log as read back, card traffic, what the services returned, and every file under the temp dir
    const named = [...TABLES, ...RECOVERY_TABLES, ...BACKUP_TABLES, ...KEYGEN_TABLES];
    const inDb = await sqliteTables(db);
    assert.deepEqual(
      named.filter((t) => !inDb.includes(t)),
      [],
      "every named table exists",
    );
    const tables = [...new Set([...named, ...inDb])];
    for (const t of [...RECOVERY_TABLES, ...BACKUP_TABLES, ...KEYGEN_TABLES, "audit_log"]) assert.ok((await countRows(db, t)) > 0, `${t} has rows to scan`);
    const audit: Buffer[] = [];
    for await (const e of auditEntries(db)) audit.push(Buffer.from(JSON.stringify(e)));
    assert.ok(audit.some((a) => a.includes("recovery.reproduce")) && audit.some((a) => a.includes("backup.stored")));
    assert.equal((await verifyAuditLog(db)).ok, true);
    const everything = async () => [...traffic, ...returned, ...audit, ...lostTerminal, ...(await tableBytes(db as unknown as Kysely<unknown>, tables)), ...filesUnder(dir)];
    const haystack = await everything();
    assert.ok(Buffer.concat(haystack).length > 100_000);
    assert.deepEqual(leaks(haystack, secrets), [], "secrets found in clear");

    // The scan finds what is there: one secret of each kind planted in a table, the audit log and a file is found
    // by the same collection and search — and only those.
    const [escrowed] = cardKey;
    const shareId = "group/1/mgr-c";
    await sql`update recovery_requests set status_detail = ${K.toString("base64")} where request_id = ${filed.requestId}`.execute(db);
    await appendAudit(db, { actor: "leak-scan", action: "planted", subject: "x", details: { d: (escrowed.export({ format: "jwk" }) as { d: string }).d } });
    writeFileSync(join(terminal2.dir, "planted.txt"), `${shares.get(shareId)!.toString("hex").toUpperCase()}\n${Buffer.from(data["photo.bin"]).subarray(1400, 1600).toString("base64url")}`);
    const planted = leaks(await everything(), secrets);
    const escrowedNames = secrets.filter((s, i) => i < learned.length && cardKey.includes(learned[i])).map((s) => s.name);
    assert.deepEqual(planted.sort(), ["K", `share ${shareId}`, "plaintext of photo.bin", ...escrowedNames].sort());
  } finally {
    for (const r of runtimes) r.close();
    await db.destroy();
    await inner.close();
  }
});

async function sqliteTables(db: Db): Promise<string[]> {
  return (await sql<{ name: string }>`select name from sqlite_master where type = 'table'`.execute(db)).rows.map((r) => r.name);
}

async function countRows(db: Db, table: string): Promise<number> {
  return Number((await sql<{ n: number }>`select count(*) as n from ${sql.table(table)}`.execute(db)).rows[0].n);
}
