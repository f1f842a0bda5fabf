// RecoveryService without cards (test/recovery-flows.test.ts runs the flows with virtual cards): custody keys,
// arbitrators, policies, escrow records (nothing secret in the DB), requests, the checks on approvals, releases
// and approver lists, and decisions racing for the same request. SQLite and PostgreSQL (an unreachable
// PostgreSQL FAILS the suite); software custody.

import assert from "node:assert/strict";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { sql } from "kysely";
import { CustodyError, type KeyCustody } from "../custody/custody.ts";
import { SoftwareCustody } from "../custody/software.ts";
import { auditEntries, type AuditEntry } from "../store/audit.ts";
import type { Db } from "../store/db.ts";
import { testEngines, type TestDatabase } from "../../test/support/store-testing.ts";
import { requestDigest, signApproval, signApproverList, type Approval } from "./approvals.ts";
import { PolicyValidationError } from "./errors.ts";
import type { ReproductionPolicy } from "./policy.ts";
import { openShare } from "./shares.ts";
import { escrowWithoutCard, makeArbitrators, registerCardRecord } from "../../test/support/recovery-testing.ts";
import { ESCROW_KEK_LABEL, REPRODUCTION_DEVICE_KEY_LABEL, RecoveryService, isRecoveryRefusal, releaseShare, releaseSharesFor, type RequestView, type ShareRelease } from "./service.ts";
import { recoveryStoreOf } from "../store/recovery-store.ts";

const IDS = ["user", "credit-co", "sp-a", "sp-b", "mgr-a", "mgr-b", "mgr-c"];
const { registry: arbs, keys: ARB } = makeArbitrators(IDS);

const POLICY: ReproductionPolicy = {
  version: 1,
  author: "mgr-a",
  indispensable: ["user", "credit-co"],
  groups: [
    { name: "service-providers", members: ["sp-a", "sp-b"], threshold: 1 },
    { name: "managers", members: ["mgr-a", "mgr-b", "mgr-c"], threshold: 2 },
  ],
  order: [{ before: "user", after: "credit-co" }],
};

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

/** Every byte of every row of every recovery table, and of the audit log. */
async function everyStoredByte(db: Db): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (const table of [
    "recovery_arbitrators",
    "recovery_policies",
    "recovery_escrows",
    "recovery_share_envelopes",
    "recovery_devices",
    "recovery_requests",
    "recovery_approvals",
    "recovery_releases",
    "audit_log",
  ]) {
    const rows = (await sql.raw(`select * from ${table}`).execute(db)).rows as Record<string, unknown>[];
    for (const r of rows) for (const v of Object.values(r)) parts.push(Buffer.isBuffer(v) || v instanceof Uint8Array ? Buffer.from(v) : Buffer.from(String(v)));
  }
  return Buffer.concat(parts);
}

/** `secret` appears in `haystack` in raw, hex or base64 form. */
const contains = (haystack: Buffer, secret: Uint8Array): boolean => {
  const b = Buffer.from(secret);
  return [b, Buffer.from(b.toString("hex")), Buffer.from(b.toString("base64").slice(0, 40)), Buffer.from(b.toString("base64url").slice(0, 40))].some((f) => haystack.includes(f));
};

for (const engine of testEngines()) {
  describe(`RecoveryService on ${engine.name}`, () => {
    let tdb: TestDatabase;
    let db: Db;
    let custody: KeyCustody;
    let svc: RecoveryService;
    let dir: string;
    let keystore: { path: string; key: string };
    let n = 0;

    before(async () => {
      tdb = await engine.create();
      db = tdb.db;
      dir = mkdtempSync(join(tmpdir(), "cardkms-recsvc-"));
      keystore = { path: join(dir, "keystore.json"), key: randomBytes(32).toString("hex") };
      custody = await SoftwareCustody.open(keystore);
      svc = await RecoveryService.open({ store: recoveryStoreOf(db), custody });
      for (const id of IDS) {
        const a = arbs.require(id);
        await svc.registerArbitrator({ id, roles: ["test"], signingPublicKey: a.signingKey, encryptionPublicKey: a.encryptionKey }, "operator");
      }
    });
    after(async () => {
      await custody?.close();
      await tdb?.drop();
      rmSync(dir, { recursive: true, force: true });
    });

    /** A card record with a policy and an escrowed key pair (generated in custody), as the device would make it. */
    async function escrowed(policy: ReproductionPolicy = POLICY): Promise<{ cardId: string; keyLabel: string; secretId: Uint8Array; escrowId: string }> {
      const cardId = `card-${++n}`;
      const keyLabel = `keygen.test-${n}`;
      const { escrowId, secretId } = await escrowWithoutCard(svc, custody, { cardId, policy, keyLabel, keySetCardId: "0102030405060708" });
      return { cardId, keyLabel, secretId, escrowId };
    }

    async function prepared(id: string, requestId: string, decision: "approve" | "refuse" = "approve"): Promise<{ approval: Approval; releases: ShareRelease[]; view: RequestView }> {
      const view = await svc.status(requestId);
      const approval = signApproval(view.request, view.chainHead, { arbitrator: id, decision, reason: decision === "refuse" ? "no" : undefined }, ARB.get(id)!.signing);
      const envelopes = await svc.shareEnvelopes(id, { cardId: view.cardId });
      const releases = releaseSharesFor(view.request, envelopes, (e) => openShare(e, ARB.get(id)!.encryption, { escrowId: view.escrowId, cardId: view.cardId }), svc.deviceKey().spki);
      return { approval, releases, view };
    }

    const approveAs = async (id: string, requestId: string) => {
      const p = await prepared(id, requestId);
      return svc.approve(requestId, p.approval, p.releases);
    };

    test("custody keys: the escrow KEK wraps only and never leaves; the device key is P-256, never extractable, and does ECDH", async () => {
      const kek = await custody.keyInfo(ESCROW_KEK_LABEL);
      assert.deepEqual([kek?.kind, kek?.bits, kek?.usage, kek?.extractable], ["secret", 256, ["wrap"], "never"]);
      const dev = await custody.keyInfo(REPRODUCTION_DEVICE_KEY_LABEL);
      assert.deepEqual([dev?.kind, dev?.type, dev?.extractable], ["keyPair", "P256", "never"]);
      await assert.rejects(custody.wrapPrivateKey(REPRODUCTION_DEVICE_KEY_LABEL, { key: ESCROW_KEK_LABEL }), (e: unknown) => e instanceof CustodyError);
      const eph = generateKeyPairSync("ec", { namedCurve: "P-256" });
      const z = await custody.decipher(REPRODUCTION_DEVICE_KEY_LABEL, new Uint8Array(eph.publicKey.export({ format: "der", type: "spki" })));
      assert.equal(z.length, 32);
      assert.deepEqual(
        (await custody.listKeys()).map((k) => k.label).filter((l) => l.startsWith(`${REPRODUCTION_DEVICE_KEY_LABEL}.gen.`)),
        [],
        "the generation key is gone",
      );
      // a second service on the same custody (a restart) keeps both keys
      const again = await RecoveryService.open({ store: recoveryStoreOf(db), custody });
      assert.deepEqual(again.deviceKey(), svc.deviceKey());
    });

    test("arbitrators: registered with P-256 keys, refused by name otherwise, audited", async () => {
      const k = () => generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey;
      const v = await svc.registerArbitrator({ id: "sp-z", roles: ["service provider"], displayName: "Provider Z", signingPublicKey: k(), encryptionPublicKey: k() }, "operator");
      assert.equal(v.id, "sp-z");
      assert.equal(v.encryptionKeyId.length, 64);
      assert.deepEqual((await svc.arbitrator("sp-z"))?.roles, ["service provider"]);
      await assert.rejects(svc.registerArbitrator({ id: "sp-z", signingPublicKey: k(), encryptionPublicKey: k() }, "operator"), refusedAs("arbitrator_exists"));
      await assert.rejects(svc.registerArbitrator({ id: "bad id", signingPublicKey: k(), encryptionPublicKey: k() }, "operator"), refusedAs("invalid_argument"));
      const rsa = generateKeyPairSync("rsa", { modulusLength: 1024 }).publicKey;
      await assert.rejects(
        svc.registerArbitrator({ id: "sp-rsa", signingPublicKey: rsa, encryptionPublicKey: k() }, "operator"),
        (e: unknown) => refusedAs("invalid_argument")(e) && /P-256/.test((e as Error).message),
      );
      await assert.rejects(svc.registerArbitrator({ id: "sp-y", roles: ["a\u0000b"], signingPublicKey: k(), encryptionPublicKey: k() }, "operator"), refusedAs("invalid_argument"));
      const entries = (await audit(db)).filter((e) => e.action === "recovery.arbitrator.register" && e.subject === "sp-z");
      assert.equal(entries.length, 1);
    });

    test("policies: validated with pointers to each problem; fixed once the key is escrowed", async () => {
      await assert.rejects(svc.setPolicy("card-p", "{not json", "operator"), (e: unknown) => e instanceof PolicyValidationError && /not JSON/.test(e.message));
      await assert.rejects(
        svc.setPolicy("card-p", { version: 1, author: "nobody", indispensable: ["user", "user"], groups: [{ name: "g", members: ["sp-a"], threshold: 2 }], order: [] }, "operator"),
        (e: unknown) => {
          assert.ok(e instanceof PolicyValidationError);
          assert.deepEqual(
            e.issues.map((i) => i.path),
            ["/author", "/indispensable/1", "/groups/0/threshold"],
          );
          return true;
        },
      );
      await assert.rejects(svc.setPolicy("bad card id", POLICY, "operator"), refusedAs("invalid_argument"));
      const v = await svc.setPolicy("card-p", JSON.stringify(POLICY), "operator");
      assert.deepEqual(v.policy, POLICY);
      assert.deepEqual((await svc.policy("card-p"))?.digest, v.digest);
    });

    test("escrow: E only sealed under K, shares only sealed to arbitrators, the secret ID only as a digest; one per card", async () => {
      await assert.rejects(
        svc.escrow(
          {
            cardId: "card-none",
            applicantId: "u",
            keyLabel: "x",
            alg: "P256",
            slot: "9c",
            spki: new Uint8Array(1),
            certificate: new Uint8Array(1),
            serial: "1",
            keySet: { kind: "derived", master: "m", cardId: "01", kvn: 1 },
            deviceSecretId: new Uint8Array(16),
          },
          "op",
        ),
        refusedAs("no_policy"),
      );
      const e = await escrowed();
      await assert.rejects(svc.setPolicy(e.cardId, POLICY, "operator"), refusedAs("escrow_exists"), "the policy is fixed with the escrow");
      const view = await svc.escrowOf(e.cardId);
      assert.equal(view?.escrowId, e.escrowId);
      assert.equal(view?.shares.length, 2 + 2 + 3);
      // E as custody makes it (AES-KWP is deterministic): nowhere in the DB, nor the key's secret ID
      const E = await custody.wrapPrivateKey(e.keyLabel, { key: ESCROW_KEK_LABEL });
      const stored = await everyStoredByte(db);
      assert.equal(contains(stored, E), false, "E is not stored in clear");
      assert.equal(contains(stored, e.secretId), false, "the card's secret ID is not stored");
      // each arbitrator gets its own envelopes, which only its key opens
      const env = await svc.shareEnvelopes("mgr-b", { cardId: e.cardId });
      assert.deepEqual(
        env.map((x) => x.header.shareId),
        ["group/1/mgr-b"],
      );
      assert.throws(() => openShare(env[0], ARB.get("mgr-c")!.encryption, { escrowId: e.escrowId, cardId: e.cardId }), /share_decrypt_failed/);
      // one escrow per card; a physical card serves one card record
      await assert.rejects(
        svc.escrow(
          {
            cardId: e.cardId,
            applicantId: "u",
            keyLabel: e.keyLabel,
            alg: "P256",
            slot: "9c",
            spki: await custody.publicKey(e.keyLabel),
            certificate: new Uint8Array(1),
            serial: "1",
            keySet: { kind: "derived", master: "m", cardId: "01", kvn: 1 },
            deviceSecretId: new Uint8Array(16),
          },
          "op",
        ),
        refusedAs("escrow_exists"),
      );
      await svc.setPolicy("card-other", POLICY, "operator");
      await assert.rejects(
        svc.escrow(
          {
            cardId: "card-other",
            applicantId: "u",
            keyLabel: e.keyLabel,
            alg: "P256",
            slot: "9c",
            spki: await custody.publicKey(e.keyLabel),
            certificate: new Uint8Array(1),
            serial: "1",
            keySet: { kind: "derived", master: "m", cardId: "01", kvn: 1 },
            deviceSecretId: e.secretId,
          },
          "op",
        ),
        refusedAs("device_in_use"),
      );
      assert.equal(await svc.escrowOf("card-other"), undefined, "rolled back");
      // an escrow abandoned (the card write failed) is gone, and audited
      await svc.abandonEscrow(e.escrowId, "card write failed", "keygen-device");
      assert.equal(await svc.escrowOf(e.cardId), undefined);
      assert.deepEqual(await svc.shareEnvelopes("mgr-b", { cardId: e.cardId }), []);
      assert.ok((await audit(db)).some((x) => x.action === "recovery.escrow.abandon" && x.details.escrowId === e.escrowId));
    });

    test("requests: filed for an escrowed card only, one unfinished at a time, withdrawn by an operator", async () => {
      await assert.rejects(svc.fileRequest({ cardId: "card-p", kind: "key-lost", requester: "user" }, "operator"), refusedAs("no_escrow"));
      const e = await escrowed();
      await assert.rejects(svc.fileRequest({ cardId: e.cardId, kind: "stolen" as "key-lost", requester: "user" }, "operator"), refusedAs("invalid_argument"));
      const newCard = `new-${e.cardId}`;
      await registerCardRecord(db, { cardId: newCard, userId: "user-1" });
      const r = await svc.fileRequest({ cardId: e.cardId, kind: "card-destroyed", requester: "user", reason: "dropped", replacementCardId: newCard }, "operator");
      assert.equal(r.status, "open");
      assert.equal(r.request.kind, "card-destroyed", "the kind is part of what arbitrators sign");
      assert.deepEqual(r.request.target, { cardId: newCard, userId: "user-1" }, "and so is the card that will receive the key");
      assert.equal(r.evaluation.status, "pending");
      await assert.rejects(svc.fileRequest({ cardId: e.cardId, kind: "key-lost", requester: "user" }, "operator"), refusedAs("request_unfinished"));
      assert.deepEqual(
        (await svc.list({ cardId: e.cardId })).map((x) => x.requestId),
        [r.requestId],
      );
      const w = await svc.withdraw(r.requestId, "filed by mistake", "operator");
      assert.equal(w.status, "withdrawn");
      await assert.rejects(svc.withdraw(r.requestId, "again", "operator"), refusedAs("request_closed"));
      const p = await prepared("user", r.requestId);
      await assert.rejects(svc.approve(r.requestId, p.approval, p.releases), refusedAs("request_closed"));
      await svc.fileRequest({ cardId: e.cardId, kind: "key-lost", requester: "user" }, "operator");
    });

    test("issue 9: a card-destroyed request names its replacement card, a card of the same user fit to receive the key; anything else refused by name and audited", async () => {
      const e = await escrowed();
      const [aliceNew, bob, aliceRetired, nobody] = [`alice-new-${n}`, `bob-${n}`, `alice-retired-${n}`, `nobody-${n}`];
      await registerCardRecord(db, { cardId: aliceNew, userId: "user-1" });
      await registerCardRecord(db, { cardId: bob, userId: "user-bob" });
      await registerCardRecord(db, { cardId: aliceRetired, userId: "user-1", status: "retired" });
      await registerCardRecord(db, { cardId: e.cardId, userId: "user-1" });
      const since = (await audit(db)).at(-1)!.seq;
      const file = (kind: "key-lost" | "card-destroyed", replacementCardId?: string) =>
        svc.fileRequest({ cardId: e.cardId, kind, requester: "user", ...(replacementCardId !== undefined ? { replacementCardId } : {}) }, "operator");
      await assert.rejects(file("card-destroyed"), refusedAs("invalid_argument"), "no replacement card named");
      await assert.rejects(file("key-lost", aliceNew), refusedAs("invalid_argument"), "key-lost names none: the registered card comes back");
      await assert.rejects(file("card-destroyed", bob), refusedAs("target_other_user"), "another user's card");
      await assert.rejects(file("card-destroyed", nobody), refusedAs("target_unfit"), "no such card record");
      await assert.rejects(file("card-destroyed", aliceRetired), refusedAs("target_unfit"), "a retired card");
      await assert.rejects(file("card-destroyed", e.cardId), refusedAs("target_unfit"), "the destroyed card's own record");
      // another escrow's registered device, and a card whose slot holds another escrowed key
      const other = await escrowed();
      await registerCardRecord(db, { cardId: other.cardId, userId: "user-1" });
      await assert.rejects(file("card-destroyed", other.cardId), refusedAs("target_unfit"), "the registered device of another escrow");
      assert.deepEqual(await svc.list({ cardId: e.cardId }), [], "nothing was filed");
      const refusals = (await audit(db, since)).filter((x) => x.action === "recovery.request.file.refuse");
      assert.deepEqual(
        refusals.map((x) => [x.subject, x.details.check]),
        [
          [e.cardId, "invalid_argument"],
          [e.cardId, "invalid_argument"],
          [e.cardId, "target_other_user"],
          [e.cardId, "target_unfit"],
          [e.cardId, "target_unfit"],
          [e.cardId, "target_unfit"],
          [e.cardId, "target_unfit"],
        ],
      );
      // the approvals cover the target: the same request naming another card is another request for the chain
      const r = await file("card-destroyed", aliceNew);
      const user = await prepared("user", r.requestId);
      assert.equal(user.approval.requestDigest, r.requestDigest);
      const redirected = { ...r.request, target: { cardId: bob, userId: "user-bob" } };
      assert.notEqual(requestDigest(redirected), r.requestDigest, "a request naming another card has another digest");
      const forBob = signApproval(redirected, requestDigest(redirected), { arbitrator: "user", decision: "approve" }, ARB.get("user")!.signing);
      await assert.rejects(svc.approve(r.requestId, forBob, user.releases), refusedAs("replayed_from_other_request"), "an approval made for another target does not count");
      await svc.withdraw(r.requestId, "test over", "operator");
      // key-lost names the registered device's card record
      const k = await file("key-lost");
      assert.deepEqual(k.request.target, { cardId: e.cardId, userId: "user-1" });
      await svc.withdraw(k.requestId, "test over", "operator");
    });

    test("decisions: threshold unreachable ends the request; releases and lists are checked by name and audited", async () => {
      const e = await escrowed();
      const other = await escrowed();
      const rid = (await svc.fileRequest({ cardId: e.cardId, kind: "key-lost", requester: "user" }, "operator")).requestId;
      const rOther = (await svc.fileRequest({ cardId: other.cardId, kind: "key-lost", requester: "user" }, "operator")).requestId;
      const since = (await audit(db)).at(-1)!.seq;

      const user = await prepared("user", rid);
      await assert.rejects(svc.refuse(rid, user.approval), refusedAs("invalid_argument"), "an approval is not a refusal");
      // released to another device key
      const elsewhere = generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey.export({ format: "der", type: "spki" });
      const env = await svc.shareEnvelopes("user", { cardId: e.cardId });
      const opened = () => openShare(env[0], ARB.get("user")!.encryption, { escrowId: e.escrowId, cardId: e.cardId });
      await assert.rejects(svc.approve(rid, user.approval, [releaseShare({ requestId: rid }, opened(), new Uint8Array(elsewhere))]), refusedAs("share_decrypt_failed"));
      // released for another request
      await assert.rejects(svc.approve(rid, user.approval, [releaseShare({ requestId: rOther }, opened(), svc.deviceKey().spki)]), refusedAs("replayed_from_other_request"));
      // twice the same share
      await assert.rejects(svc.approve(rid, user.approval, [...user.releases, ...user.releases]), refusedAs("share_duplicate"));
      // the sealed box altered: it no longer opens
      const moved = { header: { ...user.releases[0].header, arbitrator: "user" }, box: { ...user.releases[0].box, tag: Buffer.alloc(16).toString("base64") } };
      await assert.rejects(svc.approve(rid, user.approval, [moved]), refusedAs("share_decrypt_failed"));
      // mgr-b's share released with the user's approval
      const mgrB = await prepared("mgr-b", rid);
      await assert.rejects(svc.approve(rid, user.approval, [...user.releases, ...mgrB.releases]), refusedAs("share_wrong_arbitrator"));
      const refusals = (await audit(db, since)).filter((x) => x.action === "recovery.approval.refuse").map((x) => x.details.check);
      assert.deepEqual(refusals, ["share_decrypt_failed", "replayed_from_other_request", "share_duplicate", "share_decrypt_failed", "share_wrong_arbitrator"]);
      assert.equal((await svc.status(rid)).approvals.length, 0);

      await svc.approve(rid, user.approval, user.releases);
      // the list of approvers before the policy is met, and one not signed by the author
      const early = signApproverList((await svc.status(rid)).request, (await svc.status(rid)).approvals, "mgr-a", ARB.get("mgr-a")!.signing);
      await assert.rejects(svc.submitApproverList(rid, early), refusedAs("policy_not_satisfied"));
      await approveAs("credit-co", rid);
      await approveAs("sp-a", rid);
      await approveAs("mgr-c", rid);
      const v = await approveAs("mgr-b", rid);
      assert.equal(v.status, "satisfied");
      const notAuthor = signApproverList(v.request, v.approvals, "mgr-b", ARB.get("mgr-b")!.signing);
      await assert.rejects(svc.submitApproverList(rid, notAuthor), refusedAs("forged_signature"));
      const stale = signApproverList(v.request, v.approvals.slice(0, 4), "mgr-a", ARB.get("mgr-a")!.signing);
      await assert.rejects(svc.submitApproverList(rid, stale), refusedAs("broken_chain"));
      assert.ok((await audit(db, since)).some((x) => x.action === "recovery.approvers.refuse" && x.details.check === "forged_signature"));
      const listed = await svc.submitApproverList(rid, signApproverList(v.request, v.approvals, "mgr-a", ARB.get("mgr-a")!.signing));
      assert.deepEqual(listed.approverList?.approvers, ["user", "credit-co", "sp-a", "mgr-c", "mgr-b"]);
      // the chain is closed by the list
      await assert.rejects(approveAs("sp-b", rid), refusedAs("request_closed"));

      // the other card: two of three managers refuse — the managers' threshold can no longer be met
      await svc.refuse(rOther, (await prepared("mgr-a", rOther, "refuse")).approval);
      const ended = await svc.refuse(rOther, (await prepared("mgr-b", rOther, "refuse")).approval);
      assert.equal(ended.status, "ended");
      assert.equal(ended.evaluation.status, "failed");
      assert.match(ended.statusDetail ?? "", /group managers can no longer reach 2 approvals/);
      await assert.rejects(approveAs("user", rOther), refusedAs("request_ended"));
    });

    test("decisions racing for one request: one is recorded, the other refused as a broken chain", async () => {
      const e = await escrowed();
      const rid = (await svc.fileRequest({ cardId: e.cardId, kind: "key-lost", requester: "user" }, "operator")).requestId;
      // both sign after the same head; a second service instance (on PostgreSQL, its own connection pool) races
      const peerDb = engine.name === "postgres" ? tdb.reopen() : db;
      const peer = await RecoveryService.open({ store: recoveryStoreOf(peerDb), custody });
      const a = await prepared("user", rid);
      const b = await prepared("sp-a", rid);
      const results = await Promise.allSettled([svc.approve(rid, a.approval, a.releases), peer.approve(rid, b.approval, b.releases)]);
      assert.equal(results.filter((r) => r.status === "fulfilled").length, 1, "one is recorded");
      const lost = results.find((r) => r.status === "rejected") as PromiseRejectedResult;
      assert.ok(refusedAs("broken_chain")(lost.reason));
      const chain = (await svc.status(rid)).approvals;
      assert.equal(chain.length, 1);
      // the loser signs again after the new head and is accepted
      const again = chain[0].arbitrator === "user" ? await prepared("sp-a", rid) : await prepared("user", rid);
      assert.equal((await svc.approve(rid, again.approval, again.releases)).approvals.length, 2);
    });
  });
}
