// The start of a bulk card-key rotation, shared by the SIGKILL test and the re-wrap bench: a user, an old card
// with Sk1 (KVN 1) and a new card with Sk2 (KVN 2), both diversified in custody from "card-master", and a pool of
// real key pairs generated in custody and wrapped under Sk1 (Sk1[PRk] with its KVN byte), to spread over rows.
import { randomBytes } from "node:crypto";
import type { KeyPairAlg, DerivedKeySetRef, KeyCustody } from "../src/custody/custody.ts";
import type { CardKeySet, Store, User } from "../src/store/store.ts";

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
