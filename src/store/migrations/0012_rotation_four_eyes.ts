// Migration 0012: races, four eyes and explicit distribution for card-key rotations and credential requests
// (issue 15 §1, §2, §4, §6; src/issuer/rotation.ts, src/issuer/rotation-approvals.ts, src/store/rotation-repository.ts).
//
//   key_pairs                  + unique (card_id, slot) where status = 'active': at most one active key pair per
//                                card and slot, whatever the number of servers. Slots that already hold more than
//                                one (the race this closes) keep the newest — the one whose package a card loads
//                                last — and the older ones become 'superseded' (their certificates are left as
//                                they are: revoke them if they must not be used).
//   credential_slot_claims     a credential request's claim on (card, slot), taken before the key is certified and
//                                given up in the transaction that records it: of concurrent requests for one slot
//                                one certifies; a claim older than its lease may be taken over (a crashed server).
//   rotations                  + proposed_by, new_card_id (bound at proposal, unique), added / dropped (canonical
//                                JSON of the credentials distribute adds and the old card's slots it leaves behind),
//                                approvals_required, distribution ('none' -> 'distributing' -> 'distributed', claimed
//                                by a guarded UPDATE) and distributed_at.
//                              + unique (from_key_set_id) while proposed, approved or running: one open rotation per
//                                key set (older duplicates, if any, are marked failed); an index on to_card_id.
//   rotation_approvals         one row per (rotation, operator): distinct approvers, each bound to the hash of what
//                                they approved (old card, key set, strategy, new card, additions, drops).
//   rotation_items             one row per slot a rotation owes the new card: carried (the old card's pair) or added,
//                                by package or by the terminal (FIG. 15), and its state pending -> packaged ->
//                                delivered (fetched by the new card's terminal) -> acknowledged (the card's receipt),
//                                or dropped (an approved decision).
//
// Rotations written before: the new card they are bound to is the one they issued (else a fresh ID), they add and
// drop nothing, and an approval given before counts for that binding (the hash below is the one
// src/issuer/rotation-records.ts computes, version 1, frozen here: a migration never changes).

import { createHash, randomBytes } from "node:crypto";
import { sql, type ColumnDefinitionBuilder, type Kysely, type Migration } from "kysely";
import type { Engine } from "../db.ts";

const OPEN = "status in ('proposed', 'approved', 'running')";

interface LegacyRotation {
  id: string;
  card_id: string;
  from_key_set_id: string;
  to_card_id: string | null;
  strategy: string;
  status: string;
  approved_by: string | null;
  approved_at: number | string | null;
  created_at: number | string;
}

type Tables = {
  rotations: LegacyRotation & { new_card_id: string | null; added: string; dropped: string; error: string | null };
  rotation_approvals: { rotation_id: string; operator: string; binding_hash: string; approved_at: number };
  key_pairs: { id: string; card_id: string | null; slot: string | null; status: string; created_at: number | string };
};

export function rotationFourEyes(_engine: Engine): Migration {
  const notNull = (c: ColumnDefinitionBuilder) => c.notNull();
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      const t = db.withTables<Tables>() as unknown as Kysely<Tables>;

      // ---- one active key pair per card and slot -----------------------------------------------------------
      const active = await t.selectFrom("key_pairs").select(["id", "card_id", "slot", "created_at"]).where("status", "=", "active").where("card_id", "is not", null).where("slot", "is not", null).execute();
      const newest = new Map<string, { id: string; at: number }>();
      const older: string[] = [];
      for (const k of active) {
        const key = `${k.card_id}\u0000${k.slot}`;
        const cur = newest.get(key);
        const at = Number(k.created_at);
        if (!cur) newest.set(key, { id: k.id, at });
        else if (at > cur.at || (at === cur.at && k.id > cur.id)) {
          older.push(cur.id);
          newest.set(key, { id: k.id, at });
        } else older.push(k.id);
      }
      for (let i = 0; i < older.length; i += 500) await t.updateTable("key_pairs").set({ status: "superseded" }).where("id", "in", older.slice(i, i + 500)).execute();
      await db.schema.createIndex("key_pairs_active_slot").unique().on("key_pairs").columns(["card_id", "slot"]).where(sql.ref("status"), "=", "active").execute();

      await db.schema
        .createTable("credential_slot_claims")
        .addColumn("card_id", "text", (c) => c.notNull().references("cards.id"))
        .addColumn("slot", "text", notNull)
        .addColumn("claim_id", "text", notNull)
        .addColumn("claimed_at", "bigint", notNull)
        .addPrimaryKeyConstraint("credential_slot_claims_pk", ["card_id", "slot"])
        .execute();

      // ---- rotations: the binding, the approvals needed, the distribution claim ----------------------------
      await db.schema.alterTable("rotations").addColumn("proposed_by", "text").execute();
      await db.schema.alterTable("rotations").addColumn("new_card_id", "text").execute();
      await db.schema.alterTable("rotations").addColumn("added", "text", (c) => c.notNull().defaultTo("[]")).execute();
      await db.schema.alterTable("rotations").addColumn("dropped", "text", (c) => c.notNull().defaultTo("[]")).execute();
      await db.schema.alterTable("rotations").addColumn("approvals_required", "integer", (c) => c.notNull().defaultTo(1).check(sql`approvals_required between 1 and 16`)).execute();
      await db.schema
        .alterTable("rotations")
        .addColumn("distribution", "text", (c) => c.notNull().defaultTo("none").check(sql`distribution in ('none', 'distributing', 'distributed')`))
        .execute();
      await db.schema.alterTable("rotations").addColumn("distributed_at", "bigint").execute();

      await db.schema
        .createTable("rotation_approvals")
        .addColumn("rotation_id", "text", (c) => c.notNull().references("rotations.id"))
        .addColumn("operator", "text", notNull)
        /** Hex SHA-256 of the binding the operator approved (src/issuer/rotation-records.ts rotationBinding). */
        .addColumn("binding_hash", "text", notNull)
        .addColumn("approved_at", "bigint", notNull)
        .addPrimaryKeyConstraint("rotation_approvals_pk", ["rotation_id", "operator"])
        .execute();

      const rows = await t.selectFrom("rotations").selectAll().orderBy("created_at").orderBy("id").execute();
      const openByKeySet = new Map<string, LegacyRotation>();
      const rank = (s: string) => ["proposed", "approved", "running"].indexOf(s);
      for (const r of rows) {
        const newCardId = r.to_card_id ?? randomBytes(8).toString("hex");
        await t.updateTable("rotations").set({ new_card_id: newCardId }).where("id", "=", r.id).execute();
        if (r.approved_by !== null) {
          const hash = bindingHashV1({ cardId: r.card_id, fromKeySetId: r.from_key_set_id, strategy: r.strategy, newCardId, add: [], drop: [] });
          await t.insertInto("rotation_approvals").values({ rotation_id: r.id, operator: r.approved_by, binding_hash: hash, approved_at: Number(r.approved_at ?? r.created_at) }).execute();
        }
        if (rank(r.status) < 0) continue;
        const kept = openByKeySet.get(r.from_key_set_id);
        if (!kept) openByKeySet.set(r.from_key_set_id, r);
        else {
          const [keep, drop] = rank(r.status) > rank(kept.status) ? [r, kept] : [kept, r];
          openByKeySet.set(r.from_key_set_id, keep);
          await t.updateTable("rotations").set({ status: "failed", error: "another open rotation of the same key set (migration 0012)" }).where("id", "=", drop.id).execute();
        }
      }
      await db.schema.createIndex("rotations_new_card").unique().on("rotations").column("new_card_id").execute();
      await db.schema.createIndex("rotations_open_key_set").unique().on("rotations").column("from_key_set_id").where(sql.raw<boolean>(OPEN)).execute();
      // a delivery to a card looks up the rotations it is the new card of
      await db.schema.createIndex("rotations_to_card").on("rotations").column("to_card_id").execute();

      await db.schema
        .createTable("rotation_items")
        .addColumn("rotation_id", "text", (c) => c.notNull().references("rotations.id"))
        .addColumn("slot", "text", notNull)
        .addColumn("kind", "text", (c) => c.notNull().check(sql`kind in ('carried', 'added')`))
        .addColumn("path", "text", (c) => c.notNull().check(sql`path in ('package', 'terminal')`))
        .addColumn("key_pair_id", "text", (c) => c.references("key_pairs.id"))
        .addColumn("algorithm", "text", notNull)
        .addColumn("profile", "text")
        .addColumn("state", "text", (c) => c.notNull().check(sql`state in ('pending', 'packaged', 'delivered', 'acknowledged', 'dropped')`))
        .addColumn("package_card_id", "text", (c) => c.references("cards.id"))
        .addColumn("package_seq", "bigint")
        .addColumn("updated_at", "bigint", notNull)
        .addPrimaryKeyConstraint("rotation_items_pk", ["rotation_id", "slot"])
        .addCheckConstraint("rotation_items_package", sql`(package_seq is null) = (package_card_id is null)`)
        .execute();
      await db.schema.createIndex("rotation_items_package").unique().on("rotation_items").columns(["package_card_id", "package_seq"]).execute();
    },

    async down(db: Kysely<unknown>): Promise<void> {
      await db.schema.dropTable("rotation_items").execute();
      await db.schema.dropTable("rotation_approvals").execute();
      await db.schema.dropIndex("rotations_to_card").execute();
      await db.schema.dropIndex("rotations_open_key_set").execute();
      await db.schema.dropIndex("rotations_new_card").execute();
      for (const c of ["distributed_at", "distribution", "approvals_required", "dropped", "added", "new_card_id", "proposed_by"]) await db.schema.alterTable("rotations").dropColumn(c).execute();
      await db.schema.dropTable("credential_slot_claims").execute();
      await db.schema.dropIndex("key_pairs_active_slot").execute();
    },
  };
}

/** The binding hash of src/issuer/rotation-records.ts, version 1, for the approvals recorded before this migration. */
function bindingHashV1(b: { cardId: string; fromKeySetId: string; strategy: string; newCardId: string; add: unknown[]; drop: string[] }): string {
  const canonical = JSON.stringify(["cardkms/rotation-binding/v1", b.cardId, b.fromKeySetId, b.strategy, b.newCardId, b.add, b.drop]);
  return createHash("sha256").update(canonical).digest("hex");
}
