// The user's side of backup and restore (seed 001 FIG. 12, S10 / S12): the terminal's store and the card's own
// data object keep envelopes only; backup sends them to the back-up device (the system DB's BackupRepository)
// as versions; restore brings the latest back, into the card and/or the terminal, only what the card's key opens.
import { test } from "node:test";
import assert from "node:assert/strict";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createCard, TRANSPORT_KEY_SET } from "../card/card.ts";
import type { ScpKeySet } from "../card/state.ts";
import { CertificationAuthority } from "../ca/authority.ts";
import { MemoryCaRepository } from "../ca/repository.ts";
import { nodeSigner } from "../ca/signer.ts";
import { deliverOnline, personalise, runScript, type CardKeys } from "../issuer/card-scripts.ts";
import { BackupRepository } from "../store/backup-repository.ts";
import { Store } from "../store/store.ts";
import { testEngines } from "../../test/support/store-testing.ts";
import { tempDir } from "../../test/helpers.ts";
import { ApduError, type Transmit } from "../protocol/apdu-client.ts";
import {
  backup,
  EncipheredStoreError as BackupError,
  CARD_OBJECT_TAG,
  CardEncipheredStore,
  decodeCardContainer,
  encodeCardContainer,
  preferCard,
  restore,
  TerminalEncipheredStore,
  type CardObjectWriter,
} from "./backup.ts";
import { decipherWithCard, encipherForCard, recipientOf } from "../protocol/enciphered.ts";
import { PIV_AID, PivClient, putDataCommand, SLOT } from "../protocol/piv/client.ts";

const dir = tempDir("cardkms-backup-");
const PIN = "123456";
let n = 0;

const ca = CertificationAuthority.createRoot({
  signer: nodeSigner(generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey),
  repository: new MemoryCaRepository(),
  subject: { commonName: "backup test CA" },
  validityDays: 30,
});

/** The issuer's writer: PUT DATA inside an SCP03 session on the card's key set (the only way the card takes it). */
function issuerWriter(transmit: Transmit, keys: CardKeys): CardObjectWriter {
  return async (tag, value) => {
    await runScript(transmit, {
      keys,
      aid: PIV_AID,
      commands: [putDataCommand(tag, value)],
      check: (r) => {
        if (r[0].sw !== 0x9000) throw new ApduError(r[0].sw, "PUT DATA enciphered objects");
      },
    });
  };
}

/** A personalised virtual card with a P-256 key management key and certificate. */
async function card(opts: { capacity?: number } = {}) {
  const vc = createCard(join(dir, `card-${n++}.card`), randomBytes(32), { capacity: opts.capacity });
  const transmit = (a: Uint8Array) => vc.transmit(a);
  const sk: ScpKeySet = { kvn: 1, enc: randomBytes(16).toString("hex"), mac: randomBytes(16).toString("hex"), dek: randomBytes(16).toString("hex") };
  await personalise(transmit, TRANSPORT_KEY_SET, sk);
  const kp = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const cert = (await (await ca).issue({ subject: { commonName: `holder ${n}` }, publicKey: new Uint8Array(kp.publicKey.export({ format: "der", type: "spki" })), profile: "keyManagement" }))
    .certificate;
  await deliverOnline(transmit, sk, { keyRef: SLOT.keyManagement, alg: "P256", pkcs8: new Uint8Array(kp.privateKey.export({ format: "der", type: "pkcs8" })), cert });
  const piv = new PivClient(transmit);
  await piv.select();
  return { vc, transmit, piv, sk, cert, write: issuerWriter(transmit, sk) };
}

const someEnvelope = (label = "x") => encipherForCard(recipientOf(generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey), Buffer.from(`${label} ${randomBytes(8).toString("hex")}`));

test("terminal store: envelopes only, safe names, private files, atomic replace", async () => {
  const s = new TerminalEncipheredStore(join(dir, `terminal-${n++}`));
  const e1 = someEnvelope("one");
  const e2 = someEnvelope("two");
  await s.put([
    { objectId: "notes.txt", envelope: e1 },
    { objectId: "b", envelope: e2 },
  ]);
  assert.deepEqual(
    (await s.list()).map((o) => o.objectId),
    ["b", "notes.txt"],
  );
  assert.deepEqual(await s.get("notes.txt"), e1);
  assert.equal(statSync(join(s.dir, "notes.txt.env")).mode & 0o777, 0o600);
  assert.equal(statSync(s.dir).mode & 0o777, 0o700);
  await s.put([{ objectId: "notes.txt", envelope: e2 }]);
  assert.deepEqual(await s.get("notes.txt"), e2);
  await assert.rejects(s.put([{ objectId: "plain", envelope: Buffer.from("clear text") }]), (e: unknown) => e instanceof BackupError && /only enciphered data/.test(e.message));
  await assert.rejects(
    s.put([
      { objectId: "c", envelope: e1 },
      { objectId: "plain", envelope: Buffer.from("clear text") },
    ]),
    BackupError,
  );
  assert.equal(await s.get("c"), undefined, "a batch with plaintext in it writes nothing");
  for (const bad of ["../x", "a/b", "", ".hidden", "x".repeat(129)]) await assert.rejects(s.put([{ objectId: bad, envelope: e1 }]), /object ID/);
  await s.remove("b");
  assert.equal(await s.get("b"), undefined);
  writeFileSync(join(s.dir, "stray.tmp"), "ignored");
  assert.deepEqual(
    (await s.list()).map((o) => o.objectId),
    ["notes.txt"],
  );
});

test("card store: read by anyone, written only under the issuer's secure channel, within its budget", async () => {
  const c = await card();
  try {
    const readOnly = new CardEncipheredStore({ piv: c.piv });
    assert.deepEqual(await readOnly.list(), []);
    await assert.rejects(readOnly.put([{ objectId: "a", envelope: someEnvelope() }]), /read-only/);
    // why a writer is needed: the card refuses PUT DATA in clear, even with the PIN
    await c.piv.verifyPin(PIN);
    const plain = await c.piv.apdu.send(putDataCommand(CARD_OBJECT_TAG, encodeCardContainer([])));
    assert.equal(plain.sw, 0x6982);

    const s = new CardEncipheredStore({ piv: c.piv, write: c.write });
    const a = someEnvelope("a");
    const b = someEnvelope("b");
    await s.put([{ objectId: "a", envelope: a }]);
    await s.put([{ objectId: "b", envelope: b }]);
    assert.deepEqual(
      (await readOnly.list()).map((o) => o.objectId),
      ["a", "b"],
      "what the issuer wrote, the user's terminal reads",
    );
    assert.deepEqual(await readOnly.get("b"), b);
    assert.deepEqual(
      (await c.piv.getData(CARD_OBJECT_TAG))!.length,
      encodeCardContainer([
        { objectId: "a", envelope: a },
        { objectId: "b", envelope: b },
      ]).length,
    );
    await assert.rejects(s.put([{ objectId: "p", envelope: Buffer.from("clear") }]), /only enciphered data/);
    const big = encipherForCard(c.cert, randomBytes(4000));
    assert.equal(await s.fits([{ objectId: "big", envelope: big }]), false);
    await assert.rejects(s.put([{ objectId: "big", envelope: big }]), /at most 4096 bytes.*terminal's store/);
    await s.remove("a");
    assert.deepEqual(
      (await s.list()).map((o) => o.objectId),
      ["b"],
    );
    await s.remove("b");
    assert.equal(await c.piv.getData(CARD_OBJECT_TAG), undefined, "the last object removed deletes the data object");
  } finally {
    c.vc.close();
  }
});

test("card store: a card short of memory answers 6A84 and keeps what it had", async () => {
  const c = await card({ capacity: 2600 });
  try {
    const s = new CardEncipheredStore({ piv: c.piv, write: c.write, maxBytes: 64 * 1024 });
    const small = encipherForCard(c.cert, Buffer.from("small"));
    await s.put([{ objectId: "small", envelope: small }]);
    await assert.rejects(s.put([{ objectId: "large", envelope: encipherForCard(c.cert, randomBytes(3000)) }]), (e: unknown) => e instanceof ApduError && e.sw === 0x6a84);
    assert.deepEqual(await s.list(), [{ objectId: "small", envelope: small }]);
  } finally {
    c.vc.close();
  }
});

test("card container: round trip, and malformed content is named", () => {
  const objs = [
    { objectId: "z", envelope: someEnvelope() },
    { objectId: "a", envelope: someEnvelope() },
  ];
  assert.deepEqual(decodeCardContainer(encodeCardContainer(objs)), [objs[1], objs[0]]);
  assert.throws(() => decodeCardContainer(Uint8Array.of(0x80, 0x01, 0x02)), /container version 1/);
  assert.throws(() => decodeCardContainer(Uint8Array.of(0x80, 0x05)), /malformed/);
  assert.throws(() => decodeCardContainer(Uint8Array.of(0x80, 0x01, 0x01, 0xe1, 0x03, 0x80, 0x01, 0x61)), /without ID or envelope/);
});

for (const engine of testEngines()) {
  test(`backup and restore with the back-up device on ${engine.name}`, { timeout: 10 * 60_000 }, async () => {
    const tdb = await engine.create();
    const c = await card();
    const other = await card();
    try {
      const store = new Store(tdb.db);
      const repo = new BackupRepository(tdb.db);
      const user = await store.createUser({ personalData: { commonName: "Backup Terminal" } });
      const cardRow = await store.registerCard({ id: Buffer.from(randomBytes(8)).toString("hex"), userId: user.id, validFrom: Date.now(), validUntil: Date.now() + 1e10 });
      const terminal = new TerminalEncipheredStore(join(dir, `t-${n++}`));
      const onCard = new CardEncipheredStore({ piv: c.piv, write: c.write });
      const data = { "pin-list": "bank 1: 0000", "ledger.csv": "date,amount\n2026-05-01,100\n".repeat(40), shared: "same on both" };
      const env = Object.fromEntries(Object.entries(data).map(([k, v]) => [k, encipherForCard(c.cert, Buffer.from(v), Buffer.from(k))]));
      await onCard.put([
        { objectId: "pin-list", envelope: env["pin-list"] },
        { objectId: "shared", envelope: env.shared },
      ]);
      await terminal.put([
        { objectId: "ledger.csv", envelope: env["ledger.csv"] },
        { objectId: "shared", envelope: env.shared },
      ]);

      // S10
      const r1 = await backup({ userId: user.id, cardId: cardRow.id, from: [onCard, terminal], to: repo });
      assert.deepEqual(
        r1.stored.map((s) => [s.objectId, s.version, s.from]),
        [
          ["ledger.csv", 1, "terminal"],
          ["pin-list", 1, "card"],
          ["shared", 1, "card+terminal"],
        ],
      );
      assert.deepEqual([r1.unchanged, r1.conflicts], [[], []]);
      const r2 = await backup({ userId: user.id, from: [onCard, terminal], to: repo });
      assert.deepEqual([r2.stored.length, r2.unchanged.length], [0, 3], "a second run adds nothing");
      // a changed object is a new version; the same object held differently in two places is a conflict
      const ledger2Text = "date,amount\n2026-05-02,200\n".repeat(40);
      const ledger2 = encipherForCard(c.cert, Buffer.from(ledger2Text), Buffer.from("ledger.csv"));
      await terminal.put([
        { objectId: "ledger.csv", envelope: ledger2 },
        { objectId: "shared", envelope: encipherForCard(c.cert, Buffer.from("changed here only")) },
      ]);
      const r3 = await backup({ userId: user.id, from: [onCard, terminal], to: repo });
      assert.deepEqual(
        r3.stored.map((s) => [s.objectId, s.version]),
        [["ledger.csv", 2]],
      );
      assert.deepEqual(r3.conflicts, [{ objectId: "shared", stores: ["card", "terminal"] }]);
      await terminal.put([{ objectId: "shared", envelope: env.shared }]);
      // data enciphered for another card's key is backed up too, but is not restored into this one
      await terminal.put([{ objectId: "for-other", envelope: encipherForCard(other.cert, Buffer.from("other card")) }]);
      await backup({ userId: user.id, from: [terminal], to: repo });

      // S12 into fresh stores: small objects to the card, the rest to the terminal, only what this card's key opens
      await onCard.remove("pin-list");
      await onCard.remove("shared");
      const terminal2 = new TerminalEncipheredStore(join(dir, `t-${n++}`));
      const rr = await restore({ userId: user.id, from: repo, into: preferCard(onCard, terminal2, 600), forCard: { piv: c.piv, slot: SLOT.keyManagement } });
      assert.deepEqual(rr.restored.map((r) => [r.objectId, r.version, r.into]).sort(), [
        ["ledger.csv", 2, "terminal"],
        ["pin-list", 1, "card"],
        ["shared", 1, "card"],
      ]);
      assert.deepEqual(
        rr.skipped.map((s) => s.objectId),
        ["for-other"],
      );
      assert.match(rr.skipped[0].reason, /not this card's key/);
      await c.piv.verifyPin(PIN);
      assert.equal(Buffer.from(await decipherWithCard(c.piv, SLOT.keyManagement, (await onCard.get("pin-list"))!, { aad: Buffer.from("pin-list") })).toString(), data["pin-list"]);
      assert.equal(Buffer.from(await decipherWithCard(c.piv, SLOT.keyManagement, (await terminal2.get("ledger.csv"))!)).toString(), ledger2Text);
      // a restore run again finds everything in place; a filter restores only what is named
      const again = await restore({ userId: user.id, from: repo, into: preferCard(onCard, terminal2, 600), forCard: { piv: c.piv, slot: SLOT.keyManagement } });
      assert.deepEqual([again.restored.length, again.present.length], [0, 3]);
      const only = await restore({ userId: user.id, from: repo, into: new TerminalEncipheredStore(join(dir, `t-${n++}`)), objectIds: ["shared", "missing"] });
      assert.deepEqual(
        only.restored.map((r) => r.objectId),
        ["shared"],
      );
      assert.deepEqual(
        only.skipped.map((s) => [s.objectId, s.reason]),
        [["missing", "no backup of this object"]],
      );
    } finally {
      c.vc.close();
      other.vc.close();
      await tdb.drop();
    }
  });
}
