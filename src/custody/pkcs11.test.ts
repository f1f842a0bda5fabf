// PKCS#11 custody against SoftHSM2. scripts/softhsm-up.sh initialises a token in a temporary directory; when
// SoftHSM2 is missing these tests FAIL (scripts/system-deps.sh installs it), they never skip.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type * as Pkcs11Types from "pkcs11js";
import { custodyContract, rejects } from "../../test/support/custody-contract.ts";
import { Pkcs11Custody } from "./pkcs11.ts";
import { SoftwareCustody } from "./software.ts";
import type { DerivedKeySetRef, KeyCustody } from "./custody.ts";

const root = join(dirname(fileURLToPath(import.meta.url)), "../..");
const dir = mkdtempSync(join(tmpdir(), "cardkms-softhsm-"));
after(() => rmSync(dir, { recursive: true, force: true }));

// SoftHSM reads SOFTHSM2_CONF at C_Initialize: set the environment before any custody opens.
const out = execFileSync("bash", [join(root, "scripts/softhsm-up.sh"), join(dir, "hsm")], { encoding: "utf8", env: { ...process.env, CARDKMS_PKCS11_TOKEN: "", CARDKMS_PKCS11_PIN: "" } });
const env: Record<string, string> = {};
for (const m of out.matchAll(/^export (\w+)=(.*)$/gm)) env[m[1]] = m[2].replace(/^'(.*)'$/, "$1");
Object.assign(process.env, env);
const opts = { module: env.CARDKMS_PKCS11_MODULE, tokenLabel: env.CARDKMS_PKCS11_TOKEN, pin: env.CARDKMS_PKCS11_PIN };

test("softhsm-up.sh printed a usable environment and is idempotent", () => {
  assert.match(env.SOFTHSM2_CONF ?? "", /softhsm2\.conf$/);
  assert.equal(env.CARDKMS_PKCS11_TOKEN, "cardkms-test");
  const again = execFileSync("bash", [join(root, "scripts/softhsm-up.sh"), join(dir, "hsm")], { encoding: "utf8", env: { ...process.env, CARDKMS_PKCS11_TOKEN: "", CARDKMS_PKCS11_PIN: "" } });
  assert.equal(again, out);
});

test("pkcs11: a wrong PIN is a clear LOGIN_FAILED naming CKR_PIN_INCORRECT; an unknown token is UNAVAILABLE", async () => {
  const e = await rejects(Pkcs11Custody.open({ ...opts, pin: "9999" }), "LOGIN_FAILED", /C_Login.*CKR_PIN_INCORRECT/);
  assert.ok(!e.message.includes("9999"));
  await rejects(Pkcs11Custody.open({ ...opts, tokenLabel: "no-such-token" }), "UNAVAILABLE", /no token labelled no-such-token .*tokens: .*cardkms-test/);
  await rejects(Pkcs11Custody.open({ ...opts, module: "/nonexistent/lib.so" }), "UNAVAILABLE", /cannot load/);
  // With another instance logged in, the token does not check the PIN again: custody still does.
  const c = await Pkcs11Custody.open(opts);
  try {
    await rejects(Pkcs11Custody.open({ ...opts, pin: "9999" }), "LOGIN_FAILED", /CKR_PIN_INCORRECT/);
    const d = await Pkcs11Custody.open(opts);
    await d.close();
    assert.equal(await c.hasKey("anything"), false, "closing one instance leaves the other usable");
  } finally {
    await c.close();
  }
});

custodyContract("PKCS#11 (SoftHSM2)", () => Pkcs11Custody.open(opts));

test("pkcs11: masters and CA keys are sensitive and non-extractable on the token: CKA_VALUE is refused", async () => {
  const c = await Pkcs11Custody.open(opts);
  const master = `m-${randomBytes(4).toString("hex")}`;
  const ca = `ca-${randomBytes(4).toString("hex")}`;
  await c.createSecretKey(master, { type: "aes", bits: 256 });
  await c.generateKeyPair(ca, "P384");
  await c.close();

  // Straight through pkcs11js, as any other application with the PIN would.
  const p = createRequire(import.meta.url)("pkcs11js") as typeof Pkcs11Types;
  const mod = new p.PKCS11();
  mod.load(opts.module);
  mod.C_Initialize();
  try {
    const slot = mod.C_GetSlotList(true).find((s) => mod.C_GetTokenInfo(s).label.trim() === opts.tokenLabel);
    assert.ok(slot);
    const s = mod.C_OpenSession(slot, p.CKF_SERIAL_SESSION | p.CKF_RW_SESSION);
    mod.C_Login(s, p.CKU_USER, opts.pin);
    for (const [label, cls] of [
      [master, p.CKO_SECRET_KEY],
      [ca, p.CKO_PRIVATE_KEY],
    ] as const) {
      mod.C_FindObjectsInit(s, [
        { type: p.CKA_LABEL, value: label },
        { type: p.CKA_CLASS, value: cls },
      ]);
      const [h] = mod.C_FindObjects(s, 1);
      mod.C_FindObjectsFinal(s);
      assert.ok(h, `${label} is on the token`);
      const a = mod.C_GetAttributeValue(s, h, [{ type: p.CKA_TOKEN }, { type: p.CKA_SENSITIVE }, { type: p.CKA_EXTRACTABLE }, { type: p.CKA_NEVER_EXTRACTABLE }]);
      assert.deepEqual(
        a.map((x) => x.value[0]),
        [1, 1, 0, 1],
        `${label}: CKA_TOKEN, CKA_SENSITIVE, !CKA_EXTRACTABLE, CKA_NEVER_EXTRACTABLE`,
      );
      assert.throws(() => mod.C_GetAttributeValue(s, h, [{ type: p.CKA_VALUE }]), /CKR_ATTRIBUTE_SENSITIVE/);
    }
    mod.C_CloseSession(s);
  } finally {
    mod.C_Finalize();
  }
});

test("pkcs11: a key taken in by unwrapPrivateKey is a sensitive token object that signs and deciphers; a generated key pair does not decipher", async () => {
  const c = await Pkcs11Custody.open(opts);
  const kek = `escrow-${randomBytes(4).toString("hex")}`;
  const source = `src-${randomBytes(4).toString("hex")}`;
  const label = `back-${randomBytes(4).toString("hex")}`;
  try {
    await c.createSecretKey(kek, { type: "aes", bits: 256, usage: ["wrap"] });
    await c.generateKeyPair(source, "P384", { extractable: "wrapped" });
    const spki = await c.publicKey(source);
    const blob = await c.wrapPrivateKey(source, { key: kek });
    await c.deleteKey(source);
    await c.unwrapPrivateKey(label, blob, "P384", { key: kek }, { expectSpki: spki });
    const ca = `ca-${randomBytes(4).toString("hex")}`;
    await c.generateKeyPair(ca, "P256");
    const peer = generateKeyPairSync("ec", { namedCurve: "prime256v1" }).publicKey.export({ format: "der", type: "spki" });
    await rejects(c.decipher(ca, peer), "NOT_PERMITTED", /derive/);
    await c.deleteKey(ca);
  } finally {
    await c.close();
  }

  const p = createRequire(import.meta.url)("pkcs11js") as typeof Pkcs11Types;
  const mod = new p.PKCS11();
  mod.load(opts.module);
  mod.C_Initialize();
  try {
    const slot = mod.C_GetSlotList(true).find((s) => mod.C_GetTokenInfo(s).label.trim() === opts.tokenLabel);
    assert.ok(slot);
    const s = mod.C_OpenSession(slot, p.CKF_SERIAL_SESSION | p.CKF_RW_SESSION);
    mod.C_Login(s, p.CKU_USER, opts.pin);
    const find = (cls: number): Buffer[] => {
      mod.C_FindObjectsInit(s, [
        { type: p.CKA_LABEL, value: label },
        { type: p.CKA_CLASS, value: cls },
      ]);
      const hs = mod.C_FindObjects(s, 10);
      mod.C_FindObjectsFinal(s);
      return hs;
    };
    const [priv, ...more] = find(p.CKO_PRIVATE_KEY);
    assert.ok(priv, "the private key is on the token (seen from another session)");
    assert.equal(more.length, 0, "one private key object: the session object it was unwrapped as is gone");
    const a = mod.C_GetAttributeValue(s, priv, [{ type: p.CKA_TOKEN }, { type: p.CKA_PRIVATE }, { type: p.CKA_SENSITIVE }, { type: p.CKA_EXTRACTABLE }, { type: p.CKA_SIGN }, { type: p.CKA_DERIVE }]);
    assert.deepEqual(
      a.map((x) => x.value[0]),
      [1, 1, 1, 0, 1, 1],
      "CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE, !CKA_EXTRACTABLE (default never), CKA_SIGN, CKA_DERIVE",
    );
    assert.throws(() => mod.C_GetAttributeValue(s, priv, [{ type: p.CKA_VALUE }]), /CKR_ATTRIBUTE_SENSITIVE/);
    const [pub] = find(p.CKO_PUBLIC_KEY);
    assert.ok(pub, "with its public key object");
    assert.equal(mod.C_GetAttributeValue(s, pub, [{ type: p.CKA_TOKEN }])[0].value[0], 1);
    mod.C_CloseSession(s);
  } finally {
    mod.C_Finalize();
  }
  const d = await Pkcs11Custody.open(opts);
  try {
    await d.deleteKey(label);
    await d.deleteKey(kek);
  } finally {
    await d.close();
  }
});

test("pkcs11 and software custody derive the same card keys, PUT KEY data and session from the same master", async () => {
  const master = new Uint8Array(randomBytes(16));
  const label = `shared-${randomBytes(4).toString("hex")}`;
  const sw = await SoftwareCustody.open({ path: join(dir, "ks.json"), key: randomBytes(32).toString("hex") });
  const hsm = await Pkcs11Custody.open(opts);
  const both: KeyCustody[] = [sw, hsm];
  try {
    for (const c of both) await c.importSecretKey(label, { type: "aes", bits: 128 }, master);
    const cardId = randomBytes(8).toString("hex");
    const k1: DerivedKeySetRef = { kind: "derived", master: label, cardId, kvn: 1 };
    const k2: DerivedKeySetRef = { kind: "derived", master: label, cardId, kvn: 2, bits: 256 };
    const hc = new Uint8Array(randomBytes(8)),
      cc = new Uint8Array(randomBytes(8));
    const [a, b] = await Promise.all(
      both.map(async (c) => ({
        kcv1: await c.keySetKcvs(k1),
        kcv2: await c.keySetKcvs(k2),
        put: Buffer.from((await c.putKeyData(k1, k2)).data).toString("hex"),
        session: Buffer.from((await c.scp03Session(k2, hc, cc)).sMac).toString("hex"),
      })),
    );
    assert.deepEqual(a, b);
  } finally {
    for (const c of both) await c.close();
  }
});
