// CaClient over HTTP (seed 000 ST19-ST21: the issuer asks a CA at another site), the other end of
// src/server/ca-routes.ts, with Node's global fetch and the wire shapes of client.ts.
//
// The issuer must not be able to tell this client from LocalCaClient by what it throws: a refusal comes back as
// the same CaRefusal naming the same check (from the problem+json `check` member), and a request the CA's schema
// rejects is a CaRefusal "request", as LocalCaClient's own validation makes it. Everything else — no answer
// within the timeout, a connection failure, a wrong credential, a server error, a malformed answer — is a
// CaTransportError that says which and where. Never: puts the bearer token in an error or a URL.

import { CaRefusal } from "./checks.ts";
import { decodeCertifyResponse, validateCertifyRequest, type CaClient, type CertifyRequest, type CertifyResponseJson, type CertifyResult } from "./client.ts";
import { isRevocationReason, REVOCATION_REASONS, type RevocationReason } from "./crl.ts";
import { fromPemAll } from "./pem.ts";

export interface HttpCaClientOptions {
  /**
   * The CA's `{base}` of client.ts, where its routes live: e.g. "https://ca.example.org/v1/ca" for caRoutes
   * registered with prefix "/v1" (the client appends /certify, /revoke, /crl, /certificates).
   */
  baseUrl: string;
  /** API token for certify and revoke (sent as `Authorization: Bearer …`); the CRL and chain are public. */
  token?: string;
  /** Per request, covering connect, send and the whole answer. Default 10 000 ms. */
  timeoutMs?: number;
  /** Largest answer accepted, bytes. Default 4 MiB (a CRL of some 100 000 entries). */
  maxResponseBytes?: number;
}

/** The CA could not be asked, or its answer was not one the protocol allows. */
export class CaTransportError extends Error {
  constructor(
    message: string,
    /** The HTTP status, when an answer came. */
    readonly status?: number,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "CaTransportError";
  }
}

interface ProblemBody {
  type?: unknown;
  title?: unknown;
  status?: unknown;
  detail?: unknown;
  check?: unknown;
  errors?: { pointer?: unknown; detail?: unknown }[];
}

interface Answer {
  status: number;
  body: Buffer;
  contentType: string;
  /** For a non-2xx answer: ": detail (hint)" to append to an error message; else "". */
  problem: string;
}

const HEX_SERIAL = /^[0-9a-fA-F]{2,40}$/;

export class HttpCaClient implements CaClient {
  private readonly base: string;
  private readonly token?: string;
  private readonly timeoutMs: number;
  private readonly maxBytes: number;

  constructor(o: HttpCaClientOptions) {
    let u: URL;
    try {
      u = new URL(o.baseUrl);
    } catch {
      throw new Error(`HttpCaClient: baseUrl must be an absolute http(s) URL, got ${JSON.stringify(o.baseUrl)}`);
    }
    if (u.protocol !== "http:" && u.protocol !== "https:") throw new Error(`HttpCaClient: baseUrl must be http(s), got ${u.protocol}`);
    if (u.username || u.password || u.search || u.hash) throw new Error("HttpCaClient: baseUrl must carry no credentials, query or fragment (give the token as `token`)");
    this.base = u.toString().replace(/\/+$/, "");
    if (o.token !== undefined && !/^[A-Za-z0-9_\-.~+/=]{8,200}$/.test(o.token)) throw new Error("HttpCaClient: token must be 8-200 characters of A-Z a-z 0-9 _ - . ~ + / =");
    this.token = o.token;
    this.timeoutMs = o.timeoutMs ?? 10_000;
    if (!Number.isInteger(this.timeoutMs) || this.timeoutMs < 1) throw new Error(`HttpCaClient: timeoutMs must be a positive integer, got ${o.timeoutMs}`);
    this.maxBytes = o.maxResponseBytes ?? 4 << 20;
  }

  async certify(request: CertifyRequest): Promise<CertifyResult> {
    // the same refusal LocalCaClient gives, without a round trip
    validateCertifyRequest(request);
    const a = await this.call("POST", "/certify", request, true);
    const { status, body } = a;
    if (status !== 200) throw this.unexpected("certify", a);
    try {
      const j = JSON.parse(body.toString("utf8")) as CertifyResponseJson;
      const r = decodeCertifyResponse(j);
      if (typeof j.serial !== "string" || !HEX_SERIAL.test(j.serial) || Number.isNaN(r.notBefore.getTime()) || Number.isNaN(r.notAfter.getTime())) throw new Error("fields missing or malformed");
      return r;
    } catch (e) {
      throw new CaTransportError(`the CA at ${this.base} answered certify with a malformed body: ${(e as Error).message}`, status, { cause: e });
    }
  }

  async revoke(serial: string, reason: RevocationReason): Promise<void> {
    if (!isRevocationReason(reason)) throw new CaRefusal("revocation-reason", `reason must be one of ${Object.keys(REVOCATION_REASONS).join(", ")}`);
    // LocalCaClient refuses a serial that is not hex as "unknown-serial"; so does this client, before sending
    if (typeof serial !== "string" || !HEX_SERIAL.test(serial.replace(/:/g, "")) || serial.replace(/:/g, "").length % 2) {
      throw new CaRefusal("unknown-serial", `serial must be 1-20 bytes of hex, got "${String(serial).slice(0, 50)}"`);
    }
    const a = await this.call("POST", "/revoke", { serial: serial.replace(/:/g, ""), reason }, true);
    if (a.status !== 204) throw this.unexpected("revoke", a);
  }

  async crl(): Promise<Uint8Array> {
    const a = await this.call("GET", "/crl", undefined, false);
    const { status, body, contentType } = a;
    if (status !== 200) throw this.unexpected("crl", a);
    if (!/^application\/pkix-crl\b/i.test(contentType)) throw new CaTransportError(`the CA at ${this.base} answered crl with content-type "${contentType}", not application/pkix-crl`, status);
    // DER: a SEQUENCE
    if (body.length < 2 || body[0] !== 0x30) throw new CaTransportError(`the CA at ${this.base} answered crl with a body that is not DER`, status);
    return new Uint8Array(body);
  }

  async caCertificates(): Promise<Uint8Array[]> {
    const a = await this.call("GET", "/certificates", undefined, false);
    const { status, body } = a;
    if (status !== 200) throw this.unexpected("certificates", a);
    let certs: Uint8Array[];
    try {
      const j = JSON.parse(body.toString("utf8")) as { certificates?: unknown };
      if (!Array.isArray(j.certificates) || j.certificates.some((c) => typeof c !== "string")) throw new Error("expected { certificates: PEM[] }");
      certs = (j.certificates as string[]).map((pem) => {
        const [d, ...more] = fromPemAll(pem, "CERTIFICATE");
        if (!d || d.length === 0 || more.length) throw new Error("each entry must be one PEM CERTIFICATE");
        return d;
      });
    } catch (e) {
      throw new CaTransportError(`the CA at ${this.base} answered certificates with a malformed body: ${(e as Error).message}`, status, { cause: e });
    }
    if (certs.length === 0) throw new CaTransportError(`the CA at ${this.base} sent an empty chain`, status);
    return certs;
  }

  private unexpected(op: string, a: Answer): CaTransportError {
    return new CaTransportError(`the CA at ${this.base} answered ${op} with HTTP ${a.status}${a.problem}`, a.status);
  }

  /**
   * One request. A problem+json answer carrying `check` (404/422) is thrown as CaRefusal, a schema rejection
   * (400, 413) as CaRefusal "request"; other statuses are returned for the caller to judge.
   */
  private async call(method: "GET" | "POST", path: string, json: unknown, auth: boolean): Promise<Answer> {
    const url = this.base + path;
    const headers: Record<string, string> = { accept: method === "GET" && path.endsWith("/crl") ? "application/pkix-crl" : "application/json" };
    if (json !== undefined) headers["content-type"] = "application/json";
    if (auth && this.token) headers.authorization = `Bearer ${this.token}`;
    const signal = AbortSignal.timeout(this.timeoutMs);
    let res: Response;
    let body: Buffer;
    try {
      res = await fetch(url, { method, headers, body: json === undefined ? undefined : JSON.stringify(json), signal, redirect: "error" });
      body = await readLimited(res, this.maxBytes);
    } catch (e) {
      if (signal.aborted) throw new CaTransportError(`the CA at ${url} did not answer within ${this.timeoutMs} ms`, undefined, { cause: e });
      if (e instanceof CaTransportError) throw e;
      const cause = (e as { cause?: { code?: string; message?: string } }).cause;
      throw new CaTransportError(`cannot reach the CA at ${url}: ${cause?.code ?? cause?.message ?? (e as Error).message}`, undefined, { cause: e });
    }
    const contentType = res.headers.get("content-type") ?? "";
    let problem = "";
    if (res.status >= 300) {
      let p: ProblemBody | undefined;
      if (/^application\/(problem\+)?json\b/i.test(contentType)) {
        try {
          p = JSON.parse(body.toString("utf8")) as ProblemBody;
        } catch {
          p = undefined;
        }
      }
      const detail = typeof p?.detail === "string" ? p.detail : typeof p?.title === "string" ? p.title : "";
      if (p && typeof p.check === "string" && p.check && (res.status === 404 || res.status === 422)) throw new CaRefusal(p.check, detail);
      if (res.status === 400 || res.status === 413) {
        const where = Array.isArray(p?.errors) ? p.errors.map((x) => `${String(x.pointer)}: ${String(x.detail)}`).join("; ") : "";
        throw new CaRefusal("request", where || detail || `HTTP ${res.status}`);
      }
      const hint = res.status === 401 ? " (is the API token right?)" : res.status === 403 ? " (the token lacks the role the CA routes need)" : "";
      problem = `${detail ? `: ${detail}` : ""}${hint}`;
    }
    return { status: res.status, body, contentType, problem };
  }
}

/** Reads the whole body, refusing more than `max` bytes (a misdirected URL must not fill memory). */
async function readLimited(res: Response, max: number): Promise<Buffer> {
  const declared = Number(res.headers.get("content-length") ?? NaN);
  if (declared > max) {
    await res.body?.cancel();
    throw new CaTransportError(`the CA's answer is ${declared} bytes, more than the ${max} accepted`, res.status);
  }
  if (!res.body) return Buffer.alloc(0);
  const reader = res.body.getReader();
  const chunks: Uint8Array[] = [];
  let n = 0;
  while (true) {
    const { done, value } = await reader.read();
    if (done) break;
    n += value.byteLength;
    if (n > max) {
      await reader.cancel().catch(() => {});
      throw new CaTransportError(`the CA's answer is more than the ${max} bytes accepted`, res.status);
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks);
}
