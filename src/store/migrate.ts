// Schema migrations for both engines. The migration list is static (imported, not globbed from a folder), so a
// bundled or compiled server migrates the same way as the sources, and each migration is told which engine it
// writes DDL for.

import { Migrator, type Kysely, type Migration, type MigrationResultSet } from "kysely";
import { engineOf, type Db, type Engine } from "./db.ts";
import { systemDb } from "./migrations/0001_system_db.ts";
import { caTables } from "./migrations/0002_ca.ts";
import { recoveryTables } from "./migrations/0003_recovery.ts";
import { backupTables } from "./migrations/0004_backups.ts";
import { webhookDeliveries } from "./migrations/0005_webhook_deliveries.ts";
import { keygenRegistry } from "./migrations/0006_keygen_registry.ts";
import { recoveryLifecycle } from "./migrations/0007_recovery_lifecycle.ts";
import { cardStateCounters } from "./migrations/0008_card_state_counters.ts";
import { canonicalKeyHashes } from "./migrations/0009_canonical_key_hashes.ts";
import { recoveryDeviceCardRecord } from "./migrations/0010_recovery_device_card_record.ts";
import { auditCheckpoints } from "./migrations/0011_audit_checkpoints.ts";
import { rotationFourEyes } from "./migrations/0012_rotation_four_eyes.ts";
import { cardLifecycle } from "./migrations/0013_card_lifecycle.ts";
import { webhookQueue } from "./migrations/0014_webhook_queue.ts";
import { relaySessions } from "./migrations/0015_relay_sessions.ts";
import { jobsTable } from "./migrations/0016_jobs.ts";
import { custodyKeystore } from "./migrations/0017_custody_keystore.ts";
import { serverInstances } from "./migrations/0018_server_instances.ts";

/** Every migration in order; names sort in application order and never change once released. */
export function migrations(engine: Engine): Record<string, Migration> {
  return {
    "0001_system_db": systemDb(engine),
    "0002_ca": caTables(engine),
    "0003_recovery": recoveryTables(engine),
    "0004_backups": backupTables(engine),
    "0005_webhook_deliveries": webhookDeliveries(engine),
    "0006_keygen_registry": keygenRegistry(engine),
    "0007_recovery_lifecycle": recoveryLifecycle(engine),
    "0008_card_state_counters": cardStateCounters(engine),
    "0009_canonical_key_hashes": canonicalKeyHashes(engine),
    "0010_recovery_device_card_record": recoveryDeviceCardRecord(engine),
    "0011_audit_checkpoints": auditCheckpoints(engine),
    "0012_rotation_four_eyes": rotationFourEyes(engine),
    "0013_card_lifecycle": cardLifecycle(engine),
    "0014_webhook_queue": webhookQueue(engine),
    "0015_relay_sessions": relaySessions(engine),
    "0016_jobs": jobsTable(engine),
    "0017_custody_keystore": custodyKeystore(engine),
    "0018_server_instances": serverInstances(engine),
  };
}

export function migratorFor(db: Db | Kysely<unknown>): Migrator {
  const engine = engineOf(db);
  return new Migrator({
    db: db as Kysely<unknown>,
    provider: { getMigrations: async () => migrations(engine) },
    migrationTableName: "cardkms_migrations",
    migrationLockTableName: "cardkms_migrations_lock",
  });
}

/** Applies every pending migration; throws, naming the failed migration, if one fails (it is rolled back). */
export async function migrateToLatest(db: Db): Promise<string[]> {
  const result: MigrationResultSet = await migratorFor(db).migrateToLatest();
  if (result.error) {
    const failed = result.results?.find((r) => r.status === "Error")?.migrationName ?? "(before any migration)";
    const cause = result.error instanceof Error ? result.error : new Error(String(result.error));
    throw new Error(`migration ${failed} failed: ${cause.message}`, { cause });
  }
  return (result.results ?? []).filter((r) => r.status === "Success").map((r) => r.migrationName);
}
