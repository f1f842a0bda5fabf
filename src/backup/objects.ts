// What the back-up device accepts (seed 001 FIG. 11-12): object IDs, and envelopes only — ciphertext under a
// card's key management key (src/protocol/enciphered.ts) — so that plaintext handed over by mistake is refused
// before it is stored. Pure: the store (src/store/backup-repository.ts) and the routes use it; it stores nothing.

import { createHash } from "node:crypto";
import { EncipheredError, MAX_ENVELOPE_BYTES, parseEnvelope } from "../protocol/enciphered.ts";
import { BackupError } from "./errors.ts";

export { MAX_ENVELOPE_BYTES };

/** Object IDs: 1-128 characters of A-Z a-z 0-9 . _ - : @, starting with a letter or digit (also a safe file name and path segment). */
export const OBJECT_ID_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$";
export const OBJECT_ID = new RegExp(OBJECT_ID_PATTERN);

/** What a new version records of its envelope. */
export interface EnvelopeFacts {
  /** The envelope's kid: SHA-256 of the recipient key's SPKI, hex. */
  kid: string;
  /** SHA-256 of the envelope bytes, hex. */
  sha256: string;
}

/** Checks a new version's object ID and envelope (BackupError invalid); the envelope's kid and hash. */
export function checkNewBackup(input: { objectId: unknown; envelope: unknown }): EnvelopeFacts {
  if (typeof input.objectId !== "string" || !OBJECT_ID.test(input.objectId)) {
    throw new BackupError("invalid", "object ID must be 1-128 of A-Z a-z 0-9 . _ : @ -, starting with a letter or digit");
  }
  if (!(input.envelope instanceof Uint8Array)) throw new BackupError("invalid", "envelope must be bytes");
  if (input.envelope.length > MAX_ENVELOPE_BYTES) throw new BackupError("invalid", `envelope of ${input.envelope.length} bytes is over the limit (${MAX_ENVELOPE_BYTES})`);
  let kid: string;
  try {
    kid = parseEnvelope(input.envelope).kid;
  } catch (e) {
    if (e instanceof EncipheredError) throw new BackupError("invalid", `only enciphered data is backed up: ${e.message}`);
    throw e;
  }
  return { kid, sha256: createHash("sha256").update(input.envelope).digest("hex") };
}
