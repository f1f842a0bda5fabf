// Issue 3 §8: no private key is ever in clear in the database, packages, the keystore file or anything the
// terminal sees. The test learns every credential private key the issuer creates (a test-only view into custody:
// each key is also wrapped under a storage key whose value the test imported, and unwrapped here), runs the
// issuing flows end to end, then scans every byte it can find for any form of any of those keys.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createPrivateKey, randomBytes, type KeyObject } from "node:crypto";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { sql } from "kysely";
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

/** Every byte form of a private key worth looking for: PKCS#8 DER, and each private JWK component. */
function secretForms(k: KeyObject): Buffer[] {
  const jwk = k.export({ format: "jwk" });
  const parts = ["d", "p", "q", "dp", "dq", "qi"].map((n) => (jwk as Record<string, string | undefined>)[n]).filter((v): v is string => !!v);
  const raw = parts.map((v) => Buffer.from(v, "base64url"));
  // scan a 16-byte window of each component: any copy, whatever its framing, contains it
  return [k.export({ format: "der", type: "pkcs8" }) as Buffer, ...raw.map((b) => b.subarray(0, 16)), ...parts.map((v) => Buffer.from(v.slice(0, 22)))];
}

test("no private key in clear in the DB, packages, keystore, overflow store or terminal traffic", { timeout: 120_000 }, async () => {
  const dir = tempDir("cardkms-leak-");
  const dbUrl = `sqlite:${join(dir, "issuer.db")}`;
  const db = openDatabase(dbUrl);
  await migrateToLatest(db);
  const store = new Store(db);
  const inner = await SoftwareCustody.open({ path: join(dir, "keystore.json"), key: randomBytes(32).toString("hex") });
  const spyKey = randomBytes(32);
  await inner.importSecretKey("leak-scan-spy", { type: "aes", bits: 256, usage: ["wrap"] }, spyKey);
  const learned: KeyObject[] = [];
  // A view of custody that, whenever a credential key is wrapped for a card, learns the key through the spy key.
  const custody = new Proxy(inner, {
    get(target, prop, recv) {
      if (prop === "wrapPrivateKey")
        return async (label: string, to: Parameters<KeyCustody["wrapPrivateKey"]>[1]) => {
          const spied = await target.wrapPrivateKey(label, { key: "leak-scan-spy" });
          learned.push(createPrivateKey({ key: Buffer.from(aesKeyUnwrapPad(spyKey, spied)), format: "der", type: "pkcs8" }));
          return target.wrapPrivateKey(label, to);
        };
      const v = Reflect.get(target, prop, recv);
      return typeof v === "function" ? v.bind(target) : v;
    },
  }) as KeyCustody;

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
  for (const t of ["users", "cards", "card_key_sets", "key_pairs", "wrapped_keys", "certificates", "packages", "rotations", "events", "audit_log"]) {
    const rows = await sql<Record<string, unknown>>`select * from ${sql.table(t)}`.execute(db);
    for (const row of rows.rows) for (const v of Object.values(row)) haystack.push(Buffer.isBuffer(v) ? v : Buffer.from(String(v)));
  }
  await db.destroy();
  for (const f of readdirSync(dir, { recursive: true }) as string[]) {
    const p = join(dir, f);
    if (statSync(p).isFile()) haystack.push(readFileSync(p));
  }
  const all = Buffer.concat(haystack);
  assert.ok(all.length > 10_000);
  for (const k of learned)
    for (const form of secretForms(k)) assert.equal(all.indexOf(form), -1, `a ${k.asymmetricKeyType} private key was found in clear`);
  // the scan can find a key: the same check on a buffer holding one must fail
  assert.notEqual(Buffer.concat([all, secretForms(learned[0])[1]]).indexOf(secretForms(learned[0])[1]), -1);
  vc.close();
  await inner.close();
});
