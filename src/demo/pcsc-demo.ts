// The demo's second half (npm run demo -- --pcsc, and the CI test): the demo card is attached to real PC/SC
// middleware through vsmartcard's vpcd, OpenSC's PKCS#11 module lists its certificate and signs with the key
// that was delivered through SCP03, and openssl checks the signature against the certificate and the
// certificate against the demo CA; pkcs11-tool's own self-test (--test: the token's random numbers, digests,
// signatures and decryption with RSA keys) reports no errors. Needs pcscd + vpcd + OpenSC + openssl (scripts/pcsc-up.sh installs them).

import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import type { DemoResult } from "./demo.ts";
import { pkcs11Tool, run, withAttachedCard } from "../transport/pcsc.ts";

export interface PcscDemoResult {
  certificates: string[];
  signatureVerified: boolean;
  chainVerified: boolean;
  /** `pkcs11-tool --test --login` exited 0 and reported "No errors" (C_GenerateRandom included). */
  selfTestPassed: boolean;
}

async function must(what: string, p: Promise<{ code: number; stdout: string; stderr: string }>): Promise<string> {
  const r = await p;
  if (r.code !== 0) throw new Error(`${what} failed (exit ${r.code}): ${r.stderr.trim() || r.stdout.trim()}`);
  return r.stdout + r.stderr;
}

export async function demoThroughPcsc(demo: Pick<DemoResult, "card" | "caCertPem">, dir: string, log: (l: string) => void = () => {}, pin = "123456"): Promise<PcscDemoResult> {
  demo.card.reset();
  return withAttachedCard(demo.card, async () => {
    log(`PC/SC 1. card attached to pcscd as "Virtual PCD 00 00"`);
    const listing = await must("pkcs11-tool --list-objects", pkcs11Tool(["--list-objects", "--type", "cert"]));
    const certificates = [...listing.matchAll(/label:\s+(.+)/g)].map((m) => m[1].trim());
    log(`PC/SC 2. OpenSC lists ${certificates.length} certificate object(s): ${certificates.join("; ")}`);

    const certDer = join(dir, "pcsc-9a.der");
    const certPem = join(dir, "pcsc-9a.pem");
    const pubPem = join(dir, "pcsc-9a.pub.pem");
    await must("pkcs11-tool --read-object", pkcs11Tool(["--read-object", "--type", "cert", "--id", "01", "--output-file", certDer]));
    await must("openssl x509", run("openssl", ["x509", "-inform", "DER", "-in", certDer, "-out", certPem]));
    await must("openssl x509 -pubkey", run("openssl", ["x509", "-in", certPem, "-pubkey", "-noout", "-out", pubPem]));

    const msg = join(dir, "pcsc-message.bin");
    const sig = join(dir, "pcsc-message.sig");
    writeFileSync(msg, randomBytes(256));
    await must(
      "pkcs11-tool --sign",
      pkcs11Tool(["--login", "--pin", pin, "--sign", "--id", "01", "--mechanism", "ECDSA-SHA256", "--signature-format", "openssl", "--input-file", msg, "--output-file", sig]),
    );
    const v = await run("openssl", ["dgst", "-sha256", "-verify", pubPem, "-signature", sig, msg]);
    const signatureVerified = v.code === 0 && /Verified OK/.test(v.stdout);
    log(`PC/SC 3. pkcs11-tool signed with key 01 (slot 9A); openssl dgst -verify: ${(v.stdout + v.stderr).trim()}`);
    const caPem = join(dir, "ca.pem");
    writeFileSync(caPem, demo.caCertPem + "\n");
    const c = await run("openssl", ["verify", "-CAfile", caPem, certPem]);
    const chainVerified = c.code === 0;
    log(`PC/SC 4. openssl verify -CAfile ca.pem: ${(c.stdout + c.stderr).trim()}`);
    const t = await pkcs11Tool(["--test", "--login", "--pin", pin]);
    const selfTestPassed = t.code === 0 && /^No errors$/m.test(t.stdout) && !/ERR:/.test(t.stdout + t.stderr);
    log(`PC/SC 5. pkcs11-tool --test (random numbers, digests; signatures and decryption with RSA keys): ${selfTestPassed ? "no errors" : (t.stdout + t.stderr).trim()}`);
    return { certificates, signatureVerified, chainVerified, selfTestPassed };
  });
}
