// The exhaustive tearing test: "Every state change is atomic: a power cut at any write leaves the card in its old
// or its new state, never in between."
//
// For every state-changing command C (after its preconditions, e.g. an SCP03 session opened before it):
//   * reference runs, each on a fresh copy of a prepared card image: AFTER = preconditions, C (counting the
//     EEPROM's physical writes: W), power off, power up, observe; BEFORE = preconditions, power off, power up,
//     observe; and a run with the power cut armed at write W+1, which must never fire (so W covers every write of C);
//   * for every write point n in 1..W and every torn-size class, a fresh copy: preconditions, cut the power at
//     C's n-th write after `torn` bytes of it landed (C must end in PowerLoss: the card never answers), power up,
//     observe. The observation must equal BEFORE, AFTER, or one of the intermediate states listed (and justified)
//     for that command; taken in the order the bytes reach the EEPROM the outcomes never move back to an earlier
//     state; the card must still work (the observation's follow-up commands succeed); and the command's own
//     properties hold (retry counters never given back, packages all-or-nothing, zeroization all-or-nothing,
//     exactly one key set after PUT KEY, ...). Every legal state listed must actually be reached by some cut.
// The card is observed only through APDUs (test/tearing-observe.ts), never by reading its image.
//
// Torn-size classes, against eeprom.ts: each commit is two writes, the body (ciphertext of the whole image, a few
// KB here) into the shadow slot, then that slot's 32-byte commit record. `tornBytes` is capped at the write's length.
//   0      nothing of the cut write landed;
//   1      one byte (a torn first byte of the record's magic, or of the body);
//   16     half a commit record: magic, generation and length new, GCM nonce still the old one;
//   28     a record with everything but its 4 padding bytes (the whole AAD and nonce): as good as written;
//   1500   about half a body write; the whole record (capped at 32);
//   ALL    the whole write landed and the power went right after it.

import { test } from "node:test";
import assert from "node:assert/strict";
import { isDeepStrictEqual } from "node:util";
import { copyFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { createPublicKey, generateKeyPairSync, randomBytes, type KeyObject } from "node:crypto";
import { createCard, openCard, TRANSPORT_KEY_SET } from "../src/card/card.ts";
import { PowerLoss } from "../src/card/eeprom.ts";
import type { CardRuntime } from "../src/card/runtime.ts";
import { pivCertObject, sealPackage } from "../src/protocol/package.ts";
import { checkPutKeyResponse, putKeyCommand, Scp03Client, Scp03Error, Scp03HostSession, transmitAll } from "../src/protocol/scp03/host.ts";
import { ISD_AID } from "../src/protocol/scp03/sm.ts";
import { keyOriginCommand } from "../src/card/isd.ts";
import type { ScpKeySet } from "../src/card/state.ts";
import { tlv } from "../src/protocol/tlv.ts";
import { createCertificateAuthority, issueCertificate } from "../src/ca/x509-issuer.ts";
import { deliverOnline, personalise } from "../src/issuer/card-scripts.ts";
import { ApduClient, type Transmit } from "../src/protocol/apdu-client.ts";
import { readCardInfo } from "../src/protocol/card-info.ts";
import { PIV_AID, PivClient, pinBlock } from "../src/protocol/piv/client.ts";
import { CHEAPEST_PIN_KDF } from "../src/card/pin.ts";
import { tempDir } from "./helpers.ts";
import { observe, type KnownKey, type LiveObservation, type Observation, type Probes } from "./tearing-observe.ts";

const TORN: readonly number[] = [0, 1, 16, 28, 1500, Number.MAX_SAFE_INTEGER]; // ascending: more of the write landed
const TORN_NAME = (t: number): string => (t === Number.MAX_SAFE_INTEGER ? "ALL" : String(t));

const IMAGE_KEY = randomBytes(32); // raw key: HKDF, fast (a passphrase would cost a scrypt per power-up)
const PIN = "123456";
const PUK = "12345678";
const NEW_PIN = "654321";
const NEW_PUK = "87654321";
const WRONG_PIN = "000000";
const WRONG_PUK = "00000000";

const keySet = (kvn: number): ScpKeySet => ({ kvn, enc: randomBytes(16).toString("hex"), mac: randomBytes(16).toString("hex"), dek: randomBytes(16).toString("hex") });
const SK = keySet(0x01); // the card-unique key Sk after personalisation
const SK2 = keySet(0x01); // Sk rotated in place (same KVN, new keys)
const WRONG_SK = keySet(0x01); // what an attacker without Sk would try
const PRED = keySet(0x05); // a predecessor card's Sk1, held by its successor beside Sk (seed 000 embodiments 4, 5)
const TRANSPORT: ScpKeySet = { ...TRANSPORT_KEY_SET };

const LEVEL_FULL = 0x33;
const u8 = (b: Buffer | Uint8Array): Uint8Array => new Uint8Array(b);
const pad16 = (a: string, b: string): Uint8Array => u8(Buffer.concat([pinBlock(a), pinBlock(b)]));
const swOf = (r: Uint8Array): number => (r[r.length - 2] << 8) | r[r.length - 1];
const swHex = (sw: number): string => sw.toString(16).toUpperCase().padStart(4, "0");

function expectSw(r: { sw: number }, sw: number, what: string): void {
  assert.equal(swHex(r.sw), swHex(sw), `${what} answered ${swHex(r.sw)}, expected ${swHex(sw)}`);
}

// --- fixtures: prepared card images ---------------------------------------------------------------------------------

interface Fixtures {
  dir: string;
  img: Record<"blank" | "transport" | "personal" | "pinTried" | "pinLast" | "pinBlocked" | "nearLimit" | "atLimit" | "successorUnbound" | "successor", string>;
  known: KnownKey[];
  k1: { pkcs8: Uint8Array; cert: Uint8Array };
  kRsa: Uint8Array;
  /** A sealed package for slot 9E: key K1, certificate C1, sequence 2 (the personal image accepted 1). */
  package2: Uint8Array;
  /** The newest export of slot 9E in the personal image. */
  export1: Uint8Array;
  /** The predecessor card: its ID and two exports of its slot 9E (key Kp + certificate Cp), sequence 1 and 2. */
  pred: { cardId: string; export1: Uint8Array; export2: Uint8Array };
}

let caseNo = 0;
function freshCopy(fx: Fixtures, image: string): string {
  const p = join(fx.dir, `case-${++caseNo}.img`);
  copyFileSync(image, p);
  return p;
}

/** Powers a card image up, runs `fn` on it, powers it off (also after a power cut). */
async function onCard<T>(path: string, fn: (card: CardRuntime, tx: Transmit) => Promise<T>): Promise<T> {
  const card = openCard(path, IMAGE_KEY);
  try {
    return await fn(card, (a) => card.transmit(a));
  } finally {
    card.close();
  }
}

async function selectAid(tx: Transmit, aid: Uint8Array): Promise<void> {
  expectSw(await new ApduClient(tx).send({ cla: 0, ins: 0xa4, p1: 4, p2: 0, data: aid, le: 256 }), 0x9000, "SELECT");
}

const rawIu = (): Uint8Array => u8(Buffer.concat([Buffer.from("8050010008", "hex"), randomBytes(8), Buffer.from([0])]));

async function prepareFixtures(): Promise<Fixtures> {
  const dir = tempDir("cardkms-tearing-");
  const at = (n: string): string => join(dir, `${n}.img`);
  const ca = await createCertificateAuthority("CN=tearing test CA");
  const ecKey = () => generateKeyPairSync("ec", { namedCurve: "P-256" });
  const k0 = ecKey(),
    k1 = ecKey(),
    kd = ecKey(),
    kp = ecKey();
  const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const der = (k: KeyObject): Uint8Array => u8(k.export({ format: "der", type: "pkcs8" }));
  const cert = async (cn: string, pub: KeyObject): Promise<Uint8Array> => u8(Buffer.from((await issueCertificate(ca, { subject: `CN=${cn}`, publicKey: pub })).rawData));
  const c0 = await cert("K0 card authentication", k0.publicKey);
  const c1 = await cert("K1 card authentication", k1.publicKey);
  const cd = await cert("Kd key management", kd.publicKey);
  const cp = await cert("Kp predecessor card authentication", kp.publicKey);
  const known: KnownKey[] = [
    { label: "K0", alg: "P256", publicKey: k0.publicKey },
    { label: "K1", alg: "P256", publicKey: k1.publicKey },
    { label: "Kd", alg: "P256", publicKey: kd.publicKey },
    { label: "Kp", alg: "P256", publicKey: kp.publicKey },
    { label: "Krsa", alg: "RSA2048", publicKey: createPublicKey(rsa.privateKey) },
  ];

  // blank: as the card issuing machine makes it (transport key, OP_READY, PIV never selected)
  createCard(at("blank"), IMAGE_KEY, { pin: PIN, puk: PUK, pinKdf: CHEAPEST_PIN_KDF }).close();
  // transport: blank whose PIV applet was selected once (CHUID and CCC exist)
  copyFileSync(at("blank"), at("transport"));
  await onCard(at("transport"), async (_c, tx) => selectAid(tx, PIV_AID));
  // personal: Sk (KVN 01), SECURED, 9E = K0 + C0 online, 9D = Kd + Cd by package 1, slot 9E exported once
  copyFileSync(at("transport"), at("personal"));
  let cardId = "";
  let export1: Uint8Array = new Uint8Array(0);
  await onCard(at("personal"), async (_c, tx) => {
    await personalise(tx, TRANSPORT, SK);
    await deliverOnline(tx, SK, { keyRef: 0x9e, alg: "P256", pkcs8: der(k0.privateKey), cert: c0 });
    const info = await readCardInfo(tx);
    assert.ok("cardId" in info);
    cardId = info.cardId;
    const piv = new PivClient(tx);
    await piv.select();
    await piv.loadPackage(sealPackage(SK, { cardId, keyRef: "9d", seq: 1, alg: "P256", pkcs8: der(kd.privateKey), cert: cd }));
    await piv.verifyPin(PIN);
    export1 = await piv.exportKey(0x9e);
  });
  // PIN retry states
  const wrongPins = async (name: string, n: number, wrongPuks = 0): Promise<void> => {
    copyFileSync(at("personal"), at(name));
    await onCard(at(name), async (_c, tx) => {
      const apdu = new ApduClient(tx);
      await selectAid(tx, PIV_AID);
      for (let i = 0; i < n; i++) await apdu.send({ cla: 0, ins: 0x20, p1: 0, p2: 0x80, data: pinBlock(WRONG_PIN) });
      for (let i = 0; i < wrongPuks; i++) await apdu.send({ cla: 0, ins: 0x2c, p1: 0, p2: 0x80, data: pad16(WRONG_PUK, NEW_PIN) });
    });
  };
  await wrongPins("pinTried", 1);
  await wrongPins("pinLast", 2);
  await wrongPins("pinBlocked", 3, 1);
  // a card with an SCP03 failure limit of 3: 2 failures (nearLimit) and 3 (atLimit, the next INITIALIZE UPDATE zeroizes)
  createCard(at("limitBase"), IMAGE_KEY, { pin: PIN, puk: PUK, scpFailureLimit: 3, pinKdf: CHEAPEST_PIN_KDF }).close();
  await onCard(at("limitBase"), async (_c, tx) => {
    await selectAid(tx, PIV_AID);
    await personalise(tx, TRANSPORT, SK);
    await deliverOnline(tx, SK, { keyRef: 0x9e, alg: "P256", pkcs8: der(k0.privateKey), cert: c0 });
  });
  const failures = async (name: string, n: number): Promise<void> => {
    copyFileSync(at("limitBase"), at(name));
    await onCard(at(name), async (_c, tx) => {
      for (let i = 0; i < n; i++) expectSw({ sw: swOf(await tx(rawIu())) }, 0x9000, "INITIALIZE UPDATE");
    });
  };
  await failures("nearLimit", 2);
  await failures("atLimit", 3);

  // The predecessor card (its own card ID, Sk1 = PRED) with Kp in 9E, exported twice; its successor is the
  // personal card holding PRED beside Sk: added by PUT KEY (successorUnbound), then bound to it (successor).
  createCard(at("pred"), IMAGE_KEY, { pin: PIN, puk: PUK, pinKdf: CHEAPEST_PIN_KDF }).close();
  const pred = await onCard(at("pred"), async (_c, tx) => {
    await selectAid(tx, PIV_AID);
    await personalise(tx, TRANSPORT, PRED);
    await deliverOnline(tx, PRED, { keyRef: 0x9e, alg: "P256", pkcs8: der(kp.privateKey), cert: cp });
    const info = await readCardInfo(tx);
    assert.ok("cardId" in info);
    const piv = new PivClient(tx);
    await piv.select();
    await piv.verifyPin(PIN);
    return { cardId: info.cardId, export1: await piv.exportKey(0x9e), export2: await piv.exportKey(0x9e) };
  });
  copyFileSync(at("personal"), at("successorUnbound"));
  await onCard(at("successorUnbound"), async (_c, tx) => personalise(tx, SK, PRED, { keep: true }));
  copyFileSync(at("personal"), at("successor"));
  await onCard(at("successor"), async (_c, tx) => personalise(tx, SK, PRED, { keep: true, predecessor: pred.cardId }));

  const package2 = sealPackage(SK, { cardId, keyRef: "9e", seq: 2, alg: "P256", pkcs8: der(k1.privateKey), cert: c1 });
  return {
    dir,
    img: {
      blank: at("blank"),
      transport: at("transport"),
      personal: at("personal"),
      pinTried: at("pinTried"),
      pinLast: at("pinLast"),
      pinBlocked: at("pinBlocked"),
      nearLimit: at("nearLimit"),
      atLimit: at("atLimit"),
      successorUnbound: at("successorUnbound"),
      successor: at("successor"),
    },
    known,
    k1: { pkcs8: der(k1.privateKey), cert: c1 },
    kRsa: der(rsa.privateKey),
    package2,
    export1,
    pred,
  };
}

// --- scenarios ----------------------------------------------------------------------------------------------------------

interface Legal {
  label: string;
  obs: Observation;
}

/** What a command answered, when a probe needs it (an export package). */
type Output = Uint8Array | void;

interface Scenario {
  name: string;
  image: string;
  /** Runs the preconditions and returns the command under test, ready to send. It checks its own answer, which
   *  a cut command never gets to: the card's PowerLoss rejects the promise first. */
  setup: (tx: Transmit) => Promise<() => Promise<Output>>;
  /** The observation's probes; may use what the command answered in the reference run (AFTER runs first). */
  probes: Probes | ((out: Output) => Probes);
  /** Further legal outcomes between BEFORE and AFTER, for commands that commit more than once. */
  intermediates?: (before: LiveObservation, after: LiveObservation) => Legal[];
  /** Properties each cut outcome must have beyond being legal. */
  check?: (obs: Observation, before: Observation, after: Observation) => void;
}

const live = (o: Observation): LiveObservation => {
  assert.equal(o.terminated, false, "the card should be alive here");
  return o as LiveObservation;
};

/** A copy of `o` with some public-state fields changed (for listing intermediate states). */
function withInfo(o: LiveObservation, patch: Partial<LiveObservation["info"]>): LiveObservation {
  return { ...structuredClone(o), info: { ...structuredClone(o.info), ...patch } };
}

/**
 * Tries left of a counter never exceed what they were before the command, and drop by at most one. "Unchanged"
 * is only legal while the command never answered (every cut case ends in PowerLoss, no response) and before the
 * decrement landed (the harness's no-going-back rule: once a cut shows it decremented, later cuts must too).
 */
function noRestore(field: "pinTriesLeft" | "pukTriesLeft" | "scpTriesLeft") {
  return (obs: Observation, before: Observation): void => {
    const b = live(before).info[field];
    const a = live(obs).info[field];
    assert.ok(a <= b, `${field} restored by tearing: ${b} before, ${a} after the cut`);
    assert.ok(a >= b - 1, `${field} dropped by more than one: ${b} -> ${a}`);
  };
}

function scenarios(fx: Fixtures): Scenario[] {
  const personalProbes: Probes = { scp: [["Sk", SK]], pins: [["PIN", PIN]], puks: [["PUK", PUK]] };
  const transportProbes: Probes = { scp: [["transport", TRANSPORT]], pins: [["PIN", PIN]], puks: [["PUK", PUK]] };
  // On the limit card any INITIALIZE UPDATE counts a failure (or zeroizes): its follow-up commands are PIN and PUK.
  const limitProbes: Probes = { scp: [], pins: [["PIN", PIN]], puks: [["PUK", PUK]] };
  const apduOf = (tx: Transmit) => new ApduClient(tx);
  const inPiv = async (tx: Transmit) => {
    await selectAid(tx, PIV_AID);
    return apduOf(tx);
  };
  const pivSession = async (tx: Transmit, ks = SK) => {
    await selectAid(tx, PIV_AID);
    return Scp03Client.open(tx, ks, { level: LEVEL_FULL, kvn: ks.kvn });
  };
  const isdSession = async (tx: Transmit, ks: ScpKeySet) => {
    await selectAid(tx, ISD_AID);
    return Scp03Client.open(tx, ks, { level: LEVEL_FULL, kvn: ks.kvn });
  };
  const verify = (pin: string) => ({ cla: 0, ins: 0x20, p1: 0, p2: 0x80, data: pinBlock(pin) });
  const zeroized = (obs: Observation, before: Observation): void => {
    // All-or-nothing: fully terminated (6285 to everything) or fully intact (exactly the state before).
    if (obs.terminated === false) assert.deepEqual(obs, before, "not terminated, so it must be fully intact");
    else assert.equal(obs.terminated, "fully", `partly terminated card: ${JSON.stringify(obs)}`);
  };

  return [
    {
      // One commit: tries-1, then the comparison and 63Cx. The answer only exists once the decrement landed.
      name: "PIV VERIFY, wrong PIN",
      image: fx.img.personal,
      probes: personalProbes,
      setup: async (tx) => {
        const apdu = await inPiv(tx);
        return async () => expectSw(await apdu.send(verify(WRONG_PIN)), 0x63c2, "VERIFY wrong");
      },
      check: noRestore("pinTriesLeft"),
    },
    {
      name: "PIV VERIFY, wrong PIN on the last try (blocks the PIN)",
      image: fx.img.pinLast,
      probes: personalProbes,
      setup: async (tx) => {
        const apdu = await inPiv(tx);
        return async () => expectSw(await apdu.send(verify(WRONG_PIN)), 0x6983, "VERIFY wrong, last try");
      },
      check: noRestore("pinTriesLeft"),
    },
    {
      // Two commits: tries-1 (before the comparison), then tries reset to the maximum once the PIN matched.
      name: "PIV VERIFY, right PIN (one try already spent)",
      image: fx.img.pinTried,
      probes: personalProbes,
      setup: async (tx) => {
        const apdu = await inPiv(tx);
        return async () => expectSw(await apdu.send(verify(PIN)), 0x9000, "VERIFY");
      },
      // Legal intermediate "decremented": the pessimistic decrement landed, the reset did not. The cardholder
      // loses a try to the power cut, never gains one; the PIN itself is unchanged.
      intermediates: (b) => [{ label: "PIN try spent, not yet reset", obs: withInfo(b, { pinTriesLeft: b.info.pinTriesLeft - 1, stateCounter: b.info.stateCounter + 1 }) }],
    },
    {
      // Two commits: tries-1, then new reference data with tries reset, in one commit.
      name: "PIV CHANGE REFERENCE DATA, PIN",
      image: fx.img.personal,
      probes: {
        ...personalProbes,
        pins: [
          ["NEW_PIN", NEW_PIN],
          ["PIN", PIN],
        ],
      },
      setup: async (tx) => {
        const apdu = await inPiv(tx);
        return async () => expectSw(await apdu.send({ cla: 0, ins: 0x24, p1: 0, p2: 0x80, data: pad16(PIN, NEW_PIN) }), 0x9000, "CHANGE REFERENCE DATA");
      },
      // Legal intermediate: old PIN with one try spent (the decrement before the comparison landed); never the new
      // PIN with old tries, never a half-changed PIN.
      intermediates: (b) => [{ label: "old PIN, try spent", obs: withInfo(b, { pinTriesLeft: b.info.pinTriesLeft - 1, stateCounter: b.info.stateCounter + 1 }) }],
    },
    {
      name: "PIV CHANGE REFERENCE DATA, PUK",
      image: fx.img.personal,
      probes: {
        ...personalProbes,
        puks: [
          ["NEW_PUK", NEW_PUK],
          ["PUK", PUK],
        ],
      },
      setup: async (tx) => {
        const apdu = await inPiv(tx);
        return async () => expectSw(await apdu.send({ cla: 0, ins: 0x24, p1: 0, p2: 0x81, data: pad16(PUK, NEW_PUK) }), 0x9000, "CHANGE REFERENCE DATA PUK");
      },
      intermediates: (b) => [{ label: "old PUK, try spent", obs: withInfo(b, { pukTriesLeft: b.info.pukTriesLeft - 1, stateCounter: b.info.stateCounter + 1 }) }],
    },
    {
      name: "PIV CHANGE REFERENCE DATA, wrong old PIN",
      image: fx.img.personal,
      probes: {
        ...personalProbes,
        pins: [
          ["NEW_PIN", NEW_PIN],
          ["PIN", PIN],
        ],
      },
      setup: async (tx) => {
        const apdu = await inPiv(tx);
        return async () => expectSw(await apdu.send({ cla: 0, ins: 0x24, p1: 0, p2: 0x80, data: pad16(WRONG_PIN, NEW_PIN) }), 0x63c2, "CHANGE REFERENCE DATA wrong");
      },
      check: noRestore("pinTriesLeft"),
    },
    {
      // Two commits: PUK tries-1; then PUK tries reset together with the new PIN and its tries.
      name: "PIV RESET RETRY COUNTER (blocked PIN, one PUK try spent)",
      image: fx.img.pinBlocked,
      probes: {
        ...personalProbes,
        pins: [
          ["NEW_PIN", NEW_PIN],
          ["PIN", PIN],
        ],
      },
      setup: async (tx) => {
        const apdu = await inPiv(tx);
        return async () => expectSw(await apdu.send({ cla: 0, ins: 0x2c, p1: 0, p2: 0x80, data: pad16(PUK, NEW_PIN) }), 0x9000, "RESET RETRY COUNTER");
      },
      // Legal intermediate: the PUK try spent before the comparison, PIN still blocked. Never a new PIN with the
      // PUK counter still down, never a half-set PIN.
      intermediates: (b) => [{ label: "PUK try spent, PIN blocked", obs: withInfo(b, { pukTriesLeft: b.info.pukTriesLeft - 1, stateCounter: b.info.stateCounter + 1 }) }],
      check: (obs) => assert.ok(live(obs).info.pinTriesLeft === 0 || live(obs).pin === "NEW_PIN", `PIN unblocked without the new PIN: ${JSON.stringify(obs)}`),
    },
    {
      name: "PIV RESET RETRY COUNTER, wrong PUK",
      image: fx.img.pinBlocked,
      probes: {
        ...personalProbes,
        pins: [
          ["NEW_PIN", NEW_PIN],
          ["PIN", PIN],
        ],
      },
      setup: async (tx) => {
        const apdu = await inPiv(tx);
        return async () => expectSw(await apdu.send({ cla: 0, ins: 0x2c, p1: 0, p2: 0x80, data: pad16(WRONG_PUK, NEW_PIN) }), 0x63c1, "RESET RETRY COUNTER wrong PUK");
      },
      check: noRestore("pukTriesLeft"),
    },
    {
      name: "PIV GENERATE ASYMMETRIC KEY PAIR P-256 in 9E (SCP03), replacing K0",
      image: fx.img.personal,
      probes: personalProbes,
      setup: async (tx) => {
        const client = await pivSession(tx);
        return async () => {
          const r = await client.send({ cla: 0, ins: 0x47, p1: 0, p2: 0x9e, data: tlv(0xac, tlv(0x80, Uint8Array.of(0x11))), le: 256 });
          expectSw(r, 0x9000, "GENERATE");
        };
      },
      check: (obs) => assert.ok(["K0", "fresh-P256"].includes(live(obs).slot9e), `slot 9E: ${live(obs).slot9e}`),
    },
    {
      name: "PIV IMPORT KEY P-256 in 9E (SCP03 C-DECRYPTION), K0 -> K1",
      image: fx.img.personal,
      probes: personalProbes,
      setup: async (tx) => {
        const client = await pivSession(tx);
        const data = u8(Buffer.concat([tlv(0x80, Uint8Array.of(0x11)), tlv(0x81, fx.k1.pkcs8)]));
        return async () => expectSw(await client.send({ cla: 0x80, ins: 0xf0, p1: 0, p2: 0x9e, data }), 0x9000, "IMPORT KEY");
      },
    },
    {
      name: "PIV IMPORT KEY RSA-2048 in 9E (SCP03 C-DECRYPTION, chained), K0 -> Krsa",
      image: fx.img.personal,
      probes: personalProbes,
      setup: async (tx) => {
        const client = await pivSession(tx);
        const data = u8(Buffer.concat([tlv(0x80, Uint8Array.of(0x07)), tlv(0x81, fx.kRsa)]));
        return async () => expectSw(await client.send({ cla: 0x80, ins: 0xf0, p1: 0, p2: 0x9e, data }), 0x9000, "IMPORT KEY RSA");
      },
    },
    {
      name: "PIV PUT DATA certificate 9E (SCP03), C0 -> C1",
      image: fx.img.personal,
      probes: personalProbes,
      setup: async (tx) => {
        const client = await pivSession(tx);
        const data = u8(Buffer.concat([tlv(0x5c, Buffer.from("5fc101", "hex")), pivCertObject(fx.k1.cert)]));
        return async () => expectSw(await client.send({ cla: 0, ins: 0xdb, p1: 0x3f, p2: 0xff, data }), 0x9000, "PUT DATA");
      },
    },
    {
      name: "PIV LOAD PACKAGE 9E (key K1 + certificate C1 + sequence 2)",
      image: fx.img.personal,
      probes: personalProbes,
      setup: async (tx) => {
        const piv = new PivClient(tx);
        await piv.select();
        return () => piv.loadPackage(fx.package2);
      },
      check: (obs, before) => {
        // All or nothing, and the sequence never goes back.
        const o = live(obs),
          b = live(before);
        const certs = o.info.certificates.filter((c) => c.slot.startsWith("9e")).map((c) => c.subject);
        const old = o.slot9e === "K0" && o.info.packageSeq === 1 && certs.join() === "CN=K0 card authentication";
        const neu = o.slot9e === "K1" && o.info.packageSeq === 2 && certs.join() === "CN=K1 card authentication";
        assert.ok(old || neu, `package half-applied: key ${o.slot9e}, sequence ${o.info.packageSeq}, certificate ${certs.join()}`);
        assert.ok(o.info.packageSeq >= b.info.packageSeq);
      },
    },
    {
      // One commit: the slot's export counter. Observable: only the newest export loads back (older ones: 6985).
      name: "PIV EXPORT KEY WRAPPED 9E (after VERIFY)",
      image: fx.img.personal,
      // The export the reference run got back is an export of every copy of this image that committed the new
      // counter: BEFORE loads the old export only, AFTER the new one only, and nothing else is legal.
      probes: (export2) => ({
        ...personalProbes,
        exportPackages: [
          ["export 1", fx.export1],
          ["export 2", export2 as Uint8Array],
        ],
      }),
      setup: async (tx) => {
        const apdu = await inPiv(tx);
        expectSw(await apdu.send(verify(PIN)), 0x9000, "VERIFY");
        return async () => {
          const r = await apdu.send({ cla: 0x80, ins: 0xf4, p1: 0, p2: 0x9e, le: 256 });
          expectSw(r, 0x9000, "EXPORT KEY WRAPPED");
          return r.data;
        };
      },
    },
    {
      name: "PIV DELETE KEY 9E (after VERIFY): key and certificate",
      image: fx.img.personal,
      probes: personalProbes,
      setup: async (tx) => {
        const apdu = await inPiv(tx);
        expectSw(await apdu.send(verify(PIN)), 0x9000, "VERIFY");
        return async () => expectSw(await apdu.send({ cla: 0x80, ins: 0xf6, p1: 0, p2: 0x9e }), 0x9000, "DELETE KEY");
      },
      check: (obs) => {
        const o = live(obs);
        const cert = o.info.certificates.some((c) => c.slot.startsWith("9e"));
        assert.equal(cert, o.slot9e !== "absent", `key ${o.slot9e} but certificate present: ${cert}`);
      },
    },
    {
      // One commit: CHUID and CCC together. Observed through the ISD (free bytes) before the observation's own
      // SELECT of PIV, which would create them.
      name: "first SELECT of PIV (creates CHUID and CCC)",
      image: fx.img.blank,
      probes: transportProbes,
      setup: async (tx) => async () => selectAid(tx, PIV_AID),
    },
    {
      // One commit: sequence counter +1 and failures +1, before the card reveals its cryptogram.
      name: "ISD INITIALIZE UPDATE, host with the wrong keys",
      image: fx.img.personal,
      probes: personalProbes,
      setup: async (tx) => {
        await selectAid(tx, ISD_AID);
        return async () => {
          try {
            await Scp03Client.open(tx, WRONG_SK, { level: LEVEL_FULL, kvn: 1 });
          } catch (e) {
            if (e instanceof Scp03Error && /wrong card cryptogram/.test(e.message)) return;
            throw e;
          }
          assert.fail("a session opened with the wrong keys");
        };
      },
      check: noRestore("scpTriesLeft"),
    },
    {
      // Two commits: INITIALIZE UPDATE (counter+1, failures+1), EXTERNAL AUTHENTICATE (failures back to 0).
      name: "ISD INITIALIZE UPDATE + EXTERNAL AUTHENTICATE (session open)",
      image: fx.img.personal,
      probes: personalProbes,
      setup: async (tx) => {
        await selectAid(tx, ISD_AID);
        return async () => void (await Scp03Client.open(tx, SK, { level: LEVEL_FULL, kvn: 1 }));
      },
      // Legal intermediate: INITIALIZE UPDATE landed (the new counter and the pessimistic failure) but EXTERNAL
      // AUTHENTICATE did not: exactly an abandoned session, which counts as a failure.
      intermediates: (_b, a) => [{ label: "counter moved, failure counted", obs: withInfo(a, { scpTriesLeft: a.info.scpTriesLeft - 1, stateCounter: a.info.stateCounter - 1 }) }],
      check: (obs, before) => assert.ok(live(obs).info.scpSequenceCounter >= live(before).info.scpSequenceCounter),
    },
    {
      name: "ISD EXTERNAL AUTHENTICATE, success (failure count back to 0)",
      image: fx.img.personal,
      probes: personalProbes,
      setup: async (tx) => {
        await selectAid(tx, ISD_AID);
        const s = new Scp03HostSession(SK, { level: LEVEL_FULL, kvn: 1 });
        const ea = s.authenticate(await transmitAll(tx, s.initializeUpdate()));
        return async () => expectSw({ sw: swOf(await tx(ea)) }, 0x9000, "EXTERNAL AUTHENTICATE");
      },
    },
    {
      name: "ISD PUT KEY, transport key 30 replaced by Sk (KVN 01)",
      image: fx.img.transport,
      probes: {
        ...transportProbes,
        scp: [
          ["transport", TRANSPORT],
          ["Sk", SK],
        ],
      },
      setup: async (tx) => {
        const client = await isdSession(tx, TRANSPORT);
        const newKeys = { ...SK };
        return async () => {
          const r = await client.send(putKeyCommand(TRANSPORT.dek, newKeys, TRANSPORT.kvn));
          expectSw(r, 0x9000, "PUT KEY");
          checkPutKeyResponse(r.data, newKeys);
        };
      },
      check: (obs) => {
        const s = live(obs).scp;
        assert.equal([s.transport, s.Sk].filter((x) => x === "opens").length, 1, `exactly one key set must open a session: ${JSON.stringify(s)}`);
      },
    },
    {
      name: "ISD PUT KEY, Sk rotated in place (same KVN 01)",
      image: fx.img.personal,
      probes: {
        ...personalProbes,
        scp: [
          ["Sk", SK],
          ["Sk2", SK2],
        ],
      },
      setup: async (tx) => {
        const client = await isdSession(tx, SK);
        const newKeys = { ...SK2 };
        return async () => {
          const r = await client.send(putKeyCommand(SK.dek, newKeys, SK.kvn));
          expectSw(r, 0x9000, "PUT KEY");
          checkPutKeyResponse(r.data, newKeys);
        };
      },
      check: (obs) => {
        const s = live(obs).scp;
        assert.equal([s.Sk, s.Sk2].filter((x) => x === "opens").length, 1, `exactly one key set must open a session: ${JSON.stringify(s)}`);
      },
    },
    {
      // One commit: the key set PRED bound to the predecessor card. Observable: the predecessor's export loads
      // (before: 6982, the export names a card no key set is bound to).
      name: "ISD STORE DATA key set origin (PRED bound to the predecessor card)",
      image: fx.img.successorUnbound,
      probes: {
        ...personalProbes,
        scp: [
          ["Sk", SK],
          ["PRED", PRED],
        ],
        exportPackages: [["predecessor export 2", fx.pred.export2]],
      },
      setup: async (tx) => {
        const client = await isdSession(tx, SK);
        return async () => expectSw(await client.send(keyOriginCommand(PRED.kvn, fx.pred.cardId)), 0x9000, "STORE DATA key set origin");
      },
      check: (obs) => assert.ok(["6982", "9000"].includes(live(obs).exportLoad!["predecessor export 2"]), "bound or not, nothing else"),
    },
    {
      // One commit: key Kp, certificate Cp and the (predecessor, 9E) high-water mark together. Observable: the
      // slot, its certificate, and whether the predecessor's older export 1 still loads (after: 6985).
      name: "PIV LOAD PACKAGE of the predecessor card's export 9E (sequence 2)",
      image: fx.img.successor,
      probes: { ...personalProbes, exportPackages: [["predecessor export 1", fx.pred.export1]] },
      setup: async (tx) => {
        const piv = new PivClient(tx);
        await piv.select();
        return () => piv.loadPackage(fx.pred.export2);
      },
      check: (obs) => {
        const o = live(obs);
        const certs = o.info.certificates
          .filter((c) => c.slot.startsWith("9e"))
          .map((c) => c.subject)
          .join();
        const old = o.slot9e === "K0" && certs === "CN=K0 card authentication" && o.exportLoad!["predecessor export 1"] === "9000";
        const neu = o.slot9e === "Kp" && certs === "CN=Kp predecessor card authentication" && o.exportLoad!["predecessor export 1"] === "6985";
        assert.ok(old || neu, `predecessor export half-applied: key ${o.slot9e}, certificate ${certs}, export 1 ${o.exportLoad!["predecessor export 1"]}`);
      },
    },
    {
      name: "ISD SET STATUS OP_READY -> SECURED",
      image: fx.img.transport,
      probes: transportProbes,
      setup: async (tx) => {
        const client = await isdSession(tx, TRANSPORT);
        return async () => expectSw(await client.send({ cla: 0x80, ins: 0xf0, p1: 0x80, p2: 0x0f }), 0x9000, "SET STATUS");
      },
    },
    {
      name: "zeroization: attack signal GET DATA DF7F on the ISD",
      image: fx.img.personal,
      probes: personalProbes,
      setup: async (tx) => {
        await selectAid(tx, ISD_AID);
        return async () => expectSw(await apduOf(tx).send({ cla: 0x80, ins: 0xca, p1: 0xdf, p2: 0x7f, le: 256 }), 0x6982, "GET DATA DF7F");
      },
      check: zeroized,
    },
    {
      name: "zeroization: attack signal GET DATA tag list 5C DF7F on PIV",
      image: fx.img.personal,
      probes: personalProbes,
      setup: async (tx) => {
        const apdu = await inPiv(tx);
        return async () => expectSw(await apdu.send({ cla: 0, ins: 0xcb, p1: 0x3f, p2: 0xff, data: tlv(0x5c, Uint8Array.of(0xdf, 0x7f)), le: 256 }), 0x6982, "GET DATA 5C DF7F");
      },
      check: zeroized,
    },
    {
      name: "zeroization: SCP03 failure limit reached, next INITIALIZE UPDATE",
      image: fx.img.atLimit,
      probes: limitProbes,
      setup: async (tx) => {
        await selectAid(tx, ISD_AID);
        return async () => expectSw({ sw: swOf(await tx(rawIu())) }, 0x6285, "INITIALIZE UPDATE at the limit");
      },
      check: zeroized,
    },
    {
      name: "zeroization: SCP03 failure limit reached by a wrong EXTERNAL AUTHENTICATE",
      image: fx.img.nearLimit,
      probes: limitProbes,
      setup: async (tx) => {
        await selectAid(tx, ISD_AID);
        const iu = await tx(rawIu());
        assert.equal(iu[iu.length - 2], 0x90, "INITIALIZE UPDATE");
        const ea = u8(Buffer.concat([Buffer.from("8482330010", "hex"), randomBytes(16)]));
        return async () => expectSw({ sw: swOf(await tx(ea)) }, 0x6300, "EXTERNAL AUTHENTICATE wrong");
      },
      check: zeroized,
    },
  ];
}

// --- the harness -----------------------------------------------------------------------------------------------------

interface ScenarioResult {
  writes: number;
  cases: number;
  outcomes: Record<string, number>;
}

async function observeAt(fx: Fixtures, path: string, probes: Probes): Promise<Observation> {
  return onCard(path, async (_card, tx) => observe(tx, probes, fx.known));
}

function genericInvariants(obs: Observation, before: Observation): void {
  if (obs.terminated !== false) {
    assert.equal(obs.terminated, "fully", `partly terminated card answers ${obs.answers.join(" ")}`);
    return;
  }
  // keys whole or absent
  assert.ok(!obs.slot9e.startsWith("broken"), `slot 9E: ${obs.slot9e}`);
  // the card still works: every follow-up command answered as a working card does
  for (const [k, v] of Object.entries(obs.scp)) assert.ok(!v.startsWith("error"), `SCP03 probe ${k}: ${v}`);
  assert.ok(!obs.pin.startsWith("error") && !obs.puk.startsWith("error"), `PIN ${obs.pin}, PUK ${obs.puk}`);
  if (before.terminated === false) {
    // the package sequence number never goes backwards, nor does the SCP03 sequence counter
    assert.ok(obs.info.packageSeq >= before.info.packageSeq, "package sequence went backwards");
    assert.ok(obs.info.scpSequenceCounter >= before.info.scpSequenceCounter, "SCP03 sequence counter went backwards");
    // The state counter (src/protocol/state-counter.ts) moves in the same write as every change: a card whose state
    // differs from before carries a higher counter, whichever write the power cut — what lets the issuer see an
    // image that went back.
    assert.ok(obs.info.stateCounter >= before.info.stateCounter, "state counter went backwards");
    if (!isDeepStrictEqual(obs, before)) assert.ok(obs.info.stateCounter > before.info.stateCounter, `the state changed under the old state counter ${before.info.stateCounter}`);
  }
}

async function runScenario(fx: Fixtures, sc: Scenario): Promise<ScenarioResult> {
  // AFTER: the preconditions, the command (counting its writes), power off.
  const pAfter = freshCopy(fx, sc.image);
  const { writes, out } = await onCard(pAfter, async (card, tx) => {
    const cmd = await sc.setup(tx);
    const w0 = card.faults.writes;
    const result = await cmd();
    return { writes: card.faults.writes - w0, out: result };
  });
  const probes = typeof sc.probes === "function" ? sc.probes(out) : sc.probes;
  const after = await observeAt(fx, pAfter, probes);
  rmSync(pAfter);

  // BEFORE: the preconditions only, power off.
  const pBefore = freshCopy(fx, sc.image);
  await onCard(pBefore, async (_card, tx) => void (await sc.setup(tx)));
  const before = await observeAt(fx, pBefore, probes);
  rmSync(pBefore);
  assert.equal(before.terminated, false, "reference state must be a live card");
  assert.ok(writes > 0, "the command must change state");
  assert.ok(!isDeepStrictEqual(before, after), `the command's effect must be observable: ${JSON.stringify(after)}`);

  // W is all of it: a cut armed at write W+1 never fires.
  const pBeyond = freshCopy(fx, sc.image);
  await onCard(pBeyond, async (card, tx) => {
    const cmd = await sc.setup(tx);
    const w0 = card.faults.writes;
    card.faults.fault = { cutAtWrite: w0 + writes + 1, tornBytes: 0 };
    await cmd();
    assert.equal(card.faults.writes - w0, writes, "the command's write count is not stable");
    assert.ok(card.faults.fault, "a cut armed after the last write fired");
    card.faults.fault = undefined;
  });
  rmSync(pBeyond);

  // The legal states in the order the command passes through them.
  const legal: Legal[] = [{ label: "before", obs: before }, ...(sc.intermediates?.(live(before), live(after)) ?? []), { label: "after", obs: after }];

  const outcomes: Record<string, number> = {};
  let cases = 0;
  // What landed stays landed: enumerated in the order the bytes reach the EEPROM (write n, then more of it), the
  // outcomes never move back to an earlier legal state. This is what makes "tries unchanged" mean "the comparison
  // never ran": once a cut shows the decrement landed, no later cut may show the old counter again.
  let reached = 0;
  let reachedAt = "the start";
  for (let n = 1; n <= writes; n++) {
    for (const torn of TORN) {
      const where = `cut at write ${n}/${writes}, torn ${TORN_NAME(torn)}`;
      const p = freshCopy(fx, sc.image);
      await onCard(p, async (card, tx) => {
        const cmd = await sc.setup(tx);
        const at = card.faults.writes + n;
        card.faults.fault = { cutAtWrite: at, tornBytes: torn };
        await assert.rejects(cmd(), (e: unknown) => e instanceof PowerLoss && e.writeIndex === at, `${where}: the command must end in the power cut`);
        assert.equal(card.faults.fault, undefined, `${where}: the cut did not happen`);
      });
      let obs: Observation;
      try {
        obs = await observeAt(fx, p, probes);
      } catch (e) {
        throw new Error(`${sc.name}, ${where}: the card does not work after the power-up: ${(e as Error).message}`, { cause: e });
      }
      rmSync(p);
      const match = legal.find((l) => isDeepStrictEqual(l.obs, obs));
      assert.ok(
        match,
        `${sc.name}, ${where}: the card is neither in its old nor in its new state (nor a listed intermediate):\n` +
          `got    ${JSON.stringify(obs)}\nbefore ${JSON.stringify(before)}\nafter  ${JSON.stringify(after)}`,
      );
      const idx = legal.indexOf(match);
      assert.ok(idx >= reached, `${sc.name}, ${where}: the card went back to "${match.label}" after ${reachedAt} had left it in "${legal[reached].label}"`);
      reached = idx;
      reachedAt = where;
      genericInvariants(obs, before);
      sc.check?.(obs, before, after);
      outcomes[match.label] = (outcomes[match.label] ?? 0) + 1;
      cases++;
    }
  }
  // Both sides must have been reached (cut before anything landed / after everything landed), and every listed
  // intermediate state too: otherwise the list is wider than the command.
  for (const l of legal) assert.ok(outcomes[l.label], `${sc.name}: no cut left the card in state "${l.label}"`);
  return { writes, cases, outcomes };
}

test("tearing: a power cut at any write of any state-changing command leaves the old or the new state", async (t) => {
  const started = Date.now();
  const fx = await prepareFixtures();
  const list = scenarios(fx);
  const results: ScenarioResult[] = [];
  for (const sc of list) {
    await t.test(sc.name, async (st) => {
      const r = await runScenario(fx, sc);
      results.push(r);
      st.diagnostic(
        `W=${r.writes}, ${r.cases} cases: ${Object.entries(r.outcomes)
          .map(([k, v]) => `${k} ${v}`)
          .join(", ")}`,
      );
    });
  }
  const points = results.reduce((n, r) => n + r.writes, 0);
  const cases = results.reduce((n, r) => n + r.cases, 0);
  const outcomes: Record<string, number> = {};
  for (const r of results) {
    for (const [label, n] of Object.entries(r.outcomes)) {
      const kind = label === "before" || label === "after" ? label : "intermediate";
      outcomes[kind] = (outcomes[kind] ?? 0) + n;
    }
  }
  t.diagnostic(
    `tearing: ${results.length} commands, ${points} write points, ${TORN.length} torn classes, ${cases} cases ` +
      `(old state ${outcomes.before ?? 0}, new state ${outcomes.after ?? 0}, listed intermediate ${outcomes.intermediate ?? 0}) in ${Date.now() - started} ms`,
  );
  // Not vacuous: every command ran, every one of its write points was cut with every torn class.
  assert.equal(results.length, list.length, "every command was exercised");
  assert.equal(cases, points * TORN.length);
  assert.ok(points >= 2 * list.length, `${points} write points for ${list.length} commands`);
});
