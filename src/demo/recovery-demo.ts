// The issue-4 demo (npm run demo -- --recovery): a card destroyed and its key reproduced after the policy's approvals,
// with the user's backed-up data readable again on the new card (seed 001, embodiments 2-3 and the modification,
// FIG. 5-12, steps 410-435 and S1-S12). Everything goes through the issuer server's HTTP API, as the CLI does: the
// server runs in this process on SQLite and the software keystore in one directory, listening on a loopback port;
// the operator, each arbitrator and the user's terminal are API clients with their own tokens; the cards are
// virtual card images there. No services.
//   1. the server starts; the arbitrators of FIG. 9 are registered with their public keys, each gets an API token
//      bound to it; their private keys stay on their side (an ArbitratorSide object each, which nothing else reads);
//   2. the user is registered (the center's registration, step 420), a card issued and personalised through the
//      relay, its reproduction policy set (S1); the key generation device issues a P-256 key management key (9D)
//      into it: an entry mistyped at the device is refused by the center (step 423), then the key is generated in
//      custody, certified, escrowed among the arbitrators (S2-S3), written into the card under SCP03 and destroyed;
//   3. the user enciphers records to the card's key, keeps them on the terminal and backs them up through the
//      card's own token (S10);
//   4. the card is destroyed (S5');
//   5. a new card is issued to the user and personalised; a "card-destroyed" request is filed naming it as the
//      replacement card — the card the arbitrators approve the key going into (issue 9); the arbitrators decide in
//      the policy's order — one approval out of order is refused by the server, by name — and the policy's author
//      signs the list of approvers (S6-S7);
//   6. the operator tries to reproduce the approved request into another user's card: refused by name (issue 9);
//      the key is reproduced into the approved card through the relay (S8, S11, FIG. 10): it becomes the registered
//      device, and it signs under the ORIGINAL certificate;
//   7. the backups are fetched through the new card's token (S12) and every record deciphers byte-exact on it;
//   8. the audit log verifies, and names the approvers in order.
// Never printed: a private key, a share, the card's secret ID, a token, the keystore or card-image key, a record's
// content.

import { generateKeyPairSync, randomBytes, verify, X509Certificate, type KeyObject } from "node:crypto";
import { existsSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import { createCard } from "../card/card.ts";
import type { CardRuntime } from "../card/runtime.ts";
import type { KeyCustody } from "../custody/custody.ts";
import type { AuditEntryJson, AuditPageJson } from "../issuer/wire-audit.ts";
import { signApproval } from "../recovery/approvals.ts";
import type { ReproductionPolicy } from "../recovery/policy.ts";
import { releaseSharesFor } from "../recovery/service.ts";
import { openShare } from "../recovery/shares.ts";
import { ApiError, IssuerApiClient } from "../terminal/api-client.ts";
import { HttpBackupTarget } from "../terminal/backup-client.ts";
import { backup, restore, TerminalEncipheredStore } from "../terminal/backup.ts";
import { decipherWithCard, encipherForCard, recipientOf } from "../protocol/enciphered.ts";
import { KeygenApiClient } from "../terminal/keygen-client.ts";
import { PivClient, SLOT } from "../protocol/piv/client.ts";
import { approveRequest, RecoveryApiClient, signApproverListFor, type PendingJson, type RequestJson } from "../terminal/recovery-client.ts";
import { relaySession, UserTerminal } from "../terminal/terminal.ts";
import { InProcessTransport } from "../transport/transport.ts";
import { sha256Hex } from "../util/bytes.ts";
import { startDemoServer } from "./demo-server.ts";

const PIN = "123456";

/** What Hanako gives the issuer at registration, and what the key generation device must be given. */
const HANAKO = { commonName: "Hanako Yamada", email: "hanako@example.test", organization: "Example Bank", country: "JP" };

export interface RecoveryDemoResult {
  dir: string;
  /** Where the server listened while the demo ran. */
  serverUrl: string;
  userId: string;
  /** The card record the policy and escrow belong to (the first card's); the replacement card is a new record. */
  cardRecordId: string;
  imageKeyPath: string;
  policy: ReproductionPolicy;
  certificate: { subject: string; serial: string; pem: string };
  escrowId: string;
  /** After the issue, and again after the reproduction: no key of the device or the reproduction left in custody. */
  keyGoneFromCustody: { afterIssue: boolean; afterReproduction: boolean };
  /** The records the user enciphered, with the SHA-256 of their plaintext (the content itself is not returned). */
  records: { objectId: string; bytes: number; sha256: string }[];
  backedUp: { objectId: string; version: number }[];
  oldCard: { id: string; path: string; decipheredBeforeLoss: boolean; imageDeleted: boolean };
  /** Decisions refused on the way, by the name of the check. */
  refused: { arbitrator: string; check: string; message: string }[];
  requestId: string;
  /** The accepted approvals, in chain order. */
  approvers: string[];
  approverList: { author: string; approvers: string[] };
  newCard: { id: string; path: string; deviceReplaced: boolean; deviceGeneration: number; holdsOriginalCertificate: boolean };
  /** The approved request reproduced into another user's card (issue 9): refused, by the name of the check. */
  redirect: { cardId: string; check: string; message: string };
  /** The new card's signature, verified with the ORIGINAL certificate's public key. */
  signatureVerified: boolean;
  restored: { objectId: string; into: string }[];
  /** Each record deciphered on the new card and compared byte for byte with what the user enciphered. */
  readable: { objectId: string; byteExact: boolean }[];
  audit: {
    ok: boolean;
    entries: number;
    /** recovery.decision.record entries of the request, in log order. */
    decisions: { arbitrator: string; decision: string }[];
    /** The refused approvals the log recorded (recovery.approval.refuse), by check. */
    refusals: { arbitrator: string; check: string }[];
    /** The approvers as the recovery.approvers.list and recovery.reproduce entries name them. */
    listed: string[];
    reproduced: string[];
  };
}

// --- the arbitrators' side -------------------------------------------------------------------------------------

/**
 * One arbitrator of FIG. 9 with its own ECDSA (approvals) and ECDH (shares) P-256 key pairs and, once registered,
 * its own API token bound to it. The private keys are private fields: only this object signs and opens shares; the
 * server sees the public keys, signatures and shares sealed to its reproduction device.
 */
class ArbitratorSide {
  readonly #signing: KeyObject;
  readonly #encryption: KeyObject;
  readonly signingPublicKey: KeyObject;
  readonly encryptionPublicKey: KeyObject;
  #client: RecoveryApiClient | undefined;

  constructor(
    readonly id: string,
    readonly role: string,
    readonly displayName: string,
  ) {
    const s = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const e = generateKeyPairSync("ec", { namedCurve: "P-256" });
    this.#signing = s.privateKey;
    this.#encryption = e.privateKey;
    this.signingPublicKey = s.publicKey;
    this.encryptionPublicKey = e.publicKey;
  }

  /** The operator registers the public keys and issues the token bound to this arbitrator; it keeps the token. */
  async register(operator: RecoveryApiClient, server: string): Promise<void> {
    await operator.registerArbitrator({ id: this.id, roles: [this.role], displayName: this.displayName, signingPublicKey: this.signingPublicKey, encryptionPublicKey: this.encryptionPublicKey });
    const { token } = await operator.issueArbitratorToken(this.id);
    this.#client = new RecoveryApiClient(new IssuerApiClient({ server, token }));
  }

  private get client(): RecoveryApiClient {
    if (!this.#client) throw new Error(`${this.id} is not registered`);
    return this.#client;
  }

  /** What the server has pending for this arbitrator on the request. */
  async pending(requestId: string): Promise<Extract<PendingJson, { action: "decide" }>> {
    const item = (await this.client.pending(this.id)).find((p): p is Extract<PendingJson, { action: "decide" }> => p.action === "decide" && p.request.requestId === requestId);
    if (!item) throw new Error(`${this.id} has nothing to decide on request ${requestId}`);
    return item;
  }

  /**
   * Approves: signs after the chain's head, opens its share envelopes with its own key and releases them to the
   * reproduction device's public key (recovery-client.ts approveRequest, which first checks the order hint).
   */
  approve(requestId: string): Promise<RequestJson> {
    return approveRequest(this.client, this.id, requestId, { signing: this.#signing, encryption: this.#encryption });
  }

  /**
   * Approves as `approve` does but without the client's order check: signed and released, posted as it is, ignoring
   * the server's "wait for" hint — the server judges the order.
   */
  async approveIgnoringOrder(requestId: string): Promise<RequestJson> {
    const { request: v, envelopes } = await this.pending(requestId);
    const device = await this.client.deviceKey();
    const releases = releaseSharesFor(v.request, envelopes, (e) => openShare(e, this.#encryption, { escrowId: v.escrowId, cardId: v.cardId }), device.spki);
    return this.client.approve(requestId, signApproval(v.request, v.chainHead, { arbitrator: this.id, decision: "approve" }, this.#signing), releases);
  }

  /** As the policy's author: signs the list of approvers of the satisfied chain (FIG. 9 condition 15). */
  signList(requestId: string): Promise<RequestJson> {
    return signApproverListFor(this.client, this.id, requestId, this.#signing);
  }
}

/** FIG. 9's parties for this demo: 1 user, 1 credit company, 2 service providers, 3 managers, the list's author. */
function fig9Arbitrators(): ArbitratorSide[] {
  return [
    new ArbitratorSide("user", "user", "Hanako Yamada"),
    new ArbitratorSide("credit-co", "credit company", "Example Credit Co."),
    new ArbitratorSide("sp-a", "service provider", "Service provider A"),
    new ArbitratorSide("sp-b", "service provider", "Service provider B"),
    new ArbitratorSide("mgr-a", "issuing-apparatus manager", "Issuing-apparatus manager A"),
    new ArbitratorSide("mgr-b", "issuing-apparatus manager", "Issuing-apparatus manager B"),
    new ArbitratorSide("mgr-c", "issuing-apparatus manager", "Issuing-apparatus manager C"),
    new ArbitratorSide("list-author", "author of the list of approvers", "Reissue office"),
  ];
}

/**
 * FIG. 9: the user indispensable (condition 11); the credit company approves only after the user (12; a party of
 * the policy, so indispensable too); any 1 of the 2 service providers (13); any 2 of the 3 managers (14); the
 * list of approvers drawn up and signed by its author (15).
 */
function fig9Policy(): ReproductionPolicy {
  return {
    version: 1,
    author: "list-author",
    indispensable: ["user", "credit-co"],
    groups: [
      { name: "service-providers", members: ["sp-a", "sp-b"], threshold: 1 },
      { name: "issuing-apparatus-managers", members: ["mgr-a", "mgr-b", "mgr-c"], threshold: 2 },
    ],
    order: [{ before: "user", after: "credit-co" }],
  };
}

// --- cards -----------------------------------------------------------------------------------------------------

interface DemoCard {
  id: string;
  path: string;
  runtime: CardRuntime;
  transmit: (apdu: Uint8Array) => Promise<Uint8Array>;
}

/**
 * A card issued to the user through the API, and its virtual card — made by the factory with the manufacturer's KMC,
 * so its transport keys are its own — personalised through the relay (ST11-ST15).
 */
async function issuedCard(api: IssuerApiClient, userId: string, dir: string, factory: { imageKey: Uint8Array; kmc: Uint8Array }): Promise<DemoCard> {
  const { card } = await api.createCard({ userId });
  const path = join(dir, `card-${card.id}.img`);
  const runtime = createCard(path, factory.imageKey, { kmc: factory.kmc, cardId: Buffer.from(card.id, "hex"), durability: "fsync" });
  const transmit = async (a: Uint8Array) => runtime.transmit(a);
  await relaySession(api, transmit, await api.startPersonalisation(card.id));
  return { id: card.id, path, runtime, transmit };
}

async function pivOf(card: DemoCard): Promise<PivClient> {
  const piv = new PivClient(card.transmit);
  await piv.select();
  await piv.verifyPin(PIN);
  return piv;
}

/** The API client of the user's terminal for `card`, with the token the card earned by proving itself. */
async function terminalFor(api: IssuerApiClient, card: DemoCard, dir: string): Promise<IssuerApiClient> {
  const terminal = await UserTerminal.open({ api, transport: new InProcessTransport(card.runtime), stateFile: join(dir, `terminal-${card.id}.json`) });
  await terminal.authenticate();
  return terminal.cardClient();
}

/** Whether custody holds any key pair with this public key, or a key the devices would leave behind. */
async function keyInCustody(custody: KeyCustody, spki: Uint8Array): Promise<boolean> {
  for (const k of await custody.listKeys()) {
    if (k.label.startsWith("keygen.") || k.label.startsWith("recovery.reproduce.")) return true;
    if (k.kind === "keyPair" && Buffer.from(await custody.publicKey(k.label)).equals(Buffer.from(spki))) return true;
  }
  return false;
}

/** What a pending request still needs, in a few words. */
function stillNeeded(v: RequestJson): string {
  const e = v.evaluation;
  if (e.status !== "pending" || !("needs" in e)) return "";
  const parts = [...e.needs.indispensable, ...e.needs.groups.map((g) => `${g.more} more of ${g.name}`)];
  return parts.length ? `, still needs ${parts.join(", ")}` : "";
}

/** Every audit entry, through the API's pages. */
async function auditLog(api: IssuerApiClient): Promise<AuditEntryJson[]> {
  const out: AuditEntryJson[] = [];
  for (let after = 0; ;) {
    const page = await api.request<AuditPageJson>("GET", `/v1/audit?after=${after}&limit=1000`);
    out.push(...page.entries);
    if (page.next === null) return out;
    after = page.next;
  }
}

// --- the demo --------------------------------------------------------------------------------------------------

export async function runRecoveryDemo(dirArg: string, log: (line: string) => void = () => {}): Promise<RecoveryDemoResult> {
  const dir = resolve(dirArg);
  const demo = await startDemoServer(dir, { database: "cardkms.db", caSubject: "CN=cardkms demo Center CA, O=Certification Center, C=JP" });
  const { server, config, api, imageKeyPath } = demo;
  const cards: DemoCard[] = [];
  try {
    const recovery = new RecoveryApiClient(api);

    // 1. The arbitrators, each with its own key pairs and its own token.
    const arbitrators = fig9Arbitrators();
    const side = new Map(arbitrators.map((a) => [a.id, a]));
    const as = (id: string) => side.get(id)!;
    for (const a of arbitrators) await a.register(recovery, server.url);
    log(`1. issuer server on ${server.url} (SQLite ${config.database}, software keystore; logs in ${demo.logPath})`);
    log(`   ${demo.ceremony}`);
    log(`   ${arbitrators.length} arbitrators registered over the API (FIG. 9), each with its own signing and share key pairs and an API token bound to it:`);
    for (const a of arbitrators) log(`     ${a.id.padEnd(11)} ${a.role} (${a.displayName})`);

    // 2. The user (the center's registration), the card, the policy (S1) and the key issued with escrow (S2-S3).
    const user = await api.registerUser(HANAKO);
    const oldCard = await issuedCard(api, user.id, dir, demo);
    cards.push(oldCard);
    const policy = fig9Policy();
    await recovery.setPolicy(oldCard.id, policy);
    log(`2. user ${user.id} registered; card ${oldCard.id} issued and personalised through the relay`);
    log(`   policy set for card ${oldCard.id}: user and credit-co indispensable, credit-co only after user, 1 of 2 service providers, 2 of 3 managers, list signed by list-author`);
    const keygen = new KeygenApiClient(api);
    const refused: RecoveryDemoResult["refused"] = [];
    try {
      await keygen.issue(oldCard.id, { slot: "9d", alg: "P256", personalData: { ...HANAKO, commonName: "Hanako Yamda" }, escrow: true }, oldCard.transmit);
      throw new Error("the center certified personal data that differ from the registration");
    } catch (e) {
      if (!(e instanceof ApiError) || e.status !== 422) throw e;
      log(`   the key generation device, given a mistyped name -> REFUSED by the certification center: ${e.detail}`);
    }
    const issued = await keygen.issue(oldCard.id, { slot: "9d", alg: "P256", personalData: HANAKO, escrow: true }, oldCard.transmit);
    const cert = new X509Certificate(issued.certificateDer);
    const spki = new Uint8Array(cert.publicKey.export({ format: "der", type: "spki" }));
    const subject = cert.subject.replace(/\n/g, ", ");
    const goneAfterIssue = !(await keyInCustody(server.custody, spki));
    const escrow = await recovery.escrow(oldCard.id);
    log(`   the key generation device issued a P-256 key management key into slot 9D, certified by the center after it compared the personal data`);
    log(`     certificate: ${subject}, serial ${issued.serial}`);
    log(`     escrow ${issued.escrowId}: ${escrow.shares.length} shares sealed to ${new Set(escrow.shares.map((s) => s.arbitrator)).size} arbitrators; card's secret ID registered (as a digest)`);
    log(`     the private key is ${goneAfterIssue ? "GONE from custody" : "STILL IN CUSTODY"}: it exists only in the card`);

    // 3. The user's records, enciphered to the card's key, kept on the terminal and backed up through the card's token (S10).
    // the terminal's token first: the card's proof selects the card's ISD, PIV is selected after it
    const oldTarget = new HttpBackupTarget(await terminalFor(api, oldCard, dir), oldCard.id);
    const oldPiv = await pivOf(oldCard);
    const recipient = recipientOf((await oldPiv.readCertificate(SLOT.keyManagement))!);
    const data: Record<string, Uint8Array> = {
      "bank-pins.txt": new Uint8Array(Buffer.from(`bank A: ${randomBytes(2).readUInt16BE() % 10000}, bank B: ${randomBytes(2).readUInt16BE() % 10000}`)),
      "medical-record.json": new Uint8Array(Buffer.from(JSON.stringify({ patient: "Hanako Yamada", bloodType: "A+", allergies: ["penicillin"], notes: "x".repeat(600) }))),
      "photo.bin": new Uint8Array(randomBytes(4096)),
    };
    const aad = (objectId: string) => Buffer.from(`${user.id}/${objectId}`);
    const oldTerminal = new TerminalEncipheredStore(join(dir, "terminal-old"));
    await oldTerminal.put(Object.entries(data).map(([objectId, p]) => ({ objectId, envelope: encipherForCard(recipient, p, aad(objectId)) })));
    const report = await backup({ userId: user.id, cardId: oldCard.id, from: [oldTerminal], to: oldTarget });
    const probe = "medical-record.json";
    const before = await decipherWithCard(oldPiv, SLOT.keyManagement, (await oldTerminal.get(probe))!, { aad: aad(probe) });
    const decipheredBeforeLoss = Buffer.from(before).equals(Buffer.from(data[probe]));
    before.fill(0);
    const records = Object.entries(data).map(([objectId, p]) => ({ objectId, bytes: p.length, sha256: sha256Hex(p) }));
    log(`3. user enciphered ${records.length} records to the card's key (key id ${recipient.kid.slice(0, 16)}…): ${records.map((r) => `${r.objectId} (${r.bytes} B)`).join(", ")}`);
    log(`   kept on the terminal store; backed up over the API with the card's own token: ${report.stored.map((s) => `${s.objectId} v${s.version}`).join(", ")}`);
    log(`   card ${oldCard.id} deciphers ${probe}: ${decipheredBeforeLoss ? "byte-exact" : "MISMATCH"}`);

    // 4. The card is destroyed, and the terminal's copies with it: only the server's backup is left.
    oldCard.runtime.close();
    rmSync(oldCard.path, { force: true });
    rmSync(oldTerminal.dir, { recursive: true, force: true });
    const imageDeleted = !existsSync(oldCard.path);
    log(`4. card ${oldCard.id} destroyed (image ${imageDeleted ? "deleted" : "STILL THERE"}); the terminal's copies are lost too — only the backup is left`);

    // 5. A new card for the user; the request naming it, the decisions in the policy's order, the list of approvers (S5-S7).
    const newCard = await issuedCard(api, user.id, dir, demo);
    cards.push(newCard);
    const filed = await recovery.fileRequest({ cardId: oldCard.id, kind: "card-destroyed", requester: "user", reason: "card destroyed", replacementCardId: newCard.id });
    const requestId = filed.requestId;
    log(`5. card ${newCard.id} issued to the user and personalised; request ${requestId} (card-destroyed) filed over the API naming it as the replacement card:`);
    log(`   the arbitrators approve the key going into card ${filed.request.target?.cardId} and no other (it is in what they sign); each decides with its own token and keys:`);
    const waiting = await as("credit-co").pending(requestId);
    try {
      await as("credit-co").approveIgnoringOrder(requestId);
      throw new Error("credit-co's approval before the user's was accepted");
    } catch (e) {
      const check = e instanceof ApiError ? /out_of_order/.exec(e.title)?.[0] : undefined;
      if (!(e instanceof ApiError) || !check) throw e;
      refused.push({ arbitrator: "credit-co", check, message: e.detail ?? e.title });
      log(`     credit-co approves first (it is told to wait for: ${waiting.waitingFor.join(", ")}) -> REFUSED: ${e.detail}`);
    }
    let view: RequestJson = filed;
    for (const id of ["user", "credit-co", "sp-b", "mgr-a", "mgr-c"]) {
      view = await as(id).approve(requestId);
      const released = view.releasedShares.filter((s) => escrow.shares.some((d) => d.shareId === s && d.arbitrator === id)).length;
      log(`     ${id.padEnd(11)} approves (signed after the chain's head), releases ${released} share(s) to the reproduction device -> ${view.status}${stillNeeded(view)}`);
    }
    const unneeded = policy.groups.flatMap((g) => g.members).filter((m) => !view.evaluation.approvers.includes(m));
    log(`     the policy is met without ${unneeded.join(" and ")}`);
    const list = (await as(policy.author).signList(requestId)).approverList!;
    log(`     ${policy.author} signs the list of approvers: ${list.approvers.join(" -> ")}`);

    // 6. The approved request redirected into another user's card (refused), then reproduced into the approved card (S8, S11, FIG. 10-12).
    const taro = await api.registerUser({ commonName: "Taro Suzuki", email: "taro@example.test", organization: "Example Bank", country: "JP" });
    const taroCard = await issuedCard(api, taro.id, dir, demo);
    cards.push(taroCard);
    let redirect: RecoveryDemoResult["redirect"] | undefined;
    try {
      await recovery.reproduce(requestId, taroCard.transmit, { cardId: taroCard.id });
      throw new Error("the approved request was reproduced into another user's card");
    } catch (e) {
      const check = e instanceof ApiError ? /target_[a-z_]+/.exec(e.title)?.[0] : undefined;
      if (!(e instanceof ApiError) || !check) throw e;
      redirect = { cardId: taroCard.id, check, message: e.detail ?? e.title };
      log(`6. the operator reproduces the approved request into card ${taroCard.id} (Taro's) -> REFUSED: ${e.detail}`);
    }
    const done = await recovery.reproduce(requestId, newCard.transmit);
    const goneAfterReproduction = !(await keyInCustody(server.custody, spki));
    const newPiv = await pivOf(newCard);
    const certOnNew = await newPiv.readCertificate(SLOT.keyManagement);
    const holdsOriginalCertificate = !!certOnNew && Buffer.from(certOnNew).equals(Buffer.from(issued.certificateDer));
    const msg = Buffer.from(`Hanako's new card, ${new Date().toISOString()}`);
    const { signature, hash } = await newPiv.sign(SLOT.keyManagement, "P256", msg);
    const signatureVerified = verify(hash, msg, { key: cert.publicKey, dsaEncoding: "der" }, signature);
    log(`   the key reproduced into the approved card ${done.targetCardId} through the relay after the checks (target, shares, key vs. registered public key)`);
    log(`     registered device replaced: ${done.deviceReplaced ? "yes" : "NO"} (generation ${done.deviceGeneration}); reproduced key ${goneAfterReproduction ? "gone" : "STILL"} from custody`);
    log(
      `     the new card holds the original certificate (serial ${done.serial}): ${holdsOriginalCertificate ? "yes" : "NO"}; it signs, and the signature ${signatureVerified ? "VERIFIES" : "DOES NOT VERIFY"} against the ORIGINAL certificate`,
    );

    // 7. The backups fetched through the new card's token onto its terminal store; every record deciphered on the new card (S12).
    const newTerminal = new TerminalEncipheredStore(join(dir, "terminal-new"));
    const newTarget = new HttpBackupTarget(await terminalFor(api, newCard, dir), newCard.id);
    const piv = await pivOf(newCard); // again: the card's proof to the server selected its ISD
    const restoredReport = await restore({ userId: user.id, from: newTarget, into: newTerminal, forCard: { piv, slot: SLOT.keyManagement } });
    const readable: RecoveryDemoResult["readable"] = [];
    for (const [objectId, p] of Object.entries(data)) {
      const env = await newTerminal.get(objectId);
      let byteExact = false;
      if (env) {
        const plain = await decipherWithCard(piv, SLOT.keyManagement, env, { aad: aad(objectId) });
        byteExact = Buffer.from(plain).equals(Buffer.from(p));
        plain.fill(0);
      }
      readable.push({ objectId, byteExact });
    }
    log(`7. ${restoredReport.restored.length} backup(s) fetched over the API with the new card's token (${restoredReport.skipped.length} skipped); deciphered on card ${newCard.id}:`);
    for (const r of readable) log(`     ${r.objectId.padEnd(20)} ${r.byteExact ? "byte-exact" : "NOT READABLE"}`);

    // 8. The audit log, through the API.
    const audit = await api.verifyAudit();
    const entries = await auditLog(api);
    const ofRequest = entries.filter((e) => e.subject === requestId);
    const decisions = ofRequest.filter((e) => e.action === "recovery.decision.record").map((e) => ({ arbitrator: String(e.details.arbitrator), decision: String(e.details.decision) }));
    const refusals = ofRequest.filter((e) => e.action === "recovery.approval.refuse").map((e) => ({ arbitrator: String(e.details.arbitrator), check: String(e.details.check) }));
    const listEntry = ofRequest.find((e) => e.action === "recovery.approvers.list");
    const reproduceEntry = ofRequest.find((e) => e.action === "recovery.reproduce");
    const names = (v: unknown) => (Array.isArray(v) ? v.map(String) : []);
    log(`8. audit log ${audit.ok ? "intact" : "BROKEN"} (${entries.length} hash-chained entries); for request ${requestId}:`);
    for (const r of refusals) log(`     recovery.approval.refuse  ${r.arbitrator} (${r.check})`);
    log(`     recovery.decision.record  ${decisions.map((d) => `${d.arbitrator} ${d.decision}s`).join(", ")}`);
    log(`     recovery.approvers.list   ${names(listEntry?.details.approvers).join(" -> ")} (signed by ${String(listEntry?.details.author)})`);
    for (const e of ofRequest.filter((x) => x.action === "recovery.reproduce.refuse")) log(`     recovery.reproduce.refuse ${String(e.details.check)} (card ${String(e.details.presentedCard)})`);
    log(`     recovery.reproduce        ${names(reproduceEntry?.details.approvers).join(" -> ")} into card ${String(reproduceEntry?.details.targetCardId)}`);

    return {
      dir,
      serverUrl: server.url,
      userId: user.id,
      cardRecordId: oldCard.id,
      imageKeyPath,
      policy,
      certificate: { subject, serial: issued.serial, pem: cert.toString() },
      escrowId: issued.escrowId!,
      keyGoneFromCustody: { afterIssue: goneAfterIssue, afterReproduction: goneAfterReproduction },
      records,
      backedUp: report.stored.map((s) => ({ objectId: s.objectId, version: s.version })),
      oldCard: { id: oldCard.id, path: oldCard.path, decipheredBeforeLoss, imageDeleted },
      refused,
      requestId,
      approvers: view.evaluation.approvers,
      approverList: { author: list.author, approvers: [...list.approvers] },
      newCard: { id: newCard.id, path: newCard.path, deviceReplaced: done.deviceReplaced, deviceGeneration: done.deviceGeneration, holdsOriginalCertificate },
      redirect: redirect!,
      signatureVerified,
      restored: restoredReport.restored.map((r) => ({ objectId: r.objectId, into: r.into })),
      readable,
      audit: { ok: audit.ok, entries: entries.length, decisions, refusals, listed: names(listEntry?.details.approvers), reproduced: names(reproduceEntry?.details.approvers) },
    };
  } finally {
    for (const c of cards) c.runtime.close();
    await demo.close();
  }
}
