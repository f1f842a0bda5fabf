// The user's enciphered data on the command line (seed 001 FIG. 11-12, claims 41, 48): `cardkms backup ...` on the
// user's terminal, with the card in a card image (--card-image) or a PC/SC reader (--reader):
//
//   encipher <file> --object <id>   enciphers the file's bytes for the card's key management key (its 9D
//                                   certificate, read from the card, or --cert) into the terminal's store (--store)
//   decipher <id> --out <file>      the card opens the object (GENERAL AUTHENTICATE with the 9D key; needs the PIN):
//                                   the plaintext goes to the file (0600), never to the output
//   push                            seed 001 S10: backs up the terminal's store, and the card's own enciphered-data
//                                   object when it has one, to the server (new versions only)
//   list [--object <id>]            the versions the server keeps of the card's user's objects (no envelopes)
//   restore [--object <id> ...]     seed 001 S12: the latest version of each object from the server into the
//                                   terminal's store — only those enciphered for this card's 9D key
//
// The server: --server / CARDKMS_SERVER. Without --token the card proves itself to the server (an SCP03 handshake
// relayed here: src/terminal/terminal.ts authenticate) and the terminal acts with the card-bound token it gets;
// with --token / CARDKMS_TOKEN (an operator's; an auditor's for `list`) that token is used for the card instead,
// and `list` may name the card with --card-id alone. Everything goes through src/terminal/backup-client.ts.
//
// Never printed: the plaintext, the PIN, a token. What crosses to the server is ciphertext (envelopes) only;
// `push` refuses a store holding anything else, and sends nothing then.

import { Command, Option } from "commander";
import { existsSync, readFileSync } from "node:fs";
import { fromPem } from "../ca/pem.ts";
import type { IssuerApiClient } from "../terminal/api-client.ts";
import { HttpBackupTarget, type BackupInfoJson } from "../terminal/backup-client.ts";
import { backup, CardEncipheredStore, checkObjectId, restore, TerminalEncipheredStore, type BackupReport, type RestoreReport } from "../terminal/backup.ts";
import { decipherWithCard, encipherForCard, envelopeInfo, recipientOf } from "../protocol/enciphered.ts";
import { PivClient, SLOT } from "../protocol/piv/client.ts";
import { UserTerminal } from "../terminal/terminal.ts";
import { writeFileAtomic } from "../util/files.ts";
import type { CardTransport } from "../transport/transport.ts";
import { cardTargetOptions, openCardTarget, type CardTargetOpts } from "./card-target.ts";
import { UsageError } from "./image-key.ts";
import { apiFrom, print, serverOptions, type Out, type ServerOpts } from "./issuer.ts";

interface CardOpts extends Out, CardTargetOpts {
  store: string;
}

type ServerCardOpts = CardOpts & ServerOpts;

const DEFAULT_STORE = ".cardkms/enciphered";

/** --card-image / --reader, the image key and the terminal's store on a command. */
function cardOptions(cmd: Command): Command {
  return cardTargetOptions(cmd).option("--store <dir>", "the terminal's store of enciphered objects", DEFAULT_STORE);
}

const pinOption = () => new Option("--pin <pin>", "the card's PIN (the 9D key needs it)").env("CARDKMS_PIN");

/** Runs `fn` with the card's transport open, closing it afterwards. */
async function withCard<T>(o: CardOpts, fn: (transport: CardTransport) => Promise<T>): Promise<T> {
  const transport = openCardTarget(o);
  try {
    return await fn(transport);
  } finally {
    await transport.close();
  }
}

/**
 * The server as this card: the operator's token when one is given, else the card-bound token the card earns by
 * proving itself. The PIV application is selected again afterwards.
 */
async function asCard(o: ServerCardOpts, transport: CardTransport): Promise<{ cardId: string; api: IssuerApiClient; piv: PivClient }> {
  const base = apiFrom(o, "optional");
  const terminal = await UserTerminal.open({ api: base, transport });
  const api = base.hasToken ? base : await terminal.cardClient();
  const piv = new PivClient((a) => transport.transmit(a));
  await piv.select();
  return { cardId: terminal.cardId, api, piv };
}

/** The card's key management certificate (slot 9D), or a usage error naming what to do. */
async function keyManagementCertificate(piv: PivClient): Promise<Uint8Array> {
  const der = await piv.readCertificate(SLOT.keyManagement);
  if (!der) throw new UsageError("the card has no certificate in slot 9D: request a key management credential for it (credential request --slot 9d) and sync its terminal first");
  return der;
}

function readCertificateFile(path: string): Uint8Array {
  if (!existsSync(path)) throw new UsageError(`--cert: no file ${path}`);
  const raw = readFileSync(path);
  const text = raw.toString("latin1");
  return text.includes("-----BEGIN CERTIFICATE-----") ? fromPem(text, "CERTIFICATE") : new Uint8Array(raw);
}

function objectIdOf(id: string, what = "--object"): string {
  try {
    return checkObjectId(id);
  } catch (e) {
    throw new UsageError(`${what}: ${(e as Error).message}`);
  }
}

const short = (hex: string) => `${hex.slice(0, 16)}…`;

function describeBackup(r: BackupReport): string {
  const lines = [`backed up: ${r.stored.length} new version(s), ${r.unchanged.length} unchanged, ${r.conflicts.length} conflict(s)`];
  for (const s of r.stored) lines.push(`  ${s.objectId}: version ${s.version} (from ${s.from})`);
  for (const s of r.unchanged) lines.push(`  ${s.objectId}: unchanged, version ${s.version}`);
  for (const c of r.conflicts) lines.push(`  ${c.objectId}: NOT backed up, the ${c.stores.join(" and ")} stores hold different envelopes`);
  return lines.join("\n");
}

function describeRestore(r: RestoreReport): string {
  const lines = [`restored ${r.restored.length}, already present ${r.present.length}, skipped ${r.skipped.length}`];
  for (const x of r.restored) lines.push(`  ${x.objectId}: version ${x.version} into the ${x.into} store`);
  for (const x of r.present) lines.push(`  ${x.objectId}: version ${x.version} already in the ${x.into} store`);
  for (const x of r.skipped) lines.push(`  ${x.objectId}: skipped — ${x.reason}`);
  return lines.join("\n");
}

function describeList(cardId: string, userId: string, backups: BackupInfoJson[]): string {
  if (!backups.length) return `no backups of user ${userId} (through card ${cardId})`;
  return [
    `backups of user ${userId} (through card ${cardId}):`,
    ...backups.map((b) => `  ${b.objectId}  v${b.version}  ${b.size} bytes  for key ${short(b.recipientKid)}  ${new Date(b.createdAt).toISOString()}${b.cardId ? `  via card ${b.cardId}` : ""}`),
  ].join("\n");
}

export function registerBackupCommands(program: Command): Command {
  const cmd = program.command("backup").description("the user's enciphered data (seed 001 S10/S12): encipher for the card, decipher with it, back up to the server, restore");

  cardOptions(
    cmd
      .command("encipher")
      .description("encipher a file's bytes for the card's key management key (9D) into the terminal's store; the card's certificate comes from the card, or --cert")
      .argument("<file>", "the data to encipher")
      .requiredOption("--object <id>", "the object's name (1-128 of A-Z a-z 0-9 . _ : @ -); bound to the envelope")
      .option("--cert <file>", "the card's 9D certificate (PEM or DER) instead of the card")
      .option("--json", "JSON output"),
  ).action(async (file: string, o: CardOpts & { object: string; cert?: string }) => {
    const objectId = objectIdOf(o.object);
    if (!existsSync(file)) throw new UsageError(`no file ${file}`);
    if (o.cert && (o.cardImage || o.reader)) throw new UsageError("name the recipient once: --cert, or the card (--card-image / --reader)");
    const der = o.cert
      ? readCertificateFile(o.cert)
      : await withCard(o, async (transport) => {
          const piv = new PivClient((a) => transport.transmit(a));
          await piv.select();
          return keyManagementCertificate(piv);
        });
    const recipient = recipientOf(der);
    const plaintext = readFileSync(file);
    const envelope = encipherForCard(recipient, plaintext, Buffer.from(objectId, "utf8"));
    plaintext.fill(0);
    await new TerminalEncipheredStore(o.store).put([{ objectId, envelope }]);
    const info = envelopeInfo(envelope);
    print(o, `${objectId}: enciphered for key ${short(info.kid)} (${info.key}) into ${o.store}`, { objectId, store: o.store, alg: info.alg, key: info.key, kid: info.kid, size: envelope.length });
  });

  cardOptions(
    cmd
      .command("decipher")
      .description("the card opens an object of the terminal's store (or of its own enciphered-data object); the plaintext goes to --out")
      .argument("<objectId>", "the object")
      .requiredOption("--out <file>", "where the plaintext goes (created 0600; never overwritten)")
      .addOption(pinOption())
      .option("--json", "JSON output"),
  ).action(async (id: string, o: CardOpts & { out: string; pin?: string }) => {
    const objectId = objectIdOf(id, "object ID");
    if (!o.pin) throw new UsageError("the card's 9D key needs the PIN: pass --pin or set CARDKMS_PIN");
    if (existsSync(o.out)) throw new UsageError(`${o.out} exists: plaintext is never written over a file`);
    const r = await withCard(o, async (transport) => {
      const piv = new PivClient((a) => transport.transmit(a));
      await piv.select();
      let from = "terminal";
      let envelope = await new TerminalEncipheredStore(o.store).get(objectId);
      if (!envelope) {
        envelope = await new CardEncipheredStore({ piv }).get(objectId);
        from = "card";
      }
      if (!envelope) throw new UsageError(`no object ${objectId} in ${o.store} nor on the card`);
      const plain = await decipherWithCard(piv, SLOT.keyManagement, envelope, { pin: o.pin, aad: Buffer.from(objectId, "utf8") });
      try {
        // 0600, never over an existing name, never through a symlink, never into a directory others may write (issue 15 §6)
        writeFileAtomic(o.out, plain, 0o600, { noClobber: true });
      } finally {
        plain.fill(0);
      }
      return { objectId, from, out: o.out, size: plain.length };
    });
    print(o, `${objectId}: deciphered by the card (from the ${r.from} store) into ${r.out}, ${r.size} bytes`, r);
  });

  serverOptions(cardOptions(cmd.command("push").description("seed 001 S10: back up the terminal's store and the card's enciphered-data object to the server (new versions only)")), "optional").action(
    async (o: ServerCardOpts) => {
      apiFrom(o, "optional");
      const r = await withCard(o, async (transport) => {
        const { cardId, api, piv } = await asCard(o, transport);
        const target = new HttpBackupTarget(api, cardId);
        const userId = await target.userId();
        const from = [new TerminalEncipheredStore(o.store), new CardEncipheredStore({ piv })];
        return { cardId, userId, ...(await backup({ userId, cardId, from, to: target })) };
      });
      print(o, `card ${r.cardId}, user ${r.userId}: ${describeBackup(r)}`, r);
      if (r.conflicts.length) process.exitCode = 1;
    },
  );

  serverOptions(
    cardOptions(
      cmd
        .command("list")
        .description("the versions the server keeps of the card's user's objects (no envelopes)")
        .option("--object <id>", "one object's versions")
        .option("--card-id <id>", "the card by its ID instead of the card itself (with --token: an operator's or an auditor's)"),
    ),
    "optional",
  ).action(async (o: ServerCardOpts & { object?: string; cardId?: string }) => {
    const objectId = o.object === undefined ? undefined : objectIdOf(o.object);
    const list = async (api: IssuerApiClient, cardId: string) => new HttpBackupTarget(api, cardId).list({ objectId });
    let r;
    if (o.cardId) {
      if (o.cardImage || o.reader) throw new UsageError("name the card once: --card-id, or the card (--card-image / --reader)");
      if (!/^([0-9a-f]{2}){8,16}$/.test(o.cardId)) throw new UsageError("--card-id must be 8 to 16 bytes of lowercase hex");
      r = await list(apiFrom(o, "required"), o.cardId);
    } else {
      apiFrom(o, "optional");
      r = await withCard(o, async (transport) => {
        const { cardId, api } = await asCard(o, transport);
        return list(api, cardId);
      });
    }
    print(o, describeList(r.cardId, r.userId, r.backups), r);
  });

  serverOptions(
    cardOptions(
      cmd
        .command("restore")
        .description("seed 001 S12: the latest version of each object from the server into the terminal's store — those enciphered for this card's 9D key")
        .option("--object <id...>", "only these objects"),
    ),
    "optional",
  ).action(async (o: ServerCardOpts & { object?: string[] }) => {
    const objectIds = o.object?.map((id) => objectIdOf(id));
    apiFrom(o, "optional");
    const r = await withCard(o, async (transport) => {
      const { cardId, api, piv } = await asCard(o, transport);
      const target = new HttpBackupTarget(api, cardId);
      const userId = await target.userId();
      await keyManagementCertificate(piv);
      return { cardId, userId, ...(await restore({ userId, from: target, into: new TerminalEncipheredStore(o.store), forCard: { piv, slot: SLOT.keyManagement }, objectIds })) };
    });
    print(o, `card ${r.cardId}, user ${r.userId}: ${describeRestore(r)}`, r);
    // Objects asked for by name that did not come back are a failure; others (made for another key) are not.
    if (objectIds && r.skipped.length) process.exitCode = 1;
  });

  return cmd;
}
