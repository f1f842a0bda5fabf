// The back-up device's wire shapes (seed 001 FIG. 11-12): what the backup routes (src/server/backup-routes.ts)
// answer and what the terminal's client (src/terminal/backup-client.ts) reads, one TypeBox schema each — the
// route's response schema and the client's type at once. Never here: an envelope's plaintext (there is none on
// the server) or any storage.

import { Type, type Static } from "typebox";
import { MAX_ENVELOPE_BYTES } from "../protocol/enciphered.ts";

/** A stored version as the server shows it, without its envelope. */
export const BackupInfoJson = Type.Object(
  {
    id: Type.String(),
    userId: Type.String(),
    cardId: Type.Union([Type.String(), Type.Null()], { description: "the card the version was backed up through" }),
    objectId: Type.String(),
    version: Type.Integer(),
    sha256: Type.String({ description: "SHA-256 of the envelope bytes, lowercase hex" }),
    recipientKid: Type.String({ description: "the envelope's kid: SHA-256 of the recipient key's SubjectPublicKeyInfo, lowercase hex" }),
    size: Type.Integer({ description: "envelope bytes" }),
    createdAt: Type.Integer(),
  },
  { additionalProperties: false },
);
export type BackupInfoJson = Static<typeof BackupInfoJson>;

/** Base64 (standard alphabet, padded) of up to MAX_ENVELOPE_BYTES bytes. */
export const MAX_ENVELOPE_BASE64 = 4 * Math.ceil(MAX_ENVELOPE_BYTES / 3);

/** An envelope on the wire: its bytes, base64. */
export const EnvelopeB64 = Type.String({
  minLength: 4,
  maxLength: MAX_ENVELOPE_BASE64,
  pattern: "^[A-Za-z0-9+/]*={0,2}$",
  description: "the envelope bytes, base64 (standard alphabet, padded)",
});

/** A stored version with its envelope (base64). */
export const BackupRecordJson = Type.Object({ ...BackupInfoJson.properties, envelope: EnvelopeB64 }, { additionalProperties: false });
export type BackupRecordJson = Static<typeof BackupRecordJson>;
