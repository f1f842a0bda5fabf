// The back-up device's domain (seed 001 FIG. 11-12, claims 41, 48): its refusals, its storage port, what it
// accepts and its wire shapes. No storage, HTTP or CLI here (store/, server/, terminal/ build on it).

export { BackupError } from "./errors.ts";
export { checkNewBackup, MAX_ENVELOPE_BYTES, OBJECT_ID, OBJECT_ID_PATTERN, type EnvelopeFacts } from "./objects.ts";
export type { BackupInfo, BackupRecord, BackupStore, NewBackup, PutResult } from "./repository.ts";
export { BackupInfoJson, BackupRecordJson, EnvelopeB64, MAX_ENVELOPE_BASE64 } from "./wire.ts";
