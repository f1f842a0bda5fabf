// Card key rotation Sk1 -> Sk2 onto a new card, the three strategies of seed 000 FIG. 15 (embodiments 3, 4, 5),
// on both storage engines with the software keystore and real virtual cards. Para 0065: the user holds four
// credentials, two on the card ({PRk1, Ct1}, {PRk2, Ct2}) and two in the terminal's store ({Sk1[PRk3], Ct3},
// {Sk1[PRk4], Ct4}). Each test checks the strategy's row of FIG. 15: the wrapped keys per key set in the system
// DB, the packages created (what crosses the network), what the new card holds (key sets, keys it signs with)
// and what the store holds (whose export, under which KVN).
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes, verify, X509Certificate } from "node:crypto";
import { join } from "node:path";
import { createCard } from "../src/card/card.ts";
import { packageHeader } from "../src/protocol/package.ts";
import { ISD_AID } from "../src/protocol/scp03/sm.ts";
import { CertificationAuthority } from "../src/ca/authority.ts";
import { LocalCaClient } from "../src/ca/client.ts";
import { MemoryCaRepository } from "../src/ca/repository.ts";
import { keyPair } from "./support/ca-testing.ts";
import { nodeSigner } from "../src/ca/signer.ts";
import { runScript } from "../src/issuer/card-scripts.ts";
import { Issuer } from "../src/issuer/issuer.ts";
import { CardRotation, FIG15, terminalRotate, type RotationStrategy } from "../src/issuer/rotation.ts";
import type { RewrapProgress } from "../src/issuer/rewrap.ts";
import { verifyAuditLog } from "../src/store/audit.ts";
import { Store } from "../src/store/store.ts";
import { testEngines } from "./support/store-testing.ts";
import { readCardInfo } from "../src/protocol/card-info.ts";
import { bringBack, moveOut, OverflowStore } from "../src/terminal/overflow.ts";
import { PivClient } from "../src/protocol/piv/client.ts";
import { ApduError } from "../src/protocol/apdu-client.ts";
import { softwareCustody } from "./custody-env.ts";
import { importTestKmc, TEST_KMC } from "./kmc.ts";
import { tempDir } from "./helpers.ts";

const dir = tempDir("cardkms-rotation-");
const PIN = "123456";

async function signsWith(piv: PivClient, slot: string, der: Uint8Array): Promise<boolean> {
  await piv.verifyPin(PIN);
  const msg = randomBytes(32);
  const { signature, hash } = await piv.sign(parseInt(slot, 16), "P256", msg);
  return verify(hash, msg, { key: new X509Certificate(der).publicKey, dsaEncoding: "der" }, signature);
}

const STRATEGIES: RotationStrategy[] = ["embodiment3", "embodiment4", "embodiment5"];

for (const engine of testEngines()) {
  for (const strategy of STRATEGIES) {
    test(`rotation ${strategy} (FIG. 15) on ${engine.name}`, { timeout: 10 * 60_000 }, async (t) => {
      const tdb = await engine.create();
      const custody = await softwareCustody()();
      const cards: { close(): void }[] = [];
      try {
        const store = new Store(tdb.db);
        const authority = await CertificationAuthority.createRoot({
          signer: nodeSigner(keyPair("P256").privateKey),
          repository: new MemoryCaRepository(),
          subject: { commonName: "rotation CA" },
          validityDays: 3650,
        });
        const issuer = await Issuer.open({ store, custody, ca: new LocalCaClient(authority) });
        await importTestKmc(custody);
        const rotations = new CardRotation(issuer);
        const hd = new OverflowStore(join(dir, `${engine.name}-${strategy}-hd`));

        // The old card with Sk1 and four credentials: 9A, 9C on the card, 9D, 9E moved out to the store.
        const user = await issuer.registerUser({ commonName: "Taro Suzuki" }, "olga");
        const { card: old, keySet: sk1 } = await issuer.issueCard({ userId: user.id }, "olga");
        const oldVc = createCard(join(dir, `${engine.name}-${strategy}-${old.id}.card`), randomBytes(32), { kmc: TEST_KMC, cardId: Buffer.from(old.id, "hex") });
        cards.push(oldVc);
        const oldTx = (a: Uint8Array) => oldVc.transmit(a);
        await issuer.personaliseCard(old.id, oldTx, "olga");
        const oldPiv = new PivClient(oldTx);
        await oldPiv.select();
        const creds = new Map<string, Awaited<ReturnType<Issuer["requestCredential"]>>>();
        for (const slot of ["9a", "9c", "9d", "9e"]) {
          const c = await issuer.requestCredential({ cardId: old.id, slot, alg: "P256" }, "olga");
          await oldPiv.loadPackage(c.package.body);
          creds.set(slot, c);
        }
        await oldPiv.verifyPin(PIN);
        for (const slot of ["9d", "9e"]) await moveOut(oldPiv, hd, parseInt(slot, 16));
        assert.deepEqual(
          hd.list(old.id).map((e) => [e.keyRef, packageHeader(e.bytes).kvn]),
          [
            ["9d", 1],
            ["9e", 1],
          ],
        );
        const oldExport9d = hd.get(old.id, "9d")!.bytes;
        const oldSeq = (await store.getCard(old.id))!.lastPackageSeq;

        // Para 0062: proposed — with the pairs it adds, which the approval covers — and nothing runs before an
        // operator other than the proposer approves.
        const add = FIG15[strategy].add
          ? [
              { slot: "82", alg: "P256" as const },
              { slot: "83", alg: "P256" as const },
            ]
          : [];
        const proposed = await rotations.propose({ cardId: old.id, strategy, add }, "scanner");
        await assert.rejects(rotations.issueNewCard(proposed.id, "olga"), /approved/);
        await assert.rejects(rotations.approve(proposed.id, "scanner"), /four eyes/);
        await rotations.approve(proposed.id, "olga");

        // Para 0063 / 0081: the new card (new card ID, same user), Sk2 = KVN 2, and Sk1 beside it for 4 and 5.
        const { card: fresh, sk2 } = await rotations.issueNewCard(proposed.id, "olga");
        assert.notEqual(fresh.id, old.id);
        assert.equal(fresh.userId, user.id);
        assert.equal(sk2.kvn, 2);
        const newVc = createCard(join(dir, `${engine.name}-${strategy}-${fresh.id}.card`), randomBytes(32), { kmc: TEST_KMC, cardId: Buffer.from(fresh.id, "hex") });
        cards.push(newVc);
        const newTx = (a: Uint8Array) => newVc.transmit(a);
        assert.equal((await rotations.personaliseNewCard(proposed.id, newTx, "olga")).status, "active");
        const info = await readCardInfo(newTx);
        assert.ok("keySets" in info);
        assert.deepEqual(
          info.keySets.map((k) => k.kvn).sort(),
          FIG15[strategy].newCardKeySets.map((k) => (k === "Sk1" ? 1 : 2)),
        );
        if (strategy !== "embodiment3") {
          // "holding a current symmetric key Sk1": the very key set of the old card opens a session on the new one.
          await runScript(newTx, { keys: issuer.keysOf(sk1), aid: ISD_AID, commands: [], check: () => {} });
        }

        // System DB: the bulk re-wrap where FIG. 15 says "update all".
        const progress: RewrapProgress[] = [];
        await rotations.rewrap(proposed.id, { pageSize: 3, onProgress: (p) => progress.push(p) });
        if (FIG15[strategy].systemDb === "all") assert.deepEqual([progress.at(-1)!.done, progress.at(-1)!.total], [4, 4]);
        else assert.equal(progress.length, 0);
        const result = await rotations.distribute(proposed.id, "olga", { add });
        // Distributed; complete once the new card's terminal has fetched what it is owed (below).
        assert.deepEqual([result.rotation.status, result.rotation.distribution], ["running", "distributed"]);
        for (const c of result.added) creds.set(c.keyPair.slot!, c);

        const underSk1 = new Set((await all(store, sk1.id)).map((w) => w.keyPairId));
        const underSk2 = new Set((await all(store, sk2.id)).map((w) => w.keyPairId));
        const oldIds = ["9a", "9c", "9d", "9e"].map((s) => creds.get(s)!.keyPair.id);
        const addedIds = result.added.map((c) => c.keyPair.id);
        assert.deepEqual([...underSk1].sort(), [...oldIds].sort(), "Sk1[PRk] rows are kept as they were");
        const expectSk2 = { embodiment3: oldIds, embodiment4: addedIds, embodiment5: [...oldIds, ...addedIds] }[strategy];
        assert.deepEqual([...underSk2].sort(), [...expectSk2].sort(), "Sk2[PRk] rows: FIG. 15 'System DB'");
        for (const id of underSk2) assert.equal((await store.getWrappedKey(id, sk2.id))!.wrapped[0], 2, "Sk2[PRk] names KVN 2");

        // Network: the packages created for the new card, and none for the old one.
        const sent = result.packages.map((p) => packageHeader(p.body));
        const expectSent = { embodiment3: ["9a", "9c", "9d", "9e"], embodiment4: ["82", "83"], embodiment5: ["82", "83"] }[strategy];
        assert.deepEqual(
          sent.map((h) => h.keyRef),
          expectSent,
          "FIG. 15 'Network'",
        );
        assert.ok(sent.every((h) => h.kvn === 2 && h.cardId === fresh.id && h.kind === "credential"));
        assert.equal((await store.getCard(old.id))!.lastPackageSeq, oldSeq, "nothing new for the old card");
        assert.equal((await store.getCard(old.id))!.status, "retired");
        assert.equal((await store.getKeySet(sk1.id))!.status, FIG15[strategy].systemDb === "all" ? "retired" : "active");

        // The terminal: new card and store.
        const newPiv = new PivClient(newTx);
        await newPiv.select();
        await newPiv.verifyPin(PIN);
        await oldPiv.verifyPin(PIN);
        const offCard = strategy === "embodiment3" ? ["9d", "9e"] : ["9d", "9e", "83"];
        const term = await terminalRotate({
          strategy,
          oldCard: { piv: oldPiv, cardId: old.id },
          newCard: { piv: newPiv, cardId: fresh.id },
          store: hd,
          packages: (await issuer.packagesFor(fresh.id)).map((p) => p.body),
          offCard,
        });
        assert.equal((await store.getRotation(proposed.id))!.status, "completed", "every package fetched: the rotation is complete");
        const stored = term.inStore.map((e) => `${e.cardId === fresh.id ? "new" : "old"}:${e.slot}@${e.kvn}`).sort();
        if (strategy === "embodiment3") {
          assert.deepEqual(term.onCard, ["9a", "9c"]);
          assert.deepEqual(stored, ["new:9d@2", "new:9e@2"], "the store's Sk1[PRk] are overwritten by Sk2[PRk] (para 0071)");
          assert.deepEqual(term.stranded, []);
        } else {
          // Para 0088-0089: the old pairs the new card is to hold went in under Sk1, through its predecessor key set.
          assert.deepEqual(term.onCard, ["82", "9a", "9c"]);
          assert.deepEqual(term.stranded, []);
          // FIG. 15 "HD": 4 keeps the old card's Sk1[PRk] for what stays there; 5 has them all as the new card's Sk2[PRk].
          assert.deepEqual(stored, strategy === "embodiment4" ? ["new:83@2", "old:9d@1", "old:9e@1"] : ["new:83@2", "new:9d@2", "new:9e@2"]);
          for (const e of hd.list(fresh.id)) assert.equal(packageHeader(e.bytes).kind, "export");
        }
        // The new card signs with what it holds; what is in the store comes back on demand and signs too.
        for (const slot of term.onCard) assert.ok(await signsWith(newPiv, slot, creds.get(slot)!.certificate.der), `new card signs with ${slot}`);
        for (const e of term.inStore.filter((x) => x.cardId === fresh.id)) {
          await bringBack(newPiv, hd, fresh.id, parseInt(e.slot, 16));
          assert.ok(await signsWith(newPiv, e.slot, creds.get(e.slot)!.certificate.der), `${e.slot} from the store signs on the new card`);
        }
        if (strategy === "embodiment3") for (const s of ["9a", "9c", "9d", "9e"]) assert.ok(await signsWith(newPiv, s, creds.get(s)!.certificate.der), `old key ${s} on the new card`);

        if (strategy !== "embodiment3") {
          await t.test("seed: the new card takes the old pairs from the terminal under Sk1 and signs with them", async () => {
            for (const s of ["9a", "9c"]) assert.ok(await signsWith(newPiv, s, creds.get(s)!.certificate.der));
          });
          if (strategy === "embodiment4")
            await t.test("seed: the store's Sk1[PRk] stay the old card's and load into the new card on demand (para 0088)", async () => {
              assert.deepEqual(
                hd.list(old.id).map((e) => [e.keyRef, packageHeader(e.bytes).kvn, packageHeader(e.bytes).cardId]),
                [
                  ["9d", 1, old.id],
                  ["9e", 1, old.id],
                ],
              );
              for (const s of ["9d", "9e"]) {
                await bringBack(newPiv, hd, old.id, parseInt(s, 16));
                assert.ok(await signsWith(newPiv, s, creds.get(s)!.certificate.der), `${s} under Sk1 signs on the new card`);
              }
            });
          if (strategy === "embodiment5")
            await t.test("seed: the store's Sk1[PRk] become the new card's Sk2[PRk] (FIG. 22-24)", async () => {
              assert.deepEqual(hd.list(old.id), []);
              assert.deepEqual(
                hd.list(fresh.id).map((e) => [e.keyRef, packageHeader(e.bytes).kvn]),
                [
                  ["83", 2],
                  ["9d", 2],
                  ["9e", 2],
                ],
              );
            });
          await t.test("the old card's Sk1[PRk] exports do not load into a card without its predecessor key set", async () => {
            // A third card of the same user with only its own key set: the old card's export is not for it (6982).
            const { card: third } = await issuer.issueCard({ userId: user.id }, "olga");
            const thirdVc = createCard(join(dir, `${engine.name}-${strategy}-${third.id}.card`), randomBytes(32), { kmc: TEST_KMC, cardId: Buffer.from(third.id, "hex") });
            cards.push(thirdVc);
            const thirdTx = (a: Uint8Array) => thirdVc.transmit(a);
            await issuer.personaliseCard(third.id, thirdTx, "olga");
            const thirdPiv = new PivClient(thirdTx);
            await thirdPiv.select();
            await assert.rejects(thirdPiv.loadPackage(oldExport9d), (e: unknown) => e instanceof ApduError && e.sw === 0x6982);
          });
        }

        const audit = await verifyAuditLog(tdb.db);
        assert.equal(audit.ok, true);
        const actions = (await tdb.db.selectFrom("audit_log").select("action").where("subject", "=", proposed.id).orderBy("seq").execute()).map((r) => r.action);
        assert.deepEqual(actions, ["rotation.proposed", "rotation.approved", "rotation.started", "rotation.redistributed", "rotation.distributed", "rotation.completed"]);
      } finally {
        for (const c of cards) c.close();
        await custody.close();
        await tdb.drop();
      }
    });
  }
}

async function all(store: Store, keySetId: string) {
  const out = [];
  for await (const page of store.wrappedKeyPages(keySetId)) out.push(...page);
  return out;
}
