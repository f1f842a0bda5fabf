// Reproduction requests and the signed approval chain (seed 001, embodiment 3, steps S5-S7; claims 35 (c), 39).
// The user files a request; each arbitrator reviews it and approves or refuses with an ECDSA P-256 signature
// over (request id, request digest, decision, reason, time, hash of the previous approval). The previous-hash
// link makes the chain prove the order of the decisions — the seed's order condition: "it suffices to check the
// signature of the person who approved".
// The chain hashes the signed body, not the signature, so an ECDSA signature's malleability cannot fork it.
// The request digest covers every member of the request as filed — for the service's requests (service.ts), the
// kind of reproduction and the card that will receive the key (target.ts) — so each approval, and the approver list
// drawn from the chain, covers that card: approvals made for one target never count for a request naming another.
// Key rotations do not change this: a recorded approval is re-verified with the key version that verified it.
// A refusal by an indispensable party, or a group that can no longer reach k, ends the request: any later
// decision is refused as `request_ended`.

import { type KeyObject, sign, verify } from "node:crypto";
import { type Decision, type Evaluation, type ReproductionPolicy, evaluatePolicy, policyParties, validatePolicy } from "./policy.ts";
import type { ArbitratorRegistry } from "./registry.ts";
import { RecoveryError, type RecoveryCheck } from "./errors.ts";
import { canonicalJson, labelledDigest } from "./encoding.ts";

export interface ReproductionRequest {
  format: "cardkms.recovery.request/1";
  requestId: string;
  escrowId: string;
  cardId: string;
  /** The policy the arbitrators approve under; its digest must be the escrow's. */
  policy: ReproductionPolicy;
  /** Who filed it (the user, step S6). */
  requester: string;
  reason?: string;
  /** ISO 8601. */
  filedAt: string;
}

export interface ApprovalBody {
  format: "cardkms.recovery.approval/1";
  requestId: string;
  /** Hex digest of the request (requestDigest): binds the approval to this request's exact content. */
  requestDigest: string;
  arbitrator: string;
  decision: "approve" | "refuse";
  reason?: string;
  /** ISO 8601. */
  decidedAt: string;
  /** approvalHash of the previous approval, or the request digest for the first one. */
  previous: string;
}

export interface Approval extends ApprovalBody {
  /** ECDSA P-256 / SHA-256, IEEE P1363 (r || s), base64. */
  signature: string;
}

export function requestDigest(req: ReproductionRequest): string {
  return labelledDigest("cardkms/recovery/request/v1", canonicalJson(req)).toString("hex");
}

function bodyOf(a: ApprovalBody): ApprovalBody {
  return {
    format: a.format,
    requestId: a.requestId,
    requestDigest: a.requestDigest,
    arbitrator: a.arbitrator,
    decision: a.decision,
    reason: a.reason,
    decidedAt: a.decidedAt,
    previous: a.previous,
  };
}

const signedBytes = (a: ApprovalBody): Buffer => Buffer.from(`cardkms/recovery/approval/v1\n${canonicalJson(bodyOf(a))}`);

/** The link the next approval names as `previous`: a hash of this approval's signed body. */
export function approvalHash(a: ApprovalBody): string {
  return labelledDigest("cardkms/recovery/approval-link/v1", signedBytes(a)).toString("hex");
}

/** The head of a chain: what the next approval must name as `previous`. */
export function chainHead(request: ReproductionRequest, approvals: readonly ApprovalBody[], digest = requestDigest(request)): string {
  return approvals.length ? approvalHash(approvals[approvals.length - 1]) : digest;
}

/**
 * An arbitrator's decision, signed with its ECDSA P-256 private key, chained after `previous` (the approvals so
 * far, or their head). Done on the arbitrator's side; the private key never reaches the service.
 */
export function signApproval(
  request: ReproductionRequest,
  previous: readonly ApprovalBody[] | string,
  decision: { arbitrator: string; decision: "approve" | "refuse"; reason?: string; decidedAt?: string },
  signingKey: KeyObject,
): Approval {
  const digest = requestDigest(request);
  const body: ApprovalBody = {
    format: "cardkms.recovery.approval/1",
    requestId: request.requestId,
    requestDigest: digest,
    arbitrator: decision.arbitrator,
    decision: decision.decision,
    reason: decision.reason,
    decidedAt: decision.decidedAt ?? new Date().toISOString(),
    previous: typeof previous === "string" ? previous : chainHead(request, previous, digest),
  };
  const signature = sign("sha256", signedBytes(body), { key: signingKey, dsaEncoding: "ieee-p1363" }).toString("base64");
  return { ...body, signature };
}

/** ECDSA P-256 / SHA-256 verification of a base64 IEEE P1363 signature; false on anything malformed. */
function verifyP1363(key: KeyObject, data: Buffer, signature: string): boolean {
  try {
    const sig = Buffer.from(signature, "base64");
    return sig.length === 64 && verify("sha256", data, { key, dsaEncoding: "ieee-p1363" }, sig);
  } catch {
    return false;
  }
}

const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$/;
const MAX_REASON = 1024;

/** Checks a request's shape and its policy against the registry (throws `request_invalid` / `policy_invalid`). */
export function validateRequest(request: ReproductionRequest, registry: ArbitratorRegistry): ReproductionPolicy {
  if (request?.format !== "cardkms.recovery.request/1") throw new RecoveryError("request_invalid", "not a reproduction request");
  for (const k of ["requestId", "escrowId", "cardId", "requester", "filedAt"] as const)
    if (typeof request[k] !== "string" || request[k].length === 0 || request[k].length > 128) throw new RecoveryError("request_invalid", `request ${k} must be a string of 1-128 characters`);
  if (!ISO.test(request.filedAt)) throw new RecoveryError("request_invalid", "request filedAt must be an ISO 8601 time");
  if (request.reason !== undefined && (typeof request.reason !== "string" || request.reason.length > MAX_REASON))
    throw new RecoveryError("request_invalid", `request reason must be at most ${MAX_REASON} characters`);
  return validatePolicy(request.policy, registry);
}

/**
 * The approvals of one request, appended one at a time (steps S6-S7). Each append either accepts the approval and
 * re-judges the policy, or throws a RecoveryError naming the check it failed; a refused approval is not appended.
 */
export class ApprovalChain {
  readonly request: ReproductionRequest;
  readonly policy: ReproductionPolicy;
  readonly digest: string;
  readonly #registry: ArbitratorRegistry;
  readonly #parties: Set<string>;
  readonly #approvals: Approval[] = [];
  readonly #decisions: Decision[] = [];
  #head: string;
  #evaluation: Evaluation;

  constructor(request: ReproductionRequest, registry: ArbitratorRegistry) {
    this.policy = validateRequest(request, registry);
    this.request = request;
    this.digest = requestDigest(request);
    this.#registry = registry;
    this.#parties = new Set(policyParties(this.policy));
    this.#head = this.digest;
    this.#evaluation = evaluatePolicy(this.policy, []);
  }

  get approvals(): readonly Approval[] {
    return this.#approvals;
  }
  get evaluation(): Evaluation {
    return this.#evaluation;
  }
  get head(): string {
    return this.#head;
  }

  append(a: Approval): Evaluation {
    const idx = this.#approvals.length;
    const refuse = (check: RecoveryCheck, message: string): never => {
      throw new RecoveryError(check, `approval ${idx}: ${message}`, { index: idx, arbitrator: typeof a?.arbitrator === "string" ? a.arbitrator : undefined, requestId: this.request.requestId });
    };
    if (
      a?.format !== "cardkms.recovery.approval/1" ||
      typeof a.requestId !== "string" ||
      typeof a.requestDigest !== "string" ||
      typeof a.arbitrator !== "string" ||
      (a.decision !== "approve" && a.decision !== "refuse") ||
      (a.reason !== undefined && (typeof a.reason !== "string" || a.reason.length > MAX_REASON)) ||
      typeof a.decidedAt !== "string" ||
      !ISO.test(a.decidedAt) ||
      typeof a.previous !== "string" ||
      typeof a.signature !== "string"
    )
      refuse("malformed_approval", "not a well-formed approval");
    if (a.requestId !== this.request.requestId) refuse("replayed_from_other_request", `signed for request ${a.requestId}, not ${this.request.requestId}`);
    if (a.requestDigest !== this.digest) refuse("replayed_from_other_request", `signed for another version of request ${a.requestId} (digest differs)`);
    const arb = this.#registry.get(a.arbitrator);
    if (!arb) refuse("unknown_arbitrator", `${a.arbitrator} is not a registered arbitrator`);
    if (!this.#parties.has(a.arbitrator)) refuse("not_a_party", `${a.arbitrator} is not a party of the request's policy`);
    if (!verifyP1363(arb!.signingKey, signedBytes(a), a.signature)) refuse("forged_signature", `the signature is not ${a.arbitrator}'s over this approval`);
    if (this.#decisions.some((d) => d.arbitrator === a.arbitrator)) refuse("duplicate_decision", `${a.arbitrator} has already decided on this request`);
    if (a.previous !== this.#head) refuse("broken_chain", "it does not follow the previous approval (hash link mismatch)");
    if (this.#evaluation.status === "failed") refuse("request_ended", `the request ended: ${this.#evaluation.message}`);
    if (a.decision === "approve") {
      const missing = this.policy.order.filter((o) => o.after === a.arbitrator && !this.#evaluation.approvers.includes(o.before)).map((o) => o.before);
      if (missing.length) refuse("out_of_order", `${a.arbitrator} may approve only after ${missing.join(", ")}`);
    }
    this.#approvals.push(a);
    this.#decisions.push({ arbitrator: a.arbitrator, decision: a.decision, reason: a.reason });
    this.#head = approvalHash(a);
    this.#evaluation = evaluatePolicy(this.policy, this.#decisions);
    return this.#evaluation;
  }
}

export type ChainVerdict = { ok: true; evaluation: Evaluation; head: string; approvers: string[] } | { ok: false; check: RecoveryCheck; index: number; message: string; error: RecoveryError };

/**
 * Verifies a whole chain: every signature, link, party and order condition. Returns the policy's evaluation of
 * the decisions, or the first refusal with the check it failed and the index of the approval.
 */
export function verifyChain(request: ReproductionRequest, approvals: readonly Approval[], registry: ArbitratorRegistry): ChainVerdict {
  let chain: ApprovalChain;
  try {
    chain = new ApprovalChain(request, registry);
  } catch (e) {
    if (e instanceof RecoveryError) return { ok: false, check: e.check, index: -1, message: e.message, error: e };
    throw e;
  }
  for (const [i, a] of approvals.entries()) {
    try {
      chain.append(a);
    } catch (e) {
      if (e instanceof RecoveryError) return { ok: false, check: e.check, index: i, message: e.message, error: e };
      throw e;
    }
  }
  return { ok: true, evaluation: chain.evaluation, head: chain.head, approvers: [...chain.evaluation.approvers] };
}

// ---------------------------------------------------------------------------------------------------------------
// The list of approvers (FIG. 9 condition 15): "a list of secret key reproduction approved persons (including a
// person who produced this list)", sent by its author to the reproduction device. It names the chain's head, so
// it vouches for exactly the verified chain, and it is the record kept for anyone who objects later.

export interface ApproverList {
  format: "cardkms.recovery.approvers/1";
  requestId: string;
  requestDigest: string;
  /** The head of the approval chain the list was drawn from. */
  chainHead: string;
  /** Approvers in the order they approved. */
  approvers: string[];
  author: string;
  signature: string;
}

const listBytes = (l: Omit<ApproverList, "signature">): Buffer =>
  Buffer.from(
    `cardkms/recovery/approvers/v1\n${canonicalJson({ format: l.format, requestId: l.requestId, requestDigest: l.requestDigest, chainHead: l.chainHead, approvers: l.approvers, author: l.author })}`,
  );

/** The policy's author signs the list of approvers of a chain (on the author's side). */
export function signApproverList(request: ReproductionRequest, approvals: readonly Approval[], author: string, signingKey: KeyObject): ApproverList {
  const body: Omit<ApproverList, "signature"> = {
    format: "cardkms.recovery.approvers/1",
    requestId: request.requestId,
    requestDigest: requestDigest(request),
    chainHead: chainHead(request, approvals),
    approvers: approvals.filter((a) => a.decision === "approve").map((a) => a.arbitrator),
    author,
  };
  return { ...body, signature: sign("sha256", listBytes(body), { key: signingKey, dsaEncoding: "ieee-p1363" }).toString("base64") };
}

/** Checks the list against a verified chain: signed by the policy's author, same request, same head, same approvers. */
export function verifyApproverList(list: ApproverList, request: ReproductionRequest, verdict: { head: string; approvers: readonly string[] }, registry: ArbitratorRegistry): void {
  const bad = (check: RecoveryCheck, message: string): never => {
    throw new RecoveryError(check, `approver list: ${message}`, { requestId: request.requestId, author: list?.author });
  };
  if (list?.format !== "cardkms.recovery.approvers/1") bad("malformed_approval", "not an approver list");
  if (list.requestId !== request.requestId || list.requestDigest !== requestDigest(request)) bad("replayed_from_other_request", `drawn up for request ${list.requestId}`);
  if (list.author !== request.policy.author) bad("forged_signature", `signed by ${list.author}, but the policy's author is ${request.policy.author}`);
  const author = registry.require(list.author);
  if (!verifyP1363(author.signingKey, listBytes(list), list.signature)) bad("forged_signature", `the signature is not ${list.author}'s`);
  if (list.chainHead !== verdict.head) bad("broken_chain", "it names another chain head than the verified approvals");
  if (list.approvers.length !== verdict.approvers.length || list.approvers.some((a, i) => a !== verdict.approvers[i])) bad("broken_chain", "its approvers differ from the verified chain's");
}
