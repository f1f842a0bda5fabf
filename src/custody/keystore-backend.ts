// Where the software keystore keeps its entries (issue 16 §3): one interface, two places.
//   file   keystore-file-backend.ts: the JSON file of keystore-file.ts, safe for several processes on one machine
//          (an exclusive lock file around each read-merge-write)
//   store  src/store/custody-keystore.ts: the server's database (SQLite or PostgreSQL), one row per key and one header
//          row, shared by every server on that database
// A backend only keeps sealed entries (keystore-file.ts: AES-256-GCM under the KEK, bound to label and metadata): it
// never sees the KEK or a key in clear, and it is never asked to decide anything about them. Writes are per key:
// insert a label (refused when it is taken: the label is unique across every process sharing the backend), remove
// one; there is no whole-document rewrite.

import type { Extractability, KeyPairAlg, PairUsage, SecretKeyUsage } from "./custody.ts";

export interface Sealed {
  iv: string;
  ct: string;
}

export interface EntryMeta {
  kind: "secret" | "keyPair";
  type: "aes" | KeyPairAlg;
  bits?: number;
  usage?: SecretKeyUsage[];
  /** What a key pair's private half may do (custody.ts PairUsage); absent on entries made before it: both. */
  pairUsage?: PairUsage[];
  extractable: Extractability;
  /** Public key of a key pair, SPKI DER base64 (not secret). */
  spki?: string;
  created: string;
}

export interface Entry extends EntryMeta {
  secret: Sealed;
}

export type KekInfo = { source: "raw" } | { source: "scrypt"; salt: string; N: number; r: number; p: number };

/** What opens a keystore wherever it is kept (keystore-backend.ts): its identity, how the KEK is made, the check value. */
export interface KeystoreHeader {
  format: "cardkms-keystore/1";
  /** Random identity (issue 16 §3), recorded in the database; files written before it get one when next opened. */
  id: string;
  kek: KekInfo;
  check: Sealed;
}

export interface KeystoreBackend {
  /** "file" or "store" (recorded in the database beside the keystore id, issue 16 §3). */
  readonly kind: "file" | "store";
  /** Where, for messages: the file's path, or "the store". */
  readonly where: string;
  /** The header, or undefined when no keystore was created here yet. */
  readHeader(): Promise<KeystoreHeader | undefined>;
  /** Creates the header unless one exists; returns the header in force (another process's, when it came first). */
  createHeader(header: KeystoreHeader): Promise<KeystoreHeader>;
  /** The sealed entry under `label`, read from where it is kept (not from a cache older than this call). */
  get(label: string): Promise<Entry | undefined>;
  /** Every sealed entry by label. */
  all(): Promise<Record<string, Entry>>;
  /** Adds an entry; false (nothing written) when the label is taken. */
  insert(label: string, entry: Entry): Promise<boolean>;
  /** Removes an entry; false when there was none. */
  remove(label: string): Promise<boolean>;
  /** Releases what the backend holds (the store backend: nothing; the database belongs to the server). */
  close(): Promise<void>;
}
