// The back-up device's storage port (seed 001 FIG. 11-12, claims 41, 48): what the backup routes need of the
// store of the user's enciphered objects, versioned. src/store/backup-repository.ts implements it on the system DB
// (SQLite and PostgreSQL); nothing here reads or writes a row.
//
// The rules every implementation keeps: it holds only envelopes (src/protocol/enciphered.ts: checkNewBackup in
// objects.ts refuses anything else), never overwrites a version, and a put of the object's latest envelope again
// adds nothing. Refusals are BackupErrors (errors.ts).

import type { BackupInfoJson } from "./wire.ts";

/** A stored version without its envelope (the wire's BackupInfoJson). */
export type BackupInfo = BackupInfoJson;

export interface BackupRecord extends BackupInfo {
  envelope: Uint8Array;
}

export interface NewBackup {
  userId: string;
  cardId?: string | null;
  objectId: string;
  envelope: Uint8Array;
}

export interface PutResult {
  backup: BackupRecord;
  /** False when the envelope already was the object's latest version (nothing was added). */
  created: boolean;
}

/** The store of the users' enciphered objects. */
export interface BackupStore {
  /**
   * Stores `envelope` as the next version of the user's object (or returns the latest version unchanged when it is
   * the same envelope), audited for `actor`. Refuses what is not an envelope, an unknown user, and a card that is
   * not the user's (BackupError).
   */
  put(input: NewBackup, actor?: string): Promise<PutResult>;
  /** The user's stored versions (no envelopes), by object ID then version; one object's with `objectId`. */
  list(userId: string, opts?: { objectId?: string }): Promise<BackupInfo[]>;
  /** One version of an object. */
  get(userId: string, objectId: string, version: number): Promise<BackupRecord | undefined>;
  /** The latest version of an object. */
  latest(userId: string, objectId: string): Promise<BackupRecord | undefined>;
  /** The latest version of each of the user's objects, by object ID (what a restore brings back). */
  latestAll(userId: string): Promise<BackupRecord[]>;
}
