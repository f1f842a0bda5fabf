// One error shape for the whole API: RFC 9457 problem details (application/problem+json).
// Domain roles throw DomainErrors (src/util/errors.ts) and this file is their one mapper (issue 10 §4): the kind
// alone decides the status through KIND_PROBLEMS (invalid 400, not_found 404, conflict 409, refused 422,
// unavailable 503, unauthenticated 401); the type and title are the kind's unless the error names its own (DomainError.problem()); the
// check (unless problem() says the answer has none) and the error's non-secret details become extension members (each route's response schema says which of
// them it shows). Routes throw ApiProblem for what is theirs (authentication, a path that names nothing); Fastify's
// own errors (validation, JSON syntax, body size, media type, not found) are mapped to 4xx. Anything else is a 500
// whose detail never carries the error message (it could hold a secret); the message goes to the log under the
// request id. Never here: a per-domain table, or matching an error on its name.
//
// A problem body is small whatever the request was (issue 9 §3): validation reports the first error (the server's
// ajv runs without allErrors) and at most MAX_VALIDATION_ERRORS of them, every string member is cut to a bound,
// and a body still over MAX_PROBLEM_BYTES keeps only its RFC 9457 members.

import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { DomainError, type ErrorKind } from "../util/errors.ts";

export const PROBLEM_TYPE_BASE = "https://cardkms.dev/problems/";

export interface Problem {
  type: string;
  title: string;
  status: number;
  detail?: string;
  instance?: string;
  /** Validation failures: where and what. */
  errors?: { pointer: string; detail: string }[];
  [extension: string]: unknown;
}

export class ApiProblem extends Error {
  constructor(
    readonly status: number,
    readonly slug: string,
    readonly title: string,
    readonly detail?: string,
    /** Extension members of the problem body (RFC 9457 §3.2), e.g. the CA check that refused. */
    readonly extensions?: Record<string, unknown>,
  ) {
    super(detail ?? title);
    this.name = "ApiProblem";
  }
}

/** The one table: what each kind of DomainError answers (status, and the type slug and title unless the error names its own). */
export const KIND_PROBLEMS: Readonly<Record<ErrorKind, { status: number; type: string; title: string }>> = {
  invalid: { status: 400, type: "invalid", title: "Invalid request" },
  not_found: { status: 404, type: "not-found", title: "Not found" },
  conflict: { status: 409, type: "conflict", title: "Conflict" },
  refused: { status: 422, type: "refused", title: "Refused" },
  unavailable: { status: 503, type: "unavailable", title: "Unavailable" },
  unauthenticated: { status: 401, type: "unauthenticated", title: "Authentication required" },
};

/** A problem type as sent: an absolute URI as it is, a slug under PROBLEM_TYPE_BASE. */
const problemType = (t: string): string => (/^[a-z][a-z0-9+.-]*:/i.test(t) ? t : PROBLEM_TYPE_BASE + t);

/** A DomainError as problem+json: status by its kind, type and title its own or its kind's, `check` and its details as extension members. */
export function domainProblem(err: DomainError): Problem {
  const e = err.answeredWith();
  const byKind = KIND_PROBLEMS[e.kind];
  const shape = e.problem();
  const check = shape?.check === false ? {} : { check: e.check };
  return { ...e.details, ...check, type: problemType(shape?.type ?? byKind.type), title: shape?.title ?? byKind.title, status: byKind.status, detail: shape?.detail ?? e.message };
}

export const notFound = (what: string, id: string) => new ApiProblem(404, "not-found", `${what} not found`, `no ${what} with id ${id}`);
export const conflict = (detail: string) => new ApiProblem(409, "conflict", "Conflict", detail);

/** JSON schema of a problem body, for route response schemas and the OpenAPI document. */
export const problemSchema = {
  $id: "Problem",
  type: "object",
  properties: {
    type: { type: "string" },
    title: { type: "string" },
    status: { type: "integer" },
    detail: { type: "string" },
    instance: { type: "string" },
    errors: { type: "array", items: { type: "object", properties: { pointer: { type: "string" }, detail: { type: "string" } } } },
  },
  required: ["type", "title", "status"],
} as const;

/** Most entries of a validation problem's `errors`. */
export const MAX_VALIDATION_ERRORS = 8;
/** Longest a problem body serialises to, in bytes (a few KB, whatever the input). */
export const MAX_PROBLEM_BYTES = 4096;
const MAX_DETAIL = 1000;
const MAX_MEMBER = 500;
const MAX_POINTER = 200;

/** `s` cut to `max` UTF-16 units, marked with an ellipsis when cut. */
export function clip(s: string, max: number): string {
  return s.length <= max ? s : s.slice(0, max - 1) + "…";
}

/** The problem with every member bounded: strings cut, `errors` capped, extensions dropped if still too large. */
export function boundedProblem(p: Problem): Problem {
  const out: Problem = { ...p };
  for (const [k, v] of Object.entries(out)) if (typeof v === "string") out[k] = clip(v, k === "detail" || k === "instance" ? MAX_DETAIL : MAX_MEMBER);
  if (Array.isArray(p.errors)) out.errors = p.errors.slice(0, MAX_VALIDATION_ERRORS).map((e) => ({ pointer: clip(String(e.pointer), MAX_POINTER), detail: clip(String(e.detail), MAX_POINTER) }));
  if (Buffer.byteLength(JSON.stringify(out)) <= MAX_PROBLEM_BYTES) return out;
  const { type, title, status, detail, instance } = out;
  return { type, title, status, ...(detail === undefined ? {} : { detail }), ...(instance === undefined ? {} : { instance }) };
}

function send(reply: FastifyReply, p: Problem): FastifyReply {
  return reply.code(p.status).type("application/problem+json").send(boundedProblem(p));
}

function fromFastify(e: FastifyError): Problem | undefined {
  if (e.validation) {
    return {
      type: PROBLEM_TYPE_BASE + "validation",
      title: "Request does not match the schema",
      status: 400,
      detail: e.message,
      errors: e.validation.slice(0, MAX_VALIDATION_ERRORS).map((v) => ({ pointer: `${e.validationContext ?? "body"}${v.instancePath || ""}`, detail: v.message ?? v.keyword })),
    };
  }
  const code = e.code ?? "";
  const map: Record<string, [number, string, string]> = {
    FST_ERR_CTP_BODY_TOO_LARGE: [413, "body-too-large", "Request body too large"],
    FST_ERR_CTP_INVALID_MEDIA_TYPE: [415, "unsupported-media-type", "Unsupported media type"],
    FST_ERR_CTP_EMPTY_JSON_BODY: [400, "malformed-json", "Empty JSON body"],
    FST_ERR_CTP_INVALID_JSON_BODY: [400, "malformed-json", "Malformed JSON body"],
    FST_ERR_CTP_INVALID_CONTENT_LENGTH: [400, "bad-request", "Invalid Content-Length"],
  };
  const m = map[code];
  if (m) return { type: PROBLEM_TYPE_BASE + m[1], title: m[2], status: m[0], detail: e.message };
  if (e instanceof SyntaxError || (e.statusCode === 400 && /JSON/i.test(e.message)))
    return { type: PROBLEM_TYPE_BASE + "malformed-json", title: "Malformed JSON body", status: 400, detail: e.message };
  if (typeof e.statusCode === "number" && e.statusCode >= 400 && e.statusCode < 500) return { type: PROBLEM_TYPE_BASE + "bad-request", title: "Bad request", status: e.statusCode, detail: e.message };
  return undefined;
}

/** Installs the problem+json error and not-found handlers on an instance; `onError` sees each problem sent. */
export function installProblemHandlers(app: FastifyInstance, onError?: (status: number, p: Problem, req: FastifyRequest) => void): void {
  app.addSchema(problemSchema);
  app.setErrorHandler((err: FastifyError, req: FastifyRequest, reply: FastifyReply) => {
    let p: Problem;
    if (err instanceof ApiProblem) p = { ...err.extensions, type: PROBLEM_TYPE_BASE + err.slug, title: err.title, status: err.status, detail: err.detail };
    else {
      const mapped = err instanceof DomainError ? domainProblem(err) : fromFastify(err);
      if (mapped) p = mapped;
      else {
        req.log.error({ err: { name: err.name, code: err.code } }, "unhandled error");
        p = { type: PROBLEM_TYPE_BASE + "internal", title: "Internal error", status: 500, detail: `see the server log for request ${req.id}` };
      }
    }
    p.instance = req.url.split("?")[0];
    onError?.(p.status, p, req);
    return send(reply, p);
  });
  app.setNotFoundHandler((req, reply) => {
    const path = req.url.split("?")[0];
    const p: Problem = { type: PROBLEM_TYPE_BASE + "not-found", title: "No such route", status: 404, detail: `${req.method} ${path}`, instance: path };
    onError?.(404, p, req);
    return send(reply, p);
  });
}
