// The back-up device's refusals (seed 001 FIG. 11-12, claims 41, 48): one DomainError (src/util/errors.ts) whose
// code is its kind — invalid (not an envelope, a bad object ID, a card that is not the user's: 400 backup-invalid),
// not_found (no such user or card), conflict (no version number could be taken). Never in a message: an envelope's
// bytes or anything of the plaintext; only IDs and sizes.

import { DomainError, type ProblemShape } from "../util/errors.ts";

export class BackupError extends DomainError {
  constructor(
    readonly code: "invalid" | "not_found" | "conflict",
    message: string,
  ) {
    super(code, code, message);
    this.name = "BackupError";
  }

  override problem(): ProblemShape | undefined {
    return this.code === "invalid" ? { type: "backup-invalid", title: "Invalid backup" } : undefined;
  }
}
