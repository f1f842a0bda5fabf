// Test support (issue 16 §3): one behaviour suite for a software keystore shared by several custodies — processes
// on one machine sharing a file, or servers sharing the store — run over every KeystoreBackend
// (src/custody/software.test.ts: the file; src/store/custody-keystore.test.ts: the store on SQLite and PostgreSQL).
// Each custody is a separate SoftwareCustody with its own memory; what one makes or deletes, the others must see.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { after, before, describe, test } from "node:test";
import { keyCheckValue } from "../../src/protocol/scp03/host.ts";
import { SoftwareCustody } from "../../src/custody/software.ts";
import { rejects } from "./custody-contract.ts";

export interface SharedKeystore {
  /** Opens another custody on the same keystore (its own memory; with the store, its own connection). */
  open(opts?: { recheckMs?: number; key?: string }): Promise<SoftwareCustody>;
  cleanup(): Promise<void>;
}

const aes = { type: "aes", bits: 128, usage: ["encrypt"] } as { type: "aes"; bits: 128; usage: ["encrypt"] };
const uniq = (p: string): string => `${p}-${randomBytes(4).toString("hex")}`;

export function keystoreSharingSuite(name: string, make: (key: string) => Promise<SharedKeystore>): void {
  describe(`keystore shared by several custodies: ${name}`, () => {
    const key = randomBytes(32).toString("hex");
    let shared: SharedKeystore;
    const opened: SoftwareCustody[] = [];
    const open = async (opts: { recheckMs?: number; key?: string } = {}) => {
      const c = await shared.open({ key, ...opts });
      opened.push(c);
      return c;
    };
    before(async () => {
      shared = await make(key);
    });
    after(async () => {
      for (const c of opened) await c.close();
      await shared?.cleanup();
    });

    test("two custodies creating keys at once: every key survives and each sees the other's", async () => {
      const a = await open();
      const b = await open();
      assert.equal(a.keystore.id, b.keystore.id, "one keystore, one id");
      assert.match(a.keystore.id, /^ks_[0-9a-f]{32}$/);
      const pa = Array.from({ length: 12 }, (_, i) => uniq(`a${i}`));
      const pb = Array.from({ length: 12 }, (_, i) => uniq(`b${i}`));
      await Promise.all([...pa.map((l) => a.createSecretKey(l, aes)), ...pb.map((l) => b.createSecretKey(l, aes)), a.generateKeyPair(uniq("pair"), "P256")]);
      for (const l of pb) assert.equal(await a.hasKey(l), true, `A sees B's ${l}`);
      for (const l of pa) assert.equal(await b.hasKey(l), true, `B sees A's ${l}`);
      const fresh = await open();
      const listed = new Set((await fresh.listKeys()).map((k) => k.label));
      for (const l of [...pa, ...pb]) assert.ok(listed.has(l), `${l} kept`);
      // The same key, not merely the same label: A's key used through B gives A's check values.
      const ref = { kind: "stored", enc: pa[0], mac: pa[1], dek: pa[2], kvn: 1 } as const;
      assert.deepEqual(await b.keySetKcvs(ref), await a.keySetKcvs(ref));
    });

    test("a label is unique across custodies: of two creating it at once, exactly one succeeds", async () => {
      const a = await open();
      const b = await open();
      for (let i = 0; i < 4; i++) {
        const label = uniq("dup");
        const r = await Promise.allSettled([a.createSecretKey(label, aes), b.createSecretKey(label, aes)]);
        assert.equal(r.filter((x) => x.status === "fulfilled").length, 1, "one creation succeeds");
        const lost = r.find((x) => x.status === "rejected") as PromiseRejectedResult;
        assert.equal(lost.reason?.code, "EXISTS");
        assert.deepEqual(await a.keySetKcvs({ kind: "stored", enc: label, mac: label, dek: label, kvn: 1 }), await b.keySetKcvs({ kind: "stored", enc: label, mac: label, dek: label, kvn: 1 }));
      }
      const label = uniq("later");
      await a.createSecretKey(label, aes);
      await rejects(b.createSecretKey(label, aes), "EXISTS");
      await rejects(b.generateKeyPair(label, "P256"), "EXISTS");
      await rejects(b.generateKeyPair(label, "P256", { ephemeral: true }), "EXISTS");
    });

    test("a key made by one custody is used by another: signing, card keys", async () => {
      const a = await open();
      const b = await open();
      const ca = uniq("ca");
      await a.generateKeyPair(ca, "P256");
      const signer = await b.signer(ca);
      assert.deepEqual(Buffer.from(signer.spki), Buffer.from(await a.publicKey(ca)));
      assert.ok((await signer.sign(Buffer.from("data"))).length > 0);
      const master = uniq("master");
      const value = randomBytes(16);
      await a.importSecretKey(master, { type: "aes", bits: 128, usage: ["derive"] }, value);
      const kcvs = await b.keySetKcvs({ kind: "derived", master, cardId: "0102030405060708", kvn: 1 });
      assert.deepEqual(kcvs, await a.keySetKcvs({ kind: "derived", master, cardId: "0102030405060708", kvn: 1 }));
      assert.notEqual(kcvs.enc, Buffer.from(keyCheckValue(value)).toString("hex"), "derived, not the master itself");
    });

    test("a key deleted by one custody stops working on another: at once with recheckMs 0, after the bound otherwise", async () => {
      const a = await open();
      const now = await open({ recheckMs: 0 });
      const bound = await open({ recheckMs: 150 });
      const master = uniq("master");
      await a.importSecretKey(master, { type: "aes", bits: 128, usage: ["derive"] }, randomBytes(16));
      const ref = { kind: "derived", master, cardId: "0102030405060708", kvn: 1 } as const;
      const before = await now.keySetKcvs(ref);
      assert.deepEqual(await bound.keySetKcvs(ref), before);
      await now.sealForCard(ref, 0x40, new Uint8Array(0), Buffer.from("cached purpose key"));
      assert.equal(await a.deleteKey(master), true);
      await rejects(now.keySetKcvs(ref), "NOT_FOUND", new RegExp(master));
      await rejects(now.sealForCard(ref, 0x40, new Uint8Array(0), Buffer.from("x")), "NOT_FOUND", new RegExp(master));
      assert.equal(await now.hasKey(master), false);
      await sleep(200); // past the bound of 150 ms (the documented bound is RECHECK_MS)
      await rejects(bound.keySetKcvs(ref), "NOT_FOUND");
      assert.equal(await a.deleteKey(master), false, "deleted once");
      // Made again under the same label with another value: the others use the new key, never the old one.
      await a.importSecretKey(master, { type: "aes", bits: 128, usage: ["derive"] }, randomBytes(16));
      const again = await now.keySetKcvs(ref);
      assert.notDeepEqual(again, before);
      assert.deepEqual(again, await a.keySetKcvs(ref));
    });

    test("the keystore opens only under its key", async () => {
      await open();
      await rejects(shared.open({ key: randomBytes(32).toString("hex") }), "WRONG_KEY");
    });
  });
}
