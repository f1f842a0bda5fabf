// The card a command talks to from this machine (the user terminal, or the card issuing machine): a virtual card
// image opened in-process, or a card in a PC/SC reader reached through scriptor. The options and the opening are
// the same for every command that relays APDUs to a card.

import { Option, type Command } from "commander";
import { existsSync } from "node:fs";
import { openCard } from "../card/card.ts";
import { ScriptorTransport } from "../transport/scriptor.ts";
import { InProcessTransport, type CardTransport } from "../transport/transport.ts";
import { resolveImageSecret, UsageError } from "./image-key.ts";

export interface CardTargetOpts {
  cardImage?: string;
  reader?: string;
  imageKeyFile?: string;
}

/** --card-image, --reader, --image-key-file. */
export function cardTargetOptions(cmd: Command): Command {
  return cmd
    .option("--card-image <file>", "the card, as a virtual card image (in-process transport)")
    .option("--reader <name>", "the card, in this PC/SC reader (through scriptor)")
    .addOption(new Option("--image-key-file <file>", "file with the card image key (else CARDKMS_IMAGE_KEY)"));
}

/** Opens the named card's transport; exactly one of --card-image / --reader. The caller closes it. */
export function openCardTarget(o: CardTargetOpts): CardTransport {
  if (!o.cardImage === !o.reader) throw new UsageError("name the card: --card-image <file> or --reader <name>");
  if (o.cardImage) {
    if (!existsSync(o.cardImage)) throw new UsageError(`no card image at ${o.cardImage}`);
    return new InProcessTransport(openCard(o.cardImage, resolveImageSecret(o.imageKeyFile), { durability: "fsync" }), { closeCard: true });
  }
  return new ScriptorTransport({ reader: o.reader });
}
