// The back-up device 8 over HTTP (seed 001 FIG. 11-12, claims 41, 48): HttpBackupTarget is a BackupTarget
// (backup.ts) on the issuer's backup routes (src/server/backup-routes.ts), through one card — the card in the path
// names the user whose backups these are, and a card-bound terminal token (the card proved itself: terminal.ts
// authenticate) reaches only its own card's. backup() (S10) puts through it, restore() (S12) reads latestAll.
//
// Nothing received is taken on trust: every envelope must parse as an envelope (enciphered.ts), carry the object
// ID and version asked for, hash to the SHA-256 and name the recipient kid the server states, and belong to the
// user the caller expects; else a BackupClientError names what is wrong (never the bytes). What is sent is checked
// the same way first, so plaintext is never uploaded by mistake. Envelopes are ciphertext; this module deciphers
// nothing and logs nothing.

import { createHash } from "node:crypto";
import type { BackupInfoJson } from "../backup/wire.ts";
import { MAX_ENVELOPE_BYTES } from "../protocol/enciphered.ts";
import { base64Of, fromBase64, type IssuerApiClient } from "./api-client.ts";
import { OBJECT_ID, type BackupTarget } from "./backup.ts";
import { EncipheredError, parseEnvelope } from "../protocol/enciphered.ts";

/** A stored version as the server shows it (no envelope): the wire shape of src/backup/wire.ts. */
export type { BackupInfoJson };

/** A stored version with its envelope, checked. */
export interface FetchedBackup extends BackupInfoJson {
  envelope: Uint8Array;
}

export interface BackupList {
  /** The card the list was asked through. */
  cardId: string;
  /** Its user: whose backups these are. */
  userId: string;
  backups: BackupInfoJson[];
}

/** What the server answered does not hold up, or what the caller asked cannot be sent. */
export class BackupClientError extends Error {
  override readonly name = "BackupClientError";
}

const HEX64 = /^[0-9a-f]{64}$/;

function seg(id: string, what: string): string {
  // Object IDs' characters are all allowed in a path segment as they are (RFC 3986 pchar): no escaping needed.
  if (typeof id !== "string" || !OBJECT_ID.test(id)) throw new BackupClientError(`${what} must be 1-128 of A-Z a-z 0-9 . _ : @ -, starting with a letter or digit`);
  return id;
}

function cardSeg(cardId: string): string {
  if (typeof cardId !== "string" || !/^([0-9a-f]{2}){8,16}$/.test(cardId)) throw new BackupClientError("card ID must be 8 to 16 bytes of lowercase hex");
  return cardId;
}

/** Refuses what is not an envelope before it leaves this process; its kid. */
function envelopeKid(envelope: Uint8Array, what: string): string {
  if (!(envelope instanceof Uint8Array)) throw new BackupClientError(`${what}: envelope must be bytes`);
  if (envelope.length > MAX_ENVELOPE_BYTES) throw new BackupClientError(`${what}: envelope of ${envelope.length} bytes is over the limit (${MAX_ENVELOPE_BYTES})`);
  try {
    return parseEnvelope(envelope).kid;
  } catch (e) {
    if (e instanceof EncipheredError) throw new BackupClientError(`${what}: only enciphered data is backed up (${e.message})`);
    throw e;
  }
}

function bad(what: string): BackupClientError {
  return new BackupClientError(`the server's answer does not hold up: ${what}`);
}

/** A version's description from the server, every field checked for shape. */
function infoOf(x: unknown, what: string): BackupInfoJson {
  if (typeof x !== "object" || x === null) throw bad(`${what} is not an object`);
  const r = x as Record<string, unknown>;
  const str = (k: string) => {
    if (typeof r[k] !== "string" || !(r[k] as string).length) throw bad(`${what}.${k} is not a string`);
    return r[k] as string;
  };
  const int = (k: string, min: number) => {
    if (!Number.isSafeInteger(r[k]) || (r[k] as number) < min) throw bad(`${what}.${k} is not a whole number >= ${min}`);
    return r[k] as number;
  };
  const objectId = str("objectId");
  if (!OBJECT_ID.test(objectId)) throw bad(`${what}.objectId is not an object ID`);
  const sha256 = str("sha256");
  const recipientKid = str("recipientKid");
  if (!HEX64.test(sha256) || !HEX64.test(recipientKid)) throw bad(`${what}: sha256 and recipientKid must be 64 lowercase hex digits`);
  if (r.cardId !== null && typeof r.cardId !== "string") throw bad(`${what}.cardId is neither a string nor null`);
  return {
    id: str("id"),
    userId: str("userId"),
    cardId: r.cardId as string | null,
    objectId,
    version: int("version", 1),
    sha256,
    recipientKid,
    size: int("size", 0),
    createdAt: int("createdAt", 0),
  };
}

/** A version with its envelope: the envelope parses, and hashes, names its recipient and measures as stated. */
function recordOf(x: unknown, what: string): FetchedBackup {
  const info = infoOf(x, what);
  const env = (x as { envelope?: unknown }).envelope;
  if (typeof env !== "string") throw bad(`${what} (${info.objectId} v${info.version}) has no envelope`);
  let envelope: Uint8Array;
  try {
    envelope = fromBase64(env, `${what}.envelope`);
  } catch {
    throw bad(`${what} (${info.objectId} v${info.version}): the envelope is not base64`);
  }
  let kid: string;
  try {
    kid = parseEnvelope(envelope).kid;
  } catch (e) {
    if (e instanceof EncipheredError) throw bad(`${what} (${info.objectId} v${info.version}) is not an envelope: ${e.message}`);
    throw e;
  }
  if (createHash("sha256").update(envelope).digest("hex") !== info.sha256) throw bad(`${what} (${info.objectId} v${info.version}): the envelope does not hash to the stated sha256`);
  if (kid !== info.recipientKid) throw bad(`${what} (${info.objectId} v${info.version}): the envelope's recipient is not the stated recipientKid`);
  if (envelope.length !== info.size) throw bad(`${what} (${info.objectId} v${info.version}): the envelope is not of the stated size`);
  return { ...info, envelope };
}

function listOf(x: unknown, cardId: string, envelopes: boolean): { userId: string; backups: (BackupInfoJson | FetchedBackup)[] } {
  if (typeof x !== "object" || x === null) throw bad("the list is not an object");
  const r = x as { cardId?: unknown; userId?: unknown; backups?: unknown };
  if (r.cardId !== cardId) throw bad(`the list is for card ${String(r.cardId)}, not ${cardId}`);
  if (typeof r.userId !== "string" || !r.userId) throw bad("the list names no user");
  if (!Array.isArray(r.backups)) throw bad("no backups array");
  const userId = r.userId;
  const backups = r.backups.map((b, i) => {
    const v = envelopes ? recordOf(b, `backups[${i}]`) : infoOf(b, `backups[${i}]`);
    if (v.userId !== userId) throw bad(`backups[${i}] is user ${v.userId}'s, not ${userId}'s`);
    return v;
  });
  return { userId, backups };
}

/**
 * The issuer's backup routes through card `cardId`, as a BackupTarget. `api` carries the token: the card-bound
 * terminal token of this card (UserTerminal.cardClient()), or an operator's.
 */
export class HttpBackupTarget implements BackupTarget {
  readonly cardId: string;

  constructor(
    private readonly api: IssuerApiClient,
    cardId: string,
  ) {
    this.cardId = cardSeg(cardId);
  }

  private path(objectId?: string): string {
    return `/v1/cards/${this.cardId}/backups${objectId === undefined ? "" : `/${seg(objectId, "object ID")}`}`;
  }

  /** Refuses a user other than the card's (when the caller names one). */
  private sameUser(expected: string | undefined, got: string): void {
    if (expected !== undefined && expected !== "" && expected !== got)
      throw new BackupClientError(`card ${this.cardId} is user ${got}'s, not ${expected}'s: back up and restore through one of the user's own cards`);
  }

  /**
   * Step S10 for one object: stores a new version on the server (created), or nothing when the envelope already is
   * the latest version. `userId`, when given, must be the card's user; `cardId`, when given, must be this card.
   */
  async put(input: { userId?: string; cardId?: string | null; objectId: string; envelope: Uint8Array }): Promise<{ backup: BackupInfoJson; created: boolean }> {
    const objectId = seg(input.objectId, "object ID");
    if (input.cardId !== undefined && input.cardId !== null && input.cardId !== this.cardId) throw new BackupClientError(`this target backs up through card ${this.cardId}, not ${input.cardId}`);
    const kid = envelopeKid(input.envelope, `object ${objectId}`);
    const r = await this.api.request<{ backup?: unknown; created?: unknown }>("PUT", this.path(objectId), { envelope: base64Of(input.envelope) });
    if (typeof r?.created !== "boolean") throw bad("no created flag");
    const backup = infoOf(r.backup, "backup");
    this.sameUser(input.userId, backup.userId);
    if (backup.objectId !== objectId) throw bad(`stored object ${backup.objectId}, not ${objectId}`);
    const sha256 = createHash("sha256").update(input.envelope).digest("hex");
    if (backup.sha256 !== sha256 || backup.recipientKid !== kid) throw bad(`the stored version of ${objectId} is not the envelope sent`);
    return { backup, created: r.created };
  }

  /** Every version of the user's objects (one object's with `objectId`), without envelopes. */
  async list(opts: { objectId?: string } = {}): Promise<BackupList> {
    const q = opts.objectId === undefined ? "" : `?objectId=${seg(opts.objectId, "object ID")}`;
    const r = listOf(await this.api.request("GET", this.path() + q), this.cardId, false);
    if (opts.objectId !== undefined && r.backups.some((b) => b.objectId !== opts.objectId)) throw bad(`the list holds objects other than ${opts.objectId}`);
    return { cardId: this.cardId, userId: r.userId, backups: r.backups as BackupInfoJson[] };
  }

  /** The user whose backups these are: the card's user. */
  async userId(): Promise<string> {
    return (await this.list()).userId;
  }

  /** One object: its latest version, or `version`; with its envelope, checked. */
  async get(objectId: string, version?: number): Promise<FetchedBackup> {
    seg(objectId, "object ID");
    if (version !== undefined && (!Number.isSafeInteger(version) || version < 1)) throw new BackupClientError("version must be a whole number >= 1");
    const b = recordOf(await this.api.request("GET", this.path(objectId) + (version === undefined ? "" : `?version=${version}`)), "backup");
    if (b.objectId !== objectId) throw bad(`asked for object ${objectId}, got ${b.objectId}`);
    if (version !== undefined && b.version !== version) throw bad(`asked for version ${version} of ${objectId}, got ${b.version}`);
    return b;
  }

  /**
   * Step S12's source: the latest version of each of the user's objects with its envelope, each checked, one per
   * object. `userId`, when given, must be the card's user (a mismatch is refused, not silently answered).
   */
  async latestAll(userId?: string): Promise<FetchedBackup[]> {
    const r = listOf(await this.api.request("GET", this.path() + "?latest=true"), this.cardId, true);
    this.sameUser(userId, r.userId);
    const seen = new Set<string>();
    for (const b of r.backups) {
      if (seen.has(b.objectId)) throw bad(`object ${b.objectId} appears twice among the latest versions`);
      seen.add(b.objectId);
    }
    return r.backups as FetchedBackup[];
  }
}
