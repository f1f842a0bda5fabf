// The terminal's side of a live relay (src/server/live-relay.ts): an operation running in the server — a key
// reproduction (seed 001 S8-S9), an issue by the key generation device (steps 434, S3) — talks to the card at this
// terminal one APDU per round trip. The terminal forwards each APDU it is given to the card (gathering 61xx with
// GET RESPONSE, as a terminal does) and posts the card's response, until the server answers with the result; a
// refusal arrives as the server's ApiError (problem+json naming the check).
//
// The terminal sees only APDUs: whatever must stay secret from it travels under the card's secure channel.

import { transmitFollowing } from "../protocol/apdu-client.ts";
import { ApiError, fromHex, hexOf, type IssuerApiClient } from "./api-client.ts";

export type LiveStep<T> = { sessionId: string; result: T } | { sessionId: string; apdus: Uint8Array[] };

export class LiveRelayClientError extends Error {
  override readonly name = "LiveRelayClientError";
}

/** A live relay round as the server answers it ({sessionId?, apdus} or {sessionId?, result}), checked. */
export function liveStepOf<T>(r: { sessionId?: unknown; apdus?: unknown; result?: unknown }, sessionId?: string): LiveStep<T> {
  const id = typeof r.sessionId === "string" ? r.sessionId : sessionId;
  if (typeof id !== "string") throw new ApiError(0, "client:bad-response", "Malformed server response", "no sessionId");
  if (r.result && typeof r.result === "object") return { sessionId: id, result: r.result as T };
  if (!Array.isArray(r.apdus)) throw new ApiError(0, "client:bad-response", "Malformed server response", "neither apdus nor result");
  return { sessionId: id, apdus: r.apdus.map((a, i) => fromHex(a as string, `apdus[${i}]`)) };
}

/**
 * Runs a live relay to its end: `start` posts the operation and returns its first step; each APDU then goes to the
 * card and its response to `<sessionsPath>/<sessionId>`, at most `maxRounds` times (default 512).
 */
export async function runLiveRelay<T>(
  api: IssuerApiClient,
  start: () => Promise<LiveStep<T>>,
  sessionsPath: string,
  transmit: (apdu: Uint8Array) => Promise<Uint8Array> | Uint8Array,
  o: { maxRounds?: number; what?: string } = {},
): Promise<T> {
  let step = await start();
  const max = o.maxRounds ?? 512;
  for (let round = 0; round < max && !("result" in step); round++) {
    const responses: Uint8Array[] = [];
    for (const a of step.apdus) responses.push(await transmitFollowing(transmit, a));
    step = await liveStep<T>(api, sessionsPath, step.sessionId, responses);
  }
  if ("result" in step) return step.result;
  throw new LiveRelayClientError(`${o.what ?? "live relay"} session ${step.sessionId} did not finish in ${max} rounds`);
}

/** One round: the card's responses to the session's APDU(s); the next step. */
export async function liveStep<T>(api: IssuerApiClient, sessionsPath: string, sessionId: string, responses: Uint8Array[]): Promise<LiveStep<T>> {
  if (!/^[0-9a-f]{32}$/.test(sessionId)) throw new ApiError(0, "client:bad-argument", "Bad identifier", "not a session ID");
  return liveStepOf<T>(await api.request<object>("POST", `${sessionsPath}/${sessionId}`, { responses: responses.map(hexOf) }), sessionId);
}
