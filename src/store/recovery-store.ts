// The recovery service's storage (src/recovery/ports.ts: RecoveryStore) on the system DB: the recovery records
// (SqlRecoveryRepository, recovery-repository.ts), units of work on one Kysely transaction, the hash-chained audit log
// (audit.ts appendAudit, on the same transaction as the records it audits), row ids (ids.ts), and the issuer's card
// records as a reproduction reads them and reports a destroyed card (store.ts, through the issuer's own card
// lifecycle, src/issuer/card-lifecycle.ts, so the issuer audits and notifies it as any other transition).
// recoveryStoreOf(db) is what the wiring (src/server/main.ts, tests) hands to RecoveryService.open.
//
// Never: decides anything about recovery (src/recovery/ does); holds no secret.

import type { Transaction } from "kysely";
import { changeCardState } from "../issuer/card-lifecycle.ts";
import type { AuditRecord, RecoveryStore, RecoveryTx } from "../recovery/ports.ts";
import type { CardRecordStatus } from "../recovery/records.ts";
import { appendAudit } from "./audit.ts";
import type { Database, Db } from "./db.ts";
import { newId } from "./ids.ts";
import { SqlRecoveryRepository } from "./recovery-repository.ts";
import { Store } from "./store.ts";

export class SqlRecoveryStore implements RecoveryStore {
  readonly repo: SqlRecoveryRepository;

  /** @param db the system DB migrated to the latest schema */
  constructor(private readonly db: Db) {
    this.repo = new SqlRecoveryRepository(db);
  }

  transaction<T>(fn: (tx: RecoveryTx) => Promise<T>): Promise<T> {
    return this.repo.transaction((repo, trx) => fn(sqlRecoveryTx(repo, trx)));
  }

  async audit(entry: AuditRecord): Promise<void> {
    await appendAudit(this.db, entry);
  }

  newId(now?: number): string {
    return newId(now);
  }

  async cardStatus(cardId: string): Promise<CardRecordStatus | undefined> {
    return (await new Store(this.db).getCard(cardId))?.status;
  }
}

/** The unit of work on `trx`: `repo` is bound to it, audit entries are appended in it. */
function sqlRecoveryTx(repo: SqlRecoveryRepository, trx: Transaction<Database>): RecoveryTx {
  return {
    repo,
    audit: async (entry) => {
      await appendAudit(trx, entry);
    },
    newId: (now) => newId(now),
    holdCardStatus: async (cardId) => (await new Store(trx).getCard(cardId, { hold: true }))?.status,
    reportCardDestroyed: async (cardId, o) => {
      const { from } = await changeCardState(new Store(trx, { now: () => o.at }), { cardId, transition: "report-destroyed", actor: o.actor, by: "operator", reason: o.reason, details: o.details });
      return { from };
    },
  };
}

/** The recovery service's storage on the system DB `db` (migrated to the latest schema). */
export function recoveryStoreOf(db: Db): RecoveryStore {
  return new SqlRecoveryStore(db);
}
