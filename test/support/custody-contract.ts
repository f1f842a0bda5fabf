// The custody contract: one test suite every KeyCustody implementation must pass (software.test.ts and
// pkcs11.test.ts run it). Results are checked against Node crypto and the software reference derivations
// (derivation.ts), never against the implementation itself, and the card keys against a real virtual card.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  constants as cryptoConstants,
  createCipheriv,
  createDecipheriv,
  createHash,
  createPrivateKey,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  publicEncrypt,
  randomBytes,
  verify,
  type KeyObject,
} from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { encodeCommand, parseResponse } from "../../src/protocol/apdu.ts";
import { createCard, TRANSPORT_KEY_SET } from "../../src/card/card.ts";
import { aesCmac } from "../../src/protocol/scp03/cmac.ts";
import { keyCheckValue, parseInitUpdateResponse, putKeyCommand, Scp03Client, transmitAll } from "../../src/protocol/scp03/host.ts";
import { ISD_AID, lcBytes, macClass } from "../../src/protocol/scp03/sm.ts";
import { CustodyError, type CustodyErrorCode, type KeyCustody, type KeyPairAlg, type DerivedKeySetRef, type KmcKeySetRef } from "../../src/custody/custody.ts";
import { assertSignerConsistent, type CaSigner } from "../../src/ca/signer.ts";
import { aesKeyUnwrapPad, deriveCardKeySet, derivePurposeKey, deriveTransportKeySet, keyDiversificationData, PURPOSE } from "../../src/protocol/derivation.ts";

const hex = (b: Uint8Array): string => Buffer.from(b).toString("hex");
const uniq = (p: string): string => `${p}-${randomBytes(4).toString("hex")}`;

export async function rejects(p: Promise<unknown>, code: CustodyErrorCode, text?: RegExp): Promise<CustodyError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof CustodyError, `expected a CustodyError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (text) assert.match(e.message, text);
    return e;
  }
  assert.fail(`expected CustodyError ${code}`);
}

function kcvs(keys: { enc: Uint8Array; mac: Uint8Array; dek: Uint8Array }, kvn: number) {
  return { kvn, enc: hex(keyCheckValue(keys.enc)), mac: hex(keyCheckValue(keys.mac)), dek: hex(keyCheckValue(keys.dek)) };
}

/**
 * Runs the contract against custody instances made by `makeCustody`. Each call must return a new instance over
 * the same backing store (file or token), so persistence across instances is part of the contract.
 */
export function custodyContract(name: string, makeCustody: () => Promise<KeyCustody>): void {
  describe(`custody contract: ${name}`, () => {
    let c: KeyCustody;
    const master = new Uint8Array(randomBytes(16));
    const masterLabel = uniq("master");
    const cardId = randomBytes(8).toString("hex");

    before(async () => {
      c = await makeCustody();
      await c.importSecretKey(masterLabel, { type: "aes", bits: 128 }, master);
    });
    after(async () => {
      await c.close();
    });

    test("secret keys by label: create, info, list, duplicate, delete", async () => {
      const label = uniq("storage");
      const info = await c.createSecretKey(label, { type: "aes", bits: 256, usage: ["wrap", "encrypt"] });
      assert.deepEqual(info, { label, kind: "secret", type: "aes", bits: 256, usage: ["encrypt", "wrap"], extractable: "never" });
      assert.equal(await c.hasKey(label), true);
      assert.deepEqual(await c.keyInfo(label), info);
      assert.ok((await c.listKeys()).some((k) => k.label === label && k.kind === "secret"));
      await rejects(c.createSecretKey(label, { type: "aes", bits: 128 }), "EXISTS");
      assert.equal(await c.deleteKey(label), true);
      assert.equal(await c.hasKey(label), false);
      assert.equal(await c.deleteKey(label), false);
      assert.equal(await c.keyInfo(label), undefined);
      await rejects(c.createSecretKey("bad label!", { type: "aes", bits: 128 }), "INVALID_ARGUMENT");
      await rejects(c.createSecretKey(uniq("k"), { type: "aes", bits: 192 as 128 }), "INVALID_ARGUMENT", /128 or 256/);
      await rejects(c.importSecretKey(uniq("k"), { type: "aes", bits: 128 }, new Uint8Array(15)), "INVALID_ARGUMENT", /16 bytes/);
    });

    test("keys persist across instances; the master keeps its attributes", async () => {
      const other = await makeCustody();
      try {
        assert.deepEqual(await other.keyInfo(masterLabel), { label: masterLabel, kind: "secret", type: "aes", bits: 128, usage: ["derive"], extractable: "never" });
      } finally {
        await other.close();
      }
    });

    test("card key diversification equals the software reference (KCVs), 128 and 256 bits, per card and KVN", async () => {
      for (const bits of [128, 256] as const) {
        const ref: DerivedKeySetRef = { kind: "derived", master: masterLabel, cardId, kvn: 1, bits };
        assert.deepEqual(await c.keySetKcvs(ref), kcvs(deriveCardKeySet(master, cardId, 1, bits), 1));
      }
      const a = await c.keySetKcvs({ kind: "derived", master: masterLabel, cardId, kvn: 1 });
      const b = await c.keySetKcvs({ kind: "derived", master: masterLabel, cardId, kvn: 2 });
      const d = await c.keySetKcvs({ kind: "derived", master: masterLabel, cardId: randomBytes(8).toString("hex"), kvn: 1 });
      assert.equal(new Set([a.enc, a.mac, a.dek, b.enc, d.enc]).size, 5, "ENC/MAC/DEK, key versions and cards all differ");
      // An independent restatement of the derivation for ENC: AES(master, SHA-256(domain || 00 || len || id)[0..12] || kvn || 1 || 16 || 1)
      const id = Buffer.from(cardId, "hex");
      const h = createHash("sha256")
        .update("cardkms card key v1")
        .update(Buffer.from([0, id.length]))
        .update(id)
        .digest();
      const block = Buffer.concat([h.subarray(0, 12), Buffer.from([1, 1, 16, 1])]);
      const e = createCipheriv("aes-128-ecb", master, null).setAutoPadding(false);
      assert.equal(a.enc, hex(keyCheckValue(e.update(block))));
    });

    test("an AES-256 master diversifies too", async () => {
      const m256 = new Uint8Array(randomBytes(32));
      const label = uniq("master256");
      await c.importSecretKey(label, { type: "aes", bits: 256 }, m256);
      try {
        assert.deepEqual(await c.keySetKcvs({ kind: "derived", master: label, cardId, kvn: 3 }), kcvs(deriveCardKeySet(m256, cardId, 3), 3));
      } finally {
        await c.deleteKey(label);
      }
    });

    test("PUT KEY data equals what host.ts builds from the clear keys, and personalises a real virtual card", async () => {
      const prefix = uniq("transport");
      const t = (h: string): Uint8Array => new Uint8Array(Buffer.from(h, "hex"));
      const transport = await c.importKeySet(prefix, { kvn: TRANSPORT_KEY_SET.kvn, enc: t(TRANSPORT_KEY_SET.enc), mac: t(TRANSPORT_KEY_SET.mac), dek: t(TRANSPORT_KEY_SET.dek) });
      const next: DerivedKeySetRef = { kind: "derived", master: masterLabel, cardId, kvn: 1 };
      const ref = deriveCardKeySet(master, cardId, 1);
      const put = await c.putKeyData(transport, next);
      const expected = putKeyCommand(TRANSPORT_KEY_SET.dek, { kvn: 1, enc: ref.enc, mac: ref.mac, dek: ref.dek }, 0x30);
      assert.equal(hex(put.data), hex(expected.data as Uint8Array));
      assert.deepEqual(put.kcvs, kcvs(ref, 1));

      const dir = mkdtempSync(join(tmpdir(), "cardkms-custody-"));
      const card = createCard(join(dir, "card.img"), randomBytes(32), { cardId: Buffer.from(cardId, "hex") });
      const transmit = (apdu: Uint8Array): Uint8Array => card.transmit(apdu);
      try {
        // The transport key is the public GP test key, so the host library may hold it in clear.
        const client = await Scp03Client.open(transmit, TRANSPORT_KEY_SET, { level: 0x03, kvn: 0x30 });
        const r = await client.send({ cla: 0x80, ins: 0xd8, p1: 0x30, p2: 0x81, data: put.data, le: 256 });
        client.close();
        assert.equal(r.sw, 0x9000);
        assert.equal(hex(r.data), hex(put.expectedResponse), "the card confirms the KCVs custody computed");

        // A session on the diversified keys, with every secret step done by custody.
        const open = async (keys: DerivedKeySetRef): Promise<number> => {
          const hostChallenge = new Uint8Array(randomBytes(8));
          const iu = parseInitUpdateResponse(await transmitAll(transmit, encodeCommand({ cla: 0x80, ins: 0x50, p1: 1, p2: 0, data: hostChallenge, le: 256 })));
          const s = await c.scp03Session(keys, hostChallenge, iu.cardChallenge);
          if (hex(s.cardCryptogram) !== hex(iu.cardCryptogram)) return -1;
          const mac = aesCmac(s.sMac, Buffer.concat([new Uint8Array(16), Uint8Array.of(macClass(0x84), 0x82, 0x01, 0x00), lcBytes(16, false), s.hostCryptogram]));
          const ea = encodeCommand({ cla: 0x84, ins: 0x82, p1: 0x01, p2: 0, data: Buffer.concat([s.hostCryptogram, mac.subarray(0, 8)]) });
          return parseResponse(await transmitAll(transmit, ea)).sw;
        };
        await transmitAll(transmit, encodeCommand({ cla: 0, ins: 0xa4, p1: 4, p2: 0, data: ISD_AID, le: 256 }));
        assert.equal(await open(next), 0x9000, "EXTERNAL AUTHENTICATE with custody's host cryptogram and session MAC key");
        assert.equal(await open({ ...next, cardId: "00" + cardId.slice(2) }), -1, "another card's keys do not match the card cryptogram");
      } finally {
        card.close();
        rmSync(dir, { recursive: true, force: true });
        for (const k of ["enc", "mac", "dek"] as const) await c.deleteKey(transport[k]);
      }
    });

    test("PUT KEY refuses a non-extractable key set as the new keys; usages are enforced", async () => {
      const prefix = uniq("fixed");
      const k = (): Uint8Array => new Uint8Array(randomBytes(16));
      const stored = await c.importKeySet(prefix, { kvn: 5, enc: k(), mac: k(), dek: k() }, "never");
      const derived: DerivedKeySetRef = { kind: "derived", master: masterLabel, cardId, kvn: 1 };
      await rejects(c.putKeyData(derived, stored), "NOT_PERMITTED");
      await rejects(c.wrapPrivateKey("x", { key: masterLabel }), "NOT_FOUND");
      await rejects(c.keySetKcvs({ kind: "derived", master: stored.enc, cardId, kvn: 1 }), "NOT_PERMITTED", /derive/);
      for (const l of [stored.enc, stored.mac, stored.dek]) await c.deleteKey(l);
      await rejects(c.keySetKcvs({ kind: "derived", master: uniq("nomaster"), cardId, kvn: 1 }), "NOT_FOUND");
      await rejects(c.keySetKcvs({ kind: "derived", master: masterLabel, cardId: "xyz", kvn: 1 }), "INVALID_ARGUMENT");
      await rejects(c.keySetKcvs({ kind: "derived", master: masterLabel, cardId, kvn: 0 }), "INVALID_ARGUMENT");
    });

    test("transport keys diversified from a KMC (EMV CPS, AES) equal the software reference: KCVs, PUT KEY, session", async () => {
      const kmc = new Uint8Array(randomBytes(16));
      const kmcLabel = uniq("kmc");
      await c.importSecretKey(kmcLabel, { type: "aes", bits: 128, usage: ["derive"] }, kmc);
      try {
        const transport: KmcKeySetRef = { kind: "kmc", kmc: kmcLabel, kdd: hex(keyDiversificationData(cardId)), kvn: 0x30 };
        const ref = deriveTransportKeySet(kmc, transport.kdd);
        assert.deepEqual(await c.keySetKcvs(transport), kcvs(ref, 0x30));
        const other = await c.keySetKcvs({ ...transport, kdd: hex(keyDiversificationData(randomBytes(8))) });
        assert.notEqual(other.enc, hex(keyCheckValue(ref.enc)), "another card's transport keys differ");
        // PUT KEY of the card key Sk under the transport DEK, as host.ts builds it from the clear keys
        const next: DerivedKeySetRef = { kind: "derived", master: masterLabel, cardId, kvn: 1 };
        const sk = deriveCardKeySet(master, cardId, 1);
        const put = await c.putKeyData(transport, next);
        assert.equal(hex(put.data), hex(putKeyCommand(ref.dek, { kvn: 1, enc: sk.enc, mac: sk.mac, dek: sk.dek }, 0x30).data as Uint8Array));
        // the session over the transport keys
        const hc = new Uint8Array(randomBytes(8)),
          cc = new Uint8Array(randomBytes(8));
        const s = await c.scp03Session(transport, hc, cc);
        const { deriveSessionKeys, cryptogram, DERIVE } = await import("../../src/protocol/scp03/kdf.ts");
        const ctx = Buffer.concat([hc, cc]);
        assert.equal(hex(s.cardCryptogram), hex(cryptogram(deriveSessionKeys(ref.enc, ref.mac, ctx).sMac, DERIVE.CARD_CRYPTOGRAM, ctx)));
        await rejects(c.keySetKcvs({ ...transport, kdd: "0001" }), "INVALID_ARGUMENT", /10 bytes/);
        await rejects(c.keySetKcvs({ ...transport, kmc: uniq("nokmc") }), "NOT_FOUND");
      } finally {
        await c.deleteKey(kmcLabel);
      }
    });

    test("SCP03 session material equals kdf.ts over the reference keys", async () => {
      const ref = deriveCardKeySet(master, cardId, 2, 256);
      const hc = new Uint8Array(randomBytes(8)),
        cc = new Uint8Array(randomBytes(8));
      const s = await c.scp03Session({ kind: "derived", master: masterLabel, cardId, kvn: 2, bits: 256 }, hc, cc);
      const { deriveSessionKeys, cryptogram, DERIVE } = await import("../../src/protocol/scp03/kdf.ts");
      const ctx = Buffer.concat([hc, cc]);
      const sk = deriveSessionKeys(ref.enc, ref.mac, ctx);
      assert.equal(hex(s.sEnc), hex(sk.sEnc));
      assert.equal(hex(s.sMac), hex(sk.sMac));
      assert.equal(hex(s.sRmac), hex(sk.sRmac));
      assert.equal(hex(s.cardCryptogram), hex(cryptogram(sk.sMac, DERIVE.CARD_CRYPTOGRAM, ctx)));
      assert.equal(hex(s.hostCryptogram), hex(cryptogram(sk.sMac, DERIVE.HOST_CRYPTOGRAM, ctx)));
      await rejects(c.scp03Session({ kind: "derived", master: masterLabel, cardId, kvn: 2 }, new Uint8Array(7), cc), "INVALID_ARGUMENT");
    });

    test("sealForCard: AES-256-GCM under the package key derived from the card's DEK", async () => {
      const ref: DerivedKeySetRef = { kind: "derived", master: masterLabel, cardId, kvn: 1 };
      const purpose = PURPOSE.package(1);
      const aad = Buffer.from("header"),
        plain = randomBytes(100);
      const s = await c.sealForCard(ref, purpose, aad, plain);
      assert.equal(s.nonce.length, 12);
      const key = derivePurposeKey(deriveCardKeySet(master, cardId, 1).dek, cardId, 1, purpose);
      const open = (a: Uint8Array): Buffer => {
        const d = createDecipheriv("aes-256-gcm", key, s.nonce);
        d.setAAD(a);
        d.setAuthTag(s.ciphertext.subarray(s.ciphertext.length - 16));
        return Buffer.concat([d.update(s.ciphertext.subarray(0, s.ciphertext.length - 16)), d.final()]);
      };
      assert.equal(hex(open(aad)), hex(plain));
      assert.throws(() => open(Buffer.from("Header")));
      const s2 = await c.sealForCard(ref, purpose, aad, plain);
      assert.notEqual(hex(s2.nonce), hex(s.nonce), "a fresh nonce each time");
      await rejects(c.sealForCard(ref, PURPOSE.privateKeyWrap, aad, plain), "INVALID_ARGUMENT");
    });

    for (const alg of ["P256", "P384", "RSA2048", "RSA3072"] as KeyPairAlg[]) {
      test(`key pair ${alg}: generate, SPKI, sign (verified by Node), wrap for a card, re-wrap, signer`, async () => {
        const label = uniq(`cred-${alg}`);
        const info = await c.generateKeyPair(label, alg, { extractable: "wrapped" });
        assert.deepEqual(info, { label, kind: "keyPair", type: alg, extractable: "wrapped" });
        assert.deepEqual(await c.keyInfo(label), info);
        const spki = await c.publicKey(label);
        const pub = createPublicKey({ key: Buffer.from(spki), format: "der", type: "spki" });
        if (alg.startsWith("P")) assert.equal(pub.asymmetricKeyDetails?.namedCurve, alg === "P256" ? "prime256v1" : "secp384r1");
        else assert.equal(pub.asymmetricKeyDetails?.modulusLength, alg === "RSA2048" ? 2048 : 3072);

        const data = randomBytes(200);
        const defaultHash = alg === "P384" || alg === "RSA3072" ? "sha384" : "sha256";
        const sig = await c.sign(label, data);
        assert.ok(verify(defaultHash, data, pub, Buffer.from(sig)), "signature verifies with Node against the SPKI");
        assert.ok(!verify(defaultHash, Buffer.concat([data, Buffer.of(0)]), pub, Buffer.from(sig)));
        const sig512 = await c.sign(label, data, { hash: "SHA-512" });
        assert.ok(verify("sha512", data, pub, Buffer.from(sig512)));
        if (alg.startsWith("P")) assert.equal(sig[0], 0x30, "ECDSA signatures are DER");

        // Sk[PRk]: wrapped under the card's wrap key, it unwraps (reference derivation) to this key pair.
        const card1: DerivedKeySetRef = { kind: "derived", master: masterLabel, cardId, kvn: 1 };
        const card2: DerivedKeySetRef = { kind: "derived", master: masterLabel, cardId, kvn: 2 };
        const wk = (kvn: number): Uint8Array => derivePurposeKey(deriveCardKeySet(master, cardId, kvn).dek, cardId, kvn, PURPOSE.privateKeyWrap);
        const matches = (wrapped: Uint8Array, kek: Uint8Array): void => {
          const priv = createPrivateKey({ key: Buffer.from(aesKeyUnwrapPad(kek, wrapped)), format: "der", type: "pkcs8" });
          assert.equal(hex(createPublicKey(priv).export({ format: "der", type: "spki" })), hex(spki));
        };
        const w1 = await c.wrapPrivateKey(label, { card: card1 });
        matches(w1, wk(1));
        assert.throws(() => aesKeyUnwrapPad(wk(2), w1), "does not unwrap under another key set");

        const w2 = await c.rewrapPrivateKey(w1, alg, { card: card1 }, { card: card2 });
        matches(w2, wk(2));
        await rejects(c.rewrapPrivateKey(w1, alg, { card: card2 }, { card: card1 }), "WRONG_KEY");

        const storageValue = new Uint8Array(randomBytes(32));
        const storage = uniq("storage");
        await c.importSecretKey(storage, { type: "aes", bits: 256, usage: ["wrap"] }, storageValue);
        matches(await c.wrapPrivateKey(label, { key: storage }), storageValue);
        await rejects(c.wrapPrivateKey(label, { key: masterLabel }), "NOT_PERMITTED", /wrap/);
        await c.deleteKey(storage);

        const signer = await c.signer(label);
        assert.equal(signer.alg, alg);
        assert.equal(signer.hash, alg === "P384" || alg === "RSA3072" ? "SHA-384" : "SHA-256");
        assert.equal(hex(signer.spki), hex(spki));
        assert.ok(verify(defaultHash, data, pub, Buffer.from(await signer.sign(data))));
        const asCa: CaSigner = signer; // the CA's signer shape, checked by the compiler
        assertSignerConsistent(asCa);

        assert.equal(await c.deleteKey(label), true);
        await rejects(c.publicKey(label), "NOT_FOUND");
        await rejects(c.sign(label, data), "NOT_FOUND");
      });
    }

    test("a non-extractable key pair (the CA key) cannot be wrapped; it persists, signs, and is not a secret key", async () => {
      const label = uniq("ca");
      await c.generateKeyPair(label, "P256");
      await rejects(c.wrapPrivateKey(label, { card: { kind: "derived", master: masterLabel, cardId, kvn: 1 } }), "NOT_PERMITTED", /not extractable/);
      await rejects(c.generateKeyPair(label, "P256"), "EXISTS");
      await rejects(c.generateKeyPair(uniq("x"), "ED25519" as KeyPairAlg), "INVALID_ARGUMENT");
      await rejects(c.sign(masterLabel, Buffer.from("x")), "INVALID_ARGUMENT", /not a key pair/);
      await rejects(c.keySetKcvs({ kind: "derived", master: label, cardId, kvn: 1 }), "INVALID_ARGUMENT", /not a secret key/);
      const spki = await c.publicKey(label);
      const other = await makeCustody();
      try {
        assert.equal(hex(await other.publicKey(label)), hex(spki));
        const sig = await other.sign(label, Buffer.from("tbs"));
        assert.ok(verify("sha256", Buffer.from("tbs"), createPublicKey({ key: Buffer.from(spki), format: "der", type: "spki" }), Buffer.from(sig)));
        assert.ok((await other.listKeys()).some((k) => k.label === label && k.kind === "keyPair" && k.type === "P256" && k.extractable === "never"));
      } finally {
        await other.close();
      }
      await c.deleteKey(label);
    });

    test("batch re-wrap (card-key rotation): every key of mixed algorithms and sizes, in order, all or nothing", async () => {
      const card1: DerivedKeySetRef = { kind: "derived", master: masterLabel, cardId, kvn: 1 };
      const card2: DerivedKeySetRef = { kind: "derived", master: masterLabel, cardId, kvn: 2 };
      const wk = (kvn: number): Uint8Array => derivePurposeKey(deriveCardKeySet(master, cardId, kvn).dek, cardId, kvn, PURPOSE.privateKeyWrap);
      const algs: KeyPairAlg[] = ["P256", "P384", "P256", "RSA2048", "P256", "P384"];
      const items: { wrapped: Uint8Array; alg: KeyPairAlg }[] = [];
      const spkis: string[] = [];
      for (const [i, alg] of algs.entries()) {
        const label = uniq(`batch-${i}`);
        await c.generateKeyPair(label, alg, { extractable: "wrapped", ephemeral: true });
        spkis.push(hex(await c.publicKey(label)));
        items.push({ wrapped: await c.wrapPrivateKey(label, { card: card1 }), alg });
        await c.deleteKey(label);
      }
      assert.deepEqual(await c.rewrapPrivateKeys([], { card: card1 }, { card: card2 }), []);
      const out = await c.rewrapPrivateKeys(items, { card: card1 }, { card: card2 });
      assert.equal(out.length, items.length);
      out.forEach((w, i) => {
        // byte-for-byte RFC 5649 under Sk2's wrap key (Node's KWP opens it), and the same key pair as before
        const priv = createPrivateKey({ key: Buffer.from(aesKeyUnwrapPad(wk(2), w)), format: "der", type: "pkcs8" });
        assert.equal(hex(createPublicKey(priv).export({ format: "der", type: "spki" })), spkis[i], `item ${i}`);
        assert.throws(() => aesKeyUnwrapPad(wk(1), w));
      });
      // one altered item refuses the whole batch and names it
      const bad = items.map((it) => ({ ...it, wrapped: Uint8Array.from(it.wrapped) }));
      bad[3].wrapped[10] ^= 1;
      await rejects(c.rewrapPrivateKeys(bad, { card: card1 }, { card: card2 }), "WRONG_KEY", /\b3\b/);
      await rejects(c.rewrapPrivateKeys(items, { card: card2 }, { card: card1 }), "WRONG_KEY");
    });

    // Seed 001 S8-S9 (embodiment 3, FIG. 10): a private key escrowed as E = KWP(escrow KEK, PKCS#8) is taken back
    // into custody from E alone; every check is against Node crypto and the original public key.
    const NODE_CURVE: Record<string, string> = { P256: "prime256v1", P384: "secp384r1" };
    const oaep = (pub: KeyObject, m: Uint8Array, oaepHash = "sha256", oaepLabel?: Buffer): Buffer =>
      publicEncrypt({ key: pub, padding: cryptoConstants.RSA_PKCS1_OAEP_PADDING, oaepHash, ...(oaepLabel ? { oaepLabel } : {}) }, m);
    const ecSpki = (curve: string): { privateKey: KeyObject; spki: Buffer } => {
      const k = generateKeyPairSync("ec", { namedCurve: curve });
      return { privateKey: k.privateKey, spki: k.publicKey.export({ format: "der", type: "spki" }) };
    };

    for (const alg of ["P256", "P384", "RSA2048"] as KeyPairAlg[]) {
      test(`unwrapPrivateKey ${alg} (seed 001 S8-S9): back from its escrow blob under a new label; publicKey, sign and decipher agree with Node; refusals create nothing`, async () => {
        const escrowValue = new Uint8Array(randomBytes(32));
        const escrow = uniq("escrow-kek");
        const otherKek = uniq("other-kek");
        await c.importSecretKey(escrow, { type: "aes", bits: 256, usage: ["wrap"] }, escrowValue);
        await c.createSecretKey(otherKek, { type: "aes", bits: 256, usage: ["wrap"] });
        const original = uniq(`escrowed-${alg}`);
        await c.generateKeyPair(original, alg, { extractable: "wrapped" });
        const spki = await c.publicKey(original);
        const pub = createPublicKey({ key: Buffer.from(spki), format: "der", type: "spki" });
        const blob = await c.wrapPrivateKey(original, { key: escrow });
        const underOther = await c.wrapPrivateKey(original, { key: otherKek });
        // E is RFC 5649 of the PKCS#8 of this very key pair (Node's KWP opens it)
        assert.equal(hex(createPublicKey(createPrivateKey({ key: Buffer.from(aesKeyUnwrapPad(escrowValue, blob)), format: "der", type: "pkcs8" })).export({ format: "der", type: "spki" })), hex(spki));
        assert.equal(await c.deleteKey(original), true);
        assert.equal(await c.hasKey(original), false);

        const label = uniq(`reproduced-${alg}`);
        const nothing = async (why: string): Promise<void> => assert.equal(await c.hasKey(label), false, `${why}: no key left behind`);
        // (d) a tampered blob, a blob under another storage key
        const tampered = Uint8Array.from(blob);
        tampered[10] ^= 1;
        await rejects(c.unwrapPrivateKey(label, tampered, alg, { key: escrow }), "WRONG_KEY");
        await nothing("tampered");
        await rejects(c.unwrapPrivateKey(label, underOther, alg, { key: escrow }, { extractable: "wrapped" }), "WRONG_KEY");
        await nothing("under another key");
        await rejects(c.unwrapPrivateKey(label, blob.subarray(0, blob.length - 8), alg, { key: escrow }), "WRONG_KEY");
        await nothing("truncated");
        // (e) expectSpki of another key of the same algorithm
        const stranger = alg === "RSA2048" ? generateKeyPairSync("rsa", { modulusLength: 2048 }).publicKey.export({ format: "der", type: "spki" }) : ecSpki(NODE_CURVE[alg]).spki;
        await rejects(c.unwrapPrivateKey(label, blob, alg, { key: escrow }, { expectSpki: new Uint8Array(stranger) }), "WRONG_KEY", /public key differs/);
        await nothing("expectSpki mismatch");
        // a blob that unwraps but holds another kind of key than the one asked for
        const wrongAlg: KeyPairAlg = alg === "P256" ? "P384" : alg === "P384" ? "RSA2048" : "P256";
        await rejects(c.unwrapPrivateKey(label, blob, wrongAlg, { key: escrow }), "WRONG_KEY");
        await nothing("another algorithm");
        // the escrow KEK must be a wrapping key that exists
        await rejects(c.unwrapPrivateKey(label, blob, alg, { key: masterLabel }), "NOT_PERMITTED", /wrap/);
        await rejects(c.unwrapPrivateKey(label, blob, alg, { key: uniq("no-kek") }), "NOT_FOUND");
        await nothing("unusable KEK");

        const info = await c.unwrapPrivateKey(label, blob, alg, { key: escrow }, { extractable: "wrapped", expectSpki: spki });
        assert.deepEqual(info, { label, kind: "keyPair", type: alg, extractable: "wrapped" });
        assert.deepEqual(await c.keyInfo(label), info);
        await rejects(c.unwrapPrivateKey(label, blob, alg, { key: escrow }), "EXISTS");
        // (a) the same public key
        assert.equal(hex(await c.publicKey(label)), hex(spki));
        // (b) it signs for the original public key
        const data = randomBytes(100);
        const sig = await c.sign(label, data);
        assert.ok(verify(alg === "P384" ? "sha384" : "sha256", data, pub, Buffer.from(sig)), "Node verifies the signature under the original SPKI");
        assert.ok(!verify(alg === "P384" ? "sha384" : "sha256", randomBytes(100), pub, Buffer.from(sig)));
        // (c) decipher: the FIG. 10 key check
        if (alg === "RSA2048") {
          for (const m of [randomBytes(32), Buffer.alloc(0), randomBytes(256 - 2 * 32 - 2)]) assert.equal(hex(await c.decipher(label, oaep(pub, m))), hex(m), `OAEP-SHA-256 of ${m.length} bytes`);
          const ct = oaep(pub, randomBytes(32));
          const altered = Buffer.from(ct);
          altered[100] ^= 1;
          await rejects(c.decipher(label, altered), "WRONG_KEY");
          await rejects(c.decipher(label, oaep(pub, randomBytes(32), "sha1")), "WRONG_KEY");
          await rejects(c.decipher(label, oaep(pub, randomBytes(32), "sha256", Buffer.from("label"))), "WRONG_KEY");
          await rejects(c.decipher(label, ct.subarray(1)), "INVALID_ARGUMENT");
        } else {
          const size = alg === "P256" ? 32 : 48;
          for (let i = 0; i < 3; i++) {
            const eph = ecSpki(NODE_CURVE[alg]);
            const expected = diffieHellman({ privateKey: eph.privateKey, publicKey: pub });
            const got = await c.decipher(label, eph.spki);
            assert.equal(got.length, size);
            assert.equal(hex(got), hex(expected), "Node's ECDH with an ephemeral key gives the same shared secret");
          }
          await rejects(c.decipher(label, ecSpki(alg === "P256" ? "secp384r1" : "prime256v1").spki), "INVALID_ARGUMENT", /curve/);
          await rejects(c.decipher(label, randomBytes(91)), "INVALID_ARGUMENT");
          const offCurve = Buffer.from(ecSpki(NODE_CURVE[alg]).spki);
          offCurve[offCurve.length - 1] ^= 1;
          await rejects(c.decipher(label, offCurve), "INVALID_ARGUMENT");
        }
        await rejects(c.decipher(escrow, randomBytes(32)), "INVALID_ARGUMENT", /not a key pair/);
        // extractable "wrapped": it leaves again only wrapped, as the same key pair
        const again = await c.wrapPrivateKey(label, { key: escrow });
        assert.equal(
          hex(createPublicKey(createPrivateKey({ key: Buffer.from(aesKeyUnwrapPad(escrowValue, again)), format: "der", type: "pkcs8" })).export({ format: "der", type: "spki" })),
          hex(spki),
        );
        // persistent: another instance over the same store has it and signs with it
        const other = await makeCustody();
        try {
          assert.deepEqual(await other.keyInfo(label), info);
          assert.ok(verify(alg === "P384" ? "sha384" : "sha256", data, pub, Buffer.from(await other.sign(label, data))));
        } finally {
          await other.close();
        }
        // (f) deleted: it no longer signs or deciphers
        assert.equal(await c.deleteKey(label), true);
        assert.equal(await c.hasKey(label), false);
        await rejects(c.sign(label, data), "NOT_FOUND");
        await rejects(c.decipher(label, randomBytes(32)), "NOT_FOUND");
        await rejects(c.publicKey(label), "NOT_FOUND");
        for (const k of [escrow, otherKek]) await c.deleteKey(k);
      });
    }

    test("unwrapPrivateKey: ephemeral and from a card's wrap key (Sk[PRk]); by default not extractable; bad arguments", async () => {
      const card1: DerivedKeySetRef = { kind: "derived", master: masterLabel, cardId, kvn: 1 };
      const source = uniq("credential");
      await c.generateKeyPair(source, "P256", { extractable: "wrapped", ephemeral: true });
      const spki = await c.publicKey(source);
      const skPrk = await c.wrapPrivateKey(source, { card: card1 });
      await c.deleteKey(source);
      const label = uniq("eph-reproduced");
      const other = await makeCustody();
      try {
        await rejects(other.unwrapPrivateKey(label, skPrk, "P256", { card: { ...card1, kvn: 2 } }, { ephemeral: true }), "WRONG_KEY");
        assert.equal(await other.hasKey(label), false);
        const info = await other.unwrapPrivateKey(label, skPrk, "P256", { card: card1 }, { ephemeral: true });
        assert.deepEqual(info, { label, kind: "keyPair", type: "P256", extractable: "never" });
        assert.equal(hex(await other.publicKey(label)), hex(spki));
        await rejects(other.wrapPrivateKey(label, { card: card1 }), "NOT_PERMITTED", /not extractable/);
        const pub = createPublicKey({ key: Buffer.from(spki), format: "der", type: "spki" });
        assert.ok(verify("sha256", Buffer.from("tbs"), pub, Buffer.from(await other.sign(label, Buffer.from("tbs")))));
        const eph = ecSpki("prime256v1");
        assert.equal(hex(await other.decipher(label, eph.spki)), hex(diffieHellman({ privateKey: eph.privateKey, publicKey: pub })));
      } finally {
        await other.close();
      }
      assert.equal(await c.hasKey(label), false, "an ephemeral key is not in another instance");
      const later = await makeCustody();
      try {
        assert.equal(await later.hasKey(label), false, "nor in the store");
      } finally {
        await later.close();
      }
      await rejects(c.unwrapPrivateKey("bad label!", skPrk, "P256", { card: card1 }), "INVALID_ARGUMENT");
      await rejects(c.unwrapPrivateKey(uniq("x"), skPrk, "ED25519" as KeyPairAlg, { card: card1 }), "INVALID_ARGUMENT");
      await rejects(c.unwrapPrivateKey(uniq("x"), skPrk, "P256", { card: card1 }, { extractable: "always" as "never" }), "INVALID_ARGUMENT");
      await rejects(c.unwrapPrivateKey(uniq("x"), skPrk, "P256", { card: card1 }, { expectSpki: new Uint8Array(randomBytes(40)) }), "INVALID_ARGUMENT", /expectSpki/);
      await rejects(c.unwrapPrivateKey(masterLabel, skPrk, "P256", { card: card1 }), "EXISTS");
    });

    test("an ephemeral key pair lives only in its custody instance", async () => {
      const label = uniq("eph");
      const other = await makeCustody();
      try {
        await other.generateKeyPair(label, "P256", { extractable: "wrapped", ephemeral: true });
        assert.equal(await other.hasKey(label), true);
        assert.equal((await other.wrapPrivateKey(label, { card: { kind: "derived", master: masterLabel, cardId, kvn: 1 } })).length > 0, true);
      } finally {
        await other.close();
      }
      assert.equal(await c.hasKey(label), false);
      const again = await makeCustody();
      try {
        assert.equal(await again.hasKey(label), false);
      } finally {
        await again.close();
      }
    });

    test("key pair usage (issue 17 §1, least usage): a generated key signs only, a decipher-only key does not sign, an unwrapped key does both", async () => {
      const peer = (): Uint8Array => new Uint8Array(generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey.export({ format: "der", type: "spki" }));
      const signer = uniq("sign-only");
      await c.generateKeyPair(signer, "P256");
      await c.sign(signer, randomBytes(16));
      await rejects(c.decipher(signer, peer()), "NOT_PERMITTED");
      const device = uniq("decipher-only");
      await c.generateKeyPair(device, "P256", { usage: ["decipher"] });
      assert.equal((await c.decipher(device, peer())).length, 32);
      await rejects(c.sign(device, randomBytes(16)), "NOT_PERMITTED");
      // the usage persists: a new instance over the same store enforces it too
      const other = await makeCustody();
      try {
        await rejects(other.sign(device, randomBytes(16)), "NOT_PERMITTED");
        assert.equal((await other.decipher(device, peer())).length, 32);
      } finally {
        await other.close();
      }
      const kek = uniq("kek");
      await c.createSecretKey(kek, { type: "aes", bits: 256, usage: ["wrap"] });
      const tmp = uniq("tmp");
      await c.generateKeyPair(tmp, "P256", { extractable: "wrapped", ephemeral: true });
      const blob = await c.wrapPrivateKey(tmp, { key: kek });
      const both = uniq("both");
      await c.unwrapPrivateKey(both, blob, "P256", { key: kek }, { ephemeral: true });
      await c.sign(both, randomBytes(16));
      assert.equal((await c.decipher(both, peer())).length, 32);
      await rejects(c.unwrapPrivateKey(uniq("unwrapped-sign"), blob, "P256", { key: kek }, { ephemeral: true, usage: ["sign"] }), "INVALID_ARGUMENT", /usage/);
      for (const usage of [[], ["encrypt"]] as unknown as ("sign" | "decipher")[][]) await rejects(c.generateKeyPair(uniq("bad"), "P256", { usage }), "INVALID_ARGUMENT", /usage/);
      for (const l of [signer, device, tmp, both, kek]) await c.deleteKey(l);
    });
  });
}
