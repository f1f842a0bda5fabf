// The issue-4 demo (npm run demo -- --recovery): a card destroyed and its key reproduced after the policy's approvals,
// with the user's backed-up data readable again on the new card (seed 001, embodiment 3 and its modification,
// FIG. 7-12, steps S1-S12). Nothing but SQLite and the software keystore in one directory, and virtual card images
// there; no services.
//   1. the arbitrators of FIG. 9 are registered with their public keys; their private keys stay on their side
//      (here: an ArbitratorSide object each, which nothing else reads);
//   2. the card's reproduction policy is set (S1); the key generation device issues the card: a P-256 key
//      management key (slot 9D) generated in custody, certified by the certification center, escrowed among the
//      arbitrators (S2-S3), written into the card under SCP03 and destroyed in custody;
//   3. the user enciphers records to the card's key, keeps them on the terminal and backs them up (S10);
//   4. the card is destroyed (S5');
//   5. the user files a "card-destroyed" request; the arbitrators decide in the policy's order — one approval out
//      of order is refused by name — and the policy's author signs the list of approvers (S6-S7);
//   6. a blank card is personalised for the user and the key is reproduced into it (S8, S11, FIG. 10): it becomes
//      the registered device, and it signs under the ORIGINAL certificate;
//   7. the backups are restored for the new card (S12) and every record deciphers byte-exact on it;
//   8. the audit log verifies, and names the approvers in order.
// Never printed: a private key, a share, the card's secret ID, the keystore or card-image key, a record's content.

import { createHash, generateKeyPairSync, randomBytes, verify, X509Certificate, type KeyObject } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { openCaService } from "../ca/service.ts";
import type { SubjectName } from "../ca/name.ts";
import { createCard } from "../card/card.ts";
import type { CardRuntime } from "../card/runtime.ts";
import type { DerivedKeySetRef, KeyCustody } from "../custody/custody.ts";
import { SoftwareCustody } from "../custody/software.ts";
import { personaliseFromTransport } from "../issuer/card-scripts.ts";
import { CertificationCenter, MemoryRegistrationBook } from "../keygen/center.ts";
import { KeyGenerationDevice, type InsertedCard } from "../keygen/device.ts";
import { MemoryIssuedKeyRegistry } from "../keygen/registry.ts";
import { signApproval, signApproverList } from "../recovery/approvals.ts";
import type { ReproductionPolicy } from "../recovery/policy.ts";
import { isRecoveryRefusal, RecoveryService, releaseSharesFor, type PendingItem, type RequestView } from "../recovery/service.ts";
import { openShare } from "../recovery/shares.ts";
import { auditEntries, verifyAuditLog, type AuditEntry } from "../store/audit.ts";
import { BackupRepository } from "../store/backup-repository.ts";
import { SqlCaRepository } from "../store/ca-repository.ts";
import type { Db } from "../store/db.ts";
import { Store } from "../store/store.ts";
import { backup, restore, TerminalEncipheredStore } from "../terminal/backup.ts";
import { decipherWithCard, encipherForCard, recipientOf } from "../terminal/enciphered.ts";
import { PivClient, SLOT } from "../terminal/piv-client.ts";

const PIN = "123456";
const OPERATOR = "demo-operator";

const HANAKO: SubjectName = { country: "JP", organization: "Example Bank", commonName: "Hanako Yamada", serialNumber: "P-1234567" };

export interface RecoveryDemoResult {
  dir: string;
  userId: string;
  /** The card record the policy and escrow belong to; the replacement card keeps it. */
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
 * One arbitrator of FIG. 9 with its own ECDSA (approvals) and ECDH (shares) P-256 key pairs. The private keys are
 * private fields: only this object signs and opens shares; the service sees the public keys only.
 */
class ArbitratorSide {
  readonly #signing: KeyObject;
  readonly #encryption: KeyObject;
  readonly signingPublicKey: KeyObject;
  readonly encryptionPublicKey: KeyObject;

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

  async register(svc: RecoveryService): Promise<void> {
    await svc.registerArbitrator(
      { id: this.id, roles: [this.role], displayName: this.displayName, signingPublicKey: this.signingPublicKey, encryptionPublicKey: this.encryptionPublicKey },
      OPERATOR,
    );
  }

  /** What the service has pending for this arbitrator on the request. */
  async pending(svc: RecoveryService, requestId: string): Promise<Extract<PendingItem, { action: "decide" }>> {
    const item = (await svc.pendingFor(this.id)).find((p): p is Extract<PendingItem, { action: "decide" }> => p.action === "decide" && p.request.requestId === requestId);
    if (!item) throw new Error(`${this.id} has nothing to decide on request ${requestId}`);
    return item;
  }

  /**
   * Approves: signs after the chain's head, opens its share envelopes with its own key and releases them to the
   * reproduction device's public key. Submitted as it is, even when an order condition says to wait: the service
   * judges.
   */
  async approve(svc: RecoveryService, requestId: string): Promise<RequestView> {
    const { request: v, envelopes } = await this.pending(svc, requestId);
    const approval = signApproval(v.request, v.chainHead, { arbitrator: this.id, decision: "approve" }, this.#signing);
    const releases = releaseSharesFor(v.request, envelopes, (e) => openShare(e, this.#encryption, { escrowId: v.escrowId, cardId: v.cardId }), svc.deviceKey().spki);
    return svc.approve(requestId, approval, releases);
  }

  /** As the policy's author: signs the list of approvers of the satisfied chain (FIG. 9 condition 15). */
  async signList(svc: RecoveryService, requestId: string): Promise<RequestView> {
    const item = (await svc.pendingFor(this.id)).find((p) => p.action === "sign-approver-list" && p.request.requestId === requestId);
    if (!item) throw new Error(`${this.id} is not asked to sign the list of approvers of ${requestId}`);
    return svc.submitApproverList(requestId, signApproverList(item.request.request, item.request.approvals, this.id, this.#signing));
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

interface DemoCard extends InsertedCard {
  id: string;
  path: string;
  runtime: CardRuntime;
  keySet: DerivedKeySetRef;
}

/** A blank virtual card (new random ID), personalised from its transport keys to a key set diversified in custody. */
async function blankCard(custody: KeyCustody, dir: string, imageKey: Uint8Array): Promise<DemoCard> {
  const id = randomBytes(8).toString("hex");
  const path = join(dir, `card-${id}.img`);
  const runtime = createCard(path, imageKey, { cardId: Buffer.from(id, "hex"), durability: "fsync" });
  const transmit = (a: Uint8Array) => runtime.transmit(a);
  const { keySet } = await personaliseFromTransport(transmit, custody, id);
  return { id, path, runtime, transmit, keySet };
}

async function pivOf(card: DemoCard): Promise<PivClient> {
  const piv = new PivClient(card.transmit);
  await piv.select();
  await piv.verifyPin(PIN);
  return piv;
}

/** Labels of keys the key generation device or the reproduction device would leave behind. */
async function transientKeys(custody: KeyCustody): Promise<string[]> {
  return (await custody.listKeys()).map((k) => k.label).filter((l) => l.startsWith("keygen.") || l.startsWith("recovery.reproduce."));
}

/** What a pending request still needs, in a few words. */
function stillNeeded(v: RequestView): string {
  if (v.evaluation.status !== "pending") return "";
  const n = v.evaluation.needs;
  const parts = [...n.indispensable, ...n.groups.map((g) => `${g.more} more of ${g.name}`)];
  return parts.length ? `, still needs ${parts.join(", ")}` : "";
}

const sha256Hex = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

/** Replaces `dir` only when it is empty or a previous demo's (it holds a keystore): never an unrelated directory. */
function freshDir(dir: string): void {
  if (existsSync(dir) && readdirSync(dir).length > 0 && !existsSync(join(dir, "keystore.json")))
    throw new Error(`${dir} is not empty and holds no demo keystore: choose an empty or new directory`);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true, mode: 0o700 });
}

// --- the demo --------------------------------------------------------------------------------------------------

export async function runRecoveryDemo(dirArg: string, log: (line: string) => void = () => {}): Promise<RecoveryDemoResult> {
  const dir = resolve(dirArg);
  freshDir(dir);
  const keystoreKey = randomBytes(32).toString("hex");
  writeFileSync(join(dir, "keystore.key"), keystoreKey + "\n", { mode: 0o600 });
  const imageKey = randomBytes(32);
  const imageKeyPath = join(dir, "card-image.key");
  writeFileSync(imageKeyPath, imageKey.toString("hex") + "\n", { mode: 0o600 });

  const store = await Store.open(join(dir, "cardkms.db"));
  const custody = await SoftwareCustody.open({ path: join(dir, "keystore.json"), key: keystoreKey });
  const cards: DemoCard[] = [];
  try {
    const db = store.db as Db;
    const svc = await RecoveryService.open({ db, custody });

    // 1. The arbitrators, each with its own key pairs.
    const arbitrators = fig9Arbitrators();
    const side = new Map(arbitrators.map((a) => [a.id, a]));
    const as = (id: string) => side.get(id)!;
    for (const a of arbitrators) await a.register(svc);
    log(`1. SQLite system DB and software keystore in ${dir}; ${arbitrators.length} arbitrators registered (FIG. 9), each with its own signing and share key pairs:`);
    for (const a of arbitrators) log(`     ${a.id.padEnd(11)} ${a.role} (${a.displayName})`);

    // 2. The certification center, the user, the policy (S1) and the card issued with its key escrowed (S2-S3).
    const ca = await openCaService({
      custody,
      signerLabel: "center.ca",
      repository: new SqlCaRepository(db, "center"),
      subject: { country: "JP", organization: "Certification Center", commonName: "cardkms demo Center CA" },
    });
    const user = await store.createUser({ personalData: { ...HANAKO } });
    const registrations = new MemoryRegistrationBook();
    registrations.register(user.id, HANAKO); // what Hanako presented at the center herself (step 420)
    const center = new CertificationCenter({ authority: ca.authority, registrations });
    const now = Date.now();
    const cardRecord = await store.registerCard({ userId: user.id, validFrom: now, validUntil: now + 5 * 365 * 86_400_000 });
    const policy = fig9Policy();
    await svc.setPolicy(cardRecord.id, policy, OPERATOR);
    const device = await KeyGenerationDevice.create({
      custody,
      ca: center,
      registry: new MemoryIssuedKeyRegistry(),
      trustAnchors: [ca.authority.certificate],
      escrow: svc.escrowHook("keygen-device"),
    });
    const oldCard = await blankCard(custody, dir, imageKey);
    cards.push(oldCard);
    const issued = await device.issue({ applicantId: user.id, personalData: HANAKO, alg: "P256", profile: "keyManagement", slot: "9d", card: oldCard, escrow: { cardId: cardRecord.id } });
    const cert = new X509Certificate(issued.certificate);
    const subject = cert.subject.replace(/\n/g, ", ");
    const goneAfterIssue = (await transientKeys(custody)).length === 0;
    const escrow = (await svc.escrowOf(cardRecord.id))!;
    log(`2. policy set for card record ${cardRecord.id}: user and credit-co indispensable, credit-co only after user, 1 of 2 service providers, 2 of 3 managers, list signed by list-author`);
    log(`   card ${oldCard.id} issued by the key generation device: P-256 key management key in slot 9D, certified by the center`);
    log(`     certificate: ${subject}, serial ${issued.serial}`);
    log(`     escrow ${issued.escrowId}: ${escrow.shares.length} shares sealed to ${new Set(escrow.shares.map((s) => s.arbitrator)).size} arbitrators; card's secret ID registered (as a digest)`);
    log(`     the private key is ${goneAfterIssue ? "GONE from custody" : "STILL IN CUSTODY"}: it exists only in the card`);

    // 3. The user's records, enciphered to the card's key, kept on the terminal and backed up (S10).
    const oldPiv = await pivOf(oldCard);
    const onCard = (await oldPiv.readCertificate(SLOT.keyManagement))!;
    const recipient = recipientOf(onCard);
    const data: Record<string, Uint8Array> = {
      "bank-pins.txt": new Uint8Array(Buffer.from(`bank A: ${randomBytes(2).readUInt16BE() % 10000}, bank B: ${randomBytes(2).readUInt16BE() % 10000}`)),
      "medical-record.json": new Uint8Array(Buffer.from(JSON.stringify({ patient: "Hanako Yamada", bloodType: "A+", allergies: ["penicillin"], notes: "x".repeat(600) }))),
      "photo.bin": new Uint8Array(randomBytes(4096)),
    };
    const aad = (objectId: string) => Buffer.from(`${user.id}/${objectId}`);
    const oldTerminal = new TerminalEncipheredStore(join(dir, "terminal-old"));
    await oldTerminal.put(Object.entries(data).map(([objectId, p]) => ({ objectId, envelope: encipherForCard(recipient, p, aad(objectId)) })));
    const repo = new BackupRepository(db);
    const report = await backup({ userId: user.id, cardId: cardRecord.id, from: [oldTerminal], to: repo });
    const probe = "medical-record.json";
    const before = await decipherWithCard(oldPiv, SLOT.keyManagement, (await oldTerminal.get(probe))!, { aad: aad(probe) });
    const decipheredBeforeLoss = Buffer.from(before).equals(Buffer.from(data[probe]));
    before.fill(0);
    const records = Object.entries(data).map(([objectId, p]) => ({ objectId, bytes: p.length, sha256: sha256Hex(p) }));
    log(`3. user enciphered ${records.length} records to the card's key (key id ${recipient.kid.slice(0, 16)}…): ${records.map((r) => `${r.objectId} (${r.bytes} B)`).join(", ")}`);
    log(`   kept on the terminal store, backed up to the server: ${report.stored.map((s) => `${s.objectId} v${s.version}`).join(", ")}`);
    log(`   card ${oldCard.id} deciphers ${probe}: ${decipheredBeforeLoss ? "byte-exact" : "MISMATCH"}`);

    // 4. The card is destroyed, and the terminal's copies with it: only the server's backup is left.
    oldCard.runtime.close();
    rmSync(oldCard.path, { force: true });
    rmSync(oldTerminal.dir, { recursive: true, force: true });
    const imageDeleted = !existsSync(oldCard.path);
    log(`4. card ${oldCard.id} destroyed (image ${imageDeleted ? "deleted" : "STILL THERE"}); the terminal's copies are lost too — only the backup is left`);

    // 5. The request, the decisions in the policy's order, the list of approvers (S5-S7).
    const filed = await svc.fileRequest({ cardId: cardRecord.id, kind: "card-destroyed", requester: "user", reason: "card destroyed" }, OPERATOR);
    const requestId = filed.requestId;
    log(`5. user filed request ${requestId} (card-destroyed); the arbitrators decide:`);
    const refused: RecoveryDemoResult["refused"] = [];
    const waiting = await as("credit-co").pending(svc, requestId);
    try {
      await as("credit-co").approve(svc, requestId);
      throw new Error("credit-co's approval before the user's was accepted");
    } catch (e) {
      if (!isRecoveryRefusal(e)) throw e;
      refused.push({ arbitrator: "credit-co", check: e.check, message: e.message });
      log(`     credit-co approves first (it is told to wait for: ${waiting.waitingFor.join(", ")}) -> REFUSED: ${e.message}`);
    }
    let view: RequestView = filed;
    for (const id of ["user", "credit-co", "sp-b", "mgr-a", "mgr-c"]) {
      view = await as(id).approve(svc, requestId);
      const released = view.releasedShares.filter((s) => escrow.shares.some((d) => d.shareId === s && d.arbitrator === id)).length;
      log(`     ${id.padEnd(11)} approves (signed after the chain's head), releases ${released} share(s) to the reproduction device -> ${view.status}${stillNeeded(view)}`);
    }
    const unneeded = policy.groups.flatMap((g) => g.members).filter((m) => !view.evaluation.approvers.includes(m));
    log(`     the policy is met without ${unneeded.join(" and ")}`);
    const listed = await as(policy.author).signList(svc, requestId);
    const list = listed.approverList!;
    log(`     ${policy.author} signs the list of approvers: ${list.approvers.join(" -> ")}`);

    // 6. A new card for the user; the key reproduced into it (S8, S11, FIG. 10-12).
    const newCard = await blankCard(custody, dir, imageKey);
    cards.push(newCard);
    const done = await svc.reproduce(requestId, newCard, OPERATOR);
    const goneAfterReproduction = (await transientKeys(custody)).length === 0;
    const newPiv = await pivOf(newCard);
    const certOnNew = await newPiv.readCertificate(SLOT.keyManagement);
    const holdsOriginalCertificate = !!certOnNew && Buffer.from(certOnNew).equals(Buffer.from(issued.certificate));
    const msg = Buffer.from(`Hanako's new card, ${new Date().toISOString()}`);
    const { signature, hash } = await newPiv.sign(SLOT.keyManagement, "P256", msg);
    const signatureVerified = verify(hash, msg, { key: cert.publicKey, dsaEncoding: "der" }, signature);
    log(`6. blank card ${newCard.id} personalised for the user; key reproduced into it after the checks (shares, key vs. registered public key)`);
    log(`     registered device replaced: ${done.deviceReplaced ? "yes" : "NO"} (generation ${done.deviceGeneration}); reproduced key ${goneAfterReproduction ? "gone" : "STILL"} from custody`);
    log(`     the new card holds the original certificate (serial ${done.serial}): ${holdsOriginalCertificate ? "yes" : "NO"}; it signs, and the signature ${signatureVerified ? "VERIFIES" : "DOES NOT VERIFY"} against the ORIGINAL certificate`);

    // 7. The backups restored onto the new card's terminal store; every record deciphered on the new card (S12).
    const newTerminal = new TerminalEncipheredStore(join(dir, "terminal-new"));
    const restoredReport = await restore({ userId: user.id, from: repo, into: newTerminal, forCard: { piv: newPiv, slot: SLOT.keyManagement } });
    const readable: RecoveryDemoResult["readable"] = [];
    for (const [objectId, p] of Object.entries(data)) {
      const env = await newTerminal.get(objectId);
      let byteExact = false;
      if (env) {
        const plain = await decipherWithCard(newPiv, SLOT.keyManagement, env, { aad: aad(objectId) });
        byteExact = Buffer.from(plain).equals(Buffer.from(p));
        plain.fill(0);
      }
      readable.push({ objectId, byteExact });
    }
    log(`7. ${restoredReport.restored.length} backup(s) restored onto the new terminal store (${restoredReport.skipped.length} skipped); deciphered on card ${newCard.id}:`);
    for (const r of readable) log(`     ${r.objectId.padEnd(20)} ${r.byteExact ? "byte-exact" : "NOT READABLE"}`);

    // 8. The audit log.
    const audit = await verifyAuditLog(db);
    const entries: AuditEntry[] = [];
    for await (const e of auditEntries(db)) entries.push(e);
    const ofRequest = entries.filter((e) => e.subject === requestId);
    const decisions = ofRequest.filter((e) => e.action === "recovery.decision.record").map((e) => ({ arbitrator: String(e.details.arbitrator), decision: String(e.details.decision) }));
    const refusals = ofRequest.filter((e) => e.action === "recovery.approval.refuse").map((e) => ({ arbitrator: String(e.details.arbitrator), check: String(e.details.check) }));
    const listEntry = ofRequest.find((e) => e.action === "recovery.approvers.list");
    const reproduceEntry = ofRequest.find((e) => e.action === "recovery.reproduce");
    const names = (v: unknown) => (Array.isArray(v) ? v.map(String) : []);
    log(`8. audit log ${audit.ok ? "intact" : "BROKEN"} (${audit.entries} hash-chained entries); for request ${requestId}:`);
    for (const r of refusals) log(`     recovery.approval.refuse  ${r.arbitrator} (${r.check})`);
    log(`     recovery.decision.record  ${decisions.map((d) => `${d.arbitrator} ${d.decision}s`).join(", ")}`);
    log(`     recovery.approvers.list   ${names(listEntry?.details.approvers).join(" -> ")} (signed by ${String(listEntry?.details.author)})`);
    log(`     recovery.reproduce        ${names(reproduceEntry?.details.approvers).join(" -> ")}`);

    return {
      dir,
      userId: user.id,
      cardRecordId: cardRecord.id,
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
      signatureVerified,
      restored: restoredReport.restored.map((r) => ({ objectId: r.objectId, into: r.into })),
      readable,
      audit: { ok: audit.ok, entries: audit.entries, decisions, refusals, listed: names(listEntry?.details.approvers), reproduced: names(reproduceEntry?.details.approvers) },
    };
  } finally {
    for (const c of cards) c.runtime.close();
    await custody.close();
    await store.close();
  }
}
