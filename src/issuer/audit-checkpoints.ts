// Signed checkpoints of the audit log (issue 15 §3): the hash chain (src/store/audit.ts) shows that the stored log
// is consistent with itself, but anyone who can write the database can cut it short or rewrite its tail and
// recompute every hash. A checkpoint commits to the first n entries with a key the database does not hold: a C2SP
// tlog-checkpoint signed note (src/tlog/note.ts) over the RFC 9162 tree head (src/tlog/merkle.ts) whose leaves are
// the entries' chain hashes, signed by `audit-checkpoint`, a P-256 key in custody (an HSM can hold it). Checkpoints
// are made on a schedule and on demand and sent outside the server (a file, the webhook event
// "audit.checkpoint", an auditor's pull), so the latest one survives a compromise of the database; whoever holds
// one can later prove that the current log extends it, or find where it does not (`cardkms audit verify
// --checkpoint`, `cardkms audit pull`).
//
// A checkpoint is made only over a log that verifies, and that extends the newest checkpoint on record: a log cut
// short, or rewritten under an existing checkpoint, is never signed — the refusal is audited and notified.

import type { KeyCustody } from "../custody/custody.ts";
import { CustodyError } from "../custody/custody.ts";
import type { AuditCheckpointRecords, AuditCheckpointStore, IssuerStore } from "./ports.ts";
import type { StoredCheckpoint } from "./records.ts";
import { consistencyProof, equalHash, leafHash, treeHead, type Hash } from "../tlog/merkle.ts";
import { ecdsaKeyId, formatCheckpoint, signNote, verifierKey } from "../tlog/note.ts";
import { writeFileAtomic } from "../util/files.ts";
import { DomainError, type ProblemShape } from "../util/errors.ts";

export type { StoredCheckpoint } from "./records.ts";

/** Custody label of the checkpoint signing key (P-256, sign only, never extractable). */
export const AUDIT_CHECKPOINT_KEY = "audit-checkpoint";

/** A DomainError: invalid for a bad request, else a conflict answered as 409 audit-not-extended naming the check. */
export class AuditCheckpointError extends DomainError {
  constructor(
    /** log-broken: the chain does not verify; not-extended: the log no longer extends the newest checkpoint;
     *  invalid: a bad request (sizes). */
    override readonly check: "log-broken" | "not-extended" | "invalid",
    message: string,
  ) {
    super(check === "invalid" ? "invalid" : "conflict", check, message);
    this.name = "AuditCheckpointError";
  }

  override problem(): ProblemShape | undefined {
    return this.kind === "conflict" ? { type: "audit-not-extended", title: "The audit log does not extend its newest checkpoint" } : undefined;
  }
}

/** Where a new checkpoint is sent (a file, an event): after it is recorded; a failure is reported, not thrown. */
export type CheckpointPublisher = (c: StoredCheckpoint, origin: string) => Promise<void>;

export interface AuditCheckpointsOptions {
  /** The audit log, its checkpoints and their verification (ports.ts; the wiring hands it the Store). */
  store: AuditCheckpointStore;
  custody: KeyCustody;
  /** The log's name in its checkpoints and the signing key's name; default cardkms/audit/<key ID>. */
  origin?: string;
  keyLabel?: string;
  publishers?: CheckpointPublisher[];
  now?: () => number;
  /** A publisher's failure (the checkpoint is recorded all the same). */
  onPublishError?: (e: unknown) => void;
}

/** The leaf of the audit log's tree for an entry: its chain hash (64 hex digits) as 32 bytes. */
export function auditLeaf(chainHash: string): Hash {
  return leafHash(Buffer.from(chainHash, "hex"));
}

export class AuditCheckpoints {
  private readonly repo: AuditCheckpointRecords;

  private constructor(
    private readonly o: AuditCheckpointsOptions & { keyLabel: string },
    readonly origin: string,
    /** The signing key's SubjectPublicKeyInfo. */
    readonly spki: Uint8Array,
  ) {
    this.repo = o.store.auditCheckpoints;
  }

  /** Creates the signing key in custody on first use (never extractable, sign only). */
  static async open(o: AuditCheckpointsOptions): Promise<AuditCheckpoints> {
    const keyLabel = o.keyLabel ?? AUDIT_CHECKPOINT_KEY;
    if (!(await o.custody.hasKey(keyLabel))) {
      try {
        await o.custody.generateKeyPair(keyLabel, "P256", { extractable: "never", usage: ["sign"] });
      } catch (e) {
        if (!(e instanceof CustodyError && e.code === "EXISTS")) throw e; // another process made it meanwhile
      }
    }
    const info = await o.custody.keyInfo(keyLabel);
    if (info?.kind !== "keyPair" || info.type !== "P256" || info.extractable !== "never") throw new Error(`custody key ${keyLabel} is not a never-extractable P-256 key pair`);
    const spki = await o.custody.publicKey(keyLabel);
    const origin = o.origin ?? `cardkms/audit/${ecdsaKeyId(spki).toString(16).padStart(8, "0")}`;
    return new AuditCheckpoints({ ...o, keyLabel }, origin, spki);
  }

  /** What an auditor pins to check checkpoints: `<origin>+<key ID>+<base64 key>` (src/tlog/note.ts). */
  get verifierKey(): string {
    return verifierKey(this.origin, this.spki);
  }

  async latest(): Promise<StoredCheckpoint | undefined> {
    return this.repo.latest();
  }

  /** The leaves of the first `upTo` entries (all), and how many there are. */
  async leaves(upTo?: number): Promise<{ leaves: Hash[]; hashes: string[] }> {
    const rows = await this.repo.chainHashes(upTo);
    return { leaves: rows.map((r) => auditLeaf(r.hash)), hashes: rows.map((r) => r.hash) };
  }

  /**
   * A checkpoint of the log as it is now: verified first (the chain, and that it extends the newest checkpoint on
   * record), then signed, recorded and published. With `ifGrown`, no new checkpoint when nothing was appended
   * since the newest (it is returned, `made` false).
   */
  async make(opts: { actor: string; ifGrown?: boolean }): Promise<{ checkpoint: StoredCheckpoint; made: boolean }> {
    const { leaves, hashes } = await this.leaves();
    const n = leaves.length;
    const previous = await this.repo.latest();
    if (opts.ifGrown && previous && previous.size === n) return { checkpoint: previous, made: false };
    // The chain, up to and including the entry this snapshot ends with (entries appended meanwhile are not signed).
    const v = await this.o.store.verifyAuditLog({ expectedHead: n > 0 ? { seq: n, hash: hashes[n - 1] } : null });
    if (!v.ok) return this.refuse(opts.actor, "log-broken", `the audit log does not verify (entry ${v.seq}: ${v.message}); no checkpoint is signed over it`, { seq: v.seq });
    if (previous) {
      if (previous.size > n)
        return this.refuse(opts.actor, "not-extended", `the audit log holds ${n} entries, fewer than the ${previous.size} of the newest checkpoint: it was cut short after entry ${n}`, {
          seq: n + 1,
        });
      if (!equalHash(treeHead(leaves, previous.size), Buffer.from(previous.rootHash, "hex")))
        return this.refuse(opts.actor, "not-extended", `the first ${previous.size} audit entries no longer hash to the newest checkpoint's root: the log was rewritten under it`, {
          size: previous.size,
        });
    }
    const root = treeHead(leaves);
    const text = formatCheckpoint({ origin: this.origin, size: n, rootHash: root, extensions: [] });
    const note = await signNote(text, [{ name: this.origin, keyId: ecdsaKeyId(this.spki), sign: (t) => this.o.custody.sign(this.o.keyLabel, t, { hash: "SHA-256" }) }]);
    const checkpoint: StoredCheckpoint = { size: n, rootHash: Buffer.from(root).toString("hex"), note, createdAt: (this.o.now ?? Date.now)() };
    await this.repo.add(checkpoint);
    const recorded = (await this.repo.bySize(n)) ?? checkpoint; // another server may have recorded this size first
    for (const p of this.o.publishers ?? []) {
      try {
        await p(recorded, this.origin);
      } catch (e) {
        this.o.onPublishError?.(e);
      }
    }
    return { checkpoint: recorded, made: true };
  }

  private async refuse(actor: string, check: "log-broken" | "not-extended", message: string, details: { [k: string]: number }): Promise<never> {
    try {
      await this.o.store.audit({ actor, action: "audit.checkpoint.refused", subject: this.origin, details: { check, ...details } });
    } catch {
      // the log itself may be what is broken; the refusal is thrown either way
    }
    throw new AuditCheckpointError(check, message);
  }

  /** RFC 9162 consistency proof from the tree of the first `from` entries to that of the first `to` (≤ the log). */
  async consistency(from: number, to: number): Promise<Hash[]> {
    if (!Number.isSafeInteger(from) || !Number.isSafeInteger(to) || from < 0 || from > to)
      throw new AuditCheckpointError("invalid", `a consistency proof goes from a smaller tree to a larger one, not ${from} → ${to}`);
    const { leaves } = await this.leaves(to);
    if (leaves.length < to) throw new AuditCheckpointError("invalid", `the audit log holds ${leaves.length} entries, not ${to}`);
    return consistencyProof(leaves, from, to);
  }
}

/** A publisher writing the newest checkpoint to `path` (owner-only, replaced atomically; what an operator ships away). */
export function fileCheckpointPublisher(path: string): CheckpointPublisher {
  return async (c) => writeFileAtomic(path, c.note);
}

/** A publisher sending every new checkpoint as the event audit.checkpoint (the webhooks' outbox, delivered at least once). */
export function eventCheckpointPublisher(store: IssuerStore): CheckpointPublisher {
  return async (c, origin) => {
    await store.enqueueEvent({
      type: "audit.checkpoint",
      subject: origin,
      payload: { origin, size: c.size, rootHash: Buffer.from(c.rootHash, "hex").toString("base64"), note: c.note },
      dedupKey: `audit-checkpoint:${origin}:${c.size}`,
    });
  };
}
