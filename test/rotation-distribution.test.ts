// Issue 15 §4 and §6 (first two holes): a rotation's distribution is explicit, persisted state, on both engines.
//   - a credential issued to the new card before distribute no longer makes the old card's keys silently
//     undelivered (the old heuristic: the new card's lastPackageSeq not 0 => "already redistributed");
//   - every slot owed has its state — pending, packaged, delivered (fetched by the new card's terminal),
//     acknowledged (the card's receipt) — and the rotation completes only when nothing is owed;
//   - a distribute that stops midway resumes exactly where it stopped: no package made twice;
//   - propose checks both cards' states and that every key under the key set is the old card's; distribute with a
//     new card not yet personalised is refused, and nothing is retired or moved.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { CardRotation } from "../src/issuer/rotation.ts";
import type { Rotation } from "../src/store/store.ts";
import { testEngines } from "./support/store-testing.ts";
import { rotationWorld, type RotationWorld } from "./rotation-fixture.ts";

/** Proposed by olga, approved by otto, the new card issued (not personalised). */
async function approvedRotation(w: RotationWorld, rotations: CardRotation, cardId: string, strategy: Rotation["strategy"] = "embodiment3") {
  const r = await rotations.propose({ cardId, strategy }, "olga");
  await rotations.approve(r.id, "otto");
  const { card } = await rotations.issueNewCard(r.id, "olga");
  return { id: r.id, newCardId: card.id };
}

const states = async (rotations: CardRotation, id: string) => (await rotations.status(id)).distribution.items.map((i) => [i.slot, i.state, i.packageSeq]);

for (const engine of testEngines()) {
  test(`a credential issued to the new card first leaves nothing undelivered; owed until the card fetched it (${engine.name})`, { timeout: 10 * 60_000 }, async (t) => {
    const w = await rotationWorld(engine);
    t.after(() => w.close());
    const rotations = new CardRotation(w.issuer);
    const old = await w.oldCard(["9a", "9c"]);
    const { id, newCardId } = await approvedRotation(w, rotations, old.cardId);
    const newCard = await w.personaliseNew(rotations, id);
    await rotations.rewrap(id);
    // Something for the new card before distribute: its package sequence is no longer 0.
    const early = await w.issuer.requestCredential({ cardId: newCardId, slot: "82", alg: "P256" }, "olga");
    assert.equal(early.package.seq, 1);

    const res = await rotations.distribute(id, "olga");
    assert.deepEqual(
      res.packages.map((p) => p.seq),
      [2, 3],
      "the old card's 9a and 9c are sent all the same",
    );
    assert.deepEqual(await states(rotations, id), [
      ["9a", "packaged", 2],
      ["9c", "packaged", 3],
    ]);
    assert.deepEqual(res.distribution.owed, ["9a", "9c"]);
    assert.deepEqual([res.rotation.status, res.rotation.distribution], ["running", "distributed"]);
    assert.equal((await rotations.distribute(id, "olga")).rotation.status, "running", "not complete while something is owed");

    // The new card's terminal fetches (delivered: the rotation completes) and loads them (acknowledged).
    const seqs = await w.sync(newCardId, newCard);
    assert.deepEqual(seqs, [1, 2, 3]);
    assert.deepEqual(await states(rotations, id), [
      ["9a", "acknowledged", 2],
      ["9c", "acknowledged", 3],
    ]);
    const done = await rotations.status(id);
    assert.deepEqual([done.rotation.status, done.distribution.owed], ["completed", []]);
    assert.deepEqual((await w.store.listKeyPairs({ cardId: newCardId, status: "active" })).map((k) => k.slot).sort(), ["82", "9a", "9c"]);
  });

  test(`a distribute that stops midway resumes exactly where it stopped (${engine.name})`, { timeout: 10 * 60_000 }, async (t) => {
    const w = await rotationWorld(engine);
    t.after(() => w.close());
    const rotations = new CardRotation(w.issuer);
    const old = await w.oldCard(["9a", "9c", "9d"]);
    const { id, newCardId } = await approvedRotation(w, rotations, old.cardId);
    await w.personaliseNew(rotations, id);
    await rotations.rewrap(id);

    // Custody fails while sealing the second package (an HSM gone away, a process killed).
    const custody = w.issuer.custody;
    const seal = custody.sealForCard.bind(custody);
    let calls = 0;
    custody.sealForCard = async (...a: Parameters<typeof seal>) => {
      if (++calls === 2) throw new Error("custody unavailable");
      return seal(...a);
    };
    await assert.rejects(rotations.distribute(id, "olga"), /custody unavailable/);
    custody.sealForCard = seal;
    const stopped = await rotations.status(id);
    assert.equal(stopped.rotation.distribution, "distributing");
    assert.deepEqual(await states(rotations, id), [
      ["9a", "packaged", 1],
      ["9c", "pending", null],
      ["9d", "pending", null],
    ]);
    assert.equal((await w.store.getCard(old.cardId))!.status, "retired", "the claim (pairs moved, old card retired) committed");

    const resumed = await rotations.distribute(id, "olga");
    assert.deepEqual(
      resumed.packages.map((p) => p.seq),
      [1, 2, 3],
    );
    assert.deepEqual(await states(rotations, id), [
      ["9a", "packaged", 1],
      ["9c", "packaged", 2],
      ["9d", "packaged", 3],
    ]);
    assert.equal((await w.store.listPackages(newCardId)).length, 3, "no package made twice");
    assert.equal(resumed.rotation.distribution, "distributed");
  });

  test(`propose checks both cards and whose keys it would re-wrap; distribute waits for a personalised new card (${engine.name})`, { timeout: 10 * 60_000 }, async (t) => {
    const w = await rotationWorld(engine);
    t.after(() => w.close());
    const rotations = new CardRotation(w.issuer);

    // A retired card's key set is not rotated.
    const retired = await w.oldCard(["9a"]);
    await w.store.setCardStatus(retired.cardId, "retired");
    await assert.rejects(rotations.propose({ cardId: retired.cardId, strategy: "embodiment3" }, "olga"), new RegExp(`card ${retired.cardId} is retired: only an active card's key set is rotated`));

    // A key set that wraps another card's key pair is not rotated: the re-wrap would hand it to the new card.
    const old = await w.oldCard(["9a"]);
    const other = await w.store.registerCard({ userId: old.userId, validFrom: 0, validUntil: Date.now() * 2 });
    const ks = (await w.store.getCard(old.cardId))!.currentKeySetId!;
    const stray = await w.store.recordCredential({
      keyPair: { userId: old.userId, cardId: other.id, slot: null, algorithm: "P256", publicKey: randomBytes(65) },
      wrapped: [{ keySetId: ks, wrapped: randomBytes(40) }],
    });
    await assert.rejects(
      rotations.propose({ cardId: old.cardId, strategy: "embodiment3" }, "olga"),
      new RegExp(`wraps 1 key pair\\(s\\) that are not card ${old.cardId}'s \\(first: ${stray.keyPair.id}\\)`),
    );

    // A new card ID that is a card already.
    const fine = await w.oldCard(["9a", "9c"]);
    await assert.rejects(
      rotations.propose({ cardId: fine.cardId, strategy: "embodiment3", newCardId: retired.cardId }, "olga"),
      new RegExp(`card ${retired.cardId} exists: the new card must be a new one`),
    );

    // Distribute before the new card is personalised: refused by name; nothing moved, nothing retired.
    const { id, newCardId } = await approvedRotation(w, rotations, fine.cardId);
    await rotations.rewrap(id);
    await assert.rejects(rotations.distribute(id, "olga"), new RegExp(`new card ${newCardId} is issued, not active: personalise it first`));
    assert.equal((await w.store.getCard(fine.cardId))!.status, "active", "the old card keeps working");
    assert.deepEqual(
      (await w.store.listKeyPairs({ cardId: fine.cardId, status: "active" })).map((k) => k.slot),
      ["9a", "9c"],
    );
    const st = await rotations.status(id);
    assert.deepEqual([st.rotation.distribution, st.distribution.items.length], ["none", 0]);
    assert.equal((await w.store.listPackages(newCardId)).length, 0);
  });
}
