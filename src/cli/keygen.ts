// The key generation device on the command line (seed 001 embodiments 1-2; with --escrow, embodiment 3 S3): an
// operator at the card issuing machine asks the server's device to issue a key pair into the card inserted here.
// The key is generated, certified (after the center compared the entered personal data with the user's
// registration), escrowed and destroyed in the server's custody; this machine only relays APDUs to the card
// (src/terminal/keygen-client.ts), which receives the key wrapped under its SCP03 keys.

import type { Command } from "commander";
import { existsSync, readFileSync } from "node:fs";
import { SUBJECT_FIELDS, type SubjectName } from "../ca/name.ts";
import type { KeyPairAlg } from "../custody/custody.ts";
import type { PivSlot } from "../keygen/device.ts";
import { KeygenApiClient } from "../terminal/keygen-client.ts";
import { cardTargetOptions, openCardTarget, type CardTargetOpts } from "./card-target.ts";
import { UsageError } from "./image-key.ts";
import { apiFrom, print, serverOptions, type ServerOpts } from "./issuer.ts";

const SLOTS: PivSlot[] = ["9a", "9c", "9d", "9e"];
const ALGS: KeyPairAlg[] = ["P256", "P384", "RSA2048", "RSA3072"];

interface IssueOpts extends ServerOpts, CardTargetOpts {
  slot: string;
  alg: string;
  profile?: string;
  personalData?: string;
  commonName?: string;
  email?: string;
  organization?: string;
  organizationalUnit?: string;
  country?: string;
  escrow?: boolean;
}

/** Step 410: the personal data entered at the device — a JSON object (inline or @file) and/or single fields. */
export function enteredPersonalData(o: IssueOpts): SubjectName {
  let data: Record<string, unknown> = {};
  if (o.personalData !== undefined) {
    const text = o.personalData.startsWith("@") ? readPersonalDataFile(o.personalData.slice(1)) : o.personalData;
    try {
      data = JSON.parse(text) as Record<string, unknown>;
    } catch {
      throw new UsageError("--personal-data: not JSON (give an object, or @file)");
    }
    if (typeof data !== "object" || data === null || Array.isArray(data)) throw new UsageError("--personal-data: expected a JSON object of subject fields");
    const unknown = Object.keys(data).filter((k) => !(SUBJECT_FIELDS as readonly string[]).includes(k));
    if (unknown.length) throw new UsageError(`--personal-data: unknown field(s) ${unknown.join(", ")}; expected ${SUBJECT_FIELDS.join(", ")}`);
  }
  for (const f of ["commonName", "email", "organization", "organizationalUnit", "country"] as const) if (o[f] !== undefined) data[f] = o[f];
  if (Object.keys(data).length === 0) throw new UsageError("no personal data: pass --personal-data <json|@file> or --common-name / --email / --organization / --country");
  return data as SubjectName;
}

function readPersonalDataFile(path: string): string {
  if (!existsSync(path)) throw new UsageError(`--personal-data: no file ${path}`);
  return readFileSync(path, "utf8");
}

export function registerKeygenCommands(program: Command): void {
  const keygen = program.command("keygen").description("the key generation device: key pairs generated in custody, certified by the center, written into a card here");

  serverOptions(
    cardTargetOptions(
      keygen
        .command("issue")
        .description("issue a key pair into the card here (card image or PC/SC reader): the server's device drives the card through this machine")
        .argument("<cardId>", "the card record (its user is the applicant; its SCP03 key set writes the key)")
        .requiredOption("--slot <slot>", `PIV key reference: ${SLOTS.join(", ")}`)
        .requiredOption("--alg <alg>", `key algorithm: ${ALGS.join(", ")}`)
        .option("--profile <name>", "certificate profile (default by slot: 9a/9e authentication, 9c signature, 9d keyManagement)")
        .option("--personal-data <json>", "the personal data entered at the device, as a JSON object of subject fields, or @file")
        .option("--common-name <cn>", "personal data: commonName")
        .option("--email <email>", "personal data: email")
        .option("--organization <o>", "personal data: organization")
        .option("--organizational-unit <ou>", "personal data: organizationalUnit")
        .option("--country <c>", "personal data: country (2 letters)")
        .option("--escrow", "escrow the key for reproduction by arbitrators under the card's policy"),
    ),
  ).action(async (cardId: string, o: IssueOpts) => {
    if (!SLOTS.includes(o.slot as PivSlot)) throw new UsageError(`--slot: expected one of ${SLOTS.join(", ")}`);
    if (!ALGS.includes(o.alg as KeyPairAlg)) throw new UsageError(`--alg: expected one of ${ALGS.join(", ")}`);
    const personalData = enteredPersonalData(o);
    const client = new KeygenApiClient(apiFrom(o));
    const transport = openCardTarget(o);
    try {
      const r = await client.issue(cardId, { slot: o.slot as PivSlot, alg: o.alg as KeyPairAlg, profile: o.profile, personalData, escrow: o.escrow === true }, (a) => transport.transmit(a));
      const { certificateDer: _der, ...out } = r;
      print(o, `key pair ${r.alg} issued into slot ${r.slot} of card ${r.cardId} with certificate ${r.serial}${r.escrowId ? `; escrowed as ${r.escrowId}` : ""}; the key is gone from the device`, out);
    } finally {
      await transport.close();
    }
  });
}
