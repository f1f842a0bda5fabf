// Operators of the issuer's store: the people and tools that act on the API, by name, with their roles and the hashes
// of their password and/or API token; disabled, never deleted. Store (store.ts) delegates to it; one code path for
// SQLite and PostgreSQL.
//
// Never: a password or a token, only their hashes (the caller hashes).

import { sql, type Selectable, type Transaction } from "kysely";
import type { Database } from "./db.ts";
import { newId } from "./ids.ts";
import type { Operator } from "../issuer/operators.ts";
import { insertOrConflict, StoreError, StoreRepository } from "./repository.ts";

export type { Operator } from "../issuer/operators.ts";

export class OperatorRepository extends StoreRepository<OperatorRepository> {
  protected override bind(trx: Transaction<Database>): OperatorRepository {
    return new OperatorRepository(trx, this.clock);
  }

  /** Stores an operator with HASHES of its password and/or API token (the caller hashes; never the secret). */
  async createOperator(input: { id?: string; name: string; passwordHash?: string | null; tokenHash?: string | null; roles: string[] }): Promise<Operator> {
    if (!input.passwordHash && !input.tokenHash) throw new StoreError("invalid", `operator ${input.name}: needs a password hash or a token hash`);
    const row = {
      id: input.id ?? newId(),
      name: input.name,
      password_hash: input.passwordHash ?? null,
      token_hash: input.tokenHash ?? null,
      roles: JSON.stringify(input.roles),
      created_at: this.now(),
      disabled_at: null,
    };
    await insertOrConflict(this.db.insertInto("operators").values(row).execute(), `operator ${input.name} exists`);
    return toOperator(row);
  }

  async getOperatorByName(name: string): Promise<Operator | undefined> {
    const row = await this.db.selectFrom("operators").selectAll().where("name", "=", name).where("disabled_at", "is", null).executeTakeFirst();
    return row && toOperator(row);
  }

  async getOperatorByTokenHash(tokenHash: string): Promise<Operator | undefined> {
    const row = await this.db.selectFrom("operators").selectAll().where("token_hash", "=", tokenHash).where("disabled_at", "is", null).executeTakeFirst();
    return row && toOperator(row);
  }

  /** The enabled operators whose names start with `prefix`, compared exactly (no LIKE: `_` and `%` are plain characters in a name). */
  async enabledOperatorsNamed(prefix: string): Promise<Operator[]> {
    const rows = await this.db
      .selectFrom("operators")
      .selectAll()
      .where("disabled_at", "is", null)
      .where(sql<string>`substr(name, 1, ${sql.lit(prefix.length)})`, "=", prefix)
      .execute();
    return rows.map(toOperator);
  }

  async disableOperator(id: string): Promise<void> {
    await this.db.updateTable("operators").set({ disabled_at: this.now() }).where("id", "=", id).execute();
  }
}

function toOperator(r: Selectable<Database["operators"]>): Operator {
  return {
    id: r.id,
    name: r.name,
    passwordHash: r.password_hash,
    tokenHash: r.token_hash,
    roles: JSON.parse(r.roles) as string[],
    createdAt: r.created_at,
    disabledAt: r.disabled_at,
  };
}
