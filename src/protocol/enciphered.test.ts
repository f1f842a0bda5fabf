// Enciphered data under the card's key pair (seed 001 claims 41, 48): enciphered with the public key (certificate
// or SPKI) of a virtual card's key management key, opened only by that card doing the private-key operation
// (ECDH for P-256 / P-384, raw RSA for RSA-2048 with OAEP decoded here). Wrong card, altered envelope, missing
// PIN and malformed input are each refused with a clear error.
import { test } from "node:test";
import assert from "node:assert/strict";
import { constants, createHash, generateKeyPairSync, privateDecrypt, randomBytes, type KeyObject } from "node:crypto";
import { join } from "node:path";
import fc from "fast-check";
import { createCard, TRANSPORT_KEY_SET } from "../card/card.ts";
import type { KeyAlg, ScpKeySet } from "./types.ts";
import { CertificationAuthority } from "../ca/authority.ts";
import { MemoryCaRepository } from "../ca/repository.ts";
import { nodeSigner } from "../ca/signer.ts";
import { deliverOnline, personalise, runScript } from "../issuer/card-scripts.ts";
import { tlv } from "./tlv.ts";
import { tempDir } from "../../test/helpers.ts";
import { decipherWithCard, encipherForCard, EncipheredError, envelopeInfo, parseEnvelope, recipientOf } from "./enciphered.ts";
import { PIV_AID, PivClient, putDataCommand, SLOT } from "./piv/client.ts";

const dir = tempDir("cardkms-enciphered-");
const PIN = "123456";
let n = 0;

const ca = CertificationAuthority.createRoot({
  signer: nodeSigner(generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey),
  repository: new MemoryCaRepository(),
  subject: { commonName: "enciphered test CA" },
  validityDays: 30,
});

function keyOf(alg: KeyAlg): { privateKey: KeyObject; publicKey: KeyObject } {
  if (alg === "P256" || alg === "P384") return generateKeyPairSync("ec", { namedCurve: alg === "P256" ? "P-256" : "P-384" });
  return generateKeyPairSync("rsa", { modulusLength: alg === "RSA2048" ? 2048 : 3072 });
}

/** A personalised virtual card with a key management key (9D, or `slot`) of `alg` and its certificate. */
async function cardWith(alg: KeyAlg, opts: { cert?: boolean; slot?: number } = {}) {
  const vc = createCard(join(dir, `card-${n++}.card`), randomBytes(32));
  const transmit = (a: Uint8Array) => vc.transmit(a);
  const sk: ScpKeySet = { kvn: 1, enc: randomBytes(16).toString("hex"), mac: randomBytes(16).toString("hex"), dek: randomBytes(16).toString("hex") };
  await personalise(transmit, TRANSPORT_KEY_SET, sk);
  const kp = keyOf(alg);
  const spki = new Uint8Array(kp.publicKey.export({ format: "der", type: "spki" }));
  const cert = (await (await ca).issue({ subject: { commonName: `holder ${n}` }, publicKey: spki, profile: "keyManagement" })).certificate;
  const pkcs8 = new Uint8Array(kp.privateKey.export({ format: "der", type: "pkcs8" }));
  const slot = opts.slot ?? SLOT.keyManagement;
  if (slot === SLOT.keyManagement) await deliverOnline(transmit, sk, { keyRef: slot, alg, pkcs8, cert: opts.cert === false ? undefined : cert });
  else {
    // A retired key management key (82-95): its certificate object (5FC10D + n) written by PUT DATA under SCP03.
    await deliverOnline(transmit, sk, { keyRef: slot, alg, pkcs8 });
    const put = putDataCommand(0x5fc10d + (slot - 0x82), new Uint8Array(Buffer.concat([tlv(0x70, cert), tlv(0x71, Uint8Array.of(0)), tlv(0xfe)])));
    await runScript(transmit, { keys: sk, aid: PIV_AID, commands: [put], check: (r) => assert.equal(r[0].sw, 0x9000) });
  }
  const piv = new PivClient(transmit);
  await piv.select();
  return { vc, transmit, piv, cert, spki, kp };
}

const isErr = (code: EncipheredError["code"], re?: RegExp) => (e: unknown) => e instanceof EncipheredError && e.code === code && (!re || re.test(e.message));

for (const alg of ["P256", "P384", "RSA2048"] as const) {
  test(`${alg}: enciphered to the card's certificate, only the card opens it`, async () => {
    const c = await cardWith(alg);
    try {
      const plaintext = new Uint8Array(Buffer.from(`salary slip 2026-05 for ${alg}: ¥ 412,000 — confidential`, "utf8"));
      const aad = new Uint8Array(Buffer.from("user-1/payslip-2026-05"));
      const env = encipherForCard(c.cert, plaintext, aad);
      const info = envelopeInfo(env);
      assert.equal(info.key, alg);
      assert.equal(info.kid, createHash("sha256").update(c.spki).digest("hex"), "kid is the SHA-256 of the recipient's SPKI");
      assert.equal(Buffer.from(info.aad).toString(), "user-1/payslip-2026-05");
      assert.equal(Buffer.from(env).indexOf(Buffer.from(plaintext)), -1, "no plaintext in the envelope");
      assert.equal(Buffer.from(env).indexOf(Buffer.from(Buffer.from(plaintext).toString("base64url").slice(0, 16))), -1);

      // the card must have the PIN for its key management key
      await assert.rejects(decipherWithCard(c.piv, SLOT.keyManagement, env), isErr("card-refused", /PIN/));
      const out = await decipherWithCard(c.piv, SLOT.keyManagement, env, { pin: PIN, aad });
      assert.deepEqual(out, plaintext);
      // from a bare transmit function as well (selects PIV itself), and from the SPKI instead of the certificate
      const env2 = encipherForCard(c.spki, plaintext);
      await c.piv.verifyPin(PIN);
      assert.deepEqual(await decipherWithCard(c.transmit, SLOT.keyManagement, env2), plaintext);
      // the expected associated data is checked
      await assert.rejects(decipherWithCard(c.piv, SLOT.keyManagement, env, { aad: Buffer.from("user-1/other") }), isErr("aad-mismatch"));
    } finally {
      c.vc.close();
    }
  });
}

test("RSA: the card's raw RSA result decodes as OAEP to the very content key OpenSSL would", async () => {
  // Interop of the host-side OAEP decoding with OpenSSL's: the envelope's ek opens with privateDecrypt too.
  const c = await cardWith("RSA2048");
  try {
    const env = parseEnvelope(encipherForCard(c.cert, Buffer.from("x")));
    const cek = privateDecrypt({ key: c.kp.privateKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256" }, env.ek!);
    assert.equal(cek.length, 32);
    await c.piv.verifyPin(PIN);
    const em = await c.piv.rsaDecipher(SLOT.keyManagement, "RSA2048", env.ek!);
    assert.equal(em.length, 256);
    assert.equal(em[0], 0, "EM starts with 00");
  } finally {
    c.vc.close();
  }
});

test("a retired key management key (82) deciphers what was enciphered to it; its certificate is found in 5FC10D", async () => {
  const c = await cardWith("P256", { slot: 0x82 });
  try {
    assert.ok(Buffer.from((await c.piv.readCertificate(0x82))!).equals(Buffer.from(c.cert)));
    const env = encipherForCard(c.cert, Buffer.from("enciphered before the key was updated"));
    await c.piv.verifyPin(PIN);
    assert.equal(Buffer.from(await decipherWithCard(c.piv, 0x82, env)).toString(), "enciphered before the key was updated");
    // 9D is empty on this card: named, not a crash
    await assert.rejects(decipherWithCard(c.piv, SLOT.keyManagement, env), isErr("wrong-card", /no key in that slot/));
  } finally {
    c.vc.close();
  }
});

test("another card (another key) cannot decipher: a clear error, no crash", async () => {
  const a = await cardWith("P256");
  const b = await cardWith("P256");
  const bNoCert = await cardWith("P256", { cert: false });
  const r = await cardWith("RSA2048");
  try {
    const env = encipherForCard(a.cert, Buffer.from("for card A only"));
    await b.piv.verifyPin(PIN);
    await assert.rejects(decipherWithCard(b.piv, SLOT.keyManagement, env), isErr("wrong-card", /enciphered for key [0-9a-f]{16}…, but the card's key in slot 9D is/));
    // without the certificate check the card computes a wrong secret, and the envelope simply does not open
    await assert.rejects(decipherWithCard(b.piv, SLOT.keyManagement, env, { checkKid: false }), isErr("tampered", /does not open/));
    await bNoCert.piv.verifyPin(PIN);
    await assert.rejects(decipherWithCard(bNoCert.piv, SLOT.keyManagement, env), isErr("tampered", /or this card does not hold the recipient key/));
    // an RSA card given an EC envelope (and the other way round): wrong key type, named as such
    await r.piv.verifyPin(PIN);
    await assert.rejects(decipherWithCard(r.piv, SLOT.keyManagement, env, { checkKid: false }), isErr("wrong-card", /key type/));
    const rsaEnv = encipherForCard(r.cert, Buffer.from("for the RSA card"));
    await assert.rejects(decipherWithCard(a.piv, SLOT.keyManagement, rsaEnv), isErr("wrong-card"));
    // an empty slot
    await a.piv.verifyPin(PIN);
    await assert.rejects(decipherWithCard(a.piv, 0x9a, env), isErr("wrong-card", /no key in that slot/));
    // the rightful card still opens it afterwards
    assert.equal(Buffer.from(await decipherWithCard(a.piv, SLOT.keyManagement, env)).toString(), "for card A only");
  } finally {
    for (const c of [a, b, bNoCert, r]) c.vc.close();
  }
});

/** Flips one bit of a base64url field of the envelope JSON. */
function tamper(env: Uint8Array, field: string, byte = 0): Uint8Array {
  const o = JSON.parse(Buffer.from(env).toString()) as Record<string, string>;
  const b = Buffer.from(o[field], "base64url");
  b[byte % b.length] ^= 0x01;
  o[field] = b.toString("base64url");
  return new Uint8Array(Buffer.from(JSON.stringify(o)));
}

test("a tampered envelope is refused, whichever field was changed", async () => {
  const ec = await cardWith("P256");
  const rsa = await cardWith("RSA2048");
  try {
    for (const [c, fields] of [
      [ec, ["ct", "tag", "iv", "aad", "epk"]],
      [rsa, ["ct", "tag", "iv", "aad", "ek"]],
    ] as const) {
      const env = encipherForCard(c.cert, Buffer.from("ledger entry #42: 1,000,000 JPY to account 0815"), Buffer.from("ledger/42"));
      await c.piv.verifyPin(PIN);
      for (const f of fields) {
        for (const byte of [0, 7, 30]) {
          const t = tamper(env, f, byte);
          await assert.rejects(decipherWithCard(c.piv, SLOT.keyManagement, t), (e: unknown) => e instanceof EncipheredError && (e.code === "tampered" || e.code === "malformed"), `${f} byte ${byte}`);
        }
      }
      // the key type switched in the header
      const o = JSON.parse(Buffer.from(env).toString()) as Record<string, unknown>;
      await assert.rejects(decipherWithCard(c.piv, SLOT.keyManagement, Buffer.from(JSON.stringify({ ...o, v: 2 }))), isErr("malformed", /version 2/));
      await assert.rejects(decipherWithCard(c.piv, SLOT.keyManagement, Buffer.from(JSON.stringify({ ...o, extra: "x" }))), isErr("malformed", /extra/));
      // truncated ciphertext
      const short = {
        ...o,
        ct: Buffer.from(o.ct as string, "base64url")
          .subarray(1)
          .toString("base64url"),
      };
      await assert.rejects(decipherWithCard(c.piv, SLOT.keyManagement, Buffer.from(JSON.stringify(short))), isErr("tampered"));
      // and the original still opens
      assert.match(Buffer.from(await decipherWithCard(c.piv, SLOT.keyManagement, env)).toString(), /ledger entry #42/);
    }
  } finally {
    ec.vc.close();
    rsa.vc.close();
  }
});

test("malformed envelopes and unsupported recipients are named", () => {
  assert.throws(() => parseEnvelope(Buffer.from("hello")), isErr("malformed", /not JSON/));
  assert.throws(() => parseEnvelope(Buffer.from("[]")), isErr("malformed", /not a JSON object/));
  assert.throws(
    () => parseEnvelope(Buffer.from(JSON.stringify({ format: "my secret: 4711" }))),
    (e: unknown) => e instanceof EncipheredError && e.code === "malformed" && /format/.test(e.message) && !/4711/.test(e.message),
    "the input is not echoed",
  );
  assert.throws(
    () => parseEnvelope(Buffer.from(JSON.stringify({ format: "cardkms-enciphered", v: 1, alg: "ROT13" }))),
    (e: unknown) => e instanceof EncipheredError && e.code === "unsupported" && !/ROT13/.test(e.message),
  );
  const ed = generateKeyPairSync("ed25519").publicKey;
  assert.throws(() => encipherForCard(ed, Buffer.from("x")), isErr("unsupported", /not one a card holds/));
  assert.throws(() => recipientOf(Buffer.from("not DER")), isErr("unsupported"));
  const p521 = generateKeyPairSync("ec", { namedCurve: "P-521" }).publicKey;
  assert.throws(() => encipherForCard(p521, Buffer.from("x")), isErr("unsupported"));
});

test("property: any plaintext and associated data come back byte-exact from the card (P-256)", async () => {
  const c = await cardWith("P256");
  try {
    await c.piv.verifyPin(PIN);
    const r = recipientOf(c.cert);
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ maxLength: 600 }), fc.uint8Array({ maxLength: 40 }), async (plaintext, aad) => {
        const env = encipherForCard(r, plaintext, aad);
        assert.deepEqual(await decipherWithCard(c.piv, SLOT.keyManagement, env, { aad }), plaintext);
      }),
      { numRuns: 25 },
    );
  } finally {
    c.vc.close();
  }
});
