// Issue 3 §8: no private key is ever in clear in the database, packages, the keystore file or anything the
// terminal sees. The test learns every credential private key the issuer creates (a test-only view into custody:
// each key is also wrapped under a storage key whose value the test imported, and unwrapped here), runs the
// issuing flows end to end, then scans every byte it can find for any form of any of those keys.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createPrivateKey, randomBytes, type KeyObject } from "node:crypto";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { sql, type Kysely } from "kysely";
import { createCard } from "../src/card/card.ts";
import { aesKeyUnwrapPad } from "../src/card/derivation.ts";
import { CertificationAuthority } from "../src/ca/authority.ts";
import { LocalCaClient } from "../src/ca/client.ts";
import { MemoryCaRepository } from "../src/ca/repository.ts";
import { keyPair } from "../src/ca/testing.ts";
import { nodeSigner } from "../src/ca/signer.ts";
import type { KeyCustody } from "../src/custody/custody.ts";
import { SoftwareCustody } from "../src/custody/software.ts";
import { Issuer } from "../src/issuer/issuer.ts";
import { openDatabase } from "../src/store/db.ts";
import { migrateToLatest } from "../src/store/migrate.ts";
import { Store } from "../src/store/store.ts";
import { moveOut, OverflowStore } from "../src/terminal/overflow.ts";
import { PivClient } from "../src/terminal/piv-client.ts";
import { tempDir } from "./helpers.ts";
import { testEngines } from "../src/store/testing.ts";
import { api, authenticate, expect, issuerApiEnv, issueAndPersonalise, relay } from "./api-env.ts";

/** Every byte form of a private key worth looking for: PKCS#8 DER, and each private JWK component. */
function secretForms(k: KeyObject): Buffer[] {
  const jwk = k.export({ format: "jwk" });
  const parts = ["d", "p", "q", "dp", "dq", "qi"].map((n) => (jwk as Record<string, string | undefined>)[n]).filter((v): v is string => !!v);
  const raw = parts.map((v) => Buffer.from(v, "base64url"));
  // scan a 16-byte window of each component: any copy, whatever its framing, contains it
  return [k.export({ format: "der", type: "pkcs8" }) as Buffer, ...raw.map((b) => b.subarray(0, 16)), ...parts.map((v) => Buffer.from(v.slice(0, 22)))];
}

/**
 * A view of custody that, whenever a credential key is wrapped for a card, also wraps it under a spy key whose
 * value the test knows, and learns the private key from that (the spy key is imported on first use).
 */
function spyOn(inner: KeyCustody): { custody: KeyCustody; learned: KeyObject[] } {
  const spyKey = randomBytes(32);
  const label = `leak-scan-spy-${randomBytes(4).toString("hex")}`;
  let imported: Promise<unknown> | undefined;
  const learned: KeyObject[] = [];
  const custody = new Proxy(inner, {
    get(target, prop, recv) {
      if (prop === "wrapPrivateKey")
        return async (keyLabel: string, to: Parameters<KeyCustody["wrapPrivateKey"]>[1]) => {
          await (imported ??= target.importSecretKey(label, { type: "aes", bits: 256, usage: ["wrap"] }, spyKey));
          const spied = await target.wrapPrivateKey(keyLabel, { key: label });
          learned.push(createPrivateKey({ key: Buffer.from(aesKeyUnwrapPad(spyKey, spied)), format: "der", type: "pkcs8" }));
          return target.wrapPrivateKey(keyLabel, to);
        };
      const v = Reflect.get(target, prop, recv);
      return typeof v === "function" ? v.bind(target) : v;
    },
  }) as KeyCustody;
  return { custody, learned };
}

/** Fails when any form of any learned key is in `haystack`; and shows the scan would find one. */
function assertNoKey(haystack: Buffer[], learned: KeyObject[]): void {
  const all = Buffer.concat(haystack);
  assert.ok(all.length > 10_000);
  for (const k of learned)
    for (const form of secretForms(k)) assert.equal(all.indexOf(form), -1, `a ${k.asymmetricKeyType} private key was found in clear`);
  // the scan can find a key: the same check on a buffer holding one must fail
  assert.notEqual(Buffer.concat([all, secretForms(learned[0])[1]]).indexOf(secretForms(learned[0])[1]), -1);
}

const TABLES = ["users", "cards", "card_key_sets", "key_pairs", "wrapped_keys", "certificates", "packages", "rotations", "events", "audit_log", "operators", "webhooks", "ca_issued_certificates", "ca_certified_keys", "ca_authorities"];

/** Every value of every row of the system DB's tables. */
async function tableBytes(db: Kysely<unknown>): Promise<Buffer[]> {
  const out: Buffer[] = [];
  for (const t of TABLES) {
    const rows = await sql<Record<string, unknown>>`select * from ${sql.table(t)}`.execute(db);
    for (const row of rows.rows) for (const v of Object.values(row)) out.push(Buffer.isBuffer(v) ? v : Buffer.from(String(v)));
  }
  return out;
}

test("no private key in clear in the DB, packages, keystore, overflow store or terminal traffic", { timeout: 120_000 }, async () => {
  const dir = tempDir("cardkms-leak-");
  const dbUrl = `sqlite:${join(dir, "issuer.db")}`;
  const db = openDatabase(dbUrl);
  await migrateToLatest(db);
  const store = new Store(db);
  const inner = await SoftwareCustody.open({ path: join(dir, "keystore.json"), key: randomBytes(32).toString("hex") });
  const { custody, learned } = spyOn(inner);

  const authority = await CertificationAuthority.createRoot({ signer: nodeSigner(keyPair("P256").privateKey), repository: new MemoryCaRepository(), subject: { commonName: "leak CA" }, validityDays: 365 });
  const issuer = await Issuer.open({ store, custody, ca: new LocalCaClient(authority) });
  const user = await issuer.registerUser({ commonName: "Leak Scan", email: "scan@example.test" }, "olga");
  const { card } = await issuer.issueCard({ userId: user.id }, "olga");
  const vc = createCard(join(dir, "card.img"), randomBytes(32), { cardId: Buffer.from(card.id, "hex") });
  const traffic: Buffer[] = [];
  const transmit = (a: Uint8Array) => {
    const r = vc.transmit(a);
    traffic.push(Buffer.from(a), Buffer.from(r));
    return r;
  };
  await issuer.personaliseCard(card.id, transmit, "olga");
  const piv = new PivClient(transmit);
  const packages: Buffer[] = [];
  for (const [slot, alg] of [["9a", "P256"], ["9c", "P384"], ["9d", "RSA2048"]] as const) {
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

test("through the server: no private key in its log lines (at trace level), its responses or its DB", { timeout: 120_000 }, async () => {
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
    for (const [slot, alg] of [["9a", "P256"], ["9c", "P384"], ["9d", "RSA2048"]] as const) expect(await post(`/v1/cards/${cardId}/credentials`, env.tokens.operator, { slot, alg }), 201);
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
    expect(await get("/v1/audit", env.tokens.auditor), 200);
    assert.equal(spy?.learned.length, 4, "the spy saw every credential key");
    assert.ok(env.logs.length > 20, `the server logged (${env.logs.length} lines)`);
    assertNoKey([...env.logs.map((l) => Buffer.from(l)), ...responses, ...(await tableBytes(env.server.store.db as unknown as Kysely<unknown>))], spy!.learned);
    card.close();
  } finally {
    await env.close();
  }
});
