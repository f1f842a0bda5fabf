// The user terminal on the command line (issue 3 §6): keep one card supplied with the packages the issuer has
// for it, through the in-process transport (a card image) or PC/SC (a reader, through scriptor). The card proves
// itself to the server; no operator token is needed. The terminal's state and overflow store live in --dir.

import { Command, Option } from "commander";
import { join } from "node:path";
import { OverflowStore } from "../terminal/overflow.ts";
import { UserTerminal, type SyncReport } from "../terminal/terminal.ts";
import type { CardTransport } from "../transport/transport.ts";
import { cardTargetOptions, openCardTarget, type CardTargetOpts } from "./card-target.ts";
import { apiFrom, print, serverOptions, type ServerOpts } from "./issuer.ts";

interface TerminalOpts extends ServerOpts, CardTargetOpts {
  dir: string;
  overflowDir?: string;
  pin?: string;
}

function cardOptions(cmd: Command): Command {
  return serverOptions(
    cardTargetOptions(cmd)
      .option("--dir <dir>", "the terminal's state directory", ".cardkms/terminal")
      .option("--overflow-dir <dir>", "the overflow store (default <dir>/overflow)")
      .addOption(new Option("--pin <pin>", "the card's PIN, to move keys out when the card is full").env("CARDKMS_PIN")),
    "optional",
  );
}

/** Opens the card's transport and the terminal for it; the caller closes the transport. */
async function openTerminal(o: TerminalOpts): Promise<{ terminal: UserTerminal; transport: CardTransport }> {
  const api = o.server ? apiFrom(o, "optional") : undefined;
  const transport = openCardTarget(o);
  try {
    const terminal = await UserTerminal.open({
      api,
      transport,
      stateFile: (cardId) => join(o.dir, `${cardId}.json`),
      overflow: new OverflowStore(o.overflowDir ?? join(o.dir, "overflow")),
      pin: o.pin,
    });
    return { terminal, transport };
  } catch (e) {
    await transport.close();
    throw e;
  }
}

function describe(r: SyncReport): string {
  const lines = [`card ${r.cardId}: ${r.fetched} new package(s), last sequence ${r.lastSeq}`];
  for (const s of r.movedOut) lines.push(`  slot ${s} moved out to the overflow store`);
  for (const p of r.packages) lines.push(p.status === "loaded" ? `  package ${p.seq}: slot ${p.slot} loaded` : `  package ${p.seq}: slot ${p.slot} REFUSED${p.sw ? ` (${p.sw})` : ""}: ${p.reason}`);
  return lines.join("\n");
}

export function registerTerminalCommands(program: Command): void {
  const terminal = program.command("terminal").description("the user terminal: fetch and load packages for a card, keep its overflow store");

  cardOptions(terminal.command("sync").description("authenticate with the card, fetch its new packages, load them (moving keys out when full), acknowledge")).action(async (o: TerminalOpts) => {
    apiFrom(o, "optional");
    const { terminal: t, transport } = await openTerminal(o);
    try {
      const r = await t.sync();
      print(o, describe(r), { ...r, overflow: t.overflowSlots() });
      if (r.packages.some((p) => p.status === "refused")) process.exitCode = 1;
    } finally {
      await transport.close();
    }
  });

  cardOptions(
    terminal.command("bring-back").description("load a key back from the overflow store (another slot goes out if the card is full)").requiredOption("--slot <ref>", "PIV key reference, e.g. 9a"),
  ).action(async (o: TerminalOpts & { slot: string }) => {
    const { terminal: t, transport } = await openTerminal(o);
    try {
      const r = await t.bringBack(o.slot);
      print(o, `slot ${r.slot} is back on card ${t.cardId}${r.movedOut.length ? `; moved out: ${r.movedOut.join(", ")}` : ""}`, { cardId: t.cardId, ...r, overflow: t.overflowSlots() });
    } finally {
      await transport.close();
    }
  });

  cardOptions(
    terminal
      .command("move-out")
      .description("move a key and its certificate out of the card into the overflow store (sealed by the card; needs the PIN)")
      .requiredOption("--slot <ref>", "PIV key reference, e.g. 9a"),
  ).action(async (o: TerminalOpts & { slot: string }) => {
    const { terminal: t, transport } = await openTerminal(o);
    try {
      const e = await t.moveOut(o.slot);
      print(o, `slot ${e.keyRef} of card ${t.cardId} moved to the overflow store`, { cardId: t.cardId, slot: e.keyRef, exportSeq: e.seq, overflow: t.overflowSlots() });
    } finally {
      await transport.close();
    }
  });

  cardOptions(terminal.command("status").description("the terminal's state for a card: last package, known slots, overflow store")).action(async (o: TerminalOpts) => {
    const { terminal: t, transport } = await openTerminal(o);
    try {
      const s = t.status;
      const overflow = t.overflowSlots();
      print(o, [`card ${t.cardId}: last package ${s.lastSeq}`, `  on the card: ${Object.keys(s.slots).join(", ") || "-"}`, `  in the overflow store: ${overflow.join(", ") || "-"}`].join("\n"), {
        cardId: t.cardId,
        lastSeq: s.lastSeq,
        slots: Object.keys(s.slots),
        pendingAcks: s.pendingAcks,
        overflow,
      });
    } finally {
      await transport.close();
    }
  });
}
