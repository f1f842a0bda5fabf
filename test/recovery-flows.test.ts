// Seed 001 embodiment 3 end to end (FIG. 7-12, steps S1-S12), with virtual cards, on SQLite and PostgreSQL and on
// both custody implementations (software keystore, SoftHSM2): a card issued with its key escrowed under the FIG. 9
// policy, its key lost, the arbitrators' approvals in the policy's order, the key reproduced into the same card —
// and, for a destroyed card, into the new card the request named (issue 9), which becomes the registered device.
// The card then signs under its original certificate. Every refusal named in issues 4 and 9 is refused by name and
// found in the audit log: among them a reproduction redirected into another card than the approved one.
import { test } from "node:test";
import assert from "node:assert/strict";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { join } from "node:path";
import { CertificationAuthority } from "../src/ca/authority.ts";
import type { SubjectName } from "../src/ca/name.ts";
import { MemoryCaRepository } from "../src/ca/repository.ts";
import { nodeSigner } from "../src/ca/signer.ts";
import { createCard } from "../src/card/card.ts";
import type { DerivedKeySetRef, KeyCustody, KeyPairAlg } from "../src/custody/custody.ts";
import { personaliseFromTransport } from "../src/issuer/card-scripts.ts";
import { CertificationCenter, MemoryRegistrationBook } from "../src/keygen/center.ts";
import { KeyGenerationDevice, type InsertedCard, type PivSlot } from "../src/keygen/device.ts";
import { MemoryIssuedKeyRegistry } from "../src/keygen/registry.ts";
import { signApproval, signApproverList, type Approval } from "../src/recovery/approvals.ts";
import { fig9Policy, FIG9_ARBITRATORS, makeArbitrators, registerCardRecord } from "./support/recovery-testing.ts";
import { openShare } from "../src/recovery/shares.ts";
import { isRecoveryRefusal, RecoveryService, releaseShare, releaseSharesFor, type PendingItem, type RequestView, type ShareRelease } from "../src/recovery/service.ts";
import { auditEntries, verifyAuditLog, type AuditEntry } from "../src/store/audit.ts";
import type { Db } from "../src/store/db.ts";
import type { RecoveryTables } from "../src/store/recovery-repository.ts";
import type { Kysely } from "kysely";
import { testEngines } from "./support/store-testing.ts";
import { PivClient } from "../src/protocol/piv/client.ts";
import type { Transmit } from "../src/protocol/apdu-client.ts";
import { softhsmCustody, softwareCustody } from "./custody-env.ts";
import { tempDir } from "./helpers.ts";
import { importTestKmc, TEST_KMC } from "./kmc.ts";
import { cardSignsFor, loseKey } from "./recovery-fixture.ts";
import { recoveryStoreOf } from "../src/store/recovery-store.ts";

const dir = tempDir("cardkms-recovery-");
const HANAKO: SubjectName = { country: "JP", organization: "Example Bank", commonName: "Hanako Yamada", serialNumber: "P-1234567" };
const { registry: arbRegistry, keys: ARB } = makeArbitrators(FIG9_ARBITRATORS);

// --- the certification center, cards, arbitrators -----------------------------------------------------------------

async function center(): Promise<{ center: CertificationCenter; root: Uint8Array }> {
  const root = await CertificationAuthority.createRoot({
    signer: nodeSigner(generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey),
    subject: { country: "JP", organization: "Certification Center", commonName: "Center Root CA" },
    validityDays: 3650,
    pathLength: 0,
    repository: new MemoryCaRepository(),
  });
  const signer = nodeSigner(generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey);
  const sub = await root.certifySubordinate({ subject: { country: "JP", organization: "Certification Center", commonName: "Center Issuing CA" }, publicKey: signer.spki, validityDays: 1825 });
  const issuing = new CertificationAuthority({ signer, certificate: sub.certificate, issuerChain: [root.certificate], repository: new MemoryCaRepository() });
  const book = new MemoryRegistrationBook();
  book.register("user-1", HANAKO);
  return { center: new CertificationCenter({ authority: issuing, registrations: book }), root: root.certificate };
}

interface Card extends InsertedCard {
  keySet: DerivedKeySetRef;
}

/**
 * A blank virtual card personalised with a key set diversified in custody (a new random secret ID each). Two cards
 * made for the same `cardId` share their keys but not their secret ID (a second card of one card record).
 */
async function blankCard(custody: KeyCustody, cardId = randomBytes(8).toString("hex")): Promise<Card> {
  const card = createCard(join(dir, `${cardId}-${randomBytes(4).toString("hex")}.card`), randomBytes(32), { kmc: TEST_KMC, cardId: Buffer.from(cardId, "hex") });
  const transmit: Transmit = (a) => card.transmit(a);
  await importTestKmc(custody);
  const { keySet } = await personaliseFromTransport(transmit, custody, cardId);
  return { transmit, keySet };
}

const ID_OK = { arbitrator: "", decision: "approve" as const };

/** Arbitrator `id`, on its side: the pending request, its signature after the chain head, its shares released. */
async function decideAs(svc: RecoveryService, id: string, requestId: string, decision: "approve" | "refuse" = "approve", reason?: string): Promise<RequestView> {
  const item = (await svc.pendingFor(id)).find((p): p is Extract<PendingItem, { action: "decide" }> => p.action === "decide" && p.request.requestId === requestId);
  assert.ok(item, `${id} has request ${requestId} pending`);
  const v = item.request;
  const approval = signApproval(v.request, v.chainHead, { ...ID_OK, arbitrator: id, decision, reason }, ARB.get(id)!.signing);
  if (decision === "refuse") return svc.refuse(requestId, approval);
  const releases = releaseSharesFor(v.request, item.envelopes, (e) => openShare(e, ARB.get(id)!.encryption, { escrowId: v.escrowId, cardId: v.cardId }), svc.deviceKey().spki);
  return svc.approve(requestId, approval, releases);
}

/** The policy's author signs the list of approvers (FIG. 9 condition 15). */
async function listApprovers(svc: RecoveryService, requestId: string): Promise<RequestView> {
  const author = "mgr-a";
  const item = (await svc.pendingFor(author)).find((p) => p.action === "sign-approver-list" && p.request.requestId === requestId);
  assert.ok(item, "the author is asked to sign the list of approvers");
  return svc.submitApproverList(requestId, signApproverList(item.request.request, item.request.approvals, author, ARB.get(author)!.signing));
}

/** An approval as arbitrator `id` would sign it now, and its releases, without submitting them. */
async function prepared(svc: RecoveryService, id: string, requestId: string): Promise<{ approval: Approval; releases: ShareRelease[]; view: RequestView }> {
  const view = await svc.status(requestId);
  const approval = signApproval(view.request, view.chainHead, { arbitrator: id, decision: "approve" }, ARB.get(id)!.signing);
  const envelopes = await svc.shareEnvelopes(id, { cardId: view.cardId });
  const releases = releaseSharesFor(view.request, envelopes, (e) => openShare(e, ARB.get(id)!.encryption, { escrowId: view.escrowId, cardId: view.cardId }), svc.deviceKey().spki);
  return { approval, releases, view };
}

const IN_ORDER = ["user", "credit-co", "sp-b", "mgr-c", "mgr-d"];

const refusedAs = (check: string) => (e: unknown) => {
  assert.ok(isRecoveryRefusal(e), `a named refusal, got ${String(e)}`);
  assert.equal(e.check, check, e.message);
  return true;
};

async function audit(db: Db, afterSeq = 0): Promise<AuditEntry[]> {
  const out: AuditEntry[] = [];
  for await (const e of auditEntries(db, { afterSeq })) out.push(e);
  return out;
}

const lastSeq = async (db: Db) => (await audit(db)).at(-1)?.seq ?? 0;

/** The audit log has, after `since`, an entry `action` naming `check`. */
async function audited(db: Db, since: number, action: string, check: string): Promise<AuditEntry> {
  const found = (await audit(db, since)).filter((e) => e.action === action && e.details.check === check);
  assert.equal(found.length, 1, `one ${action} entry with check ${check}`);
  return found[0];
}

// --- the flows ------------------------------------------------------------------------------------------------------

const CUSTODIES: [string, () => Promise<KeyCustody>][] = [
  ["software custody", softwareCustody()],
  ["PKCS#11 custody (SoftHSM2)", softhsmCustody()],
];

for (const engine of testEngines()) {
  for (const [custodyName, openCustody] of CUSTODIES) {
    test(`${engine.name}, ${custodyName}: seed 001 embodiment 3 — escrow, approvals, reproduction into the same or a new card`, { timeout: 10 * 60_000 }, async (t) => {
      const tdb = await engine.create();
      const custody = await openCustody();
      const { db } = tdb;
      try {
        const site = await center();
        const svc = await RecoveryService.open({ store: recoveryStoreOf(db), custody });
        const device = await KeyGenerationDevice.create({ custody, ca: site.center, registry: new MemoryIssuedKeyRegistry(), trustAnchors: [site.root], escrow: svc.escrowHook("keygen-device") });
        for (const id of FIG9_ARBITRATORS) {
          const a = arbRegistry.require(id);
          await svc.registerArbitrator({ id, roles: [id.replace(/-[a-e]$/, "")], signingPublicKey: a.signingKey, encryptionPublicKey: a.encryptionKey }, "operator");
        }
        const issue = (card: Card, cardId: string, alg: KeyPairAlg = "P256", slot: PivSlot = "9c") =>
          device.issue({ applicantId: "user-1", personalData: HANAKO, alg, profile: slot === "9c" ? "signature" : "authentication", slot, card, escrow: { cardId } });
        const tmpKeys = async () => (await custody.listKeys()).map((k) => k.label).filter((l) => l.startsWith("recovery.reproduce.") || l.startsWith("keygen."));

        const cardA = await blankCard(custody);
        // the issuer's card records the cards belong to: card-A, card-B (and card-C, its replacement) are user-1's
        await registerCardRecord(db, { cardId: "card-A", userId: "user-1", keySet: cardA.keySet });
        let certA: Uint8Array = new Uint8Array();

        await t.test("S1-S3: the policy, then the card issued with its key escrowed and its secret ID registered", async () => {
          await assert.rejects(issue(cardA, "card-A"), (e: unknown) => (e as Error).message.includes("no_policy"), "no escrow without a policy (S1 first)");
          await svc.setPolicy("card-A", fig9Policy(), "operator");
          const since = await lastSeq(db);
          const r = await issue(cardA, "card-A");
          certA = r.certificate;
          assert.ok(r.escrowId);
          assert.ok(await cardSignsFor(cardA.transmit, "9c", "P256", certA));
          assert.deepEqual(await tmpKeys(), [], "the key disappeared from the key generation device");
          const esc = await svc.escrowOf("card-A");
          assert.equal(esc?.escrowId, r.escrowId);
          assert.equal(esc?.serial, r.serial);
          assert.equal(esc?.deviceGeneration, 1);
          assert.equal(esc?.shares.length, 2 + 3 + 5, "a share for each place of each arbitrator in the policy");
          const actions = (await audit(db, since)).map((e) => e.action);
          assert.deepEqual(actions, ["recovery.escrow.create", "recovery.device.register"]);
          await assert.rejects(svc.setPolicy("card-A", fig9Policy(), "operator"), refusedAs("escrow_exists"), "the policy is fixed with the escrow");
        });

        await t.test("S5-S9 key-lost: approvals in the policy's order, a wrong card refused, the same card reissued once", async () => {
          await loseKey(cardA.transmit, "9c");
          assert.equal(await cardSignsFor(cardA.transmit, "9c", "P256", certA), false, "the key is gone");
          const filed = await svc.fileRequest({ cardId: "card-A", kind: "key-lost", requester: "user", reason: "battery died" }, "operator");
          await assert.rejects(svc.fileRequest({ cardId: "card-A", kind: "key-lost", requester: "user" }, "operator"), refusedAs("request_unfinished"));
          const waiting = (await svc.pendingFor("credit-co")).find((p) => p.action === "decide" && p.request.requestId === filed.requestId);
          assert.ok(waiting && waiting.action === "decide");
          assert.equal(waiting.mayApproveNow, false);
          assert.deepEqual(waiting.waitingFor, ["user"]);

          let since = await lastSeq(db);
          await assert.rejects(svc.reproduce(filed.requestId, cardA, "operator"), refusedAs("policy_not_satisfied"));
          await audited(db, since, "recovery.reproduce.refuse", "policy_not_satisfied");

          let v: RequestView | undefined;
          for (const id of IN_ORDER) {
            assert.notEqual(v?.status, "satisfied", "not satisfied before the last approval");
            v = await decideAs(svc, id, filed.requestId);
          }
          assert.equal(v?.status, "satisfied");
          assert.deepEqual(v?.evaluation.approvers, IN_ORDER);
          assert.deepEqual(
            (await svc.pendingFor("sp-a")).filter((p) => p.action === "decide"),
            [],
            "nobody else is asked once satisfied",
          );
          await assert.rejects(svc.reproduce(filed.requestId, cardA, "operator"), refusedAs("approver_list_missing"));
          await listApprovers(svc, filed.requestId);

          // the request names card-A (the registered card) as its target: another card, reached with other keys or
          // named as another card record, is refused before anything changes (issue 9)
          assert.deepEqual(filed.request.target, { cardId: "card-A", userId: "user-1" });
          const other = await blankCard(custody);
          since = await lastSeq(db);
          await assert.rejects(svc.reproduce(filed.requestId, other, "operator"), refusedAs("target_not_approved"));
          await audited(db, since, "recovery.reproduce.refuse", "target_not_approved");
          await assert.rejects(svc.reproduce(filed.requestId, { ...cardA, cardId: "card-B" }, "operator"), refusedAs("target_not_approved"));
          // FIG. 10 unit 24: a second card personalised for card-A's record (its keys, another secret ID) is not the registered device
          const twin = await blankCard(custody, cardA.keySet.cardId);
          since = await lastSeq(db);
          await assert.rejects(svc.reproduce(filed.requestId, twin, "operator"), (e: unknown) => refusedAs("device_mismatch")(e) && /cannot be reissued twice/.test((e as Error).message));
          await audited(db, since, "recovery.reproduce.refuse", "device_mismatch");
          assert.equal((await svc.status(filed.requestId)).status, "satisfied", "the request stays usable after a refused attempt");
          assert.equal(await cardSignsFor(other.transmit, "9c", "P256", certA), false, "nothing was written into the wrong card");
          assert.equal(await cardSignsFor(twin.transmit, "9c", "P256", certA), false, "nor into the twin");

          since = await lastSeq(db);
          const r = await svc.reproduce(filed.requestId, cardA, "operator");
          assert.deepEqual(r.approvers, IN_ORDER);
          assert.equal(r.deviceReplaced, false);
          assert.equal(r.targetCardId, "card-A");
          assert.ok(await cardSignsFor(cardA.transmit, "9c", "P256", certA), "the same card signs again under its original certificate");
          const piv = new PivClient(cardA.transmit);
          await piv.select();
          assert.deepEqual(await piv.readCertificate(0x9c), certA, "and holds the certificate again");
          assert.deepEqual(await tmpKeys(), [], "the reproduced key disappeared from custody");
          const entry = (await audit(db, since)).find((e) => e.action === "recovery.reproduce");
          assert.ok(entry);
          assert.deepEqual(entry.details.approvers, IN_ORDER, "the approvers, in order, in the audit log");
          assert.equal(entry.details.author, "mgr-a");
          assert.equal(entry.subject, filed.requestId);
          assert.equal((await svc.status(filed.requestId)).status, "reproduced");

          // single use
          since = await lastSeq(db);
          await assert.rejects(svc.reproduce(filed.requestId, cardA, "operator"), refusedAs("request_closed"));
          await audited(db, since, "recovery.reproduce.refuse", "request_closed");
        });

        const cardB = await blankCard(custody);
        let certB: Uint8Array = new Uint8Array();
        let replay: Approval | undefined;

        await t.test("FIG. 11-12 card-destroyed: the key goes into the new card the arbitrators approved, which replaces the registered device", async () => {
          await registerCardRecord(db, { cardId: "card-B", userId: "user-1", keySet: cardB.keySet });
          await svc.setPolicy("card-B", fig9Policy(), "operator");
          certB = (await issue(cardB, "card-B")).certificate;
          // the user's new card, issued before the request names it; another user's card; a card of the user's that
          // the operator keeps (a card record issued to user-1 that the request does not name)
          const cardC = await blankCard(custody);
          await registerCardRecord(db, { cardId: "card-C", userId: "user-1", keySet: cardC.keySet });
          const bobs = await blankCard(custody);
          await registerCardRecord(db, { cardId: "card-bob", userId: "user-2", keySet: bobs.keySet });
          const kept = await blankCard(custody);
          await registerCardRecord(db, { cardId: "card-kept", userId: "user-1", keySet: kept.keySet });
          let since = await lastSeq(db);
          await assert.rejects(svc.fileRequest({ cardId: "card-B", kind: "card-destroyed", requester: "user" }, "operator"), refusedAs("invalid_argument"));
          await assert.rejects(svc.fileRequest({ cardId: "card-B", kind: "card-destroyed", requester: "user", replacementCardId: "card-bob" }, "operator"), refusedAs("target_other_user"));
          await assert.rejects(
            svc.fileRequest({ cardId: "card-B", kind: "card-destroyed", requester: "user", replacementCardId: "card-A" }, "operator"),
            refusedAs("target_unfit"),
            "card-A is card-A's registered device",
          );
          await audited(db, since, "recovery.request.file.refuse", "target_other_user");
          const filed = await svc.fileRequest({ cardId: "card-B", kind: "card-destroyed", requester: "user", reason: "card broken", replacementCardId: "card-C" }, "operator");
          assert.deepEqual(filed.request.target, { cardId: "card-C", userId: "user-1" }, "the replacement card is part of what the arbitrators sign");
          // another valid order: the credit company after the user, the rest in any order
          for (const id of ["sp-a", "user", "mgr-b", "credit-co", "mgr-e"]) await decideAs(svc, id, filed.requestId);
          await listApprovers(svc, filed.requestId);

          // the approved request redirected: into the destroyed card, card-A, Bob's card, the kept card — refused by name, audited, nothing written
          since = await lastSeq(db);
          for (const [card, cardId] of [
            [cardB, undefined],
            [cardA, undefined],
            [bobs, undefined],
            [bobs, "card-bob"],
            [kept, "card-kept"],
            [kept, undefined],
          ] as const)
            await assert.rejects(
              svc.reproduce(filed.requestId, cardId ? { ...card, cardId } : card, "operator"),
              refusedAs("target_not_approved"),
              `into ${cardId ?? "a card reached with other keys"}`,
            );
          const refused = (await audit(db, since)).filter((e) => e.action === "recovery.reproduce.refuse");
          assert.deepEqual(
            refused.map((e) => e.details.check),
            Array(6).fill("target_not_approved"),
          );
          assert.equal((await svc.status(filed.requestId)).status, "satisfied", "nothing changed");
          assert.equal(await cardSignsFor(bobs.transmit, "9c", "P256", certB), false, "nothing was written into Bob's card");
          assert.equal(await cardSignsFor(kept.transmit, "9c", "P256", certB), false, "nor into the kept card");

          // an operator who rewrites the approved target in the DB: the approvals do not cover the new one
          const rdb = (db as Kysely<unknown>).withTables<RecoveryTables>();
          const { request: signed } = await rdb.selectFrom("recovery_requests").select("request").where("request_id", "=", filed.requestId).executeTakeFirstOrThrow();
          const redirected = JSON.stringify({ ...JSON.parse(signed), target: { cardId: "card-kept", userId: "user-1" } });
          await rdb.updateTable("recovery_requests").set({ request: redirected }).where("request_id", "=", filed.requestId).execute();
          since = await lastSeq(db);
          await assert.rejects(svc.reproduce(filed.requestId, kept, "operator"), refusedAs("replayed_from_other_request"));
          await audited(db, since, "recovery.reproduce.refuse", "replayed_from_other_request");
          assert.equal(await cardSignsFor(kept.transmit, "9c", "P256", certB), false, "nothing was written into the kept card");
          await rdb.updateTable("recovery_requests").set({ request: signed }).where("request_id", "=", filed.requestId).execute();

          // the approved card with another key in its slot: refused, read from the card itself
          await device.issue({ applicantId: "user-1", personalData: HANAKO, alg: "P256", profile: "signature", slot: "9c", card: cardC });
          since = await lastSeq(db);
          await assert.rejects(svc.reproduce(filed.requestId, cardC, "operator"), refusedAs("target_slot_occupied"));
          await audited(db, since, "recovery.reproduce.refuse", "target_slot_occupied");
          await loseKey(cardC.transmit, "9c");

          since = await lastSeq(db);
          const r = await svc.reproduce(filed.requestId, cardC, "operator");
          assert.equal(r.deviceReplaced, true);
          assert.equal(r.deviceGeneration, 2);
          assert.equal(r.targetCardId, "card-C");
          assert.deepEqual(r.approvers, ["sp-a", "user", "mgr-b", "credit-co", "mgr-e"]);
          assert.ok(await cardSignsFor(cardC.transmit, "9c", "P256", certB), "the new card signs under the destroyed card's certificate");
          assert.equal((await svc.escrowOf("card-B"))?.deviceGeneration, 2);
          const actions = (await audit(db, since)).map((e) => e.action);
          // the destroyed card's record is marked destroyed in the same transaction (issue 15 §5)
          assert.deepEqual(actions, ["recovery.device.replace", "card.destroyed", "recovery.reproduce"]);

          // the destroyed card, should it reappear, is no longer card-B's registered device: a key-lost request now
          // names card-C, the registered card
          const again = await svc.fileRequest({ cardId: "card-B", kind: "key-lost", requester: "user" }, "operator");
          assert.deepEqual(again.request.target, { cardId: "card-C", userId: "user-1" });
          const first = await prepared(svc, "user", again.requestId);
          replay = first.approval; // kept for the replay test below
          for (const id of IN_ORDER) await decideAs(svc, id, again.requestId);
          await listApprovers(svc, again.requestId);
          await assert.rejects(svc.reproduce(again.requestId, cardB, "operator"), refusedAs("target_not_approved"));
          await svc.withdraw(again.requestId, "test over", "operator");
        });

        await t.test("refused and audited: forged signature, out of order, replay from another request, share from another card, forged share", async () => {
          const filed = await svc.fileRequest({ cardId: "card-A", kind: "key-lost", requester: "user" }, "operator");
          const rid = filed.requestId;
          const refusedHere = async (check: string, attempt: () => Promise<unknown>) => {
            const since = await lastSeq(db);
            await assert.rejects(attempt(), refusedAs(check));
            const e = await audited(db, since, "recovery.approval.refuse", check);
            assert.equal(e.subject, rid);
            assert.deepEqual((await svc.status(rid)).approvals, [], "nothing was recorded");
          };

          const user = await prepared(svc, "user", rid);
          // forged: a flipped bit, and the right body signed with another arbitrator's key
          const sig = Buffer.from(user.approval.signature, "base64");
          sig[10] ^= 1;
          await refusedHere("forged_signature", () => svc.approve(rid, { ...user.approval, signature: sig.toString("base64") }, user.releases));
          const byOther = signApproval(user.view.request, user.view.chainHead, { arbitrator: "user", decision: "approve" }, ARB.get("sp-a")!.signing);
          await refusedHere("forged_signature", () => svc.approve(rid, byOther, user.releases));
          // out of order: the credit company before the user
          const cc = await prepared(svc, "credit-co", rid);
          await refusedHere("out_of_order", () => svc.approve(rid, cc.approval, cc.releases));
          // replayed: the user's approval of card-B's request
          assert.ok(replay);
          await refusedHere("replayed_from_other_request", () => svc.approve(rid, replay!, user.releases));
          // a share of another card: card-B's envelope, opened and released for this request
          const envB = (await svc.shareEnvelopes("user", { cardId: "card-B" })).filter((e) => e.header.shareId === "ind/user");
          const escB = (await svc.escrowOf("card-B"))!;
          const fromB = releaseShare({ requestId: rid }, openShare(envB[0], ARB.get("user")!.encryption, { escrowId: escB.escrowId, cardId: "card-B" }), svc.deviceKey().spki);
          await refusedHere("share_other_card", () => svc.approve(rid, user.approval, [fromB]));
          // a forged share: the right header, a value nobody committed to
          const h = user.releases[0].header;
          const forged = releaseShare({ requestId: rid }, { escrowId: h.escrowId, cardId: h.cardId, shareId: h.shareId, arbitrator: h.arbitrator, value: randomBytes(32) }, svc.deviceKey().spki);
          await refusedHere("share_commitment_mismatch", () => svc.approve(rid, user.approval, [forged]));
          // no share at all
          await refusedHere("share_missing", () => svc.approve(rid, user.approval, []));

          // the genuine approval is still accepted after all that
          const v = await svc.approve(rid, user.approval, user.releases);
          assert.deepEqual(v.evaluation.approvers, ["user"]);
          const ok = await verifyAuditLog(db);
          assert.ok(ok.ok, "the audit chain verifies");
        });

        await t.test("S9: a refusal by an indispensable party ends the request, naming the condition", async () => {
          const [open] = await svc.list({ cardId: "card-A", status: "open" });
          assert.ok(open);
          const since = await lastSeq(db);
          const v = await decideAs(svc, "credit-co", open.requestId, "refuse", "payment overdue");
          assert.equal(v.status, "ended");
          assert.match(v.statusDetail ?? "", /indispensable party credit-co refused/);
          assert.ok((await audit(db, since)).some((e) => e.action === "recovery.request.end" && (e.details.condition as { kind: string }).kind === "indispensable_refused"));
          const sp = await prepared(svc, "sp-a", open.requestId);
          const s2 = await lastSeq(db);
          await assert.rejects(svc.approve(open.requestId, sp.approval, sp.releases), refusedAs("request_ended"));
          await audited(db, s2, "recovery.approval.refuse", "request_ended");
          await assert.rejects(svc.reproduce(open.requestId, cardA, "operator"), refusedAs("request_ended"));
          assert.deepEqual(await tmpKeys(), []);
        });

        await t.test("FIG. 10 unit 22: a wrong key never comes out — tampered records are refused; two reproductions at once, one", async () => {
          const filed = await svc.fileRequest({ cardId: "card-A", kind: "key-lost", requester: "user" }, "operator");
          for (const id of IN_ORDER) await decideAs(svc, id, filed.requestId);
          await listApprovers(svc, filed.requestId);
          const rdb = (db as Kysely<unknown>).withTables<RecoveryTables>();
          const row = await rdb.selectFrom("recovery_escrows").select(["public_key", "record"]).where("card_id", "=", "card-A").executeTakeFirstOrThrow();

          // the registered public key replaced by another (the user's public data storage tampered with)
          const otherSpki = generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey.export({ format: "der", type: "spki" });
          await rdb.updateTable("recovery_escrows").set({ public_key: otherSpki }).where("card_id", "=", "card-A").execute();
          let since = await lastSeq(db);
          await assert.rejects(svc.reproduce(filed.requestId, cardA, "operator"), refusedAs("key_check_failed"));
          await audited(db, since, "recovery.reproduce.refuse", "key_check_failed");
          assert.deepEqual(await tmpKeys(), [], "nothing is left in custody");
          await rdb.updateTable("recovery_escrows").set({ public_key: row.public_key }).where("card_id", "=", "card-A").execute();

          // the sealed E altered: K opens nothing
          const record = JSON.parse(row.record) as { sealed: { ciphertext: string } };
          const ct = Buffer.from(record.sealed.ciphertext, "base64");
          ct[5] ^= 1;
          const altered = JSON.stringify({ ...record, sealed: { ...record.sealed, ciphertext: ct.toString("base64") } });
          await rdb.updateTable("recovery_escrows").set({ record: altered }).where("card_id", "=", "card-A").execute();
          since = await lastSeq(db);
          await assert.rejects(svc.reproduce(filed.requestId, cardA, "operator"), refusedAs("final_check_failed"));
          await audited(db, since, "recovery.reproduce.refuse", "final_check_failed");
          await rdb.updateTable("recovery_escrows").set({ record: row.record }).where("card_id", "=", "card-A").execute();
          assert.ok(await cardSignsFor(cardA.transmit, "9c", "P256", certA), "the card was not touched by the refused attempts");

          // two reproductions of one request at once: one writes, the other is refused
          const results = await Promise.allSettled([svc.reproduce(filed.requestId, cardA, "operator"), svc.reproduce(filed.requestId, cardA, "operator")]);
          assert.equal(results.filter((r) => r.status === "fulfilled").length, 1);
          assert.ok(refusedAs("request_closed")((results.find((r) => r.status === "rejected") as PromiseRejectedResult).reason));
          assert.equal((await svc.status(filed.requestId)).status, "reproduced");
          assert.ok(await cardSignsFor(cardA.transmit, "9c", "P256", certA));
          assert.deepEqual(await tmpKeys(), []);
        });
      } finally {
        await custody.close();
        await tdb.drop();
      }
    });
  }
}

test("RSA-2048 on SoftHSM2: escrow, reproduction with the OAEP round trip inside custody, the card signs again", { timeout: 10 * 60_000 }, async () => {
  const [engine] = testEngines();
  const tdb = await engine.create();
  const custody = await CUSTODIES[1][1]();
  try {
    const site = await center();
    const svc = await RecoveryService.open({ store: recoveryStoreOf(tdb.db), custody });
    const device = await KeyGenerationDevice.create({ custody, ca: site.center, registry: new MemoryIssuedKeyRegistry(), trustAnchors: [site.root], escrow: svc.escrowHook("keygen-device") });
    for (const id of ["user", "mgr-a", "mgr-b"]) {
      const a = arbRegistry.require(id);
      await svc.registerArbitrator({ id, signingPublicKey: a.signingKey, encryptionPublicKey: a.encryptionKey }, "operator");
    }
    const card = await blankCard(custody);
    await registerCardRecord(tdb.db, { cardId: "card-R", userId: "user-1", keySet: card.keySet });
    await svc.setPolicy(
      "card-R",
      JSON.stringify({ version: 1, author: "mgr-a", indispensable: ["user"], groups: [{ name: "managers", members: ["mgr-a", "mgr-b"], threshold: 1 }], order: [] }),
      "operator",
    );
    const r = await device.issue({ applicantId: "user-1", personalData: HANAKO, alg: "RSA2048", profile: "authentication", slot: "9a", card, escrow: { cardId: "card-R" } });
    await loseKey(card.transmit, "9a");
    assert.equal(await cardSignsFor(card.transmit, "9a", "RSA2048", r.certificate), false);
    const filed = await svc.fileRequest({ cardId: "card-R", kind: "key-lost", requester: "user" }, "operator");
    await decideAs(svc, "mgr-b", filed.requestId);
    await decideAs(svc, "user", filed.requestId);
    await listApprovers(svc, filed.requestId);
    const done = await svc.reproduce(filed.requestId, card, "operator");
    assert.deepEqual(done.approvers, ["mgr-b", "user"]);
    assert.ok(await cardSignsFor(card.transmit, "9a", "RSA2048", r.certificate));
  } finally {
    await custody.close();
    await tdb.drop();
  }
});
