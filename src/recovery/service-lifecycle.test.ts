// RecoveryService lifecycle (migration 0007): a request left "reproducing" by a reproduction whose process is gone
// (a transmit that never answers, the service instance dropped) and the lease that lets a later reproduction take it
// over or an operator reset it — never while the lease is live, never two at once; arbitrators' key rotation (signed
// with the current key, history kept so that chains recorded before still verify, shares sealed to a retired key
// shown and still opened with the old key) and deregistration (refused as a policy member, no decisions, requests it
// blocks ended, escrows it strands refused unless forced); cursor pagination of requests, pending items,
// arbitrators and policy dependents. Virtual cards for the reproductions; an injected clock, no sleeping. SQLite and
// PostgreSQL (an unreachable PostgreSQL FAILS the suite); software custody.

import assert from "node:assert/strict";
import { createHash, createPublicKey, generateKeyPairSync, randomBytes, type KeyObject } from "node:crypto";
import { join } from "node:path";
import { test } from "node:test";
import { CertificationAuthority } from "../ca/authority.ts";
import { MemoryCaRepository } from "../ca/repository.ts";
import { nodeSigner } from "../ca/signer.ts";
import { createCard } from "../card/card.ts";
import type { DerivedKeySetRef, KeyCustody } from "../custody/custody.ts";
import { personaliseFromTransport } from "../issuer/card-scripts.ts";
import { CertificationCenter, MemoryRegistrationBook } from "../keygen/center.ts";
import { KeyGenerationDevice, type InsertedCard } from "../keygen/device.ts";
import { MemoryIssuedKeyRegistry } from "../keygen/registry.ts";
import { auditEntries, verifyAuditLog, type AuditEntry } from "../store/audit.ts";
import type { Db } from "../store/db.ts";
import { SqlRecoveryRepository } from "../store/recovery-repository.ts";
import { testEngines } from "../../test/support/store-testing.ts";
import type { Transmit } from "../protocol/apdu-client.ts";
import { cardSignsFor, loseKey } from "../../test/recovery-fixture.ts";
import { softwareCustody } from "../../test/custody-env.ts";
import { tempDir } from "../../test/helpers.ts";
import { importTestKmc, TEST_KMC } from "../../test/kmc.ts";
import { signApproval, signApproverList } from "./approvals.ts";
import { PolicyValidationError } from "./errors.ts";
import type { ReproductionPolicy } from "./policy.ts";
import { openShare } from "./shares.ts";
import {
  DEFAULT_REPRODUCTION_LEASE_MS,
  isRecoveryRefusal,
  keyRotationBytes,
  RecoveryService,
  releaseSharesFor,
  signKeyRotation,
  type KeyRotation,
  type PendingItem,
  type RequestView,
} from "./service.ts";
import { escrowWithoutCard, registerCardRecord } from "../../test/support/recovery-testing.ts";
import { recoveryStoreOf } from "../store/recovery-store.ts";

const T0 = Date.UTC(2026, 2, 1, 9);
const LEASE = DEFAULT_REPRODUCTION_LEASE_MS;
const MIN = 60_000;
const IDS = ["user", "mgr-a", "mgr-b", "mgr-c", "sp-x", "sp-y", "sp-z"];
const HANAKO = { country: "JP", organization: "Example Bank", commonName: "Hanako Yamada", serialNumber: "P-1234567" };

/** The main card's policy: the user, then 2 of 3 managers; mgr-a (a manager too) draws up the list. */
const POLICY: ReproductionPolicy = { version: 1, author: "mgr-a", indispensable: ["user"], groups: [{ name: "managers", members: ["mgr-a", "mgr-b", "mgr-c"], threshold: 2 }], order: [] };

const refusedAs = (check: string, message?: RegExp) => (e: unknown) => {
  assert.ok(isRecoveryRefusal(e), `a named refusal, got ${String(e)}`);
  assert.equal(e.check, check, e.message);
  if (message) assert.match(e.message, message);
  return true;
};

async function audit(db: Db, afterSeq = 0): Promise<AuditEntry[]> {
  const out: AuditEntry[] = [];
  for await (const e of auditEntries(db, { afterSeq })) out.push(e);
  return out;
}

/** The arbitrators' private keys, on their side: the current ones and the encryption keys rotated out. */
interface Side {
  signing: KeyObject;
  encryption: KeyObject;
  oldEncryption: KeyObject[];
}
const p256 = () => generateKeyPairSync("ec", { namedCurve: "P-256" });
const spki = (k: KeyObject) => new Uint8Array((k.type === "private" ? createPublicKey(k) : k).export({ format: "der", type: "spki" }));
/** SHA-256 of a key's SPKI (a private key: of its public half), hex — how envelopes and views name keys. */
const keyId = (k: KeyObject) => createHash("sha256").update(spki(k)).digest("hex");

async function center(): Promise<{ center: CertificationCenter; root: Uint8Array }> {
  const root = await CertificationAuthority.createRoot({
    signer: nodeSigner(p256().privateKey),
    subject: { country: "JP", organization: "Certification Center", commonName: "Center Root CA" },
    validityDays: 3650,
    pathLength: 0,
    repository: new MemoryCaRepository(),
  });
  const book = new MemoryRegistrationBook();
  book.register("user-1", HANAKO);
  return { center: new CertificationCenter({ authority: root, registrations: book }), root: root.certificate };
}

for (const engine of testEngines()) {
  test(`RecoveryService lifecycle on ${engine.name}: the reproduction lease, key rotation, deregistration, pagination`, { timeout: 10 * 60_000 }, async (t) => {
    const dir = tempDir("cardkms-reclife-");
    const tdb = await engine.create();
    const custody: KeyCustody = await softwareCustody()();
    t.after(async () => {
      await custody.close();
      await tdb.drop();
    });
    const { db } = tdb;
    let now = T0;
    const clock = () => new Date(now);
    const svc = await RecoveryService.open({ store: recoveryStoreOf(db), custody, clock });
    const side = new Map<string, Side>();
    for (const id of IDS) {
      const s = p256();
      const e = p256();
      side.set(id, { signing: s.privateKey, encryption: e.privateKey, oldEncryption: [] });
      await svc.registerArbitrator({ id, roles: ["test"], signingPublicKey: s.publicKey, encryptionPublicKey: e.publicKey }, "operator");
    }

    // ---- arbitrators' side ------------------------------------------------------------------------------------------
    const decide = async (s: RecoveryService, id: string, requestId: string, decision: "approve" | "refuse" = "approve"): Promise<RequestView> => {
      const item = (await s.pendingFor(id)).find((p): p is Extract<PendingItem, { action: "decide" }> => p.action === "decide" && p.request.requestId === requestId);
      assert.ok(item, `${id} has ${requestId} to decide`);
      const k = side.get(id)!;
      const v = item.request;
      const approval = signApproval(v.request, v.chainHead, { arbitrator: id, decision, reason: decision === "refuse" ? "no" : undefined }, k.signing);
      if (decision === "refuse") return s.refuse(requestId, approval);
      const byId = new Map([k.encryption, ...k.oldEncryption].map((x) => [keyId(x), x]));
      const releases = releaseSharesFor(v.request, item.envelopes, (e) => openShare(e, byId.get(e.header.recipientKeyId)!, { escrowId: v.escrowId, cardId: v.cardId }), s.deviceKey().spki);
      return s.approve(requestId, approval, releases);
    };
    const signList = async (s: RecoveryService, requestId: string): Promise<RequestView> => {
      const item = (await s.pendingFor("mgr-a")).find((p) => p.action === "sign-approver-list" && p.request.requestId === requestId);
      assert.ok(item, "mgr-a is asked to sign the list of approvers");
      return s.submitApproverList(requestId, signApproverList(item.request.request, item.request.approvals, "mgr-a", side.get("mgr-a")!.signing));
    };
    /** Files a key-lost request for the card and has it approved by the user and two managers, the list signed. */
    const satisfied = async (cardId: string, managers = ["mgr-b", "mgr-a"]): Promise<string> => {
      const rid = (await svc.fileRequest({ cardId, kind: "key-lost", requester: "user" }, "operator")).requestId;
      for (const id of ["user", ...managers]) await decide(svc, id, rid);
      assert.equal((await signList(svc, rid)).status, "satisfied");
      return rid;
    };

    // ---- a card issued with its key escrowed (S1-S3) -------------------------------------------------------------------
    const site = await center();
    const device = await KeyGenerationDevice.create({ custody, ca: site.center, registry: new MemoryIssuedKeyRegistry(), trustAnchors: [site.root], escrow: svc.escrowHook("keygen-device") });
    const cardSerial = randomBytes(8).toString("hex");
    const runtime = createCard(join(dir, `${cardSerial}.card`), randomBytes(32), { kmc: TEST_KMC, cardId: Buffer.from(cardSerial, "hex") });
    t.after(() => runtime.close());
    const transmit: Transmit = (a) => runtime.transmit(a);
    await importTestKmc(custody);
    const { keySet } = await personaliseFromTransport(transmit, custody, cardSerial);
    const card: InsertedCard & { keySet: DerivedKeySetRef } = { transmit, keySet };
    await registerCardRecord(db, { cardId: "card-A", userId: "user-1", keySet });
    await svc.setPolicy("card-A", POLICY, "operator");
    const { certificate } = await device.issue({ applicantId: "user-1", personalData: HANAKO, alg: "P256", profile: "signature", slot: "9c", card, escrow: { cardId: "card-A" } });
    const signs = () => cardSignsFor(transmit, "9c", "P256", certificate);
    assert.ok(await signs());

    /** Escrows a key generated in custody for a card record without a card (enough where nothing is reproduced). */
    let n = 0;
    const escrowed = (cardId: string, policy: ReproductionPolicy) => escrowWithoutCard(svc, custody, { cardId, policy, keyLabel: `keygen.lifecycle-${++n}` });

    await t.test("a reproduction whose process is gone leaves the request reproducing; another service takes it over only once the lease passed", async () => {
      await loseKey(transmit, "9c");
      const rid = await satisfied("card-A");
      // Service A starts the reproduction; the terminal never answers its first APDU (the process will be "gone").
      const a = await RecoveryService.open({ store: recoveryStoreOf(tdb.reopen()), custody, clock });
      let sent!: () => void;
      const firstApdu = new Promise<void>((r) => (sent = r));
      let answer!: () => void;
      const gate = new Promise<void>((r) => (answer = r));
      const stuck = a.reproduce(rid, { keySet, transmit: async (apdu) => (sent(), await gate, runtime.transmit(apdu)) }, "op-a");
      stuck.catch(() => {});
      await firstApdu;
      const held = await svc.status(rid);
      assert.equal(held.status, "reproducing");
      assert.equal(held.reproduction?.claimedBy, "op-a");
      assert.equal(held.reproduction?.leaseUntil?.getTime(), T0 + LEASE);

      // Service B, a second instance on the same DB (on PostgreSQL its own pool): refused while the lease is live
      let nowB = now + LEASE - 1;
      const b = await RecoveryService.open({ store: recoveryStoreOf(tdb.reopen()), custody, clock: () => new Date(nowB) });
      const since = (await audit(db)).at(-1)!.seq;
      await assert.rejects(b.reproduce(rid, card, "op-b"), refusedAs("request_closed", /being reproduced by op-a; its lease runs until/));
      await assert.rejects(b.resetReproduction(rid, "stuck?", "op-b"), refusedAs("request_closed", /lease runs until/));
      assert.equal((await svc.status(rid)).status, "reproducing", "refusals leave the live holder alone");
      assert.equal(await signs(), false, "nothing was written");

      // the lease passed: B takes the request over and reproduces the key
      nowB = now + LEASE;
      const r = await b.reproduce(rid, card, "op-b");
      assert.deepEqual([r.requestId, r.approvers, r.author], [rid, ["user", "mgr-b", "mgr-a"], "mgr-a"]);
      assert.ok(await signs(), "the card signs again under its original certificate");
      const done = await svc.status(rid);
      assert.deepEqual([done.status, done.reproducedBy, done.reproduction], ["reproduced", "op-b", undefined]);
      const entries = await audit(db, since);
      const takeover = entries.filter((e) => e.action === "recovery.reproduce.takeover");
      assert.equal(takeover.length, 1);
      assert.deepEqual([takeover[0].actor, takeover[0].details.previousClaimedBy, takeover[0].details.previousLeaseUntil], ["op-b", "op-a", T0 + LEASE]);
      assert.deepEqual(
        entries.filter((e) => e.action === "recovery.reproduce.refuse").map((e) => e.details.check),
        ["request_closed"],
      );

      // A comes back (it was only stalled): its next APDU finds its claim gone — it stops, and cannot undo B's record
      answer();
      await assert.rejects(stuck, refusedAs("lease_lost"));
      assert.equal((await svc.status(rid)).status, "reproduced");
      assert.ok(await signs());
      await assert.rejects(b.reproduce(rid, card, "op-b"), refusedAs("request_closed"), "single-use once reproduced");
    });

    await t.test("an operator resets a stuck request only once its lease passed; a claim from before leases is taken over at once", async () => {
      await loseKey(transmit, "9c");
      const rid = await satisfied("card-A", ["mgr-c", "mgr-a"]);
      await assert.rejects(svc.resetReproduction(rid, "not stuck", "operator"), refusedAs("request_closed", /is satisfied, not being reproduced/));
      // the service instance is dropped mid-reproduction: its transmit never answers, nothing runs its cleanup
      const gone = await RecoveryService.open({ store: recoveryStoreOf(tdb.reopen()), custody, clock });
      let sent!: () => void;
      const firstApdu = new Promise<void>((r) => (sent = r));
      void gone.reproduce(rid, { keySet, transmit: () => (sent(), new Promise<Uint8Array>(() => {})) }, "op-gone").catch(() => {});
      await firstApdu;
      now += LEASE / 2;
      await assert.rejects(svc.resetReproduction(rid, "looks stuck", "operator"), refusedAs("request_closed", /op-gone; its lease runs until/));
      await assert.rejects(svc.withdraw(rid, "stuck", "operator"), refusedAs("request_closed"), "a request being reproduced is not withdrawn");
      now += LEASE / 2;
      const since = (await audit(db)).at(-1)!.seq;
      const reset = await svc.resetReproduction(rid, "the reproduction's server crashed", "operator");
      assert.deepEqual([reset.status, reset.statusDetail, reset.reproduction], ["satisfied", "reproduction reset: the reproduction's server crashed", undefined]);
      const entry = (await audit(db, since)).find((e) => e.action === "recovery.reproduce.reset");
      assert.deepEqual([entry?.actor, entry?.details.previousClaimedBy, entry?.details.reason], ["operator", "op-gone", "the reproduction's server crashed"]);
      const r = await svc.reproduce(rid, card, "operator");
      assert.equal(r.requestId, rid);
      assert.ok(await signs());

      // a request left "reproducing" by a process from before leases (no claim, no lease recorded): taken over at once
      await loseKey(transmit, "9c");
      const old = await satisfied("card-A");
      assert.equal(await new SqlRecoveryRepository(db).moveRequest(old, ["satisfied"], "reproducing", now), true);
      assert.equal((await svc.status(old)).reproduction?.leaseUntil, undefined);
      await svc.reproduce(old, card, "operator");
      assert.ok(await signs());
      assert.ok((await audit(db, since)).some((e) => e.action === "recovery.reproduce.takeover" && e.subject === old && e.details.previousLeaseUntil === null));
    });

    await t.test("key rotation: signed with the current key, proof of the new one, no replay; chains recorded before still verify", async () => {
      await loseKey(transmit, "9c");
      const rid = (await svc.fileRequest({ cardId: "card-A", kind: "key-lost", requester: "user" }, "operator")).requestId;
      await decide(svc, "user", rid);
      await decide(svc, "mgr-b", rid); // recorded with mgr-b's key version 1
      await decide(svc, "mgr-a", rid); // the author decides with version 1 ...
      const before = (await svc.arbitrator("mgr-b"))!;
      const current = { arbitrator: "mgr-b", keyVersion: before.keyVersion, signingPublicKey: before.signingPublicKey, encryptionPublicKey: before.encryptionPublicKey };
      const nextSigning = p256();
      const nextEncryption = p256();
      const since = (await audit(db)).at(-1)!.seq;

      // a stolen operator token alone: a rotation signed with a key that is not mgr-b's current one
      const thief = p256();
      await assert.rejects(svc.rotateArbitratorKeys("mgr-b", signKeyRotation(current, thief.privateKey, { signingKey: thief.privateKey }), "operator"), refusedAs("forged_signature"));
      // the current key signs, but the new signing key's proof is missing or forged
      const good = signKeyRotation(current, side.get("mgr-b")!.signing, { signingKey: nextSigning.privateKey, encryptionPublicKey: nextEncryption.publicKey });
      const { newKeySignature: _proof, ...noProof } = good;
      await assert.rejects(svc.rotateArbitratorKeys("mgr-b", noProof as KeyRotation, "operator"), refusedAs("forged_signature", /proof of possession/));
      // the document altered after signing (another new key): the signature no longer covers it
      await assert.rejects(svc.rotateArbitratorKeys("mgr-b", { ...good, encryptionPublicKey: Buffer.from(spki(thief.publicKey)).toString("base64") }, "operator"), refusedAs("forged_signature"));
      await assert.rejects(svc.rotateArbitratorKeys("mgr-c", good, "operator"), refusedAs("invalid_argument"), "a rotation names its arbitrator");
      now += MIN;
      const rotated = await svc.rotateArbitratorKeys("mgr-b", good, "operator");
      assert.equal(rotated.keyVersion, 2);
      assert.equal(rotated.encryptionKeyId, keyId(nextEncryption.publicKey));
      assert.deepEqual(
        rotated.keys.map((k) => k.signingKeyId),
        [keyId(side.get("mgr-b")!.signing), keyId(nextSigning.publicKey)],
      );
      assert.deepEqual(
        rotated.keys.map((k) => [k.version, k.retiredAt?.getTime()]),
        [
          [1, now],
          [2, undefined],
        ],
      );
      side.get("mgr-b")!.oldEncryption.push(side.get("mgr-b")!.encryption);
      Object.assign(side.get("mgr-b")!, { signing: nextSigning.privateKey, encryption: nextEncryption.privateKey });
      // replayed: it names version 1's keys and creates version 2, which exists
      await assert.rejects(svc.rotateArbitratorKeys("mgr-b", good, "operator"), refusedAs("rotation_stale"));
      // back to a retired key: refused, whoever signs
      const back = signKeyRotation({ ...current, keyVersion: 2, signingPublicKey: spki(nextSigning.publicKey), encryptionPublicKey: spki(nextEncryption.publicKey) }, nextSigning.privateKey, {
        encryptionPublicKey: before.encryptionPublicKey,
      });
      await assert.rejects(svc.rotateArbitratorKeys("mgr-b", back, "operator"), refusedAs("key_reused"));
      // the signature format: the new key's proof covers the same bytes
      assert.ok(keyRotationBytes(good).toString().startsWith("cardkms/recovery/key-rotation/v1\n"));
      const entries = await audit(db, since);
      assert.deepEqual(
        entries.filter((e) => e.action === "recovery.arbitrator.rotate.refuse").map((e) => e.details.check),
        ["forged_signature", "forged_signature", "forged_signature", "invalid_argument", "rotation_stale", "key_reused"],
      );
      const rotate = entries.filter((e) => e.action === "recovery.arbitrator.rotate");
      assert.deepEqual([rotate.length, rotate[0].details.fromVersion, rotate[0].details.toVersion, rotate[0].details.signingChanged, rotate[0].details.encryptionChanged], [1, 1, 2, true, true]);

      // ... and the author rotates its signing key before it signs the list: the list verifies with version 2,
      // its own approval (and mgr-b's) with version 1 — at the list, and again at the reproduction
      const aNext = p256();
      const a = (await svc.arbitrator("mgr-a"))!;
      await svc.rotateArbitratorKeys(
        "mgr-a",
        signKeyRotation({ arbitrator: "mgr-a", keyVersion: 1, signingPublicKey: a.signingPublicKey, encryptionPublicKey: a.encryptionPublicKey }, side.get("mgr-a")!.signing, {
          signingKey: aNext.privateKey,
        }),
        "mgr-a",
      );
      side.get("mgr-a")!.signing = aNext.privateKey;
      assert.equal((await signList(svc, rid)).approverList?.author, "mgr-a");
      // and once more after signing it: the reproduction verifies the list with version 2, the approval with 1
      const a2 = (await svc.arbitrator("mgr-a"))!;
      const aLast = p256();
      await svc.rotateArbitratorKeys(
        "mgr-a",
        signKeyRotation({ arbitrator: "mgr-a", keyVersion: 2, signingPublicKey: a2.signingPublicKey, encryptionPublicKey: a2.encryptionPublicKey }, aNext.privateKey, { signingKey: aLast.privateKey }),
        "operator",
      );
      side.get("mgr-a")!.signing = aLast.privateKey;
      assert.equal((await svc.arbitrator("mgr-a"))?.keyVersion, 3);
      const r = await svc.reproduce(rid, card, "operator");
      assert.deepEqual(r.approvers, ["user", "mgr-b", "mgr-a"]);
      assert.ok(await signs());

      // shares sealed to mgr-b's retired encryption key: shown, and still opened with the old key
      const escrow = (await svc.escrowOf("card-A"))!;
      const mgrB = escrow.shares.filter((s) => s.arbitrator === "mgr-b");
      assert.deepEqual(
        mgrB.map((s) => [s.sealedToRetiredKey, s.holderDeregistered, s.recipientKeyId]),
        [[true, false, before.encryptionKeyId]],
      );
      assert.ok(escrow.shares.filter((s) => s.arbitrator !== "mgr-b").every((s) => !s.sealedToRetiredKey));
      await loseKey(transmit, "9c");
      const again = await satisfied("card-A", ["mgr-b", "mgr-a"]);
      await svc.reproduce(again, card, "operator");
      assert.ok(await signs(), "mgr-b released its share, sealed before its rotation, with its old encryption key");
    });

    await t.test("deregistration: refused as a policy member, no decisions, blocked requests ended, stranded escrows refused unless forced", async () => {
      // sp-x: indispensable for card-X (escrowed), a needed member for card-Y (1 of sp-x, sp-y); sp-z: author of card-Z
      await escrowed("card-X", { version: 1, author: "user", indispensable: ["sp-x"], groups: [], order: [] });
      await escrowed("card-Y", { version: 1, author: "user", indispensable: ["user"], groups: [{ name: "sp", members: ["sp-x", "sp-y"], threshold: 1 }], order: [] });
      await svc.setPolicy("card-P", { version: 1, author: "sp-x", indispensable: ["user"], groups: [], order: [] }, "operator"); // not escrowed yet
      const deps = await svc.arbitratorDependents("sp-x");
      assert.deepEqual(
        deps.items.map((d) => [d.cardId, d.as, d.escrowId !== undefined, d.satisfiableWithout]),
        [
          ["card-P", ["author"], false, false],
          ["card-X", ["indispensable"], true, false],
          ["card-Y", ["group:sp"], true, true],
        ],
      );
      const p1 = await svc.arbitratorDependents("sp-x", { limit: 2 });
      const p2 = await svc.arbitratorDependents("sp-x", { limit: 2, after: p1.next });
      assert.deepEqual([p1.items.length, p2.items.map((d) => d.cardId), p2.next], [2, ["card-Y"], undefined]);

      const ridX = (await svc.fileRequest({ cardId: "card-X", kind: "key-lost", requester: "user" }, "operator")).requestId;
      const ridY = (await svc.fileRequest({ cardId: "card-Y", kind: "key-lost", requester: "user" }, "operator")).requestId;
      const since = (await audit(db)).at(-1)!.seq;
      await assert.rejects(svc.deregisterArbitrator("sp-x", { reason: "left the company" }, "operator"), refusedAs("arbitrator_in_use", /card-X/));
      assert.equal((await svc.arbitrator("sp-x"))?.status, "active", "nothing changed");
      const d = await svc.deregisterArbitrator("sp-x", { reason: "key compromised", force: true }, "operator");
      assert.deepEqual([d.arbitrator.status, d.arbitrator.deregistered?.reason, d.strandedCount, d.strandedCards], ["deregistered", "key compromised", 1, ["card-X"]]);
      assert.deepEqual(
        d.endedRequests.map((e) => e.requestId),
        [ridX],
      );
      assert.match(d.endedRequests[0].message, /arbitrator sp-x was deregistered: indispensable party sp-x refused/);
      const x = await svc.status(ridX);
      assert.deepEqual([x.status, x.statusDetail], ["ended", d.endedRequests[0].message]);
      assert.equal((await svc.status(ridY)).status, "open", "card-Y can still be met by sp-y");
      await assert.rejects(svc.deregisterArbitrator("sp-x", { reason: "again" }, "operator"), refusedAs("arbitrator_disabled"));

      // no decision, no list, no rotation, no new policy, escrow or request depending on it; nothing pending for it
      const y = await svc.status(ridY);
      await decide(svc, "user", ridY);
      const late = signApproval(y.request, (await svc.status(ridY)).chainHead, { arbitrator: "sp-x", decision: "approve" }, side.get("sp-x")!.signing);
      await assert.rejects(svc.approve(ridY, late, []), refusedAs("arbitrator_disabled"));
      assert.deepEqual(await svc.pendingFor("sp-x"), []);
      const sx = (await svc.arbitrator("sp-x"))!;
      await assert.rejects(
        svc.rotateArbitratorKeys(
          "sp-x",
          signKeyRotation({ arbitrator: "sp-x", keyVersion: 1, signingPublicKey: sx.signingPublicKey, encryptionPublicKey: sx.encryptionPublicKey }, side.get("sp-x")!.signing, {
            encryptionPublicKey: p256().publicKey,
          }),
          "operator",
        ),
        refusedAs("arbitrator_disabled"),
      );
      await assert.rejects(
        svc.setPolicy("card-new", { version: 1, author: "sp-x", indispensable: ["user"], groups: [{ name: "g", members: ["sp-y", "sp-x"], threshold: 1 }], order: [] }, "operator"),
        (e: unknown) =>
          e instanceof PolicyValidationError && JSON.stringify(e.issues.map((i) => i.path)) === JSON.stringify(["/author", "/groups/0/members/1"]) && /sp-x is deregistered/.test(e.message),
      );
      await assert.rejects(
        escrowed("card-P2", { version: 1, author: "user", indispensable: ["user"], groups: [], order: [] }).then(() =>
          svc.fileRequest({ cardId: "card-X", kind: "key-lost", requester: "user" }, "operator"),
        ),
        refusedAs("arbitrator_disabled", /re-split/),
      );
      // card-P's policy was set before: its escrow is refused, naming it
      await assert.rejects(
        (async () => {
          const label = `keygen.lifecycle-p-${++n}`;
          await custody.generateKeyPair(label, "P256", { extractable: "wrapped", ephemeral: true });
          return svc.escrow(
            {
              cardId: "card-P",
              applicantId: "u",
              keyLabel: label,
              alg: "P256",
              slot: "9c",
              spki: await custody.publicKey(label),
              certificate: new Uint8Array(8),
              serial: "1",
              keySet: { kind: "derived", master: "m", cardId: "0a", kvn: 1 },
              deviceSecretId: new Uint8Array(randomBytes(16)),
            },
            "keygen-device",
          );
        })(),
        refusedAs("arbitrator_disabled"),
      );
      // its recorded key history stays; its id is not reused
      await assert.rejects(svc.registerArbitrator({ id: "sp-x", signingPublicKey: p256().publicKey, encryptionPublicKey: p256().publicKey }, "operator"), refusedAs("arbitrator_exists"));
      // the card-Y request goes on without it
      const done = await decide(svc, "sp-y", ridY);
      assert.equal(done.status, "satisfied");
      const entries = await audit(db, since);
      assert.deepEqual(
        entries.filter((e) => e.action === "recovery.arbitrator.deregister.refuse").map((e) => e.details.check),
        ["arbitrator_in_use", "arbitrator_disabled"],
      );
      const dereg = entries.find((e) => e.action === "recovery.arbitrator.deregister");
      assert.deepEqual([dereg?.details.force, dereg?.details.strandedCount, dereg?.details.endedRequests], [true, 1, [ridX]]);
      assert.ok(entries.some((e) => e.action === "recovery.request.end" && e.subject === ridX && (e.details.condition as { kind: string }).kind === "arbitrator_deregistered"));
      assert.ok(entries.some((e) => e.action === "recovery.approval.refuse" && e.details.check === "arbitrator_disabled"));
      const escrowX = (await svc.escrowOf("card-X"))!;
      assert.deepEqual(
        escrowX.shares.map((s) => [s.arbitrator, s.holderDeregistered]),
        [["sp-x", true]],
      );
    });

    await t.test("pagination: requests, pending items and arbitrators in a stable order, a limit, a cursor; bad limits and cursors refused", async () => {
      const cards = ["card-L1", "card-L2", "card-L3", "card-L4", "card-L5"];
      const filed: string[] = [];
      for (const c of cards) {
        await escrowed(c, POLICY);
        now += 1000;
        filed.push((await svc.fileRequest({ cardId: c, kind: "key-lost", requester: "user" }, "operator")).requestId);
      }
      const newestFirst = [...filed].reverse();
      const seen: string[] = [];
      const pages: number[] = [];
      for (let after: string | undefined; ;) {
        const p = await svc.listPage({ status: "open", limit: 2, after });
        seen.push(...p.items.map((v) => v.requestId));
        pages.push(p.items.length);
        if (!p.next) break;
        after = p.next;
      }
      assert.deepEqual(
        seen.filter((id) => filed.includes(id)),
        newestFirst,
        "every request once, newest first",
      );
      assert.equal(new Set(seen).size, seen.length, "no request twice");
      assert.ok(pages.slice(0, -1).every((k) => k === 2));
      const all = await svc.list({ status: "open" });
      assert.deepEqual(
        all.map((v) => v.requestId),
        seen,
        "list() follows every page",
      );
      // a request filed meanwhile does not shift the pages after the cursor
      const first = await svc.listPage({ status: "open", limit: 2 });
      await escrowed("card-L6", POLICY);
      now += 1000;
      const latest = (await svc.fileRequest({ cardId: "card-L6", kind: "key-lost", requester: "user" }, "operator")).requestId;
      const second = await svc.listPage({ status: "open", limit: 2, after: first.next });
      assert.deepEqual(
        second.items.map((v) => v.requestId),
        seen.slice(2, 4),
      );
      assert.equal((await svc.listPage({ status: "open", limit: 1 })).items[0].requestId, latest);

      // pending items of mgr-c: one per open request of the main policy, across pages
      const pend: string[] = [];
      for (let after: string | undefined; ;) {
        const p = await svc.pendingPage("mgr-c", { limit: 2, after });
        pend.push(...p.items.map((i) => i.request.requestId));
        if (!p.next) break;
        after = p.next;
      }
      assert.deepEqual(
        pend,
        (await svc.pendingFor("mgr-c")).map((i) => i.request.requestId),
      );
      assert.ok([latest, ...newestFirst].every((id) => pend.includes(id)));
      assert.deepEqual(pend.slice(0, 6), [latest, ...newestFirst]);

      const arbs = await svc.arbitratorsPage({ limit: 3 });
      const rest = await svc.arbitratorsPage({ after: arbs.next });
      assert.deepEqual(
        [...arbs.items, ...rest.items].map((a) => a.id),
        [...IDS].sort(),
      );
      assert.equal(rest.next, undefined);
      for (const bad of [0, 1001, 1.5]) await assert.rejects(svc.listPage({ limit: bad }), refusedAs("invalid_argument", /limit must be 1\.\.1000/));
      await assert.rejects(svc.pendingPage("mgr-c", { limit: 101 }), refusedAs("invalid_argument", /1\.\.100/));
      for (const bad of ["x", "not a cursor!", arbs.next!, Buffer.from('["requests","x","y"]').toString("base64url")])
        await assert.rejects(svc.listPage({ after: bad }), refusedAs("invalid_argument", /not a cursor of this list/));
      await assert.rejects(svc.pendingPage("nobody"), refusedAs("not_found"));
      assert.equal((await verifyAuditLog(db)).ok, true);
    });
  });
}
