// Where a card image's at-rest key comes from: a file (--image-key-file) or the CARDKMS_IMAGE_KEY environment
// variable. A value of 64 hex digits is used as raw key bytes; anything else is a passphrase (scrypt).

import { readFileSync } from "node:fs";
import type { ImageSecret } from "../card/eeprom.ts";

export class UsageError extends Error {
  override name = "UsageError";
}

export function parseImageSecret(text: string): ImageSecret {
  const t = text.trim();
  if (/^[0-9a-fA-F]{64}$/.test(t)) return new Uint8Array(Buffer.from(t, "hex"));
  if (t.length < 8) throw new UsageError("the card image key must be 64 hex digits or a passphrase of at least 8 characters");
  return t;
}

export function resolveImageSecret(file: string | undefined, env: NodeJS.ProcessEnv = process.env): ImageSecret {
  if (file) return parseImageSecret(readFileSync(file, "utf8"));
  const v = env.CARDKMS_IMAGE_KEY;
  if (v) return parseImageSecret(v);
  throw new UsageError("no card image key: set CARDKMS_IMAGE_KEY (64 hex digits or a passphrase) or pass --image-key-file");
}
