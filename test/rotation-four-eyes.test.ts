// Issue 15 §2, one person can rotate a card alone: four eyes on card-key rotations, on both engines.
//   - the proposer is recorded and may not approve; the approvals needed come from distinct other operators
//     (configurable: two here), and the rotation runs only once they are all given;
//   - each approval is bound to what distribute acts on (old card, key set, strategy, new card, additions, drops):
//     a new card ID or an addition list other than the approved ones is refused by name, and a binding changed
//     after the approvals (a row edited in the DB) leaves the approvals covering nothing;
//   - the proposal and each approval are in the audit log, naming what was approved;
//   - a slot dropped by the approved proposal is left behind, and the rotation completes without it.
import { test } from "node:test";
import assert from "node:assert/strict";
import { CardRotation } from "../src/issuer/rotation.ts";
import { auditEntries, type AuditEntry } from "../src/store/audit.ts";
import { testEngines } from "./support/store-testing.ts";
import { rotationWorld } from "./rotation-fixture.ts";

for (const engine of testEngines()) {
  test(`four eyes on a rotation, two approvals needed (${engine.name})`, { timeout: 10 * 60_000 }, async (t) => {
    const w = await rotationWorld(engine);
    t.after(() => w.close());
    const rotations = new CardRotation(w.issuer, { approvals: 2 });
    const old = await w.oldCard(["9a", "9c", "9e"]);

    const add = [{ slot: "82", alg: "P256" as const }];
    await assert.rejects(rotations.propose({ cardId: old.cardId, strategy: "embodiment3", add }, "olga"), /adds no key pair/);
    await assert.rejects(rotations.propose({ cardId: old.cardId, strategy: "embodiment5", add: [{ slot: "9a", alg: "P256" }] }, "olga"), /slot 9a holds card/);
    await assert.rejects(rotations.propose({ cardId: old.cardId, strategy: "embodiment5", drop: ["83"] }, "olga"), /no active key pair in slot 83/);
    const r = await rotations.propose({ cardId: old.cardId, strategy: "embodiment5", add, drop: ["9e"] }, "olga");
    assert.deepEqual([r.status, r.proposedBy, r.approvalsRequired, r.dropped], ["proposed", "olga", 2, ["9e"]]);
    assert.match(r.newCardId!, /^[0-9a-f]{16}$/, "the new card's ID is fixed at proposal");

    // The proposer may not approve; one other operator is not enough; nobody approves twice.
    await assert.rejects(rotations.approve(r.id, "olga"), /four eyes: olga proposed rotation/);
    assert.equal((await rotations.approve(r.id, "otto")).status, "proposed");
    await assert.rejects(rotations.approve(r.id, "otto"), /otto approved rotation .* already/);
    await assert.rejects(rotations.issueNewCard(r.id, "olga"), /must be approved/);
    const approved = await rotations.approve(r.id, "ada");
    assert.deepEqual([approved.status, approved.approvedBy], ["approved", "ada"]);
    const st = await rotations.status(r.id);
    assert.deepEqual(st.approvals.given.map((a) => a.operator).sort(), ["ada", "otto"]);

    // Bound to the new card: another ID is refused by name, the approved one is issued.
    await assert.rejects(
      rotations.issueNewCard(r.id, "olga", { cardId: "00112233445566778899" }),
      new RegExp(`new card 00112233445566778899 is not the one rotation ${r.id} was approved for \\(${r.newCardId}\\)`),
    );
    const { card: fresh } = await rotations.issueNewCard(r.id, "olga");
    assert.equal(fresh.id, r.newCardId);
    const freshCard = await w.personaliseNew(rotations, r.id);
    await rotations.rewrap(r.id);

    // Bound to the additions: another list is refused by name before anything is generated.
    await assert.rejects(rotations.distribute(r.id, "olga", { add: [{ slot: "83", alg: "P256" }] }), /approved to add 82 P256, not 83 P256/);
    await assert.rejects(rotations.distribute(r.id, "olga", { add: [] }), /approved to add 82 P256, not none/);
    assert.equal((await w.store.listKeyPairs({ cardId: fresh.id })).length, 0);

    // What distribute acts on changed after the approvals (here: the additions, edited in the DB): nothing covers it.
    await w.db
      .updateTable("rotations")
      .set({
        added: JSON.stringify([
          ["82", "P256", null],
          ["83", "P256", null],
        ]),
      })
      .where("id", "=", r.id)
      .execute();
    await assert.rejects(rotations.distribute(r.id, "olga"), /four eyes: rotation .* needs 2 approval\(s\) of its binding .* it has 0/);
    await w.db
      .updateTable("rotations")
      .set({ added: JSON.stringify([["82", "P256", null]]) })
      .where("id", "=", r.id)
      .execute();

    // The approved rotation: 9a, 9c carried (through the terminal, FIG. 15), 82 added, 9e left behind.
    const res = await rotations.distribute(r.id, "olga");
    assert.deepEqual(
      res.distribution.items.map((i) => [i.slot, i.kind, i.state]),
      [
        ["82", "added", "packaged"],
        ["9a", "carried", "delivered"],
        ["9c", "carried", "delivered"],
        ["9e", "carried", "dropped"],
      ],
    );
    assert.deepEqual(res.distribution.owed, ["82"]);
    assert.deepEqual(
      (await w.store.listKeyPairs({ cardId: old.cardId, status: "active" })).map((k) => k.slot),
      ["9e"],
      "the dropped pair stays the old card's",
    );
    await w.sync(fresh.id, freshCard);
    assert.equal((await w.store.getRotation(r.id))!.status, "completed", "complete: every pair delivered or dropped");

    // The audit log: the proposal and each approval, naming what was approved.
    const entries: AuditEntry[] = [];
    for await (const e of auditEntries(w.db)) if (e.subject === r.id) entries.push(e);
    const details = (a: string) => entries.filter((e) => e.action === a).map((e): Record<string, unknown> => ({ ...e.details, actor: e.actor }));
    const [proposal] = details("rotation.proposed");
    assert.deepEqual([proposal.actor, proposal.newCardId, proposal.added, proposal.dropped, proposal.approvalsRequired], ["olga", r.newCardId, [{ slot: "82", alg: "P256" }], ["9e"], 2]);
    const first = details("rotation.approval");
    const last = details("rotation.approved");
    assert.deepEqual([first.map((a) => a.actor), last.map((a) => a.actor)], [["otto"], ["ada"]]);
    assert.equal(last[0].binding, proposal.binding, "the approvals name the binding proposed");
    assert.deepEqual(last[0].approvals, ["otto", "ada"]);
  });

  test(`a validity-scan proposal (no proposer) is approved by one operator; cancel withdraws one not started (${engine.name})`, { timeout: 10 * 60_000 }, async (t) => {
    const w = await rotationWorld(engine);
    t.after(() => w.close());
    const rotations = new CardRotation(w.issuer);
    const old = await w.oldCard([]);
    const ks = (await w.store.getCard(old.cardId))!.currentKeySetId!;
    const scanned = await w.store.proposeRotation({ cardId: old.cardId, fromKeySetId: ks, strategy: "embodiment3" });
    assert.equal(scanned.proposedBy, null);
    assert.equal((await rotations.approve(scanned.id, "olga")).status, "approved");
    await assert.rejects(rotations.propose({ cardId: old.cardId, strategy: "embodiment3" }, "otto"), /already has an open rotation/);
    assert.equal((await rotations.cancel(scanned.id, "otto")).status, "cancelled");
    const again = await rotations.propose({ cardId: old.cardId, strategy: "embodiment3" }, "otto");
    assert.equal(again.status, "proposed");
    await assert.rejects(rotations.cancel("no-such-rotation", "otto"), /not found/);
  });
}
