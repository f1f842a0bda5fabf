// The table of commands says what the modules register: `cardkms --help` from the placeholders reads exactly as
// with every group loaded, and a group loaded alone is the same group, down to its subcommands' help.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Command } from "commander";
import { COMMANDS, registerAllCommands, registerCommands } from "./groups.ts";

const program = () => new Command().name("cardkms").description("cardkms: smart-card key lifecycle platform");

/** A command's help and, depth first, every subcommand's. */
function helpTree(cmd: Command, path = cmd.name()): string[] {
  return [`# ${path}\n${cmd.helpInformation()}`, ...cmd.commands.flatMap((c) => helpTree(c, `${path} ${c.name()}`))];
}

test("`cardkms --help` from the table reads as with every group loaded", async () => {
  const full = program();
  await registerAllCommands(full);
  const fast = program();
  await registerCommands(fast, ["--help"]);
  assert.deepEqual(
    fast.commands.map((c) => c.name()),
    full.commands.map((c) => c.name()),
    "every top-level command the modules register is in the table, in its order",
  );
  assert.equal(fast.helpInformation(), full.helpInformation());
});

test("a group named on the command line is loaded alone, the same as with every group loaded", async () => {
  const full = program();
  await registerAllCommands(full);
  for (const { name } of COMMANDS) {
    for (const args of [
      [name, "--help"],
      ["help", name],
    ]) {
      const alone = program();
      await registerCommands(alone, args);
      const group = alone.commands.find((c) => c.name() === name);
      assert.ok(group, `${args.join(" ")}: ${name} registered`);
      assert.deepEqual(helpTree(group), helpTree(full.commands.find((c) => c.name() === name)!), `${args.join(" ")}: the same ${name}`);
    }
  }
});
