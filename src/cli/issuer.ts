// The issuing flows on the command line (issue 3 §5): run the issuer server, bootstrap an operator token, and
// drive the API as an operator — register users, issue and personalise cards (the CLI is the card issuing
// machine: it holds the blank virtual card and relays the server's SCP03 script into it), request credentials,
// deliver them online, revoke, verify the audit log. It only wires the API client, the terminal library and the
// card; no domain logic lives here.
//
// Secrets: an API token is printed once, by `issuer token create`, and never again; tokens come in through
// --token or CARDKMS_TOKEN and are never echoed.

import { Command, Option } from "commander";
import { existsSync } from "node:fs";
import { userInfo } from "node:os";
import { createCard, openCard } from "../card/card.ts";
import { factoryOptions, factoryTransport, type FactoryOpts } from "./kmc.ts";
import type { KeyAlg } from "../card/state.ts";
import { IssuerApiClient } from "../terminal/api-client.ts";
import { relaySession } from "../terminal/terminal.ts";
import { InProcessTransport } from "../transport/transport.ts";
import type { Role } from "../server/auth.ts";
import { resolveImageSecret, UsageError } from "./image-key.ts";
import { writeFileAtomic } from "../util/files.ts";
import type { CardRecordJson } from "../issuer/wire.ts";

export interface Out {
  json?: boolean;
}

export function print(o: Out, human: string, data: unknown): void {
  process.stdout.write(o.json ? JSON.stringify(data) + "\n" : human + "\n");
}

export interface ServerOpts extends Out {
  server?: string;
  token?: string;
  timeout?: number;
}

const int = (v: string): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new UsageError(`not a whole number: ${v}`);
  return n;
};

/** --server, --token (from CARDKMS_SERVER, CARDKMS_TOKEN) and --timeout on a command. */
export function serverOptions(cmd: Command, token: "required" | "optional" = "required"): Command {
  return cmd
    .addOption(new Option("--server <url>", "issuer server URL").env("CARDKMS_SERVER"))
    .addOption(new Option("--token <token>", token === "required" ? "API token" : "API token (optional: the card authenticates itself)").env("CARDKMS_TOKEN"))
    .addOption(new Option("--timeout <ms>", "per-request timeout in ms").argParser(int).default(30_000))
    .option("--json", "JSON output");
}

/** The API client for a command's options; missing server or token is a usage error (exit 2). */
export function apiFrom(o: ServerOpts, token: "required" | "optional" = "required"): IssuerApiClient {
  if (!o.server) throw new UsageError("no server: pass --server <url> or set CARDKMS_SERVER");
  if (token === "required" && !o.token) throw new UsageError("no API token: pass --token or set CARDKMS_TOKEN (an operator creates one with `cardkms issuer token create`)");
  return new IssuerApiClient({ server: o.server, token: o.token || undefined, timeoutMs: o.timeout });
}

const imageKeyOption = () => new Option("--image-key-file <file>", "file with the card image key (else CARDKMS_IMAGE_KEY)");
const SLOT_CHOICES = ["9a", "9c", "9d", "9e", ...Array.from({ length: 20 }, (_, i) => (0x82 + i).toString(16))];
const ALGS: KeyAlg[] = ["P256", "P384", "RSA2048", "RSA3072"];
const ROLES = ["admin", "operator", "auditor", "issuer"];

/** Opens the system DB for the commands that work on it directly (token bootstrap, offline audit verify). */
/** Who acts when the CLI writes the DB itself (the audit entry's actor): the local account, "local:<user>". */
function localActor(): string {
  try {
    return `local:${userInfo().username}`;
  } catch {
    return "local";
  }
}

async function openStore(o: { database?: string; config?: string }) {
  const { loadConfig } = await import("../server/config.ts");
  const { Store } = await import("../store/store.ts");
  return Store.open(o.database ?? loadConfig({ file: o.config }).database);
}

export function registerIssuerCommands(program: Command): void {
  // ---- issuer -----------------------------------------------------------------------------------------------
  const issuer = program.command("issuer").description("the issuing service: run it, bootstrap operator tokens");

  issuer
    .command("serve")
    .description("run the issuer HTTP server (configuration: defaults, then --config, then CARDKMS_* variables)")
    .option("--config <file>", "JSON configuration file")
    .option("--json", "JSON output")
    .action(async (o: { config?: string; json?: boolean }) => {
      const { loadConfig } = await import("../server/config.ts");
      const { startIssuerServer } = await import("../server/main.ts");
      const config = loadConfig({ file: o.config });
      const server = await startIssuerServer(config, { handleSignals: false });
      print(o, `cardkms issuer listening on ${server.url} (Ctrl-C to stop)`, { url: server.url });
      await new Promise<void>((resolve) => {
        process.once("SIGINT", resolve);
        process.once("SIGTERM", resolve);
      });
      await server.close();
    });

  const token = issuer.command("token").description("operator API tokens");
  token
    .command("create")
    .description("create an operator with an API token; the token is printed once and never stored in clear")
    .requiredOption("--name <name>", "operator name")
    .addOption(new Option("--role <role...>", "roles (repeat or list)").choices(ROLES).makeOptionMandatory())
    .option("--database <url>", "system DB (SQLite path or postgres:// URL); default from --config / CARDKMS_DATABASE")
    .option("--config <file>", "issuer configuration file (for the database)")
    .option("--json", "JSON output")
    .action(async (o: { name: string; role: string[]; database?: string; config?: string; json?: boolean }) => {
      const { createOperatorToken } = await import("../server/main.ts");
      const store = await openStore(o);
      try {
        const { token: value, operator } = await createOperatorToken(store, o.name, o.role as Role[], localActor());
        print(o, `operator ${o.name} (${operator.roles.join(", ")}): API token, shown only now:\n${value}`, { id: operator.id, name: o.name, roles: operator.roles, token: value });
      } finally {
        await store.close();
      }
    });
  token
    .command("disable")
    .description("disable an operator: its API token stops working (audited)")
    .requiredOption("--name <name>", "operator name")
    .option("--database <url>", "system DB (SQLite path or postgres:// URL); default from --config / CARDKMS_DATABASE")
    .option("--config <file>", "issuer configuration file (for the database)")
    .option("--json", "JSON output")
    .action(async (o: { name: string; database?: string; config?: string; json?: boolean }) => {
      const { disableOperatorToken } = await import("../server/main.ts");
      const store = await openStore(o);
      try {
        if (!(await disableOperatorToken(store, o.name, localActor()))) throw new UsageError(`no enabled operator named ${o.name}`);
        print(o, `operator ${o.name} disabled`, { name: o.name, disabled: true });
      } finally {
        await store.close();
      }
    });

  // ---- users ------------------------------------------------------------------------------------------------
  const user = program.command("user").description("users: register their personal data (the subject of their certificates)");
  serverOptions(
    user
      .command("register")
      .description("register a user")
      .requiredOption("--name <name>", "common name")
      .option("--email <email>", "e-mail address")
      .option("--organization <org>", "organization")
      .option("--organizational-unit <ou>", "organizational unit")
      .option("--country <cc>", "two-letter country code"),
  ).action(async (o: ServerOpts & { name: string; email?: string; organization?: string; organizationalUnit?: string; country?: string }) => {
    const personalData: Record<string, string> = { commonName: o.name };
    if (o.email) personalData.email = o.email;
    if (o.organization) personalData.organization = o.organization;
    if (o.organizationalUnit) personalData.organizationalUnit = o.organizationalUnit;
    if (o.country) personalData.country = o.country;
    const u = await apiFrom(o).registerUser(personalData);
    print(o, `user ${u.id} registered`, u);
  });

  // ---- credentials (ST16-ST25) ----------------------------------------------------------------------------------
  const credential = program.command("credential").description("key pairs and certificates for cards: request, deliver online");
  serverOptions(
    credential
      .command("request")
      .description("a new key pair and certificate for a card (claim 7: addition; --replace: update, claim 4), queued as a package for its terminal")
      .requiredOption("--card <id>", "card ID")
      .addOption(new Option("--slot <slot>", "PIV key reference").choices(SLOT_CHOICES).default("9a"))
      .addOption(new Option("--alg <alg>", "key algorithm").choices(ALGS).default("P256"))
      .option("--profile <name>", "certificate profile (default from the slot)")
      .option("--replace", "replace the key in an occupied slot")
      .option("--cert-out <file>", "also write the certificate (PEM) here"),
  ).action(async (o: ServerOpts & { card: string; slot: string; alg: KeyAlg; profile?: string; replace?: boolean; certOut?: string }) => {
    const c = await apiFrom(o).requestCredential(o.card, { slot: o.slot, alg: o.alg, profile: o.profile, replace: o.replace });
    // a public certificate, but never written through a symlink or into a directory others may write (issue 15 §6)
    if (o.certOut) writeFileAtomic(o.certOut, c.certificate, 0o644);
    print(o, `key pair ${c.keyPairId} for card ${o.card} slot ${o.slot}: certificate ${c.serial}, package ${c.packageSeq} waiting for the terminal`, c);
  });

  serverOptions(
    credential
      .command("online")
      .description("deliver a stored credential online: an SCP03 session the server drives, relayed into the card image")
      .requiredOption("--card <id>", "card ID")
      .requiredOption("--key-pair <id>", "key pair ID")
      .requiredOption("--image <file>", "card image")
      .addOption(imageKeyOption()),
  ).action(async (o: ServerOpts & { card: string; keyPair: string; image: string; imageKeyFile?: string }) => {
    const api = apiFrom(o);
    const secret = resolveImageSecret(o.imageKeyFile);
    if (!existsSync(o.image)) throw new UsageError(`no card image at ${o.image}`);
    const vc = openCard(o.image, secret, { durability: "fsync" });
    const transport = new InProcessTransport(vc, { closeCard: true });
    try {
      if (vc.state.cardId !== o.card) throw new UsageError(`${o.image} holds card ${vc.state.cardId}, not ${o.card}`);
      const results = await relaySession(api, (a) => transport.transmit(a), await api.startOnlineDelivery(o.card, o.keyPair));
      const sws = results.map((r) => r.sw.toString(16).toUpperCase().padStart(4, "0"));
      print(o, `key pair ${o.keyPair} delivered online to card ${o.card} (${sws.join(", ")})`, { cardId: o.card, keyPairId: o.keyPair, results: sws });
    } finally {
      await transport.close();
    }
  });

  // ---- revocation ---------------------------------------------------------------------------------------------
  const certificate = program.command("certificate").description("certificates: revoke, fetch the CRL");
  serverOptions(
    certificate
      .command("revoke")
      .description("revoke a certificate at the CA and in the system DB")
      .argument("<serial>", "certificate serial (hex)")
      .option("--reason <reason>", "RFC 5280 reason (keyCompromise, superseded, cessationOfOperation, ...)", "unspecified"),
  ).action(async (serial: string, o: ServerOpts & { reason: string }) => {
    if (!/^[0-9A-Fa-f]{2,64}$/.test(serial)) throw new UsageError("the serial is hex");
    const r = await apiFrom(o).revokeCertificate(serial, o.reason);
    print(o, `certificate ${serial} revoked (${o.reason})`, r);
  });

  serverOptions(certificate.command("crl").description("fetch the CA's current CRL (DER)").requiredOption("--out <file>", "where to write the CRL"), "optional").action(
    async (o: ServerOpts & { out: string }) => {
      const r = await apiFrom(o, "optional").crl();
      writeFileAtomic(o.out, r.body, 0o644);
      print(o, `CRL (${r.body.length} bytes) written to ${o.out}`, { out: o.out, bytes: r.body.length });
    },
  );
}

/**
 * `card issue` (ST11-ST15) and the card lifecycle commands, on the `card` group (card.ts): the CLI as the card
 * issuing machine, over the API.
 */
export function registerCardIssueCommands(card: Command): void {
  serverOptions(
    factoryOptions(
      card
        .command("issue")
        .description("issue a card to a user: the server creates its key set; a blank card image is created here and personalised through the relay")
        .requiredOption("--user <id>", "user ID")
        .requiredOption("--image <file>", "card image to create")
        .option("--card-id <hex>", "card ID (8-16 bytes hex); chosen by the server by default")
        .option("--capacity <bytes>", "user data the card can hold", int, 96 * 1024)
        .option("--pin <pin>", "initial PIN", "123456")
        .option("--puk <puk>", "initial PUK", "12345678")
        .addOption(imageKeyOption()),
    ),
  ).action(async (o: ServerOpts & FactoryOpts & { user: string; image: string; cardId?: string; capacity: number; pin: string; puk: string; imageKeyFile?: string }) => {
    const api = apiFrom(o);
    const secret = resolveImageSecret(o.imageKeyFile);
    const factory = factoryTransport(o).card;
    if (existsSync(o.image)) throw new UsageError(`${o.image} already exists`);
    if (o.cardId && !/^([0-9a-f]{2}){8,16}$/.test(o.cardId)) throw new UsageError("--card-id must be 8 to 16 bytes of lowercase hex");
    const { card: issued } = await api.createCard({ userId: o.user, cardId: o.cardId });
    const vc = createCard(o.image, secret, { ...factory, cardId: new Uint8Array(Buffer.from(issued.id, "hex")), capacity: o.capacity, pin: o.pin, puk: o.puk, durability: "fsync" });
    const transport = new InProcessTransport(vc, { closeCard: true });
    try {
      await relaySession(api, (a) => transport.transmit(a), await api.startPersonalisation(issued.id));
    } catch (e) {
      throw new Error(`card ${issued.id} is registered but its personalisation failed (the image ${o.image} is still blank): ${(e as Error).message}`, { cause: e });
    } finally {
      await transport.close();
    }
    const after = await api.getCard(issued.id);
    print(o, `card ${issued.id} issued to user ${o.user} and personalised: ${o.image} (status ${after.status})`, { cardId: issued.id, userId: o.user, image: o.image, status: after.status });
  });

  registerCardLifecycleCommands(card);
}

/** A card record as GET /v1/cards/{id} and the lifecycle routes answer it (issuer/wire.ts). */
type CardRecord = CardRecordJson;

const CARD_ID_RE = /^([0-9a-f]{2}){8,16}$/;
const lastChange = (c: CardRecord): string => (c.statusChangedAt ? ` since ${new Date(c.statusChangedAt).toISOString()}, by ${c.statusChangedBy ?? "?"}: ${c.statusReason ?? ""}` : "");

/**
 * The card lifecycle on the command line (src/issuer/card-lifecycle.ts), over the API: `card suspend|resume|retire|
 * report-destroyed <card-id> --reason <text>` and `card state <card-id>`. Who may: the server decides (operators;
 * suspend also the card's own terminal token; auditors only read the state).
 */
export function registerCardLifecycleCommands(card: Command): void {
  const transitions: [name: string, description: string][] = [
    ["suspend", "suspend an active card: its live terminal tokens stop at once, on every server (an operator, or the card's own terminal token)"],
    ["resume", "resume a suspended card (an operator): the card logs in again; tokens from before the suspension stay dead"],
    ["retire", "retire a card for good (an operator): it never comes back"],
    ["report-destroyed", "report a card destroyed (an operator): final, like retire"],
  ];
  for (const [name, description] of transitions)
    serverOptions(card.command(name).description(description).argument("<card-id>", "card ID").requiredOption("--reason <text>", "why (audited with who did it)")).action(
      async (cardId: string, o: ServerOpts & { reason: string }) => {
        if (!CARD_ID_RE.test(cardId)) throw new UsageError("the card ID is 8 to 16 bytes of lowercase hex");
        if (!o.reason.trim()) throw new UsageError("--reason must say why");
        const c = await apiFrom(o).request<CardRecord>("POST", `/v1/cards/${cardId}/${name}`, { reason: o.reason });
        print(o, `card ${c.id}: ${c.status}${lastChange(c)}`, c);
      },
    );
  serverOptions(card.command("state").description("a card's lifecycle state (issued, active, suspended, retired, destroyed) and its last change").argument("<card-id>", "card ID")).action(
    async (cardId: string, o: ServerOpts) => {
      if (!CARD_ID_RE.test(cardId)) throw new UsageError("the card ID is 8 to 16 bytes of lowercase hex");
      const c = (await apiFrom(o).getCard(cardId)) as CardRecord;
      const out = { id: c.id, userId: c.userId, status: c.status, statusChangedAt: c.statusChangedAt ?? null, statusChangedBy: c.statusChangedBy ?? null, statusReason: c.statusReason ?? null };
      print(o, `card ${c.id} (user ${c.userId}): ${c.status}${lastChange(c)}`, out);
    },
  );
}
