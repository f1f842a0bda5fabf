// The key reproduction routes of the issuer's API (src/server/recovery-routes.ts; issue 4 item 6) for operators,
// terminals and arbitrators, over IssuerApiClient (bearer token, timeouts, problem+json as ApiError), and the
// arbitrator's side of the workflow (seed 001 embodiment 3, step S6):
//
//   approveRequest     fetches the arbitrator's pending item, checks that the request it signs is the one shown
//                      (its digest) — and, when asked, that it sends the key into the card expected (the request's
//                      target, which the approval signs over) —, signs the approval after the chain head with the arbitrator's ECDSA key, opens
//                      its share envelopes with its ECDH key, releases each share sealed to the reproduction
//                      device's key, and posts approval and releases;
//   refuseRequest      signs and posts a refusal with its reason;
//   signApproverListFor  the policy's author signs the list of approvers of a satisfied chain;
//   rotateKeysFor      signs a rotation of the arbitrator's keys with its current signing key (and the new one).
//
// Lists come a page at a time (…Page methods: `limit`, `after`, and the response's `next`); arbitrators() and
// pending() follow every page.
//
// The arbitrator's private keys stay in this process: only signatures and sealed shares leave it. Share values are
// wiped once sealed. Nothing here logs.

import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { requestDigest, signApproval, signApproverList, type Approval, type ApproverList } from "../recovery/approvals.ts";
import { openShare } from "../recovery/shares.ts";
import { signKeyRotation, type KeyRotation } from "../recovery/key-rotation-document.ts";
import { allPages } from "../recovery/paging.ts";
import type { ReproductionResult } from "../recovery/reproduction.ts";
import { releaseSharesFor, type ShareRelease } from "../recovery/share-release.ts";
import type {
  ArbitratorJson,
  ArbitratorTokenJson,
  DeregistrationJson,
  DeviceKeyJson,
  EscrowJson,
  FileRequestBody,
  PageJson,
  PendingJson,
  PolicyDependencyJson,
  PolicyJson,
  RegisterArbitratorBody,
  RequestJson,
  RevokedTokenJson,
} from "../recovery/wire.ts";
import { ApiError, fromBase64, type IssuerApiClient } from "./api-client.ts";
import { liveStep, liveStepOf, runLiveRelay, type LiveStep } from "./live-relay-client.ts";

// ---- wire shapes (src/recovery/wire.ts) -------------------------------------------------------------------------------

export type { ArbitratorJson, DeregistrationJson, EscrowJson, PageJson, PendingJson, PolicyDependencyJson, PolicyJson, RequestJson } from "../recovery/wire.ts";

export interface PageQuery {
  limit?: number;
  after?: string;
}

export interface DeviceKey {
  spki: Uint8Array;
  pem: string;
  /** SHA-256 of the SPKI, hex, as computed here (not as the server says). */
  keyId: string;
}

export type ReproductionStep = LiveStep<ReproductionResult>;

/** A refusal on the arbitrator's side, before anything is signed or sent. */
export class RecoveryClientError extends Error {
  override readonly name = "RecoveryClientError";
}

/** Arbitrator ids, card ids, request ids as one path segment (checked, so a caller's string cannot change the route). */
function seg(id: string): string {
  if (typeof id !== "string" || !/^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$/.test(id)) throw new ApiError(0, "client:bad-argument", "Bad identifier", `not an ID: ${JSON.stringify(id)}`);
  return encodeURIComponent(id);
}

/** `?after=&limit=` plus other query members, or "". */
function queryOf(members: Record<string, string | number | undefined>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(members)) if (v !== undefined) q.set(k, String(v));
  const qs = q.toString();
  return qs ? `?${qs}` : "";
}

/** A public key as PEM (BEGIN PUBLIC KEY); a private KeyObject gives its public half. */
function publicPem(k: string | KeyObject): string {
  if (typeof k === "string") return k;
  return (k.type === "private" ? createPublicKey(k) : k).export({ format: "pem", type: "spki" }) as string;
}

export class RecoveryApiClient {
  constructor(readonly api: IssuerApiClient) {}

  // ---- arbitrators ------------------------------------------------------------------------------------------------

  registerArbitrator(input: { id: string; roles?: string[]; displayName?: string; signingPublicKey: string | KeyObject; encryptionPublicKey: string | KeyObject }): Promise<ArbitratorJson> {
    const body: RegisterArbitratorBody = { id: input.id, signingPublicKey: publicPem(input.signingPublicKey), encryptionPublicKey: publicPem(input.encryptionPublicKey) };
    if (input.roles !== undefined) body.roles = input.roles;
    if (input.displayName !== undefined) body.displayName = input.displayName;
    return this.api.request("POST", "/v1/recovery/arbitrators", body);
  }

  /** Every arbitrator (all pages). */
  async arbitrators(): Promise<ArbitratorJson[]> {
    return allPages((after) => this.arbitratorsPage({ after, limit: 1000 }));
  }

  async arbitratorsPage(page: PageQuery = {}): Promise<PageJson<ArbitratorJson>> {
    const r = await this.api.request<{ arbitrators: ArbitratorJson[]; next?: string }>("GET", `/v1/recovery/arbitrators${queryOf({ after: page.after, limit: page.limit })}`);
    return { items: r.arbitrators, ...(r.next !== undefined ? { next: r.next } : {}) };
  }

  /** Posts a rotation of the arbitrator's keys (signed on the arbitrator's side: signKeyRotation, rotateKeysFor). */
  rotateArbitratorKeys(id: string, rotation: KeyRotation): Promise<ArbitratorJson> {
    return this.api.request("POST", `/v1/recovery/arbitrators/${seg(id)}/key-rotation`, { rotation });
  }

  deregisterArbitrator(id: string, reason: string, o: { force?: boolean } = {}): Promise<DeregistrationJson> {
    return this.api.request("POST", `/v1/recovery/arbitrators/${seg(id)}/deregister`, { reason, ...(o.force ? { force: true } : {}) });
  }

  /** The cards whose policies name the arbitrator, a page. */
  async arbitratorDependents(id: string, page: PageQuery = {}): Promise<PageJson<PolicyDependencyJson>> {
    const r = await this.api.request<{ policies: PolicyDependencyJson[]; next?: string }>("GET", `/v1/recovery/arbitrators/${seg(id)}/dependents${queryOf({ after: page.after, limit: page.limit })}`);
    return { items: r.policies, ...(r.next !== undefined ? { next: r.next } : {}) };
  }

  arbitrator(id: string): Promise<ArbitratorJson> {
    return this.api.request("GET", `/v1/recovery/arbitrators/${seg(id)}`);
  }

  /** An API token bound to the arbitrator (the server shows it once). */
  issueArbitratorToken(id: string): Promise<ArbitratorTokenJson> {
    return this.api.request("POST", `/v1/recovery/arbitrators/${seg(id)}/tokens`, {});
  }

  revokeArbitratorToken(id: string, tokenId: string): Promise<RevokedTokenJson> {
    return this.api.request("POST", `/v1/recovery/arbitrators/${seg(id)}/tokens/${seg(tokenId)}/revoke`, {});
  }

  // ---- policies and escrows ---------------------------------------------------------------------------------------

  /** Sets a card's policy (the document as parsed JSON). */
  setPolicy(cardId: string, policy: unknown): Promise<PolicyJson> {
    return this.api.request("PUT", `/v1/cards/${seg(cardId)}/recovery-policy`, policy);
  }

  policy(cardId: string): Promise<PolicyJson> {
    return this.api.request("GET", `/v1/cards/${seg(cardId)}/recovery-policy`);
  }

  escrow(cardId: string): Promise<EscrowJson> {
    return this.api.request("GET", `/v1/cards/${seg(cardId)}/escrow`);
  }

  // ---- requests -----------------------------------------------------------------------------------------------------

  /** Files a request; a card-destroyed one names `replacementCardId`, the card record issued to the user to receive the key. */
  fileRequest(input: FileRequestBody): Promise<RequestJson> {
    const body: FileRequestBody = { cardId: input.cardId, kind: input.kind, requester: input.requester };
    if (input.reason !== undefined) body.reason = input.reason;
    if (input.replacementCardId !== undefined) body.replacementCardId = input.replacementCardId;
    return this.api.request("POST", "/v1/recovery/requests", body);
  }

  /** The first page of requests (newest first); requestsPage for the others. */
  async requests(filter: { status?: string; cardId?: string; limit?: number } = {}): Promise<RequestJson[]> {
    return (await this.requestsPage(filter)).items;
  }

  async requestsPage(filter: { status?: string; cardId?: string } & PageQuery = {}): Promise<PageJson<RequestJson>> {
    const r = await this.api.request<{ requests: RequestJson[]; next?: string }>(
      "GET",
      `/v1/recovery/requests${queryOf({ status: filter.status, cardId: filter.cardId, after: filter.after, limit: filter.limit })}`,
    );
    return { items: r.requests, ...(r.next !== undefined ? { next: r.next } : {}) };
  }

  request(requestId: string): Promise<RequestJson> {
    return this.api.request("GET", `/v1/recovery/requests/${seg(requestId)}`);
  }

  withdraw(requestId: string, reason: string): Promise<RequestJson> {
    return this.api.request("POST", `/v1/recovery/requests/${seg(requestId)}/withdraw`, { reason });
  }

  /** A request stuck "reproducing" (its reproduction's process is gone) back to "satisfied"; refused while its lease is live. */
  resetReproduction(requestId: string, reason: string): Promise<RequestJson> {
    return this.api.request("POST", `/v1/recovery/requests/${seg(requestId)}/reset-reproduction`, { reason });
  }

  // ---- the arbitrators' routes ---------------------------------------------------------------------------------------

  /** Everything pending for the arbitrator (all pages). */
  async pending(arbitratorId: string): Promise<PendingJson[]> {
    return allPages((after) => this.pendingPage(arbitratorId, { after, limit: 100 }));
  }

  async pendingPage(arbitratorId: string, page: PageQuery = {}): Promise<PageJson<PendingJson>> {
    const r = await this.api.request<{ pending: PendingJson[]; next?: string }>("GET", `/v1/recovery/arbitrators/${seg(arbitratorId)}/pending${queryOf({ after: page.after, limit: page.limit })}`);
    return { items: r.pending, ...(r.next !== undefined ? { next: r.next } : {}) };
  }

  approve(requestId: string, approval: Approval, releases: ShareRelease[]): Promise<RequestJson> {
    return this.api.request("POST", `/v1/recovery/requests/${seg(requestId)}/approvals`, { approval, releases });
  }

  refuse(requestId: string, refusal: Approval): Promise<RequestJson> {
    return this.api.request("POST", `/v1/recovery/requests/${seg(requestId)}/refusals`, { refusal });
  }

  submitApproverList(requestId: string, approverList: ApproverList): Promise<RequestJson> {
    return this.api.request("POST", `/v1/recovery/requests/${seg(requestId)}/approver-list`, { approverList });
  }

  async deviceKey(): Promise<DeviceKey> {
    const r = await this.api.request<DeviceKeyJson>("GET", "/v1/recovery/device-key");
    const spki = fromBase64(r.spki, "spki");
    return { spki, pem: r.pem, keyId: createHash("sha256").update(spki).digest("hex") };
  }

  // ---- reproduction through the terminal ----------------------------------------------------------------------------

  async startReproduction(requestId: string, cardId?: string): Promise<ReproductionStep> {
    return liveStepOf(await this.api.request<object>("POST", `/v1/recovery/requests/${seg(requestId)}/reproduce`, cardId === undefined ? {} : { cardId }));
  }

  reproductionStep(sessionId: string, responses: Uint8Array[]): Promise<ReproductionStep> {
    return liveStep(this.api, SESSIONS, sessionId, responses);
  }

  /**
   * Reproduces a satisfied request's key into the card reachable through `transmit` (the terminal's part): starts
   * the reproduction and forwards each APDU the server sends to the card until the server reports the result.
   * The key goes into the card the request names (its target); `cardId`, when given, must be that card record.
   * A refusal comes back as the server's ApiError (its detail names the check).
   */
  reproduce(requestId: string, transmit: (apdu: Uint8Array) => Promise<Uint8Array> | Uint8Array, o: { cardId?: string; maxRounds?: number } = {}): Promise<ReproductionResult> {
    return runLiveRelay(this.api, () => this.startReproduction(requestId, o.cardId), SESSIONS, transmit, { maxRounds: o.maxRounds, what: "reproduction" });
  }
}

const SESSIONS = "/v1/recovery/sessions";

// ---- the arbitrator's side -------------------------------------------------------------------------------------------

export interface ArbitratorPrivateKeys {
  /** ECDSA P-256: signs approvals, refusals, approver lists. */
  signing: KeyObject;
  /** ECDH P-256: opens the share envelopes sealed to the arbitrator. */
  encryption?: KeyObject;
  /**
   * Encryption keys the arbitrator rotated out: shares sealed before a rotation stay sealed to the key of the
   * time until the escrow is re-split, so they are opened with it (chosen by the envelope's recipientKeyId).
   */
  previousEncryption?: KeyObject[];
}

/** A P-256 private key from PEM (PKCS#8 or SEC 1); `what` names it in errors (never its content). */
export function p256PrivateKey(pem: string | Buffer, what: string): KeyObject {
  let k: KeyObject;
  try {
    k = createPrivateKey(pem);
  } catch {
    throw new RecoveryClientError(`${what} is not a PEM private key (an encrypted key is not supported)`);
  }
  if (k.asymmetricKeyType !== "ec" || k.asymmetricKeyDetails?.namedCurve !== "prime256v1") throw new RecoveryClientError(`${what} is not a P-256 key`);
  return k;
}

/** A P-256 public key from PEM (a private key's PEM gives its public half, which is all that is sent). */
export function p256PublicKey(pem: string | Buffer, what: string): KeyObject {
  let k: KeyObject;
  try {
    k = createPublicKey(pem);
  } catch {
    throw new RecoveryClientError(`${what} is not a PEM key`);
  }
  if (k.asymmetricKeyType !== "ec" || k.asymmetricKeyDetails?.namedCurve !== "prime256v1") throw new RecoveryClientError(`${what} is not a P-256 key`);
  return k;
}

export interface ArbitratorKeyFiles {
  signingKey: string;
  signingPublicKey: string;
  encryptionKey: string;
  encryptionPublicKey: string;
}

/**
 * Makes an arbitrator's two P-256 key pairs as PEM files in `dir` (created 0700 if missing; files 0600, never
 * overwritten): signing.key.pem / signing.pub.pem (ECDSA) and encryption.key.pem / encryption.pub.pem (ECDH).
 */
export function generateArbitratorKeyFiles(dir: string): ArbitratorKeyFiles {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const files: ArbitratorKeyFiles = {
    signingKey: join(dir, "signing.key.pem"),
    signingPublicKey: join(dir, "signing.pub.pem"),
    encryptionKey: join(dir, "encryption.key.pem"),
    encryptionPublicKey: join(dir, "encryption.pub.pem"),
  };
  const write = (path: string, pem: string) => writeFileSync(path, pem, { mode: 0o600, flag: "wx" });
  for (const [priv, pub] of [
    [files.signingKey, files.signingPublicKey],
    [files.encryptionKey, files.encryptionPublicKey],
  ] as const) {
    const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    write(priv, privateKey.export({ format: "pem", type: "pkcs8" }) as string);
    write(pub, publicKey.export({ format: "pem", type: "spki" }) as string);
  }
  return files;
}

/** The arbitrator's pending item of `action` for the request, or a RecoveryClientError saying why there is none. */
async function pendingItem<A extends PendingJson["action"]>(client: RecoveryApiClient, arbitratorId: string, requestId: string, action: A): Promise<Extract<PendingJson, { action: A }>> {
  const items = await client.pending(arbitratorId);
  const item = items.find((p): p is Extract<PendingJson, { action: A }> => p.action === action && p.request.requestId === requestId);
  if (!item) {
    const other = items.find((p) => p.request.requestId === requestId);
    throw new RecoveryClientError(
      other
        ? `request ${requestId} asks ${arbitratorId} to ${other.action === "decide" ? "decide" : "sign the list of approvers"}, not to ${action === "decide" ? "decide" : "sign the list of approvers"}`
        : `request ${requestId} has nothing pending for ${arbitratorId} (not a party, decided already, or the request is closed)`,
    );
  }
  // What is signed must be what was shown: the request's digest is recomputed here.
  if (requestDigest(item.request.request) !== item.request.requestDigest) throw new RecoveryClientError(`request ${requestId}: the request shown does not match its digest; nothing signed`);
  return item;
}

/**
 * Step S6, approving: signs after the current chain head, opens the arbitrator's envelopes of the request's card,
 * releases each share sealed to the reproduction device, posts all. `expectDeviceKeyId` pins the device key (its
 * SHA-256, hex): shares are released to no other key. `expectTargetCardId` pins the card the key goes into (the
 * request's target, which the approval signs over): nothing is signed for a request naming another card.
 */
export async function approveRequest(
  client: RecoveryApiClient,
  arbitratorId: string,
  requestId: string,
  keys: ArbitratorPrivateKeys,
  o: { expectDeviceKeyId?: string; expectTargetCardId?: string; reason?: string } = {},
): Promise<RequestJson> {
  if (!keys.encryption) throw new RecoveryClientError("approving releases shares: the arbitrator's encryption key is needed");
  const item = await pendingItem(client, arbitratorId, requestId, "decide");
  const target = item.request.request.target?.cardId;
  if (o.expectTargetCardId !== undefined && target !== o.expectTargetCardId)
    throw new RecoveryClientError(`request ${requestId} reproduces the key into card ${target ?? "(none named)"}, not the expected ${o.expectTargetCardId}; nothing signed`);
  if (!item.mayApproveNow) throw new RecoveryClientError(`${arbitratorId} may approve request ${requestId} only after ${item.waitingFor.join(", ")}`);
  const device = await client.deviceKey();
  if (o.expectDeviceKeyId !== undefined && o.expectDeviceKeyId.toLowerCase() !== device.keyId)
    throw new RecoveryClientError(`the server's reproduction device key is ${device.keyId}, not the expected ${o.expectDeviceKeyId}; no share released`);
  const v = item.request;
  const byKeyId = new Map([keys.encryption, ...(keys.previousEncryption ?? [])].map((k) => [keyIdOf(k), k]));
  const missing = item.envelopes.filter((e) => !byKeyId.has(e.header.recipientKeyId)).map((e) => e.header.shareId);
  if (missing.length)
    throw new RecoveryClientError(`share(s) ${missing.join(", ")} are sealed to an encryption key not given (a key rotated out: give it as a previous encryption key); no share released`);
  const releases = releaseSharesFor(v.request, item.envelopes, (e) => openShare(e, byKeyId.get(e.header.recipientKeyId)!, { escrowId: v.escrowId, cardId: v.cardId }), device.spki);
  const approval = signApproval(v.request, v.chainHead, { arbitrator: arbitratorId, decision: "approve", reason: o.reason }, keys.signing);
  return client.approve(requestId, approval, releases);
}

/** SHA-256 (hex) of a key's SubjectPublicKeyInfo (a private key: of its public half). */
export function keyIdOf(k: KeyObject): string {
  return createHash("sha256")
    .update((k.type === "private" ? createPublicKey(k) : k).export({ format: "der", type: "spki" }))
    .digest("hex");
}

/**
 * Rotates the arbitrator's keys: fetches its record (current key version and keys), checks that `currentSigningKey`
 * is its current signing key, signs the rotation with it — and with `next.signingKey`, the new signing private key,
 * when given — and posts it. `next.encryptionPublicKey`: the new encryption key (its public half is sent). The
 * arbitrator keeps its old encryption private key: shares already sealed to it are opened with it until a re-split.
 */
export async function rotateKeysFor(
  client: RecoveryApiClient,
  arbitratorId: string,
  currentSigningKey: KeyObject,
  next: { signingKey?: KeyObject; encryptionPublicKey?: KeyObject },
): Promise<ArbitratorJson> {
  if (!next.signingKey && !next.encryptionPublicKey) throw new RecoveryClientError("a rotation needs a new signing key, a new encryption key, or both");
  const a = await client.arbitrator(arbitratorId);
  const signingPublicKey = fromBase64(a.signingPublicKey, "signingPublicKey");
  const encryptionPublicKey = fromBase64(a.encryptionPublicKey, "encryptionPublicKey");
  if (keyIdOf(currentSigningKey) !== createHash("sha256").update(signingPublicKey).digest("hex"))
    throw new RecoveryClientError(`the signing key given is not ${arbitratorId}'s current signing key (version ${a.keyVersion}); nothing signed`);
  const enc = next.encryptionPublicKey && (next.encryptionPublicKey.type === "private" ? createPublicKey(next.encryptionPublicKey) : next.encryptionPublicKey);
  const rotation = signKeyRotation({ arbitrator: arbitratorId, keyVersion: a.keyVersion, signingPublicKey, encryptionPublicKey }, currentSigningKey, {
    signingKey: next.signingKey,
    encryptionPublicKey: enc,
  });
  return client.rotateArbitratorKeys(arbitratorId, rotation);
}

/** Step S6, refusing with a reason (signed; releases nothing). */
export async function refuseRequest(client: RecoveryApiClient, arbitratorId: string, requestId: string, signingKey: KeyObject, reason: string): Promise<RequestJson> {
  if (typeof reason !== "string" || !reason.trim()) throw new RecoveryClientError("a refusal states its reason");
  const item = await pendingItem(client, arbitratorId, requestId, "decide");
  const refusal = signApproval(item.request.request, item.request.chainHead, { arbitrator: arbitratorId, decision: "refuse", reason }, signingKey);
  return client.refuse(requestId, refusal);
}

/** FIG. 9 condition 15: the policy's author signs the list of approvers of the satisfied chain. */
export async function signApproverListFor(client: RecoveryApiClient, author: string, requestId: string, signingKey: KeyObject): Promise<RequestJson> {
  const item = await pendingItem(client, author, requestId, "sign-approver-list");
  const list = signApproverList(item.request.request, item.request.approvals, author, signingKey);
  return client.submitApproverList(requestId, list);
}
