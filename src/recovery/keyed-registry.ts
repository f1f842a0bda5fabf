// Arbitrators with their key history, for verifying recorded signatures (seed 001 embodiment 3, steps S6-S8).
// Arbitrators' keys rotate (key-rotation.ts) and every version is kept: an approval or approver list is re-verified
// with the key version that verified it when it was recorded, so chains recorded before a rotation still verify.

import type { RecoveryRepository } from "./ports.ts";
import type { ApprovalRecord, ArbitratorKeyRecord, ArbitratorRecord, RequestRecord } from "./records.ts";
import { ArbitratorRegistry, type Arbitrator } from "./registry.ts";
import type { ServiceRequest } from "./target.ts";

/**
 * The registered arbitrators (deregistered ones included: their recorded decisions stay verifiable and the
 * policies naming them stay valid) with their current keys, plus their earlier key versions. A chain recorded
 * across a rotation is verified with the key version that verified each signature when it was recorded:
 * `pinDecision(id, v)` makes get(id) — what ApprovalChain looks an approval's signer up with — answer version v,
 * `pinList(id, v)` makes require(id) — what verifyApproverList looks the list's author up with — answer version v.
 * An arbitrator decides once per request, so one decision pin per arbitrator is exact; the author's list may have
 * been signed with another version than its own decision (a rotation in between), hence the separate list pin.
 * Unpinned, both answer the current keys. Used per verification, never shared.
 */
export class KeyedRegistry extends ArbitratorRegistry {
  readonly #versions = new Map<string, Map<number, ArbitratorKeyRecord>>();
  readonly #records = new Map<string, ArbitratorRecord>();
  readonly #decisionPins = new Map<string, Arbitrator>();
  readonly #listPins = new Map<string, Arbitrator>();

  constructor(records: readonly ArbitratorRecord[], keys: readonly ArbitratorKeyRecord[]) {
    super();
    for (const a of records) {
      this.register({ id: a.id, role: a.roles.join(", ") || undefined, displayName: a.displayName, signingPublicKey: a.signingPublicKey, encryptionPublicKey: a.encryptionPublicKey });
      this.#records.set(a.id, a);
    }
    for (const k of keys) {
      let m = this.#versions.get(k.arbitratorId);
      if (!m) this.#versions.set(k.arbitratorId, (m = new Map()));
      m.set(k.version, k);
    }
  }

  record(id: string): ArbitratorRecord | undefined {
    return this.#records.get(id);
  }

  isDisabled(id: string): boolean {
    return this.#records.get(id)?.disabledAt !== undefined;
  }

  disabledIds(): string[] {
    return [...this.#records.values()].filter((a) => a.disabledAt !== undefined).map((a) => a.id);
  }

  currentVersion(id: string): number {
    return this.#records.get(id)?.keyVersion ?? 1;
  }

  #at(id: string, version: number): Arbitrator {
    const a = this.#records.get(id);
    const k = this.#versions.get(id)?.get(version);
    if (!a || !k) throw new Error(`arbitrator ${id} has no key version ${version}`);
    return new ArbitratorRegistry().register({
      id,
      role: a.roles.join(", ") || undefined,
      displayName: a.displayName,
      signingPublicKey: k.signingPublicKey,
      encryptionPublicKey: k.encryptionPublicKey,
    });
  }

  /** Pins each recorded decision's signer to the version that verified it (absent: 1, from before versions). */
  pinDecisions(rows: readonly ApprovalRecord[]): this {
    for (const r of rows) if (this.#records.has(r.arbitratorId)) this.pinDecision(r.arbitratorId, r.signingKeyVersion ?? 1);
    return this;
  }

  pinDecision(id: string, version: number): this {
    if (version === this.currentVersion(id)) this.#decisionPins.delete(id);
    else this.#decisionPins.set(id, this.#at(id, version));
    return this;
  }

  unpinDecision(id: string): this {
    this.#decisionPins.delete(id);
    return this;
  }

  pinList(id: string, version: number): this {
    if (version === this.currentVersion(id)) this.#listPins.delete(id);
    else this.#listPins.set(id, this.#at(id, version));
    return this;
  }

  override get(id: string): Arbitrator | undefined {
    return this.#decisionPins.get(id) ?? super.get(id);
  }

  override require(id: string): Arbitrator {
    return this.#listPins.get(id) ?? super.require(id);
  }
}

/**
 * Every arbitrator with its current keys (deregistered ones included) and the key history of `historyOf` (every
 * arbitrator's without it). Pin versions (KeyedRegistry) before verifying recorded signatures.
 */
export async function keyedRegistry(repo: RecoveryRepository, historyOf?: readonly string[]): Promise<KeyedRegistry> {
  return new KeyedRegistry(await repo.arbitrators(), await repo.arbitratorKeys(historyOf && [...new Set(historyOf)]));
}

/** The registry for re-verifying a request's recorded chain (and approver list): every signer pinned. */
export async function chainRegistry(repo: RecoveryRepository, rec: RequestRecord, rows: readonly ApprovalRecord[]): Promise<KeyedRegistry> {
  const author = (JSON.parse(rec.request) as ServiceRequest).policy.author;
  const reg = (await keyedRegistry(repo, [...rows.map((r) => r.arbitratorId), author])).pinDecisions(rows);
  if (rec.approverList !== null && reg.record(author)) reg.pinList(author, rec.approverListKeyVersion ?? 1);
  return reg;
}
