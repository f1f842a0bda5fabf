// Fixtures for the reproduction module's tests and bench: arbitrators with fresh key pairs, the FIG. 9 policy,
// requests and chains of signed decisions. Test-only: the arbitrators' private keys live here, in one process.

import { type KeyObject, generateKeyPairSync, randomBytes } from "node:crypto";
import type { KeyCustody, KeySetRef } from "../../src/custody/custody.ts";
import type { CardStatus, Db } from "../../src/store/db.ts";
import { Store } from "../../src/store/store.ts";
import { ArbitratorRegistry } from "../../src/recovery/registry.ts";
import type { ReproductionPolicy } from "../../src/recovery/policy.ts";
import { type Approval, type ReproductionRequest, signApproval } from "../../src/recovery/approvals.ts";
import { type ReleasedShare, type ShareEnvelope, openShare } from "../../src/recovery/shares.ts";
import type { RecoveryService } from "../../src/recovery/service.ts";

export interface ArbitratorKeys {
  signing: KeyObject;
  encryption: KeyObject;
}

export function makeArbitrators(ids: readonly string[], registry = new ArbitratorRegistry()): { registry: ArbitratorRegistry; keys: Map<string, ArbitratorKeys> } {
  const keys = new Map<string, ArbitratorKeys>();
  for (const id of ids) {
    const s = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const e = generateKeyPairSync("ec", { namedCurve: "P-256" });
    registry.register({ id, signingPublicKey: s.publicKey, encryptionPublicKey: e.publicKey });
    keys.set(id, { signing: s.privateKey, encryption: e.privateKey });
  }
  return { registry, keys };
}

/** FIG. 9's ten arbitrators. */
export const FIG9_ARBITRATORS = ["user", "credit-co", "sp-a", "sp-b", "sp-c", "mgr-a", "mgr-b", "mgr-c", "mgr-d", "mgr-e"] as const;

/**
 * FIG. 9: the user indispensable (condition 11); the credit company, after the user (condition 12); any 1 of the
 * service providers (13); any 2 of the issuing-apparatus managers (14); the list drawn up by a manager (15).
 */
export function fig9Policy(): ReproductionPolicy {
  return {
    version: 1,
    author: "mgr-a",
    indispensable: ["user", "credit-co"],
    groups: [
      { name: "service-providers", members: ["sp-a", "sp-b", "sp-c"], threshold: 1 },
      { name: "issuing-apparatus-managers", members: ["mgr-a", "mgr-b", "mgr-c", "mgr-d", "mgr-e"], threshold: 2 },
    ],
    order: [{ before: "user", after: "credit-co" }],
  };
}

export function makeRequest(policy: ReproductionPolicy, over: Partial<ReproductionRequest> = {}): ReproductionRequest {
  return {
    format: "cardkms.recovery.request/1",
    requestId: "req-1",
    escrowId: "esc-1",
    cardId: "card-1",
    policy,
    requester: policy.indispensable[0] ?? "user",
    reason: "card lost",
    filedAt: "2024-05-01T09:00:00Z",
    ...over,
  };
}

/** Signs `decisions` in order, each chained after the previous ones. */
export function signDecisions(
  request: ReproductionRequest,
  decisions: readonly { arbitrator: string; decision: "approve" | "refuse"; reason?: string }[],
  keys: Map<string, ArbitratorKeys>,
): Approval[] {
  const out: Approval[] = [];
  decisions.forEach((d, i) => out.push(signApproval(request, out, { ...d, decidedAt: new Date(Date.UTC(2024, 4, 1, 10, 0, i)).toISOString() }, keys.get(d.arbitrator)!.signing)));
  return out;
}

/** The shares each of `who` releases: every envelope addressed to them, opened with their key. */
export function releaseShares(envelopes: readonly ShareEnvelope[], who: Iterable<string>, keys: Map<string, ArbitratorKeys>, expected: { escrowId: string; cardId: string }): ReleasedShare[] {
  const set = new Set(who);
  return envelopes.filter((e) => set.has(e.header.arbitrator)).map((e) => openShare(e, keys.get(e.header.arbitrator)!.encryption, expected));
}

/**
 * Step S3 without a card: sets `cardId`'s policy, generates a P-256 key pair `keyLabel` in custody as the key
 * generation device does, and escrows it with a random secret ID and a placeholder certificate (enough where the
 * key is not written into a card). The key pair stays in custody; the secret ID is returned.
 */
export async function escrowWithoutCard(
  svc: RecoveryService,
  custody: KeyCustody,
  o: { cardId: string; policy: ReproductionPolicy; keyLabel: string; keySetCardId?: string },
): Promise<{ escrowId: string; secretId: Uint8Array }> {
  await svc.setPolicy(o.cardId, o.policy, "operator");
  await custody.generateKeyPair(o.keyLabel, "P256", { extractable: "wrapped", ephemeral: true });
  const secretId = new Uint8Array(randomBytes(16));
  const { escrowId } = await svc.escrow(
    {
      cardId: o.cardId,
      applicantId: "user-1",
      keyLabel: o.keyLabel,
      alg: "P256",
      slot: "9c",
      spki: await custody.publicKey(o.keyLabel),
      certificate: new Uint8Array(randomBytes(64)),
      serial: "7f01",
      keySet: { kind: "derived", master: "card-master", cardId: o.keySetCardId ?? randomBytes(8).toString("hex"), kvn: 1 },
      deviceSecretId: secretId,
    },
    "keygen-device",
  );
  return { escrowId, secretId };
}

/**
 * An issuer card record for the reproduction tests that run without the issuer: user `userId` (created when
 * missing), card `cardId` issued to it (active by default, valid 2000-2100), its current key set `keySet` — the
 * one its card is reached with. A reproduction writes only into such a record's card (target.ts).
 */
export async function registerCardRecord(db: Db, o: { cardId: string; userId: string; keySet?: KeySetRef; status?: CardStatus }): Promise<KeySetRef> {
  const store = new Store(db);
  if (!(await store.getUser(o.userId))) await store.createUser({ id: o.userId, personalData: { commonName: o.userId } });
  const validity = { validFrom: Date.UTC(2000, 0, 1), validUntil: Date.UTC(2100, 0, 1) };
  await store.registerCard({ id: o.cardId, userId: o.userId, status: o.status ?? "active", ...validity });
  const keySet: KeySetRef = o.keySet ?? { kind: "derived", master: "card-master", cardId: randomBytes(8).toString("hex"), kvn: 1 };
  await store.addKeySet({ cardId: o.cardId, kvn: keySet.kvn, version: 1, custodyRef: JSON.stringify(keySet), makeCurrent: true, ...validity });
  return keySet;
}
