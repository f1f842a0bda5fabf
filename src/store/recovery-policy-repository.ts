// The per-card reproduction policies (issue 4) in SQL, one code path for SQLite and PostgreSQL (tables:
// recovery-tables.ts): the policy a card's escrow will be made under, stored as the canonical JSON the recovery
// module validated, and found by the parties they name. SqlRecoveryRepository (recovery-repository.ts) delegates to
// it.
//
// Never: interprets a policy (src/recovery/policy.ts does); the text is stored and returned as handed in.

import { sql, type Kysely, type Transaction } from "kysely";
import type { Database, Db } from "./db.ts";
import { recoveryTables, type RecoveryTables } from "./recovery-tables.ts";
import type { PolicyRecord } from "../recovery/records.ts";

export type { PolicyRecord };

export class RecoveryPolicyRepository {
  private readonly db: Kysely<RecoveryTables>;

  /** @param db the system DB migrated so that 0003_recovery exists, or a transaction of it */
  constructor(db: Db | Kysely<unknown> | Transaction<Database>) {
    this.db = recoveryTables(db);
  }

  // --- policies ---------------------------------------------------------------------------------------------------

  /** Sets (or replaces) a card's policy. */
  async putPolicy(p: PolicyRecord): Promise<void> {
    const row = { card_id: p.cardId, policy: p.policy, policy_digest: p.policyDigest, set_by: p.setBy, set_at: p.setAt };
    await this.db
      .insertInto("recovery_policies")
      .values(row)
      .onConflict((oc) => oc.column("card_id").doUpdateSet({ policy: row.policy, policy_digest: row.policy_digest, set_by: row.set_by, set_at: row.set_at }))
      .execute();
  }

  /**
   * Policies whose text names `text` as a JSON string (a prefilter: the caller parses and checks them), by card id,
   * after the card id `after`, at most `limit`; with the card's escrow id when its key is escrowed.
   */
  async policiesMentioning(text: string, page: { after?: string; limit: number }): Promise<(PolicyRecord & { escrowId?: string; escrowPolicy?: string })[]> {
    const pattern = `%${JSON.stringify(text).replace(/[\\%_]/g, (c) => `\\${c}`)}%`;
    let q = this.db
      .selectFrom("recovery_policies as p")
      .leftJoin("recovery_escrows as e", "e.card_id", "p.card_id")
      .select(["p.card_id", "p.policy", "p.policy_digest", "p.set_by", "p.set_at", "e.escrow_id", "e.policy as escrow_policy"])
      .where((eb) => eb.or([sql<boolean>`p.policy like ${pattern} escape '\\'`, sql<boolean>`e.policy like ${pattern} escape '\\'`]));
    if (page.after !== undefined) q = q.where("p.card_id", ">", page.after);
    const rows = await q.orderBy("p.card_id").limit(page.limit).execute();
    return rows.map((r) => ({
      cardId: r.card_id,
      policy: r.policy,
      policyDigest: r.policy_digest,
      setBy: r.set_by,
      setAt: Number(r.set_at),
      ...(r.escrow_id !== null ? { escrowId: r.escrow_id } : {}),
      ...(r.escrow_policy !== null ? { escrowPolicy: r.escrow_policy } : {}),
    }));
  }

  async policy(cardId: string): Promise<PolicyRecord | undefined> {
    const r = await this.db.selectFrom("recovery_policies").selectAll().where("card_id", "=", cardId).executeTakeFirst();
    return r && { cardId: r.card_id, policy: r.policy, policyDigest: r.policy_digest, setBy: r.set_by, setAt: Number(r.set_at) };
  }
}
