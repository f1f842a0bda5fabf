// Key reproduction by arbitrators on the command line (issue 4 item 6; seed 001 embodiment 3): operators register
// arbitrators, set policies, file and follow requests, and reproduce a key into a card through this machine (the
// CLI is the card issuing machine: it relays the server's APDUs into a card image or a PC/SC reader); arbitrators
// list what is pending for them, approve (their shares released to the reproduction device) or refuse, and the
// policy's author signs the list of approvers. Everything goes through the HTTP API (src/terminal/recovery-client.ts).
//
// Arbitrators' private keys are read from PEM files here and used here only: signatures and sealed shares leave
// this process, the keys never do. An arbitrator's API token (role arbitrator, bound to it) comes from an operator
// (`recovery arbitrator token <id>`) and is printed once.

import { Command, Option } from "commander";
import { existsSync, readFileSync } from "node:fs";
import { openCard } from "../card/card.ts";
import {
  approveRequest,
  generateArbitratorKeyFiles,
  p256PrivateKey,
  p256PublicKey,
  RecoveryApiClient,
  refuseRequest,
  signApproverListFor,
  type PendingJson,
  type RequestJson,
} from "../terminal/recovery-client.ts";
import { ScriptorTransport } from "../transport/scriptor.ts";
import { InProcessTransport, type CardTransport } from "../transport/transport.ts";
import { resolveImageSecret, UsageError } from "./image-key.ts";
import { apiFrom, print, serverOptions, type Out, type ServerOpts } from "./issuer.ts";

const KINDS = ["key-lost", "card-destroyed"];
const STATUSES = ["open", "satisfied", "reproducing", "reproduced", "ended", "withdrawn"];

const client = (o: ServerOpts) => new RecoveryApiClient(apiFrom(o));

function readFile(path: string, what: string): string {
  if (!existsSync(path)) throw new UsageError(`${what}: no file ${path}`);
  return readFileSync(path, "utf8");
}

/** A one-line account of a request. */
function describe(v: RequestJson): string {
  const e = v.evaluation;
  const lines = [`request ${v.requestId} (${v.kind}) for card ${v.cardId}: ${v.status}${v.statusDetail ? ` — ${v.statusDetail}` : ""}`];
  lines.push(`  requester ${v.request.requester}${v.request.reason ? `, reason: ${v.request.reason}` : ""}; filed by ${v.filedBy} at ${new Date(v.filedAt).toISOString()}`);
  lines.push(`  decisions: ${v.approvals.map((a) => `${a.arbitrator} ${a.decision === "approve" ? "approved" : `refused (${a.reason ?? ""})`}`).join(", ") || "none yet"}`);
  if (e.status === "pending" && "needs" in e) {
    const n = e.needs;
    const needs = [
      ...n.indispensable.map((p) => p),
      ...n.groups.map((g) => `${g.more} more of ${g.name} (${g.candidates.join(", ")})`),
      ...n.waiting.map((w) => `${w.after} after ${w.before}`),
    ];
    lines.push(`  still needed: ${needs.join("; ")}`);
  }
  if (v.status === "satisfied") lines.push(v.approverList ? `  approver list signed by ${v.approverList.author}: ready to reproduce` : `  waiting for the policy's author ${v.request.policy.author} to sign the list of approvers`);
  return lines.join("\n");
}

function describePending(id: string, items: PendingJson[]): string {
  if (!items.length) return `nothing pending for ${id}`;
  return items
    .map((p) =>
      p.action === "decide"
        ? `request ${p.request.requestId} (${p.request.kind}, card ${p.request.cardId}, requester ${p.request.request.requester}): decide${p.mayApproveNow ? "" : ` — may approve only after ${p.waitingFor.join(", ")}`}; ${p.envelopes.length} share(s) held`
        : `request ${p.request.requestId} (card ${p.request.cardId}): satisfied by ${p.request.evaluation.approvers.join(", ")} — sign the list of approvers`,
    )
    .join("\n");
}

/** The card to reproduce into: a card image (in-process) or a PC/SC reader. */
function openTarget(o: { cardImage?: string; reader?: string; imageKeyFile?: string }): CardTransport {
  if (!o.cardImage === !o.reader) throw new UsageError("name the card: --card-image <file> or --reader <name>");
  if (o.cardImage) {
    if (!existsSync(o.cardImage)) throw new UsageError(`no card image at ${o.cardImage}`);
    return new InProcessTransport(openCard(o.cardImage, resolveImageSecret(o.imageKeyFile), { durability: "fsync" }), { closeCard: true });
  }
  return new ScriptorTransport({ reader: o.reader });
}

export function registerRecoveryCommands(program: Command): void {
  const recovery = program.command("recovery").description("key reproduction by arbitrators: arbitrators, policies, requests, approvals, reproduction");

  // ---- arbitrators --------------------------------------------------------------------------------------------------
  const arbitrator = recovery.command("arbitrator").description("arbitrators: key pairs, registration, API tokens");

  arbitrator
    .command("keygen")
    .description("make an arbitrator's two P-256 key pairs (signing: ECDSA, encryption: ECDH) as PEM files (0600) in --out; the private keys stay there")
    .requiredOption("--out <dir>", "directory for signing.key.pem, signing.pub.pem, encryption.key.pem, encryption.pub.pem")
    .option("--json", "JSON output")
    .action((o: Out & { out: string }) => {
      for (const f of ["signing.key.pem", "encryption.key.pem"]) if (existsSync(`${o.out}/${f}`)) throw new UsageError(`${o.out}/${f} exists: keys are never overwritten`);
      const files = generateArbitratorKeyFiles(o.out);
      print(o, `key pairs written to ${o.out}: register ${files.signingPublicKey} and ${files.encryptionPublicKey}; keep the .key.pem files private`, files);
    });

  serverOptions(
    arbitrator
      .command("add")
      .description("register an arbitrator with its public keys (given a private key file, only its public half is sent)")
      .requiredOption("--id <id>", "arbitrator id (1-128 of A-Z a-z 0-9 . _ : @ -)")
      .requiredOption("--signing-key <pem>", "the signing (ECDSA P-256) public key file")
      .requiredOption("--encryption-key <pem>", "the encryption (ECDH P-256) public key file")
      .option("--role <role...>", "roles, e.g. user, credit company, service provider")
      .option("--display-name <name>", "display name"),
  ).action(async (o: ServerOpts & { id: string; signingKey: string; encryptionKey: string; role?: string[]; displayName?: string }) => {
    const signingPublicKey = p256PublicKey(readFile(o.signingKey, "--signing-key"), "--signing-key");
    const encryptionPublicKey = p256PublicKey(readFile(o.encryptionKey, "--encryption-key"), "--encryption-key");
    const a = await client(o).registerArbitrator({ id: o.id, roles: o.role, displayName: o.displayName, signingPublicKey, encryptionPublicKey });
    print(o, `arbitrator ${a.id} registered${a.roles.length ? ` (${a.roles.join(", ")})` : ""}; encryption key ${a.encryptionKeyId}`, a);
  });

  serverOptions(arbitrator.command("list").description("the registered arbitrators")).action(async (o: ServerOpts) => {
    const list = await client(o).arbitrators();
    print(o, list.map((a) => `${a.id}${a.roles.length ? ` (${a.roles.join(", ")})` : ""}${a.displayName ? ` ${a.displayName}` : ""}`).join("\n") || "no arbitrators", list);
  });

  serverOptions(arbitrator.command("show").description("one arbitrator").argument("<id>", "arbitrator id")).action(async (id: string, o: ServerOpts) => {
    const a = await client(o).arbitrator(id);
    print(o, `${a.id}${a.roles.length ? ` (${a.roles.join(", ")})` : ""}: registered by ${a.registeredBy} at ${new Date(a.registeredAt).toISOString()}; encryption key ${a.encryptionKeyId}`, a);
  });

  serverOptions(
    arbitrator.command("token").description("issue an API token bound to the arbitrator (operator); printed once, give it to the arbitrator").argument("<id>", "arbitrator id"),
  ).action(async (id: string, o: ServerOpts) => {
    const t = await client(o).issueArbitratorToken(id);
    print(o, `token ${t.tokenId} for arbitrator ${id}, shown only now:\n${t.token}`, t);
  });

  serverOptions(
    arbitrator.command("revoke-token").description("revoke an arbitrator token").argument("<id>", "arbitrator id").argument("<tokenId>", "the token's id (from `recovery arbitrator token`)"),
  ).action(async (id: string, tokenId: string, o: ServerOpts) => {
    const r = await client(o).revokeArbitratorToken(id, tokenId);
    print(o, `token ${tokenId} of arbitrator ${id} revoked`, r);
  });

  // ---- policies and escrows -----------------------------------------------------------------------------------------
  const policy = recovery.command("policy").description("a card's reproduction policy (step S1)");

  serverOptions(
    policy
      .command("set")
      .description("set a card's reproduction policy from a JSON file: {version: 1, author, indispensable: [...], groups: [{name, members, threshold}], order: [{before, after}]}")
      .argument("<cardId>", "card id")
      .requiredOption("--file <policy.json>", "the policy document"),
  ).action(async (cardId: string, o: ServerOpts & { file: string }) => {
    let doc: unknown;
    try {
      doc = JSON.parse(readFile(o.file, "--file"));
    } catch (e) {
      if (e instanceof UsageError) throw e;
      throw new UsageError(`${o.file} is not JSON: ${(e as Error).message}`);
    }
    const p = await client(o).setPolicy(cardId, doc);
    print(o, `policy ${p.digest.slice(0, 16)}… set for card ${cardId}`, p);
  });

  serverOptions(policy.command("show").description("a card's reproduction policy").argument("<cardId>", "card id")).action(async (cardId: string, o: ServerOpts) => {
    const p = await client(o).policy(cardId);
    const pol = p.policy;
    print(
      o,
      [
        `card ${cardId}: policy ${p.digest.slice(0, 16)}… set by ${p.setBy}`,
        `  indispensable: ${pol.indispensable.join(", ") || "-"}`,
        ...pol.groups.map((g) => `  group ${g.name}: ${g.threshold} of ${g.members.join(", ")}`),
        ...pol.order.map((c) => `  ${c.after} only after ${c.before}`),
        `  approver list by: ${pol.author}`,
      ].join("\n"),
      p,
    );
  });

  serverOptions(recovery.command("escrow").description("a card's escrow: registered public key and certificate, who holds which share").argument("<cardId>", "card id")).action(
    async (cardId: string, o: ServerOpts) => {
      const e = await client(o).escrow(cardId);
      print(o, `card ${cardId}: escrow ${e.escrowId}, ${e.alg} key in slot ${e.slot}, certificate ${e.serial}, ${e.shares.length} shares, device generation ${e.deviceGeneration}`, e);
    },
  );

  serverOptions(recovery.command("device-key").description("the reproduction device's public key (arbitrators release their shares to it)")).action(async (o: ServerOpts) => {
    const k = await client(o).deviceKey();
    print(o, `${k.pem.trim()}\nkey id (SHA-256 of the SPKI): ${k.keyId}`, { pem: k.pem, keyId: k.keyId });
  });

  // ---- requests -------------------------------------------------------------------------------------------------------
  const request = recovery.command("request").description("reproduction requests (steps S5-S7)");

  serverOptions(
    request
      .command("file")
      .description("file a reproduction request for a card")
      .requiredOption("--card <id>", "card id")
      .addOption(new Option("--kind <kind>", "key-lost: the same card comes back; card-destroyed: a new card receives the key").choices(KINDS).makeOptionMandatory())
      .requiredOption("--requester <who>", "who asks (e.g. the user's arbitrator id)")
      .option("--reason <text>", "why"),
  ).action(async (o: ServerOpts & { card: string; kind: "key-lost" | "card-destroyed"; requester: string; reason?: string }) => {
    const v = await client(o).fileRequest({ cardId: o.card, kind: o.kind, requester: o.requester, reason: o.reason });
    print(o, describe(v), v);
  });

  serverOptions(
    request
      .command("list")
      .description("reproduction requests, newest first")
      .addOption(new Option("--status <status>", "only this status").choices(STATUSES))
      .option("--card <id>", "only this card's"),
  ).action(async (o: ServerOpts & { status?: string; card?: string }) => {
    const list = await client(o).requests({ status: o.status, cardId: o.card });
    print(o, list.map((v) => `${v.requestId}  ${v.kind.padEnd(14)} ${v.status.padEnd(11)} card ${v.cardId}`).join("\n") || "no requests", list);
  });

  serverOptions(request.command("show").description("a request, its decisions and what it still needs").argument("<requestId>", "request id")).action(async (id: string, o: ServerOpts) => {
    const v = await client(o).request(id);
    print(o, describe(v), v);
  });

  serverOptions(
    request.command("withdraw").description("withdraw an unfinished request").argument("<requestId>", "request id").requiredOption("--reason <text>", "why"),
  ).action(async (id: string, o: ServerOpts & { reason: string }) => {
    const v = await client(o).withdraw(id, o.reason);
    print(o, describe(v), v);
  });

  // ---- arbitrators' side -------------------------------------------------------------------------------------------------
  serverOptions(recovery.command("pending").description("what an arbitrator has to do").requiredOption("--arbitrator <id>", "arbitrator id")).action(
    async (o: ServerOpts & { arbitrator: string }) => {
      const items = await client(o).pending(o.arbitrator);
      print(o, describePending(o.arbitrator, items), items);
    },
  );

  serverOptions(
    recovery
      .command("approve")
      .description("approve a request as an arbitrator: signed after the chain head, its shares opened here and released sealed to the reproduction device")
      .argument("<requestId>", "request id")
      .requiredOption("--arbitrator <id>", "arbitrator id")
      .requiredOption("--signing-key <pem>", "the arbitrator's signing private key file")
      .requiredOption("--encryption-key <pem>", "the arbitrator's encryption private key file")
      .option("--device-key-id <hex>", "release shares only if the reproduction device key has this id (see `recovery device-key`)"),
  ).action(async (id: string, o: ServerOpts & { arbitrator: string; signingKey: string; encryptionKey: string; deviceKeyId?: string }) => {
    if (o.deviceKeyId !== undefined && !/^[0-9a-fA-F]{64}$/.test(o.deviceKeyId)) throw new UsageError("--device-key-id is 64 hex digits");
    const keys = { signing: p256PrivateKey(readFile(o.signingKey, "--signing-key"), "--signing-key"), encryption: p256PrivateKey(readFile(o.encryptionKey, "--encryption-key"), "--encryption-key") };
    const v = await approveRequest(client(o), o.arbitrator, id, keys, { expectDeviceKeyId: o.deviceKeyId });
    print(o, `${o.arbitrator} approved request ${id}\n${describe(v)}`, v);
  });

  serverOptions(
    recovery
      .command("refuse")
      .description("refuse a request as an arbitrator, with a reason (signed)")
      .argument("<requestId>", "request id")
      .requiredOption("--arbitrator <id>", "arbitrator id")
      .requiredOption("--signing-key <pem>", "the arbitrator's signing private key file")
      .requiredOption("--reason <text>", "why"),
  ).action(async (id: string, o: ServerOpts & { arbitrator: string; signingKey: string; reason: string }) => {
    const v = await refuseRequest(client(o), o.arbitrator, id, p256PrivateKey(readFile(o.signingKey, "--signing-key"), "--signing-key"), o.reason);
    print(o, `${o.arbitrator} refused request ${id}\n${describe(v)}`, v);
  });

  const approverList = recovery.command("approver-list").description("the list of approvers, signed by the policy's author (FIG. 9 condition 15)");
  serverOptions(
    approverList
      .command("sign")
      .description("sign the list of approvers of a satisfied request as the policy's author")
      .argument("<requestId>", "request id")
      .requiredOption("--author <id>", "the policy's author (an arbitrator id)")
      .requiredOption("--signing-key <pem>", "the author's signing private key file"),
  ).action(async (id: string, o: ServerOpts & { author: string; signingKey: string }) => {
    const v = await signApproverListFor(client(o), o.author, id, p256PrivateKey(readFile(o.signingKey, "--signing-key"), "--signing-key"));
    print(o, `${o.author} signed the list of approvers of request ${id}: ${v.approverList?.approvers.join(", ")}\n${describe(v)}`, v);
  });

  // ---- reproduction ---------------------------------------------------------------------------------------------------------
  serverOptions(
    recovery
      .command("reproduce")
      .description("reproduce a satisfied request's key into a card here (card image or PC/SC reader): the server drives the card through this machine")
      .argument("<requestId>", "request id")
      .option("--card <cardId>", "the card record whose key set the card holds (default the request's card; for card-destroyed, the newly issued card)")
      .option("--card-image <file>", "the card, as a virtual card image")
      .option("--reader <name>", "the card, in this PC/SC reader (through scriptor)")
      .addOption(new Option("--image-key-file <file>", "file with the card image key (else CARDKMS_IMAGE_KEY)")),
  ).action(async (id: string, o: ServerOpts & { card?: string; cardImage?: string; reader?: string; imageKeyFile?: string }) => {
    const api = client(o);
    const transport = openTarget(o);
    try {
      const r = await api.reproduce(id, (a) => transport.transmit(a), { cardId: o.card });
      print(
        o,
        `key of card ${r.cardId} reproduced into slot ${r.slot} with certificate ${r.serial}${r.deviceReplaced ? ` (the new card is now the registered device, generation ${r.deviceGeneration})` : ""}; approved by ${r.approvers.join(", ")}, list by ${r.author}`,
        r,
      );
    } finally {
      await transport.close();
    }
  });
}
