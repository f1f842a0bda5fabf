// The top-level commands of `cardkms`, in the order `cardkms --help` lists them, and how each is loaded. A command
// group's module (and with it fastify, kysely, the DB drivers, pkcs11js …) is imported only when the command line
// names the group, so that `cardkms --help` answers from this table without loading any of them. The table repeats
// each group's description; groups.test.ts checks that it says what the modules register.

import type { Command } from "commander";
import { registerDemoCommand } from "./demo.ts";

/** Registers one or more top-level commands on the program. */
type Register = (program: Command) => unknown;

/** A group whose module is imported when the command line names it; `description` is what its module gives it. */
interface LazyGroup {
  name: string;
  description: string;
  load: () => Promise<Register>;
}

/** A command cheap enough to register at every start-up (its module imports commander only). */
interface EagerCommand {
  name: string;
  register: Register;
}

type Entry = LazyGroup | EagerCommand;

// One module may register several groups (issuer.ts: issuer, user, credential, certificate): one loader each.
const issuerModule = async (): Promise<Register> => (await import("./issuer.ts")).registerIssuerCommands;
const eventsModule = async (): Promise<Register> => (await import("./events.ts")).registerEventCommands;

export const COMMANDS: readonly Entry[] = [
  {
    name: "card",
    description: "smart cards: create, inspect, send APDUs, attach to PC/SC; issue, and move through the lifecycle (suspend, resume, retire, report-destroyed, state)",
    load: async () => (await import("./card.ts")).registerCardCommands,
  },
  { name: "demo", register: registerDemoCommand },
  { name: "issuer", description: "the issuing service: run it, bootstrap operator tokens", load: issuerModule },
  { name: "user", description: "users: register their personal data (the subject of their certificates)", load: issuerModule },
  { name: "credential", description: "key pairs and certificates for cards: request, deliver online", load: issuerModule },
  { name: "certificate", description: "certificates: revoke, fetch the CRL", load: issuerModule },
  {
    name: "terminal",
    description: "the user terminal: fetch and load packages for a card, keep its overflow store",
    load: async () => (await import("./terminal.ts")).registerTerminalCommands,
  },
  { name: "validity", description: "validity of cards, card keys and certificates (FIG. 5)", load: eventsModule },
  { name: "events", description: "notifications the issuer emitted", load: eventsModule },
  {
    name: "webhook",
    description: "webhooks that receive the events (signed as Standard Webhooks: webhook-id, webhook-timestamp, webhook-signature)",
    load: eventsModule,
  },
  {
    name: "rotation",
    description: "card-key rotations Sk1 -> Sk2 onto a new card (seed 000 embodiments 3-5, FIG. 15)",
    load: async () => (await import("./rotation.ts")).registerRotationCommands,
  },
  {
    name: "recovery",
    description: "key reproduction by arbitrators: arbitrators, policies, requests, approvals, reproduction",
    load: async () => (await import("./recovery.ts")).registerRecoveryCommands,
  },
  {
    name: "keygen",
    description: "the key generation device: key pairs generated in custody, certified by the center, written into a card here",
    load: async () => (await import("./keygen.ts")).registerKeygenCommands,
  },
  {
    name: "backup",
    description: "the user's enciphered data (seed 001 S10/S12): encipher for the card, decipher with it, back up to the server, restore",
    load: async () => (await import("./backup.ts")).registerBackupCommands,
  },
  {
    name: "custody",
    description: "the issuer's key custody: key ceremonies and the self-test",
    load: async () => (await import("./kmc.ts")).registerCustodyCommands,
  },
  {
    name: "audit",
    description: "the hash-chained audit log and its signed checkpoints",
    load: async () => (await import("./audit.ts")).registerAuditCommands,
  },
];

const named = (name: string | undefined): Entry | undefined => COMMANDS.find((c) => c.name === name);

/** Every command in full, in the table's order: what start-up registered before groups were loaded lazily. */
export async function registerAllCommands(program: Command): Promise<void> {
  const registers = await Promise.all(COMMANDS.map((c) => ("register" in c ? c.register : c.load())));
  const done = new Set<Register>();
  for (const r of registers) {
    if (done.has(r)) continue; // issuer.ts and events.ts register all their groups at once
    done.add(r);
    r(program);
  }
}

/**
 * Registers on `program` what the command line `args` (after `cardkms`) needs:
 * - the group it names (`cardkms rotation …`, `cardkms help rotation`), in full: commander only looks into that
 *   group from then on;
 * - no group named anywhere (`cardkms`, `--help`, `help`, a typo): every group as a placeholder of name and
 *   description, which is all the top-level help, its errors and its "did you mean" need;
 * - a group named elsewhere (`cardkms -h card`, `cardkms -- card`): every group in full, as before, rather than
 *   second-guess where commander will look.
 */
export async function registerCommands(program: Command, args: readonly string[]): Promise<void> {
  const target = named(args[0]) ?? (args[0] === "help" ? named(args[1]) : undefined);
  if (target) {
    const register = "register" in target ? target.register : await target.load();
    register(program);
    return;
  }
  if (args.some((a) => named(a))) return registerAllCommands(program);
  for (const c of COMMANDS) {
    if ("register" in c) c.register(program);
    else program.command(c.name).description(c.description);
  }
}
