// The issue-4 demo (src/demo/recovery-demo.ts): its result, checked again from what it leaves on disk — the
// system DB, the keystore and the new card's image — and its printed output, in process and through the CLI,
// checked for key material.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes, verify, X509Certificate } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { openCard } from "../src/card/card.ts";
import { SoftwareCustody } from "../src/custody/software.ts";
import { runRecoveryDemo } from "../src/demo/recovery-demo.ts";
import { auditEntries, verifyAuditLog, type AuditEntry } from "../src/store/audit.ts";
import { BackupRepository } from "../src/store/backup-repository.ts";
import type { Db } from "../src/store/db.ts";
import { Store } from "../src/store/store.ts";
import { decipherWithCard } from "../src/protocol/enciphered.ts";
import { PivClient, SLOT } from "../src/protocol/piv/client.ts";
import { execCli, tempDir } from "./helpers.ts";

const root = tempDir("cardkms-recovery-demo-");
const IN_ORDER = ["user", "credit-co", "sp-b", "mgr-a", "mgr-c"];
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/**
 * What in `output` could be key material: PEM private keys, the demo's keystore and card-image keys, and any run
 * of 24+ hex/base64 characters that is not an expected identifier (a UUID row ID, the certificate serial, or
 * plain words such as "issuing-apparatus-managers").
 */
function suspicious(output: string, dir: string, allowed: Set<string>): string[] {
  const text = output.split(dir).join("<dir>");
  const found: string[] = [];
  if (/PRIVATE KEY/.test(text)) found.push("PEM PRIVATE KEY");
  for (const f of ["keystore.key", "card-image.key"]) {
    const secret = readFileSync(join(dir, f), "utf8").trim();
    if (text.toLowerCase().includes(secret.toLowerCase().slice(0, 16))) found.push(`the ${f} value`);
    if (text.includes(Buffer.from(secret, "hex").toString("base64").slice(0, 16))) found.push(`the ${f} value (base64)`);
  }
  for (const run of text.match(/[A-Za-z0-9+/=_-]{24,}/g) ?? []) {
    if (UUID.test(run) || allowed.has(run) || /^[a-z-]+$/.test(run)) continue;
    found.push(run);
  }
  return found;
}

test("issue 4 demo: a destroyed card's key reproduced after the policy's approvals; the backups read on the new card", { timeout: 10 * 60_000 }, async () => {
  const dir = join(root, "in-process");
  const lines: string[] = [];
  const r = await runRecoveryDemo(dir, (l) => lines.push(l));
  const output = lines.join("\n");

  // numbered steps 1-8
  assert.deepEqual(
    lines.filter((l) => /^\d+\. /.test(l)).map((l) => Number(l.split(".")[0])),
    [1, 2, 3, 4, 5, 6, 7, 8],
  );

  // the result
  assert.deepEqual(r.keyGoneFromCustody, { afterIssue: true, afterReproduction: true });
  assert.equal(r.oldCard.decipheredBeforeLoss, true);
  assert.equal(r.oldCard.imageDeleted, true);
  assert.equal(existsSync(r.oldCard.path), false, "the old card's image is gone");
  assert.deepEqual(r.refused, [{ arbitrator: "credit-co", check: "out_of_order", message: r.refused[0]?.message }]);
  assert.match(r.refused[0].message, /credit-co may approve only after user/);
  assert.deepEqual(r.approvers, IN_ORDER);
  assert.deepEqual(r.approverList, { author: "list-author", approvers: IN_ORDER });
  assert.equal(r.newCard.deviceReplaced, true);
  assert.equal(r.newCard.deviceGeneration, 2);
  assert.notEqual(r.newCard.id, r.oldCard.id);
  assert.equal(r.newCard.holdsOriginalCertificate, true);
  // issue 9: the approved request, reproduced into another user's card, is refused by name
  assert.equal(r.redirect.check, "target_not_approved");
  assert.notEqual(r.redirect.cardId, r.newCard.id);
  assert.match(r.redirect.message, new RegExp(`card ${r.redirect.cardId} is not the card the request names \\(${r.newCard.id}\\)`));
  assert.equal(r.signatureVerified, true);
  const ids = r.records.map((x) => x.objectId);
  assert.equal(ids.length, 3);
  assert.deepEqual(
    r.backedUp,
    ids.map((objectId) => ({ objectId, version: 1 })),
  );
  assert.deepEqual(
    r.restored.map((x) => x.objectId),
    ids,
  );
  assert.deepEqual(
    r.readable,
    ids.map((objectId) => ({ objectId, byteExact: true })),
  );
  assert.equal(r.audit.ok, true);
  assert.deepEqual(r.audit.refusals, [{ arbitrator: "credit-co", check: "out_of_order" }]);
  assert.deepEqual(
    r.audit.decisions,
    IN_ORDER.map((arbitrator) => ({ arbitrator, decision: "approve" })),
  );
  assert.deepEqual(r.audit.listed, IN_ORDER);
  assert.deepEqual(r.audit.reproduced, IN_ORDER);

  // Checked again from what the demo left behind, not from its word.
  const cert = new X509Certificate(r.certificate.pem);
  const spki = new Uint8Array(cert.publicKey.export({ format: "der", type: "spki" }));
  const store = await Store.open(join(dir, "cardkms.db"));
  try {
    const db = store.db as Db;
    assert.equal((await verifyAuditLog(db)).ok, true, "the audit chain verifies");
    const entries: AuditEntry[] = [];
    for await (const e of auditEntries(db)) entries.push(e);
    const reproduce = entries.filter((e) => e.action === "recovery.reproduce");
    assert.equal(reproduce.length, 1);
    assert.deepEqual(reproduce[0].details.approvers, IN_ORDER, "the audit log lists the approvers in order");
    assert.equal(reproduce[0].details.author, "list-author");
    assert.equal(reproduce[0].details.kind, "card-destroyed");
    assert.equal(entries.filter((e) => e.action === "recovery.device.replace").length, 1);
    assert.equal(reproduce[0].details.targetCardId, r.newCard.id, "the key went into the approved card");
    assert.deepEqual(
      entries.filter((e) => e.action === "recovery.reproduce.refuse").map((e) => [e.details.check, e.details.presentedCard]),
      [["target_not_approved", r.redirect.cardId]],
    );

    // The new card, powered up from its image: it holds the original certificate, signs under it, and opens
    // every envelope the server's backup repository holds, to the plaintext digests the demo recorded.
    const imageKey = Buffer.from(readFileSync(join(dir, "card-image.key"), "utf8").trim(), "hex");
    const card = openCard(r.newCard.path, imageKey);
    try {
      const piv = new PivClient((a) => card.transmit(a));
      await piv.select();
      assert.deepEqual(await piv.readCertificate(SLOT.keyManagement), new Uint8Array(cert.raw));
      await piv.verifyPin("123456");
      const msg = randomBytes(40);
      const { signature, hash } = await piv.sign(SLOT.keyManagement, "P256", msg);
      assert.ok(verify(hash, msg, { key: cert.publicKey, dsaEncoding: "der" }, signature), "the new card signs under the original certificate");
      const backups = await new BackupRepository(db).latestAll(r.userId);
      assert.deepEqual(backups.map((b) => b.objectId).sort(), [...ids].sort());
      for (const b of backups) {
        const plain = await decipherWithCard(piv, SLOT.keyManagement, b.envelope, { aad: Buffer.from(`${r.userId}/${b.objectId}`) });
        assert.equal(createHash("sha256").update(plain).digest("hex"), r.records.find((x) => x.objectId === b.objectId)?.sha256, b.objectId);
      }
    } finally {
      card.close();
    }
  } finally {
    await store.close();
  }

  // No key pair in the keystore is the card's key: it lives in the card only.
  const custody = await SoftwareCustody.open({ path: join(dir, "keystore.json"), key: readFileSync(join(dir, "keystore.key"), "utf8").trim() });
  try {
    for (const k of await custody.listKeys()) {
      assert.ok(!k.label.startsWith("keygen.") && !k.label.startsWith("recovery.reproduce."), `${k.label} left in custody`);
      if (k.kind === "keyPair") assert.notDeepEqual(await custody.publicKey(k.label), spki, `${k.label} is the card's key pair`);
    }
  } finally {
    await custody.close();
  }

  // The printed output names IDs and checks, never key material.
  assert.match(output, /REFUSED: out_of_order/);
  assert.match(output, /REFUSED: target_not_approved/);
  assert.match(output, /VERIFIES against the ORIGINAL certificate/);
  assert.deepEqual(suspicious(output, dir, new Set([r.certificate.serial])), []);
});

test("the leak check above finds key material when it is printed", () => {
  const dir = join(root, "leak-check");
  mkdirSync(dir);
  const ks = randomBytes(32).toString("hex");
  writeFileSync(join(dir, "keystore.key"), ks + "\n");
  writeFileSync(join(dir, "card-image.key"), randomBytes(32).toString("hex") + "\n");
  assert.notDeepEqual(suspicious(`keystore ${ks}`, dir, new Set()), []);
  assert.notDeepEqual(suspicious(`share ${randomBytes(24).toString("base64")}`, dir, new Set()), []);
  assert.notDeepEqual(suspicious("-----BEGIN PRIVATE KEY-----", dir, new Set()), []);
  assert.deepEqual(suspicious("request 01a1fe73-acf2-7007-8afa-bb118aea2a3c, 2 more of issuing-apparatus-managers", dir, new Set()), []);
});

test("cardkms demo --recovery: the same demo through the CLI, OK and exit 0, no key material printed", { timeout: 10 * 60_000 }, async () => {
  const dir = join(root, "cli");
  const run = (args: string[]) => execCli(args);
  const out = await run(["demo", "--recovery", "--dir", dir]);
  assert.equal(out.code, 0, out.stderr);
  assert.match(out.stdout, /^1\. /);
  assert.match(out.stdout, /\nOK: card [0-9a-f]{16} destroyed; after user, credit-co, sp-b, mgr-a, mgr-c approved/);
  const serial = /serial ([0-9a-f]+)/.exec(out.stdout)?.[1] ?? "";
  assert.deepEqual(suspicious(out.stdout + out.stderr, dir, new Set([serial])), []);
  const json = await run(["demo", "--recovery", "--dir", dir, "--json"]);
  assert.equal(json.code, 0, json.stderr);
  const r = JSON.parse(json.stdout) as { ok: boolean; approvers: string[] };
  assert.equal(r.ok, true);
  assert.deepEqual(r.approvers, IN_ORDER);
  const conflict = await run(["demo", "--recovery", "--pcsc", "--dir", dir]);
  assert.equal(conflict.code, 2);
  assert.match(conflict.stderr, /--recovery.*cannot be used with.*--pcsc/);
});
