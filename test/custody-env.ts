// Both key custody implementations for cross-module tests: a software keystore in a temp dir, and a fresh
// SoftHSM2 token initialised by scripts/softhsm-up.sh (tests FAIL when SoftHSM2 is missing; system-deps installs it).
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import type { KeyCustody } from "../src/custody/custody.ts";
import { Pkcs11Custody } from "../src/custody/pkcs11.ts";
import { SoftwareCustody } from "../src/custody/software.ts";
import { tempDir } from "./helpers.ts";

const ROOT = join(import.meta.dirname, "..");

export function softwareCustody(): () => Promise<KeyCustody> {
  const dir = tempDir("cardkms-ks-");
  const key = randomBytes(32).toString("hex");
  return () => SoftwareCustody.open({ path: join(dir, "keystore.json"), key });
}

/**
 * A fresh SoftHSM2 token in `dir` (scripts/softhsm-up.sh): the variables it prints (CARDKMS_PKCS11_MODULE, _TOKEN,
 * _PIN, SOFTHSM2_CONF). SOFTHSM2_CONF is also set in this process: SoftHSM reads it at C_Initialize.
 */
export function softhsmToken(dir: string): Record<string, string> {
  const out = execFileSync("bash", [join(ROOT, "scripts/softhsm-up.sh"), dir], { encoding: "utf8", env: { ...process.env, CARDKMS_PKCS11_TOKEN: "", CARDKMS_PKCS11_PIN: "" } });
  const env: Record<string, string> = {};
  for (const m of out.matchAll(/^export (\w+)=(.*)$/gm)) env[m[1]] = m[2].replace(/^'(.*)'$/, "$1");
  process.env.SOFTHSM2_CONF = env.SOFTHSM2_CONF;
  return env;
}

/**
 * The extraction paths SoftHSM2 2.6 leaves open to a holder of the user PIN (src/custody/pkcs11-selftest.ts): it has
 * no CKA_DERIVE_TEMPLATE, so a card key derives readable, and a key it derives or unwraps extractable (as card keys
 * and reproduced keys must be) wraps under a key of the caller's. Servers on SoftHSM2 in tests accept exactly these:
 * any other path found open (a template regression) stops them.
 */
export const SOFTHSM2_OPEN_PATHS = ["derive-readable", "derive-then-wrap", "unwrap-then-wrap"] as const;

export function softhsmCustody(): () => Promise<KeyCustody> {
  const env = softhsmToken(join(tempDir("cardkms-hsm-"), "hsm"));
  return () => Pkcs11Custody.open({ module: env.CARDKMS_PKCS11_MODULE, tokenLabel: env.CARDKMS_PKCS11_TOKEN, pin: env.CARDKMS_PKCS11_PIN });
}
