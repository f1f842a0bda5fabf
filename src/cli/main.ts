#!/usr/bin/env node
// The cardkms command line. It only wires the domain modules: every card command goes through APDUs.
// Start-up imports commander and the table of commands (groups.ts); the group the command line names is loaded
// then, alone, so `cardkms --help` or `cardkms card show` never load the server, the DB drivers or PKCS#11.

import { Command } from "commander";
import { registerCommands } from "./groups.ts";
import { UsageError } from "./image-key.ts";

const program = new Command();
program.name("cardkms").description("cardkms: smart-card key lifecycle platform").showHelpAfterError();
// Exit codes: 0 done, 1 failed (refused by the server or the card), 2 usage (commander's own errors included).
// Set before any subcommand is made: subcommands copy it when created.
program.exitOverride((err) => {
  process.exit(err.exitCode === 0 ? 0 : 2);
});

await registerCommands(program, process.argv.slice(2));

program.parseAsync(process.argv).catch((e: unknown) => {
  const msg = e instanceof Error ? e.message : String(e);
  process.stderr.write(`cardkms: ${msg}\n`);
  process.exitCode = e instanceof UsageError ? 2 : 1;
});
