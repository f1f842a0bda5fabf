// This process's identity among the issuer servers that share one database (issue 16 §1): a random UUID drawn when the
// process starts, never reused, never derived from anything secret. The server registry (server_instances, cluster.ts)
// and the live relay sessions (live-relay.ts) name their server by it; other parts that lease work in the database
// (jobs, claims) may name their holder by it too, so that a holder whose server stopped heartbeating can be told apart.
//
// One process normally runs one server; a process that runs several (tests) gives each its own (`newInstanceId`).

import { randomUUID } from "node:crypto";

/** A fresh server instance id. */
export const newInstanceId = (): string => randomUUID();

/** The id of this process's server. */
export const instanceId: string = newInstanceId();
