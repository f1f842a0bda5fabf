// A live relay round that lands on a server which does not run the session (issue 16 §3-5): several issuer servers
// share one database behind a load balancer, and a terminal's next round may reach any of them, while the operation
// (key generation, key reproduction) runs as a computation in the one process that opened it (live-relay.ts). This
// server forwards the round to that one — the owner — and relays its answer (status and JSON body) as they are.
//
// What a forward can reach (the trust assumption: the servers reach each other on a private network, and the database
// is trusted as it is for everything else). Only the round routes of live relays forward (POST
// /v1/keygen/sessions/{id}, POST /v1/recovery/sessions/{id}), only to the same route, and only to the advertise URL
// the owner registered in server_instances (cluster.ts) — never to an address taken from the request. The client's
// Authorization header goes along as it came, so the owner authenticates the principal itself (403 for another
// principal, as without forwarding); this server refuses another principal first as well. A forwarded request
// carries x-cardkms-forwarded: 1 and is never forwarded again: a server that does not hold such a session answers 404.
// No redirect is followed. The owner's answer is bounded in time (`timeoutMs`, a hang detector).
//
// When the owner is gone — its heartbeat is stale, its row is gone, or it cannot be reached or does not answer in
// time — the round is answered 410 relay-server-gone (check relay_server_gone) and the session's row is deleted: the
// operation is lost with its process and must be started again. Nothing is written twice: a reproduction holds its
// request under a claim with a lease (src/recovery/reproduction.ts), so a new one takes the request over only once
// the gone one's lease has passed, and a gone one that was only stalled stops at its next renewal (lease_lost).
//
// Never logged here: the body (APDU responses), the Authorization header.

import type { FastifyReply, FastifyRequest } from "fastify";
import { isLive, type LiveRelayRecords, type ServerInstanceRecords } from "./cluster.ts";
import type { LiveRelaySessions } from "./live-relay.ts";
import { ApiProblem } from "./problem.ts";

/** The header that marks a round forwarded by another server (never forwarded again). */
export const FORWARDED_HEADER = "x-cardkms-forwarded";
/** How long the owner may take to answer a forwarded round (its operation may generate an RSA key meanwhile). */
export const DEFAULT_FORWARD_TIMEOUT_MS = 120_000;

export interface LiveRelayForwarderOptions {
  instances: Pick<ServerInstanceRecords, "get">;
  records: LiveRelayRecords;
  /** A server whose last heartbeat is older is gone (cluster.ts STALE_BEATS heartbeats). */
  staleAfterMs: number;
  timeoutMs?: number;
  now?: () => number;
  /** Told when a round was answered relay-server-gone (the owner's instance id, never the body or the token). */
  onGone?: (info: { instanceId: string; reason: string }) => void;
}

const notFound = (sessionId: string) => new ApiProblem(404, "not-found", "live relay session not found", `no open live relay session ${sessionId} (finished, failed or expired)`);

export class LiveRelayForwarder {
  readonly #o: LiveRelayForwarderOptions;
  readonly #now: () => number;

  constructor(o: LiveRelayForwarderOptions) {
    this.#o = o;
    this.#now = o.now ?? Date.now;
  }

  /**
   * Answers a round for `sessionId`, which `lives` (this server's sessions of the route's kind) does not hold: forwards
   * it to the server that does, or refuses (404 none does, 403 another principal's, 410 its server is gone).
   */
  async forward(req: FastifyRequest, reply: FastifyReply, lives: LiveRelaySessions<unknown>, sessionId: string, principal: string): Promise<FastifyReply> {
    if (req.headers[FORWARDED_HEADER] !== undefined) throw notFound(sessionId);
    const now = this.#now();
    const row = await this.#o.records.get(sessionId);
    if (!row || row.kind !== lives.kind || row.expiresAt <= now || row.instanceId === lives.instanceId) throw notFound(sessionId);
    if (row.owner !== principal) throw new ApiProblem(403, "forbidden", "Forbidden", "this live relay session belongs to another principal");
    const owner = await this.#o.instances.get(row.instanceId);
    if (!isLive(owner, now, this.#o.staleAfterMs)) return this.#gone(sessionId, row.instanceId, owner ? "its heartbeat is stale" : "it is not registered");
    // the same route on the owner: the matched route's path with this session's id, never the request's raw URL
    const path = (req.routeOptions.url ?? "").replace(":sessionId", encodeURIComponent(sessionId));
    const authorization = req.headers.authorization;
    let status: number;
    let type: string;
    let text: string;
    try {
      const res = await fetch(owner.advertiseUrl + path, {
        method: "POST",
        headers: { "content-type": "application/json", [FORWARDED_HEADER]: "1", ...(authorization !== undefined ? { authorization } : {}) },
        body: JSON.stringify(req.body),
        redirect: "manual",
        signal: AbortSignal.timeout(this.#o.timeoutMs ?? DEFAULT_FORWARD_TIMEOUT_MS),
      });
      status = res.status;
      type = res.headers.get("content-type") ?? "application/octet-stream";
      text = await res.text();
    } catch (e) {
      const reason = e instanceof Error && (e.name === "TimeoutError" || e.name === "AbortError") ? "it did not answer in time" : "it cannot be reached";
      return this.#gone(sessionId, row.instanceId, reason);
    }
    if (status >= 300 && status < 400) return this.#gone(sessionId, row.instanceId, `it answered a redirect (${status})`);
    let body: unknown = text;
    if (/json/i.test(type) && text !== "")
      try {
        body = JSON.parse(text);
      } catch {
        return this.#gone(sessionId, row.instanceId, "its answer was not the JSON it announced");
      }
    return reply.code(status).type(type).send(body);
  }

  async #gone(sessionId: string, instanceId: string, reason: string): Promise<never> {
    await this.#o.records.delete(sessionId);
    this.#o.onGone?.({ instanceId, reason });
    throw new ApiProblem(410, "relay-server-gone", "Live relay server gone", `the server running this live relay session stopped (${reason}); start the operation again`, {
      check: "relay_server_gone",
    });
  }
}
