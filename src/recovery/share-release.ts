// Shares released to the reproduction device (seed 001 embodiment 3, steps S6 and S8, FIG. 10 unit 21).
//
// Release of shares: the seed sends each arbitrator's partial data to the reproduction device; here an arbitrator
// seals its opened share to the reproduction device's P-256 key pair (REPRODUCTION_DEVICE_KEY_LABEL, generated in
// custody, never extractable): ECDH with an ephemeral key, HKDF-SHA256, AES-256-GCM whose additional data is the
// release header (request, escrow, card, share, arbitrator, device key). The service opens a release only with
// custody's ECDH (KeyCustody.decipher), when it checks it against the share's commitment at approval time and when
// it reproduces; the stored releases are sealed.
//
// The arbitrator's side (releaseShare, releaseSharesFor) runs wherever the arbitrator opens its envelopes; the
// service's side checks a release when it is recorded (checkReleases) and opens it (openRelease) with custody's ECDH.
// Never: a share value in the DB, the audit log or an error: only sealed releases are stored, and an opened value
// is wiped by whoever opened it (checkReleases here, reproduce in reproduction.ts).

import { createPublicKey } from "node:crypto";
import { CustodyError } from "../custody/custody.ts";
import type { ReproductionRequest } from "./approvals.ts";
import { openWithSecret, sealTo, type SealedBox } from "./ecies.ts";
import { bytesEqual, canonicalJson, fromB64 } from "./encoding.ts";
import { RecoveryError } from "./errors.ts";
import { uncompressedPoint } from "./registry.ts";
import type { ServiceRequest } from "./requests.ts";
import { isObject, p256FromSpki, sha256Hex } from "./checks.ts";
import type { ServiceContext } from "./service-context.ts";
import { RecoveryServiceError } from "./service-errors.ts";
import { shareCommitment, type EscrowRecord, type ReleasedShare, type ShareEnvelope } from "./shares.ts";

export interface ShareReleaseHeader {
  format: "cardkms.recovery.release/1";
  requestId: string;
  escrowId: string;
  cardId: string;
  shareId: string;
  arbitrator: string;
  /** SHA-256 of the reproduction device key's SPKI, hex. */
  deviceKeyId: string;
}

/** A share an approver releases for one request, sealed to the reproduction device (header authenticated). */
export interface ShareRelease {
  header: ShareReleaseHeader;
  box: SealedBox;
}

// ---------------------------------------------------------------------------------------------------------------
// The seal: ecies.ts (ECDH with the device key, HKDF-SHA256, AES-256-GCM) under its own HKDF label, over the release header

const RELEASE_INFO = Buffer.from("cardkms/recovery/release-to-device/v1");
const releaseAad = (h: ShareReleaseHeader): Buffer => Buffer.from(canonicalJson(h));

// ---------------------------------------------------------------------------------------------------------------
// The arbitrator's side

/**
 * On the arbitrator's side (step S6): seals a share it opened (openShare) to the reproduction device's public key
 * (RecoveryService.deviceKey), for one request. The value is not modified; the caller wipes it.
 */
export function releaseShare(request: Pick<ReproductionRequest, "requestId">, share: ReleasedShare, devicePublicKey: Uint8Array): ShareRelease {
  const device = p256FromSpki(devicePublicKey, "the reproduction device key");
  const point = uncompressedPoint(device);
  const header: ShareReleaseHeader = {
    format: "cardkms.recovery.release/1",
    requestId: request.requestId,
    escrowId: share.escrowId,
    cardId: share.cardId,
    shareId: share.shareId,
    arbitrator: share.arbitrator,
    deviceKeyId: sha256Hex(devicePublicKey),
  };
  return { header, box: sealTo(point, share.value, releaseAad(header), RELEASE_INFO) };
}

/** Convenience for an arbitrator's side: opens its envelopes of a request's card and releases them to the device. */
export function releaseSharesFor(
  request: Pick<ReproductionRequest, "requestId" | "escrowId" | "cardId">,
  envelopes: readonly ShareEnvelope[],
  open: (e: ShareEnvelope) => ReleasedShare,
  devicePublicKey: Uint8Array,
): ShareRelease[] {
  const out: ShareRelease[] = [];
  for (const env of envelopes) {
    if (env.header.escrowId !== request.escrowId || env.header.cardId !== request.cardId) continue;
    const s = open(env);
    try {
      out.push(releaseShare(request, s, devicePublicKey));
    } finally {
      s.value.fill(0);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// The service's side

/** The reproduction device's public key, which arbitrators release their shares to (releaseShare). */
export function deviceKey(ctx: ServiceContext): { spki: Uint8Array; keyId: string } {
  return { spki: ctx.deviceSpki.slice(), keyId: sha256Hex(ctx.deviceSpki) };
}

/**
 * The releases of an approver: exactly one per share it holds in the escrow, each for this request, card and
 * escrow, opening under the device key and matching the share's commitment. Values are wiped after the check.
 */
export async function checkReleases(ctx: ServiceContext, request: ServiceRequest, escrow: EscrowRecord, arbitrator: string, releases: readonly ShareRelease[]): Promise<ShareRelease[]> {
  const held = new Map(escrow.shares.filter((d) => d.arbitrator === arbitrator).map((d) => [d.shareId, d]));
  const all = new Map(escrow.shares.map((d) => [d.shareId, d]));
  const salt = fromB64(escrow.salt, "salt");
  const seen = new Set<string>();
  const out: ShareRelease[] = [];
  for (const [i, r] of releases.entries()) {
    const h = isObject(r) && isObject(r.header) ? (r.header as Partial<ShareReleaseHeader>) : undefined;
    if (!h || h.format !== "cardkms.recovery.release/1" || typeof h.shareId !== "string" || typeof h.arbitrator !== "string" || !isObject(r.box))
      throw new RecoveryServiceError("release_invalid", `release ${i} is not a share release`, { index: i });
    const details = { shareId: h.shareId, arbitrator: h.arbitrator, requestId: request.requestId };
    if (h.requestId !== request.requestId)
      throw new RecoveryError("replayed_from_other_request", `share ${h.shareId} was released for request ${String(h.requestId)}, not ${request.requestId}`, details);
    if (h.cardId !== request.cardId) throw new RecoveryError("share_other_card", `share ${h.shareId} from ${h.arbitrator} belongs to card ${String(h.cardId)}, not ${request.cardId}`, details);
    if (h.escrowId !== escrow.escrowId)
      throw new RecoveryError("share_other_escrow", `share ${h.shareId} from ${h.arbitrator} belongs to escrow ${String(h.escrowId)}, not ${escrow.escrowId}`, details);
    if (h.arbitrator !== arbitrator) throw new RecoveryError("share_wrong_arbitrator", `share ${h.shareId} was released by ${h.arbitrator}, not by the approver ${arbitrator}`, details);
    const d = all.get(h.shareId);
    if (!d) throw new RecoveryError("share_unknown", `escrow ${escrow.escrowId} has no share ${h.shareId}`, details);
    if (!held.has(h.shareId)) throw new RecoveryError("share_wrong_arbitrator", `share ${h.shareId} is ${d.arbitrator}'s, not ${arbitrator}'s`, details);
    if (seen.has(h.shareId)) throw new RecoveryError("share_duplicate", `share ${h.shareId} is released twice`, details);
    seen.add(h.shareId);
    if (h.deviceKeyId !== sha256Hex(ctx.deviceSpki)) throw new RecoveryError("share_decrypt_failed", `share ${h.shareId} is sealed to another device key`, details);
    const value = await openRelease(ctx, r);
    if (!value) throw new RecoveryError("share_decrypt_failed", `share ${h.shareId} from ${arbitrator} does not open under the reproduction device's key with its header`, details);
    const ok = bytesEqual(Buffer.from(shareCommitment(escrow, salt, d.shareId, d.arbitrator, value), "hex"), Buffer.from(d.commitment, "hex"));
    value.fill(0);
    if (!ok) throw new RecoveryError("share_commitment_mismatch", `share ${h.shareId} from ${arbitrator} does not match its commitment: wrong or forged`, details);
    out.push({ header: { ...(h as ShareReleaseHeader) }, box: { ...(r.box as SealedBox) } });
  }
  const missing = [...held.keys()].filter((id) => !seen.has(id));
  if (missing.length) throw new RecoveryError("share_missing", `${arbitrator} approves without releasing share(s) ${missing.join(", ")}`, { arbitrator, missing, requestId: request.requestId });
  return out;
}

/** The P-256 SPKI of an uncompressed point (0x04 || X || Y); throws when it is not a point on the curve. */
function spkiOfPoint(point: Uint8Array): Uint8Array {
  if (point.length !== 65 || point[0] !== 4) throw new TypeError("not an uncompressed P-256 point");
  const x = Buffer.from(point.subarray(1, 33)).toString("base64url");
  const y = Buffer.from(point.subarray(33)).toString("base64url");
  return new Uint8Array(createPublicKey({ key: { kty: "EC", crv: "P-256", x, y }, format: "jwk" }).export({ format: "der", type: "spki" }));
}

/** Opens a release with the device key's ECDH in custody; undefined when it does not open. */
export async function openRelease(ctx: ServiceContext, r: ShareRelease): Promise<Uint8Array | undefined> {
  let z: Uint8Array | undefined;
  try {
    const epk = Buffer.from(r.box.epk, "base64");
    let peer: Uint8Array;
    try {
      peer = spkiOfPoint(epk);
    } catch {
      return undefined;
    }
    z = await ctx.custody.decipher(ctx.deviceLabel, peer);
    return openWithSecret(z, epk, uncompressedPoint(p256FromSpki(ctx.deviceSpki, "the device key")), r.box, releaseAad(r.header), RELEASE_INFO);
  } catch (e) {
    if (e instanceof CustodyError && e.code !== "WRONG_KEY" && e.code !== "INVALID_ARGUMENT") throw e;
    return undefined;
  } finally {
    z?.fill(0);
  }
}
