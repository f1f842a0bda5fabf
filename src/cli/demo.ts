// `cardkms demo`: the whole system, or the card alone, or key reproduction by arbitrators (src/demo/), with its
// result checked and printed. Registered at every start-up (it lists its options in `cardkms --help`), so this
// module imports commander only; the demos themselves are loaded when the command runs.

import { Option, type Command } from "commander";
import type { PcscDemoResult } from "../demo/pcsc-demo.ts";

interface Out {
  json?: boolean;
}
function print(o: Out, human: string, data: unknown): void {
  process.stdout.write(o.json ? JSON.stringify(data) + "\n" : human + "\n");
}

/** The PC/SC leg (pcscd, OpenSC, openssl), loaded only with --pcsc. */
const demoThroughPcsc: typeof import("../demo/pcsc-demo.ts").demoThroughPcsc = async (...args) => (await import("../demo/pcsc-demo.ts")).demoThroughPcsc(...args);

export function registerDemoCommand(program: Command): Command {
  return program
    .command("demo")
    .description(
      "the whole system on SQLite and the software keystore: an issuer server, a card issued and personalised through the relay, " +
        "a key delivered as a package through the user terminal, the card signing, then a card-key rotation Sk1 -> Sk2 onto a new card that signs with the same key",
    )
    .option("--dir <dir>", "where the demo's database, keystore, card images and logs go (replaced on each run)", ".cardkms/demo")
    .option("--card-only", "only the card: SCP03 personalisation, a key online and one as a sealed package, signatures checked")
    .option("--pcsc", "then attach the card to pcscd and sign with OpenSC's pkcs11-tool, checked with openssl")
    .addOption(
      new Option("--recovery", "issue 4: a card destroyed, its key reproduced into a new card after the arbitrators' approvals, the backed-up data readable on it").conflicts(["cardOnly", "pcsc"]),
    )
    .option("--json", "JSON output")
    .action(async (o: { dir: string; cardOnly?: boolean; pcsc?: boolean; recovery?: boolean; json?: boolean }) => {
      const log = o.json ? undefined : (l: string) => console.log(l);
      if (o.recovery) {
        const { runRecoveryDemo } = await import("../demo/recovery-demo.ts");
        const r = await runRecoveryDemo(o.dir, log);
        const ok =
          r.keyGoneFromCustody.afterIssue &&
          r.keyGoneFromCustody.afterReproduction &&
          r.oldCard.decipheredBeforeLoss &&
          r.newCard.deviceReplaced &&
          r.signatureVerified &&
          r.readable.length === r.records.length &&
          r.readable.every((x) => x.byteExact) &&
          r.audit.ok;
        print(
          o,
          `\n${ok ? "OK" : "FAILED"}: card ${r.oldCard.id} destroyed; after ${r.approvers.join(", ")} approved, its key was reproduced into card ${r.newCard.id}; ${r.readable.filter((x) => x.byteExact).length} of ${r.records.length} backed-up records read on it; try:\n` +
            `  CARDKMS_IMAGE_KEY=$(cat ${r.imageKeyPath}) npm run cardkms -- card show ${r.newCard.path}`,
          { ok, ...r },
        );
        if (!ok) process.exitCode = 1;
        return;
      }
      let pcsc: PcscDemoResult | undefined;
      if (o.cardOnly) {
        const { runDemo } = await import("../demo/demo.ts");
        const r = await runDemo({ dir: o.dir, log });
        try {
          if (o.pcsc) pcsc = await demoThroughPcsc(r, o.dir, log);
        } finally {
          r.card.close();
        }
        const ok = r.signatures.every((s) => s.verified) && (!pcsc || (pcsc.signatureVerified && pcsc.chainVerified && pcsc.selfTestPassed));
        print(o, `\n${ok ? "OK" : "FAILED"}: card ${r.info.cardId} signs with keys delivered remotely; try:\n  CARDKMS_IMAGE_KEY=$(cat ${r.imageKeyPath}) npm run cardkms -- card show ${r.cardPath}`, {
          ok,
          cardPath: r.cardPath,
          imageKeyPath: r.imageKeyPath,
          info: r.info,
          signatures: r.signatures,
          pcsc,
        });
        if (!ok) process.exitCode = 1;
        return;
      }
      const { runSystemDemo } = await import("../demo/system-demo.ts");
      const r = await runSystemDemo({ dir: o.dir, log });
      try {
        if (o.pcsc) pcsc = await demoThroughPcsc({ card: r.newCard.card, caCertPem: r.caCertPem }, o.dir, log);
      } finally {
        r.newCard.card.close();
      }
      const ok = r.signatures.every((s) => s.verified) && r.audit.ok && (!pcsc || (pcsc.signatureVerified && pcsc.chainVerified && pcsc.selfTestPassed));
      print(
        o,
        `\n${ok ? "OK" : "FAILED"}: card ${r.oldCard.id} signed with a remotely delivered key, and after the card-key rotation so does card ${r.newCard.id}; try:\n` +
          `  CARDKMS_IMAGE_KEY=$(cat ${r.imageKeyPath}) npm run cardkms -- card show ${r.newCard.path}`,
        { ok, oldCard: r.oldCard, newCard: { id: r.newCard.id, path: r.newCard.path }, imageKeyPath: r.imageKeyPath, signatures: r.signatures, audit: r.audit, pcsc },
      );
      if (!ok) process.exitCode = 1;
    });
}
