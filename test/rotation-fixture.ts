// The start of a bulk card-key rotation, shared by the SIGKILL test and the re-wrap bench: a user, an old card
// with Sk1 (KVN 1) and a new card with Sk2 (KVN 2), both diversified in custody from "card-master", and a pool of
// real key pairs generated in custody and wrapped under Sk1 (Sk1[PRk] with its KVN byte), to spread over rows.
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { CertificationAuthority } from "../src/ca/authority.ts";
import { LocalCaClient } from "../src/ca/client.ts";
import { MemoryCaRepository } from "../src/ca/repository.ts";
import { nodeSigner } from "../src/ca/signer.ts";
import { keyPair } from "./support/ca-testing.ts";
import { createCard } from "../src/card/card.ts";
import type { CardRuntime } from "../src/card/runtime.ts";
import type { KeyPairAlg, DerivedKeySetRef, KeyCustody } from "../src/custody/custody.ts";
import { Issuer } from "../src/issuer/issuer.ts";
import type { CardRotation } from "../src/issuer/rotation.ts";
import { Store, type CardKeySet, type User } from "../src/store/store.ts";
import type { TestDatabase, TestEngine } from "./support/store-testing.ts";
import { PivClient } from "../src/protocol/piv/client.ts";
import { softwareCustody } from "./custody-env.ts";
import { tempDir } from "./helpers.ts";
import { importTestKmc, TEST_KMC } from "./kmc.ts";

export interface RotationFixture {
  user: User;
  oldId: string;
  newId: string;
  ref1: DerivedKeySetRef;
  ref2: DerivedKeySetRef;
  sk1: CardKeySet;
  sk2: CardKeySet;
  pool: { alg: KeyPairAlg; spki: Uint8Array; wrapped: Uint8Array }[];
}

export async function rotationFixture(store: Store, custody: KeyCustody, o: { poolSize: number; algOf?: (i: number) => KeyPairAlg }): Promise<RotationFixture> {
  await custody.createSecretKey("card-master", { type: "aes", bits: 256, usage: ["derive"] });
  const now = store.now();
  const user = await store.createUser({ personalData: { commonName: "bulk rotation" } });
  const oldId = randomBytes(8).toString("hex");
  const newId = randomBytes(8).toString("hex");
  const ref1: DerivedKeySetRef = { kind: "derived", master: "card-master", cardId: oldId, kvn: 1 };
  const ref2: DerivedKeySetRef = { kind: "derived", master: "card-master", cardId: newId, kvn: 2 };
  await store.registerCard({ id: oldId, userId: user.id, validFrom: now, validUntil: now + 1e10, status: "active" });
  await store.registerCard({ id: newId, userId: user.id, validFrom: now, validUntil: now + 1e10 });
  const sk1 = await store.addKeySet({ cardId: oldId, kvn: 1, version: 1, validFrom: now, validUntil: now + 1e10, custodyRef: JSON.stringify(ref1), makeCurrent: true });
  const sk2 = await store.addKeySet({ cardId: newId, kvn: 2, version: 2, validFrom: now, validUntil: now + 1e10, custodyRef: JSON.stringify(ref2), makeCurrent: true });
  const pool: RotationFixture["pool"] = [];
  for (let i = 0; i < o.poolSize; i++) {
    const label = `pool-${i}`;
    const alg = o.algOf?.(i) ?? "P256";
    await custody.generateKeyPair(label, alg, { extractable: "wrapped", ephemeral: true });
    pool.push({ alg, spki: await custody.publicKey(label), wrapped: Uint8Array.from([1, ...(await custody.wrapPrivateKey(label, { card: ref1 }))]) });
    await custody.deleteKey(label);
  }
  return { user, oldId, newId, ref1, ref2, sk1, sk2, pool };
}

// ---- a whole issuer for the rotation domain tests (rotation-four-eyes, rotation-distribution) ----------------------

/** An issuer on a fresh DB of `engine` (software keystore with the test KMC, a local CA), and cards made for it. */
export interface RotationWorld {
  store: Store;
  issuer: Issuer;
  db: TestDatabase["db"];
  /** A user's card, personalised (a virtual card from the test factory), with a P256 credential in each of `slots`, loaded. */
  oldCard(slots: string[]): Promise<{ userId: string; cardId: string; card: CardRuntime }>;
  /** The rotation's new card personalised as the card issuing machine does it (ST13-ST14). */
  personaliseNew(rotations: CardRotation, rotationId: string): Promise<CardRuntime>;
  /** The new card's terminal: fetches its packages (they are delivered), loads each and acknowledges it. */
  sync(cardId: string, card: CardRuntime): Promise<number[]>;
  close(): Promise<void>;
}

export async function rotationWorld(engine: TestEngine): Promise<RotationWorld> {
  const dir = tempDir("cardkms-rotation-world-");
  const tdb = await engine.create();
  const custody = await softwareCustody()();
  const cards: CardRuntime[] = [];
  const store = new Store(tdb.db);
  const authority = await CertificationAuthority.createRoot({
    signer: nodeSigner(keyPair("P256").privateKey),
    repository: new MemoryCaRepository(),
    subject: { commonName: "rotation CA" },
    validityDays: 3650,
  });
  const issuer = await Issuer.open({ store, custody, ca: new LocalCaClient(authority) });
  await importTestKmc(custody);
  const virtualCard = (cardId: string) => {
    const c = createCard(join(dir, `${cardId}.card`), randomBytes(32), { kmc: TEST_KMC, cardId: Buffer.from(cardId, "hex") });
    cards.push(c);
    return c;
  };
  return {
    store,
    issuer,
    db: tdb.db,
    async oldCard(slots) {
      const user = await issuer.registerUser({ commonName: "Rota Tion" }, "olga");
      const { card } = await issuer.issueCard({ userId: user.id }, "olga");
      const vc = virtualCard(card.id);
      await issuer.personaliseCard(card.id, (a) => vc.transmit(a), "olga");
      const piv = new PivClient((a) => vc.transmit(a));
      await piv.select();
      for (const slot of slots) await piv.loadPackage((await issuer.requestCredential({ cardId: card.id, slot, alg: "P256" }, "olga")).package.body);
      return { userId: user.id, cardId: card.id, card: vc };
    },
    async personaliseNew(rotations, rotationId) {
      const r = (await store.getRotation(rotationId))!;
      const vc = virtualCard(r.toCardId!);
      await rotations.personaliseNewCard(rotationId, (a) => vc.transmit(a), "olga");
      return vc;
    },
    async sync(cardId, card) {
      const piv = new PivClient((a) => card.transmit(a));
      await piv.select();
      const seqs: number[] = [];
      for (const p of await issuer.packagesFor(cardId)) {
        await piv.loadPackage(p.body);
        await issuer.acknowledgePackage(cardId, p.seq, `terminal:${cardId}`);
        seqs.push(p.seq);
      }
      return seqs;
    },
    async close() {
      for (const c of cards) c.close();
      await custody.close();
      await tdb.drop();
    },
  };
}
