// The `card` commands: the card manufacturer's side (a KMC for its factory, blank card images with transport keys
// diversified from it), a card inspected and driven through its APDUs, attached to PC/SC through vpcd; and, from
// issuer.ts, a card issued through the relay and moved through its lifecycle. Every card command goes through APDUs.

import { Command, Option } from "commander";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { createCard, openCard } from "../card/card.ts";
import type { Durability } from "../card/eeprom.ts";
import { parseResponse, unhex } from "../protocol/apdu.ts";
import { readCardInfo } from "../protocol/card-info.ts";
import { attachVpcd, VPCD_DEFAULT_HOST, VPCD_DEFAULT_PORT, VPCD_READER } from "../transport/vpcd.ts";
import { resolveImageSecret, UsageError } from "./image-key.ts";
import { print, registerCardIssueCommands } from "./issuer.ts";
import { factoryOptions, factoryTransport, registerManufacturerKmc, type FactoryOpts } from "./kmc.ts";

const imageKeyOption = () => new Option("--image-key-file <file>", "file with the card image key (else CARDKMS_IMAGE_KEY)");
const durabilityOption = () => new Option("--durability <mode>", "EEPROM durability: fsync every write, or none").choices(["fsync", "none"]).default("fsync");
const int = (v: string): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new UsageError(`not a whole number: ${v}`);
  return n;
};

function mustExist(path: string): string {
  if (!existsSync(path)) throw new UsageError(`no card image at ${path}`);
  return path;
}

/** `cardkms card …`: registers the group and its commands on `program`; returns the group. */
export function registerCardCommands(program: Command): Command {
  const card = program
    .command("card")
    .description("smart cards: create, inspect, send APDUs, attach to PC/SC; issue, and move through the lifecycle (suspend, resume, retire, report-destroyed, state)");
  registerManufacturerKmc(card);

  factoryOptions(
    card
      .command("create")
      .description("create a blank card image, as the card manufacturer's factory: transport keys (KVN 30) diversified from the KMC (--kmc-file) and the card ID")
      .argument("<image>", "card image file to create")
      .option("--card-id <hex>", "card ID (8-16 bytes hex); random by default")
      .option("--capacity <bytes>", "user data the card can hold", int, 96 * 1024)
      .option("--pin <pin>", "initial PIN", "123456")
      .option("--puk <puk>", "initial PUK", "12345678")
      .option("--pin-tries <n>", "PIN tries before it blocks", int, 3)
      .addOption(imageKeyOption())
      .addOption(durabilityOption())
      .option("--json", "JSON output"),
  ).action((image: string, o: FactoryOpts & { cardId?: string; capacity: number; pin: string; puk: string; pinTries: number; imageKeyFile?: string; durability: Durability; json?: boolean }) => {
    const secret = resolveImageSecret(o.imageKeyFile);
    if (o.cardId && !/^([0-9a-fA-F]{2}){8,16}$/.test(o.cardId)) throw new UsageError("--card-id must be 8 to 16 bytes of hex");
    const factory = factoryTransport(o);
    const c = createCard(image, secret, {
      ...factory.card,
      cardId: o.cardId ? unhex(o.cardId) : randomBytes(8),
      capacity: o.capacity,
      pin: o.pin,
      puk: o.puk,
      pinTries: o.pinTries,
      durability: o.durability,
    });
    const id = c.state.cardId;
    c.close();
    const transport = "kmc" in factory.card ? "kmc" : "insecure-public-test-keys";
    print(o, `created ${image}: card ${id}, capacity ${o.capacity} bytes, transport keys KVN 30 ${factory.transport}`, { image, cardId: id, capacity: o.capacity, transport });
  });

  card
    .command("show")
    .description("show a card's public state, read through APDUs")
    .argument("<image>", "card image file")
    .addOption(imageKeyOption())
    .option("--json", "JSON output")
    .action(async (image: string, o: { imageKeyFile?: string; json?: boolean }) => {
      const c = openCard(mustExist(image), resolveImageSecret(o.imageKeyFile), { durability: "fsync" });
      try {
        const info = await readCardInfo((a) => c.transmit(a));
        const human =
          "cardId" in info
            ? [
                `card ${info.cardId}  ${info.lifecycle}`,
                `  PIN tries left ${info.pinTriesLeft}, PUK tries left ${info.pukTriesLeft}, secure-channel tries left ${info.scpTriesLeft}`,
                `  key sets: ${info.keySets.map((k) => `KVN ${k.kvn.toString(16).padStart(2, "0")} (AES-${k.keyLength * 8})`).join(", ") || "none"}`,
                `  last package sequence ${info.packageSeq}, free memory ${info.freeBytes} bytes`,
                ...info.certificates.map((c) => `  slot ${c.slot}: ${c.subject}  issued by ${c.issuer}, valid to ${c.notAfter}`),
              ].join("\n")
            : "card TERMINATED (secrets erased)";
        print(o, human, info);
      } finally {
        c.close();
      }
    });

  card
    .command("apdu")
    .description("send command APDUs (hex) to a card and print the responses")
    .argument("<image>", "card image file")
    .argument("<apdus...>", "command APDUs in hex")
    .addOption(imageKeyOption())
    .option("--json", "JSON output")
    .action((image: string, apdus: string[], o: { imageKeyFile?: string; json?: boolean }) => {
      const c = openCard(mustExist(image), resolveImageSecret(o.imageKeyFile), { durability: "fsync" });
      try {
        const out = apdus.map((hexApdu) => {
          const r = parseResponse(c.transmit(unhex(hexApdu)));
          return { command: hexApdu.toUpperCase(), data: Buffer.from(r.data).toString("hex").toUpperCase(), sw: r.sw.toString(16).toUpperCase().padStart(4, "0") };
        });
        print(o, out.map((r) => `> ${r.command}\n< ${r.data} ${r.sw}`).join("\n"), out);
      } finally {
        c.close();
      }
    });

  card
    .command("attach")
    .description(`attach a card to PC/SC through vsmartcard's vpcd (reader "${VPCD_READER}") until interrupted`)
    .argument("<image>", "card image file")
    .option(
      "--host <host>",
      `vpcd host (default: $CARDKMS_VPCD_HOST, else the quick-ACK loopback address scripts/pcsc-up.sh set up and wrote to ` +
        `$CARDKMS_PCSC_DIR/vpcd-host, else ${VPCD_DEFAULT_HOST}). vpcd sends each message in two pieces, and on a plain loopback ` +
        `address Linux delays the ACK between them by 40 ms: ~44 ms per APDU instead of ~0.2 ms on the quick-ACK route`,
    )
    .option("--port <port>", "vpcd port", int, VPCD_DEFAULT_PORT)
    .addOption(imageKeyOption())
    .option("--json", "JSON output")
    .action(async (image: string, o: { host?: string; port: number; imageKeyFile?: string; json?: boolean }) => {
      const c = openCard(mustExist(image), resolveImageSecret(o.imageKeyFile), { durability: "fsync" });
      // no --host: the connector's own choice (defaultVpcdHost), the quick-ACK route when pcsc-up.sh made one
      const conn = await attachVpcd(c, { host: o.host, port: o.port });
      print(o, `card ${c.state.cardId} attached: PC/SC reader "${VPCD_READER}" at vpcd ${conn.host}:${conn.port} (Ctrl-C to detach)`, {
        cardId: c.state.cardId,
        reader: VPCD_READER,
        vpcd: { host: conn.host, port: conn.port },
      });
      await new Promise<void>((resolve) => {
        process.once("SIGINT", resolve);
        process.once("SIGTERM", resolve);
      });
      await conn.close();
      c.close();
    });

  registerCardIssueCommands(card);
  return card;
}
