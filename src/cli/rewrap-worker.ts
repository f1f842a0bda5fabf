// A bulk re-wrap (src/issuer/rewrap.ts) as its own process, for the crash test (issue 3, Reliability: SIGKILL at
// random points, restart, until the rotation completes) and for operators who run a rotation's re-wrap apart from
// the server:
//
//   node dist/cli/rewrap-worker.js <db url> <keystore path | pkcs11> <rotation id> [--complete]
//
// Custody from the environment as the server takes it (custody/index.ts: CARDKMS_KEYSTORE_KEY or _FILE for the
// software keystore; CARDKMS_PKCS11_* for an HSM). CARDKMS_REWRAP_PAGE sets the page size (default 2,000).
// Prints one JSON line per committed page ({done, total, cursor}); exits 0 when no page is left (and, with
// --complete, after marking the rotation completed: a re-wrap-only job — refused while the rotation still owes its
// new card keys, Store.completeRotation), 1 on error.
//
// Issue 16 §2: it runs the rotation's "rotation.rewrap" job of the job table under a lease, as the servers' job
// runners do (src/issuer/rewrap-job.ts rewrapUnderLease), so a worker and the servers never re-wrap one rotation at
// once: refused (exit 1) while another runner holds the job's lease. CARDKMS_INSTANCE_ID names this worker as a
// lease owner (default a random UUID): a worker restarted with the same id resumes its own lease at once.
// CARDKMS_JOB_LEASE_MS sets the lease (default 30,000).

import { custodyConfigFromEnv, openCustody, type CustodyConfig } from "../custody/index.ts";
import { custodyOnStore } from "../store/custody-keystore.ts";
import { Store } from "../store/store.ts";
import { randomUUID } from "node:crypto";
import { rewrapUnderLease } from "../issuer/rewrap-job.ts";
import { jobStoreOf } from "../store/job-repository.ts";
import type { Db } from "../store/db.ts";

async function main(argv: string[]): Promise<void> {
  const [url, keystore, rotationId] = argv;
  if (!url || !keystore || !rotationId) throw new Error("usage: rewrap-worker <db url> <keystore path | pkcs11> <rotation id> [--complete]");
  const env = custodyConfigFromEnv();
  const config: CustodyConfig = keystore === "pkcs11" ? { kind: "pkcs11", env: process.env } : { ...env, kind: "software", path: keystore };
  const pageSize = Number(process.env.CARDKMS_REWRAP_PAGE ?? 1000);
  const store = await Store.open(url);
  const custody = await openCustody(custodyOnStore(config, store.db));
  try {
    let { rotation: rot } = await rewrapUnderLease({
      jobs: jobStoreOf(store.db as Db, { now: () => store.now() }),
      store,
      custody,
      rotationId,
      actor: "rewrap-worker",
      owner: process.env.CARDKMS_INSTANCE_ID || randomUUID(),
      leaseMs: Number(process.env.CARDKMS_JOB_LEASE_MS ?? 30_000),
      pageSize,
      onProgress: (p) => process.stdout.write(`${JSON.stringify({ done: p.done, total: p.total, cursor: p.cursor })}\n`),
    });
    if (argv.includes("--complete") && rot.status === "running") rot = await store.completeRotation(rotationId);
    process.stdout.write(`${JSON.stringify({ status: rot.status, done: rot.done, total: rot.total, cursor: rot.cursor })}\n`);
  } finally {
    await custody.close();
    await store.close();
  }
}

main(process.argv.slice(2)).catch((e: unknown) => {
  process.stderr.write(`rewrap-worker: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
