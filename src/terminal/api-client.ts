// A typed client of the issuer's HTTP API (issue 3 §1, §5, §6) over the global fetch: what the CLI and the user
// terminal use to reach the issuing service. Bearer-token authentication, a timeout on every request, and one
// error type for every refusal: the server's RFC 9457 problem details become an ApiError.
//
// Bytes cross the API as hex (APDUs and responses) or base64 (packages); the conversions live here so callers
// handle Uint8Array only. This module never logs: tokens and APDUs (which can carry PINs) stay out of output.

import type { KeyAlg } from "../card/state.ts";
import type { AuditPageJson, AuditVerifyJson } from "../issuer/wire-audit.ts";
import type { CardAuthenticationJson, CardDetailJson, IssuedCardJson, IssuedCredentialJson, PackagesJson, RevokedCertificateJson, UserJson } from "../issuer/wire.ts";

/** An RFC 9457 problem the server answered with, or a transport failure (status 0). */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly type: string,
    readonly title: string,
    readonly detail?: string,
    readonly errors?: { pointer: string; detail: string }[],
  ) {
    super(detail ? `${title}: ${detail}` : title);
    this.name = "ApiError";
  }
}

export const hexOf = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("hex");
export const base64Of = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("base64");

/** Strict hex (even length, hex digits only); `what` names the field in the error. */
export function fromHex(s: string, what = "hex"): Uint8Array {
  if (typeof s !== "string" || s.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(s)) throw new ApiError(0, "client:bad-response", "Malformed server response", `${what} is not hex`);
  return new Uint8Array(Buffer.from(s, "hex"));
}

/** Strict base64 (standard alphabet, padded or not). */
export function fromBase64(s: string, what = "base64"): Uint8Array {
  if (typeof s !== "string" || !/^[A-Za-z0-9+/]*={0,2}$/.test(s)) throw new ApiError(0, "client:bad-response", "Malformed server response", `${what} is not base64`);
  return new Uint8Array(Buffer.from(s, "base64"));
}

/** A registered user, a card with its key sets and key pairs (issuer/wire.ts). */
export type User = UserJson;
export type Card = CardDetailJson;

/** A relay session the server drives (personalisation, online delivery, card authentication): the first APDUs. */
export interface RelayStart {
  sessionId: string;
  apdus: Uint8Array[];
}

export interface RelayCardResult {
  sw: number;
  data: Uint8Array;
}

export type RelayStep = { apdus: Uint8Array[] } | { done: true; results: RelayCardResult[] };

/** A new key pair and certificate (issuer/wire.ts): the certificate as PEM. */
export type IssuedCredential = IssuedCredentialJson;

export interface CardAuthentication {
  token: string;
  expiresAt: string | number;
  /** EXTERNAL AUTHENTICATE (and whatever follows): relay them to the card to complete mutual authentication. */
  apdus: Uint8Array[];
}

export interface FetchedPackage {
  seq: number;
  body: Uint8Array;
}

export interface ApiClientOptions {
  /** Base URL of the issuer, e.g. http://127.0.0.1:8443 (a trailing / is fine). */
  server: string;
  /** Bearer token: an operator's API token or a card-bound terminal token. */
  token?: string;
  /** Per-request timeout (default 30 s). */
  timeoutMs?: number;
}

const PROBLEM_CLIENT = "client:";

export class IssuerApiClient {
  readonly server: string;
  private readonly token: string | undefined;
  private readonly timeoutMs: number;

  constructor(o: ApiClientOptions) {
    let u: URL;
    try {
      u = new URL(o.server);
    } catch {
      throw new ApiError(0, `${PROBLEM_CLIENT}bad-url`, "Bad server URL", `not a URL: ${o.server}`);
    }
    if (u.protocol !== "http:" && u.protocol !== "https:") throw new ApiError(0, `${PROBLEM_CLIENT}bad-url`, "Bad server URL", "the server URL must be http:// or https://");
    this.server = u.href.replace(/\/+$/, "");
    this.token = o.token;
    this.timeoutMs = o.timeoutMs ?? 30_000;
    if (!Number.isInteger(this.timeoutMs) || this.timeoutMs < 1) throw new RangeError("timeoutMs must be a positive integer");
  }

  /** The same server with another bearer token (e.g. the card-bound token a terminal obtained). */
  withToken(token: string | undefined): IssuerApiClient {
    return new IssuerApiClient({ server: this.server, token, timeoutMs: this.timeoutMs });
  }

  get hasToken(): boolean {
    return this.token !== undefined;
  }

  /** One request; a non-2xx answer throws ApiError built from the problem details. */
  async request<T>(method: "GET" | "POST" | "PUT" | "DELETE", path: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = { accept: "application/json, application/problem+json" };
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    if (body !== undefined) headers["content-type"] = "application/json";
    let res: Response;
    try {
      res = await fetch(this.server + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal: AbortSignal.timeout(this.timeoutMs) });
    } catch (e) {
      const err = e as Error;
      if (err.name === "TimeoutError") throw new ApiError(0, `${PROBLEM_CLIENT}timeout`, "Request timed out", `${method} ${path}: no answer within ${this.timeoutMs} ms`);
      const cause = (err.cause as Error | undefined)?.message ?? err.message;
      throw new ApiError(0, `${PROBLEM_CLIENT}unreachable`, "Server unreachable", `${method} ${this.server}${path}: ${cause}`);
    }
    const text = await res.text();
    const type = res.headers.get("content-type") ?? "";
    let json: unknown;
    if (/json/i.test(type) && text) {
      try {
        json = JSON.parse(text);
      } catch {
        throw new ApiError(res.status, `${PROBLEM_CLIENT}bad-response`, "Malformed server response", `${method} ${path}: invalid JSON`);
      }
    }
    if (!res.ok) {
      const p = (json ?? {}) as { type?: unknown; title?: unknown; detail?: unknown; errors?: unknown };
      throw new ApiError(
        res.status,
        typeof p.type === "string" ? p.type : "about:blank",
        typeof p.title === "string" ? p.title : `HTTP ${res.status} ${res.statusText}`,
        typeof p.detail === "string" ? p.detail : undefined,
        Array.isArray(p.errors) ? (p.errors as { pointer: string; detail: string }[]) : undefined,
      );
    }
    if (json === undefined && text) throw new ApiError(res.status, `${PROBLEM_CLIENT}bad-response`, "Malformed server response", `${method} ${path}: expected JSON, got ${type || "no content type"}`);
    return json as T;
  }

  /** Fetches a non-JSON resource (the CRL). */
  async raw(path: string): Promise<{ contentType: string; body: Uint8Array }> {
    let res: Response;
    try {
      res = await fetch(this.server + path, { headers: this.token ? { authorization: `Bearer ${this.token}` } : {}, signal: AbortSignal.timeout(this.timeoutMs) });
    } catch (e) {
      throw new ApiError(0, `${PROBLEM_CLIENT}unreachable`, "Server unreachable", `GET ${this.server}${path}: ${(e as Error).message}`);
    }
    const body = new Uint8Array(await res.arrayBuffer());
    if (!res.ok) {
      let p: { type?: string; title?: string; detail?: string } = {};
      try {
        p = JSON.parse(Buffer.from(body).toString("utf8")) as typeof p;
      } catch {
        // not a problem document
      }
      throw new ApiError(res.status, p.type ?? "about:blank", p.title ?? `HTTP ${res.status}`, p.detail);
    }
    return { contentType: res.headers.get("content-type") ?? "", body };
  }

  // --- users and cards (ST11-ST15) ----------------------------------------------------------------------------

  registerUser(personalData: Record<string, unknown>): Promise<User> {
    return this.request("POST", "/v1/users", { personalData });
  }

  createCard(input: { userId: string; cardId?: string }): Promise<IssuedCardJson> {
    return this.request("POST", "/v1/cards", input.cardId ? { userId: input.userId, cardId: input.cardId } : { userId: input.userId });
  }

  getCard(cardId: string): Promise<Card> {
    return this.request("GET", `/v1/cards/${seg(cardId)}`);
  }

  async startPersonalisation(cardId: string): Promise<RelayStart> {
    return relayStart(await this.request("POST", `/v1/cards/${seg(cardId)}/personalisation`, {}));
  }

  // --- relay sessions --------------------------------------------------------------------------------------------

  /** Sends the card's responses to the last round; the next round, or the script's results when done. */
  async relayStep(sessionId: string, responses: Uint8Array[]): Promise<RelayStep> {
    const r = await this.request<{ apdus?: string[]; done?: boolean; results?: { sw: number | string; data?: string }[] }>("POST", `/v1/relay/${seg(sessionId)}`, {
      responses: responses.map(hexOf),
    });
    if (r.done) return { done: true, results: (r.results ?? []).map((x, i) => ({ sw: swOf(x.sw, `results[${i}].sw`), data: fromHex(x.data ?? "", `results[${i}].data`) })) };
    return { apdus: apdusOf(r.apdus) };
  }

  // --- credentials (ST16-ST25, claims 4 and 7) -------------------------------------------------------------------

  requestCredential(cardId: string, input: { slot: string; alg: KeyAlg; profile?: string; replace?: boolean }): Promise<IssuedCredential> {
    const body: Record<string, unknown> = { slot: input.slot, alg: input.alg };
    if (input.profile !== undefined) body.profile = input.profile;
    if (input.replace !== undefined) body.replace = input.replace;
    return this.request("POST", `/v1/cards/${seg(cardId)}/credentials`, body);
  }

  async startOnlineDelivery(cardId: string, keyPairId: string): Promise<RelayStart> {
    return relayStart(await this.request("POST", `/v1/cards/${seg(cardId)}/credentials/${seg(keyPairId)}/online`, {}));
  }

  revokeCertificate(serial: string, reason: string): Promise<RevokedCertificateJson> {
    return this.request("POST", `/v1/certificates/${seg(serial)}/revoke`, { reason });
  }

  crl(): Promise<{ contentType: string; body: Uint8Array }> {
    return this.raw("/v1/crl");
  }

  audit(): Promise<AuditPageJson> {
    return this.request("GET", "/v1/audit");
  }

  verifyAudit(): Promise<AuditVerifyJson> {
    return this.request("GET", "/v1/audit/verify");
  }

  // --- the user terminal's card-bound routes (§6, §8) ------------------------------------------------------------

  /** Starts card authentication: the server's SELECT, INITIALIZE UPDATE and state counter report (GET DATA DF23) for the card. */
  async startCardAuth(cardId: string): Promise<RelayStart> {
    return relayStart(await this.request("POST", `/v1/cards/${seg(cardId)}/auth`, {}));
  }

  /**
   * Hands the card's answers back; the server checks the card cryptogram and the card's state counter and issues a
   * token bound to the card. A card whose state went back (an older copy of its image) is refused: 409, check
   * card_rollback (src/protocol/state-counter.ts).
   */
  async finishCardAuth(cardId: string, sessionId: string, responses: Uint8Array[]): Promise<CardAuthentication> {
    const r = await this.request<CardAuthenticationJson>("POST", `/v1/cards/${seg(cardId)}/auth/${seg(sessionId)}`, {
      responses: responses.map(hexOf),
    });
    if (typeof r.token !== "string" || !r.token) throw new ApiError(0, `${PROBLEM_CLIENT}bad-response`, "Malformed server response", "no token in the card authentication answer");
    return { token: r.token, expiresAt: r.expiresAt, apdus: apdusOf(r.apdus ?? []) };
  }

  /** Packages for the card newer than `after`, oldest first. */
  async packages(cardId: string, after = 0): Promise<FetchedPackage[]> {
    const r = await this.request<PackagesJson>("GET", `/v1/cards/${seg(cardId)}/packages?after=${after}`);
    if (!Array.isArray(r?.packages)) throw new ApiError(0, `${PROBLEM_CLIENT}bad-response`, "Malformed server response", "no packages array");
    return r.packages.map((p, i) => {
      if (!Number.isSafeInteger(p.seq) || p.seq < 1) throw new ApiError(0, `${PROBLEM_CLIENT}bad-response`, "Malformed server response", `packages[${i}].seq`);
      return { seq: p.seq, body: fromBase64(p.body, `packages[${i}].body`) };
    });
  }

  async acknowledgePackage(cardId: string, seq: number): Promise<void> {
    await this.request("POST", `/v1/cards/${seg(cardId)}/packages/${seq}/ack`, {});
  }
}

/** A path segment: IDs are checked here so a caller's string can never change the route. */
function seg(id: string): string {
  if (typeof id !== "string" || !/^[A-Za-z0-9_.:-]{1,128}$/.test(id)) throw new ApiError(0, `${PROBLEM_CLIENT}bad-argument`, "Bad identifier", `not an ID: ${JSON.stringify(id)}`);
  return encodeURIComponent(id);
}

function apdusOf(a: unknown): Uint8Array[] {
  if (!Array.isArray(a)) throw new ApiError(0, `${PROBLEM_CLIENT}bad-response`, "Malformed server response", "no apdus array");
  return a.map((x, i) => fromHex(x as string, `apdus[${i}]`));
}

function relayStart(r: { sessionId?: unknown; apdus?: unknown }): RelayStart {
  if (typeof r.sessionId !== "string") throw new ApiError(0, `${PROBLEM_CLIENT}bad-response`, "Malformed server response", "no sessionId");
  return { sessionId: r.sessionId, apdus: apdusOf(r.apdus) };
}

function swOf(sw: number | string, what: string): number {
  const n = typeof sw === "number" ? sw : /^[0-9a-fA-F]{4}$/.test(sw) ? parseInt(sw, 16) : NaN;
  if (!Number.isInteger(n) || n < 0 || n > 0xffff) throw new ApiError(0, `${PROBLEM_CLIENT}bad-response`, "Malformed server response", `${what} is not a status word`);
  return n;
}
