// Key reproduction by arbitrators on the command line (issue 4 item 6; seed 001 embodiment 3): operators register
// arbitrators, set policies, file and follow requests, and reproduce a key into a card through this machine (the
// CLI is the card issuing machine: it relays the server's APDUs into a card image or a PC/SC reader); arbitrators
// list what is pending for them, approve (their shares released to the reproduction device) or refuse, and the
// policy's author signs the list of approvers. Everything goes through the HTTP API (src/terminal/recovery-client.ts).
//
// Who receives a reproduced key: the card the request names. A key-lost request names the registered card itself; a
// card-destroyed request names the replacement card (`request file --replacement-card <id>`: a card record issued
// to the same user, active, its slot empty), and every approval signs over it — `approve --target-card <id>` lets an
// arbitrator refuse to sign for any other. `reproduce` writes into that card only (`--card`, when given, must be it).
//
// Arbitrators' private keys are read from PEM files here and used here only: signatures and sealed shares leave
// this process, the keys never do. An arbitrator's API token (role arbitrator, bound to it) comes from an operator
// (`recovery arbitrator token <id>`) and is printed once.
//
// Lifecycle: `recovery arbitrator rotate` signs a rotation of an arbitrator's keys with its current signing key file
// (here, on the arbitrator's side), `recovery arbitrator deregister` disables one for good, `recovery arbitrator
// dependents` lists the cards whose policies name it, `recovery request reset` puts a request stuck "reproducing"
// (its reproduction's process is gone, its lease passed) back to "satisfied". Lists (`arbitrator list`, `request
// list`, `pending`, `arbitrator dependents`) print every page; with --limit and/or --after, one page and the cursor
// of the next (JSON: {items, next}).

import { Command, Option } from "commander";
import { existsSync, readFileSync } from "node:fs";
import {
  approveRequest,
  generateArbitratorKeyFiles,
  p256PrivateKey,
  p256PublicKey,
  RecoveryApiClient,
  refuseRequest,
  rotateKeysFor,
  signApproverListFor,
  type PageJson,
  type PageQuery,
  type PendingJson,
  type RequestJson,
} from "../terminal/recovery-client.ts";
import { allPages } from "../recovery/service.ts";
import { cardTargetOptions, openCardTarget, type CardTargetOpts } from "./card-target.ts";
import { UsageError } from "./image-key.ts";
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
  const target = v.request.target;
  lines.push(
    target
      ? `  the key goes into card ${target.cardId} (user ${target.userId})${v.kind === "card-destroyed" ? ", the replacement card" : ", the registered card"}`
      : "  no target card named (filed before targets were signed)",
  );
  lines.push(`  requester ${v.request.requester}${v.request.reason ? `, reason: ${v.request.reason}` : ""}; filed by ${v.filedBy} at ${new Date(v.filedAt).toISOString()}`);
  lines.push(`  decisions: ${v.approvals.map((a) => `${a.arbitrator} ${a.decision === "approve" ? "approved" : `refused (${a.reason ?? ""})`}`).join(", ") || "none yet"}`);
  if (e.status === "pending" && "needs" in e) {
    const n = e.needs;
    const needs = [...n.indispensable.map((p) => p), ...n.groups.map((g) => `${g.more} more of ${g.name} (${g.candidates.join(", ")})`), ...n.waiting.map((w) => `${w.after} after ${w.before}`)];
    lines.push(`  still needed: ${needs.join("; ")}`);
  }
  if (v.status === "satisfied")
    lines.push(
      v.approverList ? `  approver list signed by ${v.approverList.author}: ready to reproduce` : `  waiting for the policy's author ${v.request.policy.author} to sign the list of approvers`,
    );
  return lines.join("\n");
}

/** --limit and --after of a paged list. */
const paged = (cmd: Command): Command =>
  cmd
    .addOption(
      new Option("--limit <n>", "one page of at most n items (with the cursor of the next)").argParser((v: string) => {
        const n = Number(v);
        if (!Number.isInteger(n) || n < 1) throw new UsageError(`--limit: not a positive whole number: ${v}`);
        return n;
      }),
    )
    .option("--after <cursor>", "the page after this cursor (the `next` a page printed)");

type PagedOpts = { limit?: number; after?: string };

/**
 * A paged list as the command prints it: with --limit/--after one page (JSON {items, next}; text: the lines, then
 * the next page's --after); without, every page (JSON: the array).
 */
async function printList<T>(o: Out & PagedOpts, page: (q: PageQuery) => Promise<PageJson<T>>, line: (item: T) => string, empty: string): Promise<void> {
  if (o.after !== undefined && !/^[A-Za-z0-9_-]{1,512}$/.test(o.after)) throw new UsageError("--after: not a cursor (use the `next` a page printed)");
  if (o.limit !== undefined || o.after !== undefined) {
    const p = await page({ limit: o.limit, after: o.after });
    const text = [p.items.map(line).join("\n") || empty, ...(p.next !== undefined ? [`next page: --after ${p.next}`] : [])].join("\n");
    print(o, text, p);
    return;
  }
  const all = await allPages((after) => page({ after, limit: 1000 }));
  print(o, all.map(line).join("\n") || empty, all);
}

function describePending(id: string, items: PendingJson[]): string {
  if (!items.length) return `nothing pending for ${id}`;
  return items
    .map((p) =>
      p.action === "decide"
        ? `request ${p.request.requestId} (${p.request.kind}, card ${p.request.cardId}, into card ${p.request.request.target?.cardId ?? "(none named)"}, requester ${p.request.request.requester}): decide${p.mayApproveNow ? "" : ` — may approve only after ${p.waitingFor.join(", ")}`}; ${p.envelopes.length} share(s) held`
        : `request ${p.request.requestId} (card ${p.request.cardId}): satisfied by ${p.request.evaluation.approvers.join(", ")} — sign the list of approvers`,
    )
    .join("\n");
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

  serverOptions(paged(arbitrator.command("list").description("the registered arbitrators, by id"))).action(async (o: ServerOpts & PagedOpts) => {
    const api = client(o);
    await printList(
      o,
      (q) => api.arbitratorsPage(q),
      (a) => `${a.id}${a.roles.length ? ` (${a.roles.join(", ")})` : ""}${a.displayName ? ` ${a.displayName}` : ""}${a.status === "deregistered" ? " [deregistered]" : ""}`,
      "no arbitrators",
    );
  });

  serverOptions(arbitrator.command("show").description("one arbitrator").argument("<id>", "arbitrator id")).action(async (id: string, o: ServerOpts) => {
    const a = await client(o).arbitrator(id);
    print(
      o,
      [
        `${a.id}${a.roles.length ? ` (${a.roles.join(", ")})` : ""}: registered by ${a.registeredBy} at ${new Date(a.registeredAt).toISOString()}; encryption key ${a.encryptionKeyId}; key version ${a.keyVersion}`,
        ...(a.deregistered ? [`  deregistered by ${a.deregistered.by} at ${new Date(a.deregistered.at).toISOString()}: ${a.deregistered.reason}`] : []),
        ...a.keys.map(
          (k) =>
            `  keys v${k.version}: signing ${k.signingKeyId.slice(0, 16)}…, encryption ${k.encryptionKeyId.slice(0, 16)}…${k.retiredAt ? `, retired ${new Date(k.retiredAt).toISOString()}` : " (current)"}`,
        ),
      ].join("\n"),
      a,
    );
  });

  serverOptions(
    arbitrator
      .command("rotate")
      .description(
        "rotate an arbitrator's keys (on its side): the rotation is signed with its CURRENT signing key, and with the new signing key if there is one; keep the old encryption key: shares sealed to it stay so",
      )
      .argument("<id>", "arbitrator id")
      .requiredOption("--signing-key <pem>", "the arbitrator's CURRENT signing private key file")
      .option("--new-signing-key <pem>", "the new signing private key file (e.g. from `recovery arbitrator keygen`)")
      .option("--new-encryption-key <pem>", "the new encryption key file (public, or private: only its public half is sent)"),
  ).action(async (id: string, o: ServerOpts & { signingKey: string; newSigningKey?: string; newEncryptionKey?: string }) => {
    if (!o.newSigningKey && !o.newEncryptionKey) throw new UsageError("name the new keys: --new-signing-key and/or --new-encryption-key");
    const current = p256PrivateKey(readFile(o.signingKey, "--signing-key"), "--signing-key");
    const signingKey = o.newSigningKey === undefined ? undefined : p256PrivateKey(readFile(o.newSigningKey, "--new-signing-key"), "--new-signing-key");
    const encryptionPublicKey = o.newEncryptionKey === undefined ? undefined : p256PublicKey(readFile(o.newEncryptionKey, "--new-encryption-key"), "--new-encryption-key");
    const a = await rotateKeysFor(client(o), id, current, { signingKey, encryptionPublicKey });
    print(o, `arbitrator ${a.id}: keys rotated to version ${a.keyVersion}; encryption key ${a.encryptionKeyId}`, a);
  });

  serverOptions(
    arbitrator
      .command("deregister")
      .description("deregister an arbitrator for good (operator): it no longer decides or signs, new policies may not name it, its tokens are revoked, requests it blocks end")
      .argument("<id>", "arbitrator id")
      .requiredOption("--reason <text>", "why")
      .option("--force", "even if escrowed keys could then no longer be reproduced"),
  ).action(async (id: string, o: ServerOpts & { reason: string; force?: boolean }) => {
    const r = await client(o).deregisterArbitrator(id, o.reason, { force: o.force === true });
    print(
      o,
      [
        `arbitrator ${id} deregistered; ${r.tokensRevoked.length} token(s) revoked`,
        ...r.endedRequests.map((e) => `  request ${e.requestId} (card ${e.cardId}) ended: ${e.message}`),
        ...(r.strandedCount ? [`  ${r.strandedCount} escrowed key(s) can no longer be reproduced until re-split: ${r.strandedCards.join(", ")}`] : []),
      ].join("\n"),
      r,
    );
  });

  serverOptions(paged(arbitrator.command("dependents").description("the cards whose reproduction policies name the arbitrator").argument("<id>", "arbitrator id"))).action(
    async (id: string, o: ServerOpts & PagedOpts) => {
      const api = client(o);
      await printList(
        o,
        (q) => api.arbitratorDependents(id, q),
        (d) => `card ${d.cardId}: ${d.as.join(", ")}${d.escrowId ? `, escrowed (${d.escrowId})` : ""}${d.satisfiableWithout ? "" : " — cannot be met without it"}`,
        `no policy names ${id}`,
      );
    },
  );

  serverOptions(arbitrator.command("token").description("issue an API token bound to the arbitrator (operator); printed once, give it to the arbitrator").argument("<id>", "arbitrator id")).action(
    async (id: string, o: ServerOpts) => {
      const t = await client(o).issueArbitratorToken(id);
      print(o, `token ${t.tokenId} for arbitrator ${id}, shown only now:\n${t.token}`, t);
    },
  );

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
      const retired = e.shares.filter((s) => s.sealedToRetiredKey);
      print(
        o,
        `card ${cardId}: escrow ${e.escrowId}, ${e.alg} key in slot ${e.slot}, certificate ${e.serial}, ${e.shares.length} shares, device generation ${e.deviceGeneration}` +
          (retired.length ? `\n  sealed to a retired encryption key: ${retired.map((s) => `${s.shareId} (${s.arbitrator})`).join(", ")}` : ""),
        e,
      );
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
      .description(
        "file a reproduction request for a card; the request names the card that will receive the key, and every approval signs over it " +
          "(key-lost: the registered card itself; card-destroyed: --replacement-card)",
      )
      .requiredOption("--card <id>", "the card whose key is escrowed (the lost or destroyed one)")
      .addOption(new Option("--kind <kind>", "key-lost: the same card comes back; card-destroyed: a new card receives the key").choices(KINDS).makeOptionMandatory())
      .requiredOption("--requester <who>", "who asks (e.g. the user's arbitrator id)")
      .option("--reason <text>", "why")
      .option(
        "--replacement-card <id>",
        "card-destroyed only, and required there: the new card record issued to the same user (active, its slot empty) that will receive the key; " +
          "to name another card later, withdraw the request and file again",
      ),
  ).action(async (o: ServerOpts & { card: string; kind: "key-lost" | "card-destroyed"; requester: string; reason?: string; replacementCard?: string }) => {
    if (o.kind === "card-destroyed" && o.replacementCard === undefined) throw new UsageError("--kind card-destroyed needs --replacement-card <id>: the card that will receive the key");
    if (o.kind === "key-lost" && o.replacementCard !== undefined) throw new UsageError("--replacement-card is for card-destroyed: a key-lost request reproduces into the registered card");
    const v = await client(o).fileRequest({ cardId: o.card, kind: o.kind, requester: o.requester, reason: o.reason, replacementCardId: o.replacementCard });
    print(o, describe(v), v);
  });

  serverOptions(
    paged(
      request
        .command("list")
        .description("reproduction requests, newest first")
        .addOption(new Option("--status <status>", "only this status").choices(STATUSES))
        .option("--card <id>", "only this card's"),
    ),
  ).action(async (o: ServerOpts & PagedOpts & { status?: string; card?: string }) => {
    const api = client(o);
    await printList(
      o,
      (q) => api.requestsPage({ status: o.status, cardId: o.card, ...q }),
      (v) => `${v.requestId}  ${v.kind.padEnd(14)} ${v.status.padEnd(11)} card ${v.cardId}`,
      "no requests",
    );
  });

  serverOptions(request.command("show").description("a request, its decisions and what it still needs").argument("<requestId>", "request id")).action(async (id: string, o: ServerOpts) => {
    const v = await client(o).request(id);
    print(o, describe(v), v);
  });

  serverOptions(request.command("withdraw").description("withdraw an unfinished request").argument("<requestId>", "request id").requiredOption("--reason <text>", "why")).action(
    async (id: string, o: ServerOpts & { reason: string }) => {
      const v = await client(o).withdraw(id, o.reason);
      print(o, describe(v), v);
    },
  );

  serverOptions(
    request
      .command("reset")
      .description("put a request stuck in reproducing (its reproduction's process is gone) back to satisfied; refused while the reproduction's lease is live")
      .argument("<requestId>", "request id")
      .requiredOption("--reason <text>", "why"),
  ).action(async (id: string, o: ServerOpts & { reason: string }) => {
    const v = await client(o).resetReproduction(id, o.reason);
    print(o, describe(v), v);
  });

  // ---- arbitrators' side -------------------------------------------------------------------------------------------------
  serverOptions(paged(recovery.command("pending").description("what an arbitrator has to do").requiredOption("--arbitrator <id>", "arbitrator id"))).action(
    async (o: ServerOpts & PagedOpts & { arbitrator: string }) => {
      const api = client(o);
      if (o.limit === undefined && o.after === undefined) {
        const items = await api.pending(o.arbitrator);
        print(o, describePending(o.arbitrator, items), items);
        return;
      }
      await printList(
        o,
        (q) => api.pendingPage(o.arbitrator, q),
        (p) => describePending(o.arbitrator, [p]),
        `nothing pending for ${o.arbitrator}`,
      );
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
      .option("--previous-encryption-key <pem...>", "encryption private key files rotated out: shares sealed before a rotation are opened with them")
      .option("--device-key-id <hex>", "release shares only if the reproduction device key has this id (see `recovery device-key`)")
      .option("--target-card <id>", "sign only if the request sends the key into this card (its target, which the approval covers)"),
  ).action(async (id: string, o: ServerOpts & { arbitrator: string; signingKey: string; encryptionKey: string; previousEncryptionKey?: string[]; deviceKeyId?: string; targetCard?: string }) => {
    if (o.deviceKeyId !== undefined && !/^[0-9a-fA-F]{64}$/.test(o.deviceKeyId)) throw new UsageError("--device-key-id is 64 hex digits");
    const keys = {
      signing: p256PrivateKey(readFile(o.signingKey, "--signing-key"), "--signing-key"),
      encryption: p256PrivateKey(readFile(o.encryptionKey, "--encryption-key"), "--encryption-key"),
      previousEncryption: (o.previousEncryptionKey ?? []).map((f) => p256PrivateKey(readFile(f, "--previous-encryption-key"), "--previous-encryption-key")),
    };
    const v = await approveRequest(client(o), o.arbitrator, id, keys, { expectDeviceKeyId: o.deviceKeyId, expectTargetCardId: o.targetCard });
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
    cardTargetOptions(
      recovery
        .command("reproduce")
        .description(
          "reproduce a satisfied request's key into the card here (card image or PC/SC reader): the server drives the card through this machine. " +
            "The key goes only into the card the request names (key-lost: the registered card; card-destroyed: the replacement card the arbitrators approved)",
        )
        .argument("<requestId>", "request id")
        .option("--card <cardId>", "the card record of the card here; must be the request's target (default: the target)"),
    ),
  ).action(async (id: string, o: ServerOpts & CardTargetOpts & { card?: string }) => {
    const api = client(o);
    const transport = openCardTarget(o);
    try {
      const r = await api.reproduce(id, (a) => transport.transmit(a), { cardId: o.card });
      print(
        o,
        `key of card ${r.cardId} reproduced into card ${r.targetCardId}, slot ${r.slot}, with certificate ${r.serial}${r.deviceReplaced ? ` (the new card is now the registered device, generation ${r.deviceGeneration})` : ""}; approved by ${r.approvers.join(", ")}, list by ${r.author}`,
        r,
      );
    } finally {
      await transport.close();
    }
  });
}
