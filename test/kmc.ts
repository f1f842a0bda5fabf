// The card manufacturer of the tests (issue 17 §3): one random master key (KMC) per test process, for the factory
// (createCard's `kmc`) and for the issuer's custody (imported as the key ceremony would), so that every test card
// has transport keys of its own, as in production. The GlobalPlatform public test keys appear only in tests of the
// card itself and of the development mode.
import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { createCard, transportKeySet, type CardOptions } from "../src/card/card.ts";
import type { ImageSecret } from "../src/card/eeprom.ts";
import type { CardRuntime } from "../src/card/runtime.ts";
import type { ScpKeySet } from "../src/card/state.ts";
import type { KeyCustody } from "../src/custody/custody.ts";
import { KMC_LABEL } from "../src/issuer/transport-keys.ts";

export const TEST_KMC: Uint8Array = new Uint8Array(randomBytes(16));

/** TEST_KMC into `custody` under the issuer's KMC label (once). */
export async function importTestKmc(custody: KeyCustody, label = KMC_LABEL): Promise<void> {
  if (!(await custody.hasKey(label))) await custody.importSecretKey(label, { type: "aes", bits: 128, usage: ["derive"] }, TEST_KMC);
}

/** TEST_KMC in a file (0600) in `dir`, for the CLI's --kmc-file / CARDKMS_KMC_FILE. */
export function testKmcFile(dir: string): string {
  const path = join(dir, "factory-kmc.key");
  writeFileSync(path, Buffer.from(TEST_KMC).toString("hex") + "\n", { mode: 0o600 });
  return path;
}

/** A blank card from the tests' factory (TEST_KMC), with its transport keys in clear for tests that personalise it without custody. */
export function factoryCard(path: string, secret: ImageSecret, opts: Omit<CardOptions, "kmc" | "keySet"> = {}): { card: CardRuntime; transport: ScpKeySet } {
  const cardId = opts.cardId ?? new Uint8Array(randomBytes(8));
  return { card: createCard(path, secret, { ...opts, cardId, kmc: TEST_KMC }), transport: transportKeySet(TEST_KMC, cardId) };
}
