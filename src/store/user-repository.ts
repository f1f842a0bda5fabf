// Users of the issuer's store: the people cards are issued to (seed 000 FIG. 4), with their personal data as JSON
// text. Store (store.ts) delegates to it; one code path for SQLite and PostgreSQL.
//
// Never: a password or an API token (operators are not users: operator-repository.ts).

import type { Selectable, Transaction } from "kysely";
import type { Database } from "./db.ts";
import { newId } from "./ids.ts";
import { insertOrConflict, StoreRepository, type JsonValue } from "./repository.ts";
import type { User } from "../issuer/records.ts";

export class UserRepository extends StoreRepository<UserRepository> {
  protected override bind(trx: Transaction<Database>): UserRepository {
    return new UserRepository(trx, this.clock);
  }

  async createUser(input: { id?: string; personalData: Record<string, JsonValue> }): Promise<User> {
    const row = { id: input.id ?? newId(), personal_data: JSON.stringify(input.personalData), created_at: this.now() };
    await insertOrConflict(this.db.insertInto("users").values(row).execute(), `user ${row.id} exists`);
    return toUser(row);
  }

  async getUser(id: string): Promise<User | undefined> {
    const row = await this.db.selectFrom("users").selectAll().where("id", "=", id).executeTakeFirst();
    return row && toUser(row);
  }
}

export function toUser(r: Selectable<Database["users"]>): User {
  return { id: r.id, personalData: JSON.parse(r.personal_data) as Record<string, JsonValue>, createdAt: r.created_at };
}
