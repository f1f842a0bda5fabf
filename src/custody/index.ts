// Opening the configured key custody. The software keystore is the default; PKCS#11 is chosen by configuration.
//   CARDKMS_CUSTODY            "software" (default) or "pkcs11"
//   software: CARDKMS_KEYSTORE_PATH (default .cardkms/keystore.json), CARDKMS_KEYSTORE_KEY or CARDKMS_KEYSTORE_KEY_FILE;
//             CARDKMS_KEYSTORE_BACKEND "file" (default) or "store" (issue 16 §3: the keys in the server's database;
//             the caller that holds the database passes the backend, src/store/custody-keystore.ts custodyOnStore)
//   pkcs11:   CARDKMS_PKCS11_MODULE, CARDKMS_PKCS11_TOKEN, CARDKMS_PKCS11_PIN (scripts/softhsm-up.sh prints them)

import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { CustodyError, type KeyCustody } from "./custody.ts";
import { Pkcs11Custody, type Pkcs11CustodyOptions } from "./pkcs11.ts";
import { SoftwareCustody, type SoftwareCustodyOptions } from "./software.ts";

export * from "./custody.ts";
export { SoftwareCustody } from "./software.ts";
export { Pkcs11Custody } from "./pkcs11.ts";

export type CustodyConfig = ({ kind: "software"; keystoreBackend?: "file" | "store" } & SoftwareCustodyOptions) | ({ kind: "pkcs11" } & Pkcs11CustodyOptions);

/** Reads the custody configuration from the environment (validated when opened). */
export function custodyConfigFromEnv(env: Record<string, string | undefined> = process.env): CustodyConfig {
  const kind = env.CARDKMS_CUSTODY ?? "software";
  if (kind === "software") {
    const keystoreBackend = env.CARDKMS_KEYSTORE_BACKEND || "file";
    if (keystoreBackend !== "file" && keystoreBackend !== "store")
      throw new CustodyError("INVALID_ARGUMENT", `CARDKMS_KEYSTORE_BACKEND must be "file" or "store", not ${JSON.stringify(keystoreBackend)}`);
    return { kind, path: env.CARDKMS_KEYSTORE_PATH ?? ".cardkms/keystore.json", keystoreBackend, env };
  }
  if (kind === "pkcs11") return { kind, env };
  throw new CustodyError("INVALID_ARGUMENT", `CARDKMS_CUSTODY must be "software" or "pkcs11", not ${JSON.stringify(kind)}`);
}

export async function openCustody(config: CustodyConfig = custodyConfigFromEnv()): Promise<KeyCustody> {
  if (config.kind === "software") {
    if (config.keystoreBackend === "store" && !config.backend)
      throw new CustodyError("INVALID_ARGUMENT", "the keystore is configured in the store (CARDKMS_KEYSTORE_BACKEND=store), but this command opened no database to keep it in");
    if (!config.backend && config.path) mkdirSync(dirname(config.path), { recursive: true, mode: 0o700 });
    return SoftwareCustody.open(config);
  }
  if (config.kind === "pkcs11") return Pkcs11Custody.open(config);
  throw new CustodyError("INVALID_ARGUMENT", 'custody kind must be "software" or "pkcs11"');
}
