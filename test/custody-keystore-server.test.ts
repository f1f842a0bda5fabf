// Issue 16 §3 at server start, on one PostgreSQL database (the several-servers deployment): the first server records
// the keystore its card keys live in; a second server with a different keystore file is refused, naming what is
// recorded, what it opened and the fix; a second process with the same file on the same host starts. With the
// keystore in the store (custody.keystoreBackend "store"), every server shares it: one CA key, keys made by one used
// by the other, no refusal.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { Writable } from "node:stream";
import { DEFAULT_CONFIG, type IssuerConfig } from "../src/server/config.ts";
import { startIssuerServer, type IssuerServer } from "../src/server/main.ts";
import { SqlCustodyBindings } from "../src/store/custody-keystore.ts";
import { tempDir } from "./helpers.ts";
import { testEngines, type TestDatabase } from "./support/store-testing.ts";

const env = { CARDKMS_KEYSTORE_KEY: randomBytes(32).toString("hex") };
const silent = new Writable({ write: (_c, _e, cb) => cb() });
const pgEngine = testEngines().find((e) => e.name === "postgres");

function config(database: string, custody: IssuerConfig["custody"]): IssuerConfig {
  return { ...structuredClone(DEFAULT_CONFIG), listen: { host: "127.0.0.1", port: 0 }, database, custody, logLevel: "silent" };
}

describe("custody binding at server start on one PostgreSQL database", { skip: pgEngine ? false : "CARDKMS_TEST_PG=off" }, () => {
  const dir = tempDir("cardkms-binding-");
  const dbs: TestDatabase[] = [];
  const servers: IssuerServer[] = [];
  const start = async (database: string, custody: IssuerConfig["custody"]) => {
    const s = await startIssuerServer(config(database, custody), { env, listen: false, handleSignals: false, logStream: silent });
    servers.push(s);
    return s;
  };
  let url = "";
  before(async () => {
    const t = await (pgEngine as NonNullable<typeof pgEngine>).create();
    dbs.push(t);
    url = t.url;
  });
  after(async () => {
    for (const s of servers) await s.close();
    for (const t of dbs) await t.drop();
  });

  test("a second server with another keystore file is refused with what is recorded, what it opened and the fix; the same file on this host starts", async () => {
    const first = join(dir, "first.json");
    const second = join(dir, "second.json");
    const a = await start(url, { kind: "software", keystore: first });
    assert.equal(await a.custody.hasKey("ca-root"), true);
    const recorded = await new SqlCustodyBindings(a.store.db).get();
    assert.equal(recorded?.kind, "file");
    assert.equal(recorded?.path, first);

    await assert.rejects(start(url, { kind: "software", keystore: second }), (e: Error) => {
      assert.match(e.message, /custody refused/);
      assert.ok(e.message.includes(first), "names the recorded file");
      assert.ok(e.message.includes(second), "names the file it opened");
      assert.ok(e.message.includes(recorded?.keystoreId as string), "names the recorded keystore id");
      assert.match(e.message, /custody\.keystoreBackend "store"/, "gives the fix");
      return true;
    });
    // The refused server made nothing of its own: no CA key in its keystore (it stopped before the CA opened).
    assert.equal(existsSync(second), true);
    assert.deepEqual(await new SqlCustodyBindings(a.store.db).get(), recorded, "the record is unchanged");

    // Several processes on one machine share the file (a lock file makes it safe): the second one starts.
    const b = await start(url, { kind: "software", keystore: first });
    await a.custody.createSecretKey("made-by-a", { type: "aes", bits: 128 });
    assert.equal(await b.custody.hasKey("made-by-a"), true, "B sees A's key in the shared file");
    assert.deepEqual(await b.custody.publicKey("ca-root"), await a.custody.publicKey("ca-root"), "one CA key");
  });

  test("with the keystore in the store every server shares it; a file keystore on that database is then refused", async () => {
    const t = await (pgEngine as NonNullable<typeof pgEngine>).create();
    dbs.push(t);
    const a = await start(t.url, { kind: "software", keystore: join(dir, "unused-a.json"), keystoreBackend: "store" });
    const b = await start(t.url, { kind: "software", keystore: join(dir, "unused-b.json"), keystoreBackend: "store" });
    assert.equal(existsSync(join(dir, "unused-a.json")), false, "no file keystore made");
    assert.deepEqual(await b.custody.publicKey("ca-root"), await a.custody.publicKey("ca-root"), "one CA key, made by the first server");
    await b.custody.generateKeyPair("made-by-b", "P256");
    assert.equal(await a.custody.hasKey("made-by-b"), true);
    assert.equal((await new SqlCustodyBindings(t.db).get())?.kind, "store");
    await assert.rejects(start(t.url, { kind: "software", keystore: join(dir, "stray.json") }), /keystore in the store.*custody\.keystoreBackend "store"/s);
  });
});
