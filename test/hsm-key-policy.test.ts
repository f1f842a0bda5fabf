// Issue 17 §1-2 on SoftHSM2: the key policy of the PKCS#11 custody, read back and attacked.
//   - the custody self-test, printed: what this token refuses and what it does not;
//   - a second process holding the user PIN attacks the issuer's real keys (test/fixtures/pin-holder.ts): every
//     attack SoftHSM2 can refuse is refused, and the ones that succeed are exactly the paths the self-test reports
//     open (with proof that they are real: the card key's KCV, the escrowed key's public key);
//   - the attributes of every object the project makes on the token, read back as each is made (stored keys, card
//     keys and purpose keys derived per card, credential keys, keys unwrapped for a reproduction or a re-wrap, ECDH
//     secrets) against the template of its role;
//   - the server refuses to start on a token with an open path it was not told to accept.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createRequire } from "node:module";
import { join } from "node:path";
import { generateKeyPairSync } from "node:crypto";
import type * as Pkcs11Types from "pkcs11js";
import { Pkcs11Custody } from "../src/custody/pkcs11.ts";
import { describeSelfTest, selfTestRefusal, WEAK_STORED_KEYS, type CustodySelfTest } from "../src/custody/pkcs11-selftest.ts";
import type { DerivedKeySetRef } from "../src/custody/custody.ts";
import { ESCROW_KEK_LABEL, REPRODUCTION_DEVICE_KEY_LABEL, keyCheckInCustody } from "../src/recovery/service.ts";
import { DEFAULT_CONFIG, type IssuerConfig } from "../src/server/config.ts";
import { startIssuerServer } from "../src/server/main.ts";
import { testEngines } from "./support/store-testing.ts";
import { api, expect, issueAndPersonalise, issuerApiEnv, keygenOverApi, registeredData } from "./api-env.ts";
import { SOFTHSM2_OPEN_PATHS, softhsmToken } from "./custody-env.ts";
import { runCli, tempDir } from "./helpers.ts";
import type { Attempt, Input } from "./fixtures/pin-holder.ts";

const ROOT = join(import.meta.dirname, "..");
const p = createRequire(import.meta.url)("pkcs11js") as typeof Pkcs11Types;

async function openToken(): Promise<{ custody: Pkcs11Custody; env: Record<string, string> }> {
  const env = softhsmToken(join(tempDir("cardkms-hsm-policy-"), "hsm"));
  return { custody: await Pkcs11Custody.open({ module: env.CARDKMS_PKCS11_MODULE, tokenLabel: env.CARDKMS_PKCS11_TOKEN, pin: env.CARDKMS_PKCS11_PIN }), env };
}

const sqlite = () => testEngines().find((e) => e.name === "sqlite")!;
const openPaths = (r: CustodySelfTest): string[] => [...new Set(r.open.map((x) => x.path))].sort();

test("custody self-test on SoftHSM2: what the token enforces, printed; a stored key weaker than the policy is named", async () => {
  const { custody } = await openToken();
  try {
    await custody.createSecretKey("card-master", { type: "aes", bits: 256, usage: ["derive"] });
    await custody.generateKeyPair("ca-root", "P256");
    const r = await custody.selfTest();
    console.log(describeSelfTest(r));
    assert.deepEqual(r.features, { unwrapTemplate: true, deriveTemplate: false });
    // Refused: every path the token can refuse with the templates it accepts.
    for (const path of ["read-value", "wrap-unextractable", "set-attribute", "copy", "unwrap-readable", "decrypt-with-kek"])
      assert.ok(
        r.paths.filter((x) => x.path === path).every((x) => x.result === "refused"),
        `${path}: ${JSON.stringify(r.paths.filter((x) => x.path === path))}`,
      );
    assert.equal(r.paths.filter((x) => x.path === "set-attribute").length, 5);
    // Open on SoftHSM2 2.6: no CKA_DERIVE_TEMPLATE; an extractable key wraps under a key of the caller's.
    assert.deepEqual(openPaths(r), [...SOFTHSM2_OPEN_PATHS].sort());
    assert.ok(r.notes.some((n) => /CKA_DERIVE_TEMPLATE/.test(n)));
    assert.deepEqual(r.keys, [], "keys the project made are as strong as the policy");
    assert.equal(r.ok, false);

    // A key made without the policy (as every key was before it): modifiable and copyable, named.
    const raw = rawSession(custody.tokenLabel);
    try {
      raw.mod.C_GenerateKey(raw.session, { mechanism: p.CKM_AES_KEY_GEN }, [
        { type: p.CKA_CLASS, value: p.CKO_SECRET_KEY },
        { type: p.CKA_KEY_TYPE, value: p.CKK_AES },
        { type: p.CKA_VALUE_LEN, value: 32 },
        { type: p.CKA_TOKEN, value: true },
        { type: p.CKA_LABEL, value: "legacy-master" },
        { type: p.CKA_SENSITIVE, value: true },
        { type: p.CKA_EXTRACTABLE, value: false },
        { type: p.CKA_DERIVE, value: true },
      ]);
    } finally {
      raw.mod.C_CloseSession(raw.session);
    }
    const again = await custody.selfTest();
    assert.deepEqual(again.keys, [{ label: "legacy-master", problems: ["secret key is CKA_MODIFIABLE", "secret key is CKA_COPYABLE"] }]);
    assert.match(selfTestRefusal(again, { accept: SOFTHSM2_OPEN_PATHS }) ?? "", new RegExp(`${WEAK_STORED_KEYS} \\(legacy-master\\)`));
    assert.equal(selfTestRefusal(again, { accept: [...SOFTHSM2_OPEN_PATHS, WEAK_STORED_KEYS] }), undefined);
    assert.equal(selfTestRefusal(again, { developmentToken: true }), undefined);
    const refusal = selfTestRefusal(again, { accept: ["derive-readable"] }) ?? "";
    assert.match(refusal, /derive-then-wrap \(card master/);
    assert.match(refusal, /unwrap-then-wrap \(escrow KEK/);
    assert.doesNotMatch(refusal, /derive-readable/);
    assert.match(refusal, new RegExp(`token ${custody.tokenLabel}`));
  } finally {
    await custody.close();
  }
});

/** A session of this process's own on the token (the module is already initialised by custody), logged in. */
function rawSession(tokenLabel: string): { mod: Pkcs11Types.PKCS11; session: Buffer } {
  const mod = new p.PKCS11();
  mod.load(process.env.CARDKMS_PKCS11_MODULE ?? "/usr/lib/softhsm/libsofthsm2.so");
  try {
    mod.C_Initialize();
  } catch (e) {
    if (!/CKR_CRYPTOKI_ALREADY_INITIALIZED/.test((e as Error).message)) throw e;
  }
  const slot = mod.C_GetSlotList(true).find((s) => mod.C_GetTokenInfo(s).label.trim() === tokenLabel);
  assert.ok(slot, `token ${tokenLabel}`);
  const session = mod.C_OpenSession(slot, p.CKF_SERIAL_SESSION | p.CKF_RW_SESSION);
  try {
    mod.C_Login(session, p.CKU_USER, "1234");
  } catch (e) {
    if (!/CKR_USER_ALREADY_LOGGED_IN/.test((e as Error).message)) throw e;
  }
  return { mod, session };
}

/** Runs test/fixtures/pin-holder.ts in a process of its own, with the token's PIN: what the attacker got. */
function pinHolder(env: Record<string, string>, input: Input): Promise<Attempt[]> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      process.execPath,
      ["--import", "tsx", join(ROOT, "test/fixtures/pin-holder.ts")],
      { cwd: ROOT, env: { ...process.env, ...env }, maxBuffer: 1 << 20 },
      (err, stdout, stderr) => (err ? reject(new Error(`pin-holder failed: ${stderr || err.message}`)) : resolve(JSON.parse(stdout) as Attempt[])),
    );
    child.stdin!.end(JSON.stringify(input));
  });
}

test(
  "a holder of the HSM user PIN, in a process of its own, attacks the issuer's keys: SoftHSM2 refuses what it can, and what succeeds is exactly what the self-test reports open",
  { timeout: 10 * 60_000 },
  async (t) => {
    const api0 = await issuerApiEnv(sqlite(), { custody: "softhsm", webhookSecret: false });
    t.after(() => api0.close());
    const custody = api0.server.custody;
    const { cardId, card } = await issueAndPersonalise(api0, "Hanako Yamada");
    t.after(() => card.close());
    const keySet: DerivedKeySetRef = { kind: "derived", master: "card-master", cardId, kvn: 1 };
    const kcvs = await custody.keySetKcvs(keySet);
    // An escrow blob as escrow makes it: a private key generated in custody, wrapped under the escrow KEK.
    await custody.generateKeyPair("escrowed", "P256", { extractable: "wrapped", ephemeral: true });
    const escrowBlob = await custody.wrapPrivateKey("escrowed", { key: ESCROW_KEK_LABEL });
    const escrowedSpki = Buffer.from(await custody.publicKey("escrowed")).toString("hex");
    await custody.deleteKey("escrowed");

    const hsm = {
      CARDKMS_PKCS11_MODULE: process.env.CARDKMS_PKCS11_MODULE ?? "/usr/lib/softhsm/libsofthsm2.so",
      CARDKMS_PKCS11_TOKEN: (custody as Pkcs11Custody).tokenLabel,
      CARDKMS_PKCS11_PIN: "1234",
      SOFTHSM2_CONF: process.env.SOFTHSM2_CONF!,
    };
    const attempts = await pinHolder(hsm, {
      cardId,
      kvn: 1,
      escrowBlob: Buffer.from(escrowBlob).toString("hex"),
      labels: { master: "card-master", kek: ESCROW_KEK_LABEL, ca: "ca-root", webhookRoot: "webhook-root", device: REPRODUCTION_DEVICE_KEY_LABEL },
    });
    const open = attempts.filter((a) => a.result === "open");
    console.log(attempts.map((a) => `  ${a.result.padEnd(7)} ${a.path.padEnd(20)} ${a.key} (${a.detail})`).join("\n"));

    // Refused: reading, wrapping a never-extractable key, switching usage or extractability on, copying, unwrapping
    // an escrow blob readable, decrypting with the KEK.
    for (const a of attempts.filter((x) => !(SOFTHSM2_OPEN_PATHS as readonly string[]).includes(x.path))) assert.equal(a.result, "refused", `${a.path} on ${a.key}: ${a.detail}`);
    assert.ok(attempts.filter((a) => a.path === "set-attribute").length >= 8);
    assert.equal(attempts.find((a) => a.path === "unwrap-readable")?.detail, "CKR_TEMPLATE_INCONSISTENT");

    // What SoftHSM2 cannot refuse, and that it is real: the card's DEK and the escrowed key come out.
    assert.equal(open.find((a) => a.path === "derive-readable")?.proof, kcvs.dek, "the derived DEK is the card's");
    assert.equal(open.find((a) => a.path === "derive-then-wrap")?.proof, kcvs.dek);
    assert.equal(open.find((a) => a.path === "unwrap-then-wrap")?.proof, escrowedSpki, "the escrowed key itself");

    // The self-test reports exactly these.
    const report = await custody.selfTest();
    assert.deepEqual([...new Set(open.map((a) => a.path))].sort(), openPaths(report));
  },
);

const USAGES = [p.CKA_ENCRYPT, p.CKA_DECRYPT, p.CKA_WRAP, p.CKA_UNWRAP, p.CKA_SIGN, p.CKA_VERIFY, p.CKA_DERIVE];
type Made = { fn: string; label: string; attrs: Map<number, number | string> };
const on = (o: Made, a: number): boolean => o.attrs.get(a) === 1;
const usageOf = (o: Made): number[] => USAGES.filter((a) => on(o, a));

/** The attributes every key of the project has, whatever its role. */
function assertPolicy(o: Made): string {
  const cls = o.attrs.get(p.CKA_CLASS);
  const what = `${o.fn} ${o.label || "(session object)"} (class ${cls})`;
  assert.equal(on(o, p.CKA_MODIFIABLE), false, `${what}: CKA_MODIFIABLE`);
  assert.equal(on(o, p.CKA_COPYABLE), false, `${what}: CKA_COPYABLE`);
  if (cls === p.CKO_PUBLIC_KEY) {
    for (const a of [p.CKA_ENCRYPT, p.CKA_WRAP, p.CKA_DERIVE, p.CKA_VERIFY_RECOVER]) assert.equal(on(o, a), false, `${what}: public key usage 0x${a.toString(16)}`);
    return "public";
  }
  if (o.attrs.get(p.CKA_KEY_TYPE) === p.CKK_GENERIC_SECRET) {
    // the ECDH output: readable by design (ECIES's KDF runs in the host), a session object with no usage at all
    assert.deepEqual(usageOf(o), [], `${what}: ECDH secret usage`);
    assert.equal(on(o, p.CKA_TOKEN), false, `${what}: an ECDH secret is a session object`);
    return "ecdh";
  }
  assert.equal(on(o, p.CKA_SENSITIVE), true, `${what}: CKA_SENSITIVE`);
  assert.equal(on(o, p.CKA_PRIVATE), true, `${what}: CKA_PRIVATE`);
  if (!on(o, p.CKA_EXTRACTABLE)) assert.equal(on(o, p.CKA_WRAP_WITH_TRUSTED), true, `${what}: never extractable, and wrap-with-trusted`);
  if (on(o, p.CKA_TOKEN)) assert.equal(on(o, p.CKA_EXTRACTABLE), false, `${what}: a stored key never leaves`);
  if (cls === p.CKO_SECRET_KEY) {
    assert.equal(on(o, p.CKA_DECRYPT), false, `${what}: no AES key of the project decrypts`);
    assert.equal(on(o, p.CKA_VERIFY), false, `${what}: no AES key of the project verifies`);
    return on(o, p.CKA_TOKEN) ? "stored secret" : on(o, p.CKA_EXTRACTABLE) ? "card key" : "purpose key";
  }
  assert.equal(on(o, p.CKA_UNWRAP), false, `${what}: a private key never unwraps`);
  assert.equal(on(o, p.CKA_SIGN_RECOVER), false, `${what}: no sign-recover`);
  if (o.attrs.get(p.CKA_KEY_TYPE) === p.CKK_EC) assert.equal(on(o, p.CKA_DECRYPT), false, `${what}: an EC key does not decrypt`);
  return on(o, p.CKA_TOKEN) ? "stored private" : "session private";
}

/** The attributes of a key object as recorded. */
function readObject(mod: Pkcs11Types.PKCS11, session: Buffer, h: Buffer, fn: string): Made {
  const cls = mod.C_GetAttributeValue(session, h, [{ type: p.CKA_CLASS }])[0].value.readUInt32LE(0);
  const types = [p.CKA_TOKEN, p.CKA_PRIVATE, p.CKA_MODIFIABLE, p.CKA_COPYABLE, p.CKA_LABEL, p.CKA_KEY_TYPE, p.CKA_DERIVE];
  if (cls === p.CKO_PUBLIC_KEY) types.push(p.CKA_ENCRYPT, p.CKA_VERIFY, p.CKA_VERIFY_RECOVER, p.CKA_WRAP);
  if (cls === p.CKO_PRIVATE_KEY) types.push(p.CKA_DECRYPT, p.CKA_SIGN, p.CKA_SIGN_RECOVER, p.CKA_UNWRAP);
  if (cls === p.CKO_SECRET_KEY) types.push(p.CKA_ENCRYPT, p.CKA_DECRYPT, p.CKA_WRAP, p.CKA_UNWRAP, p.CKA_SIGN, p.CKA_VERIFY);
  if (cls !== p.CKO_PUBLIC_KEY) types.push(p.CKA_SENSITIVE, p.CKA_EXTRACTABLE, p.CKA_WRAP_WITH_TRUSTED);
  const attrs = new Map<number, number | string>([[p.CKA_CLASS, cls]]);
  for (const a of mod.C_GetAttributeValue(
    session,
    h,
    types.map((type) => ({ type })),
  ))
    attrs.set(a.type, a.type === p.CKA_LABEL ? a.value.toString("utf8") : a.type === p.CKA_KEY_TYPE ? a.value.readUInt32LE(0) : a.value[0]);
  return { fn, label: String(attrs.get(p.CKA_LABEL) ?? ""), attrs };
}

/**
 * Records every key object made through pkcs11js by instances constructed while the returned recorder is installed
 * (pkcs11js puts its C_ functions on each instance, so the class is replaced): its attributes are read back the
 * moment it is made, while `recording` is on.
 */
function installRecorder(): { made: Made[]; recording: boolean; uninstall(): void } {
  const fns = ["C_GenerateKey", "C_GenerateKeyPair", "C_DeriveKey", "C_UnwrapKey", "C_CreateObject", "C_CopyObject"] as const;
  const exports = p as unknown as { PKCS11: typeof Pkcs11Types.PKCS11 };
  const Original = exports.PKCS11;
  const rec = {
    made: [] as Made[],
    recording: false,
    uninstall: () => {
      exports.PKCS11 = Original;
    },
  };
  exports.PKCS11 = class Recording extends Original {
    constructor() {
      super();
      const self = this as unknown as Record<string, (...a: unknown[]) => unknown>;
      for (const n of fns) {
        const orig = self[n].bind(this);
        self[n] = (...args: unknown[]) => {
          const out = orig(...args) as Buffer | { publicKey: Buffer; privateKey: Buffer };
          if (rec.recording) for (const h of Buffer.isBuffer(out) ? [out] : [out.privateKey, out.publicKey]) rec.made.push(readObject(this, args[0] as Buffer, h, n));
          return out;
        };
      }
    }
  };
  return rec;
}

test("every key the project makes on the token has its role's template: not modifiable, not copyable, sensitive, the least usage", { timeout: 10 * 60_000 }, async (t) => {
  // The recorder replaces pkcs11js's class before the server loads the module (once per process: this test file
  // opens no PKCS#11 module before this test, and each test file runs in a process of its own).
  const recorder = installRecorder();
  t.after(() => recorder.uninstall());
  const env = await issuerApiEnv(sqlite(), { custody: "softhsm", webhookSecret: false });
  t.after(() => env.close());
  const custody = env.server.custody;
  const tokenLabel = (custody as Pkcs11Custody).tokenLabel;

  // The keys stored at start-up (card master, CA key, escrow KEK, reproduction device key, webhook root, …).
  const raw = rawSession(tokenLabel);
  const stored: Made[] = [];
  try {
    for (const cls of [p.CKO_SECRET_KEY, p.CKO_PRIVATE_KEY, p.CKO_PUBLIC_KEY]) {
      raw.mod.C_FindObjectsInit(raw.session, [
        { type: p.CKA_CLASS, value: cls },
        { type: p.CKA_TOKEN, value: true },
      ]);
      const hs = raw.mod.C_FindObjects(raw.session, 1000);
      raw.mod.C_FindObjectsFinal(raw.session);
      for (const h of hs) stored.push(readObject(raw.mod, raw.session, h, "stored"));
    }
  } finally {
    raw.mod.C_CloseSession(raw.session);
  }
  for (const o of stored) assertPolicy(o);
  const storedKey = (label: string, cls: number) => stored.find((o) => o.label === label && o.attrs.get(p.CKA_CLASS) === cls);
  assert.deepEqual(usageOf(storedKey("card-master", p.CKO_SECRET_KEY)!), [p.CKA_DERIVE], "card master: derive only");
  assert.deepEqual(usageOf(storedKey(ESCROW_KEK_LABEL, p.CKO_SECRET_KEY)!), [p.CKA_WRAP, p.CKA_UNWRAP], "escrow KEK: wrap and unwrap only");
  assert.deepEqual(usageOf(storedKey(REPRODUCTION_DEVICE_KEY_LABEL, p.CKO_PRIVATE_KEY)!), [p.CKA_DERIVE], "reproduction device: ECDH only");
  assert.deepEqual(usageOf(storedKey(REPRODUCTION_DEVICE_KEY_LABEL, p.CKO_PUBLIC_KEY)!), []);
  for (const l of ["ca-root", "webhook-root"]) {
    assert.deepEqual(usageOf(storedKey(l, p.CKO_PRIVATE_KEY)!), [p.CKA_SIGN], `${l}: signs only (no CKA_DECRYPT / CKA_UNWRAP from the token's defaults)`);
    assert.deepEqual(usageOf(storedKey(l, p.CKO_PUBLIC_KEY)!), [p.CKA_VERIFY]);
  }

  // What the flows make: card keys and purpose keys derived per card, credential keys, escrow, a reproduction's
  // custody steps (RecoveryService.reproduce: unwrap under the KEK, the FIG. 10 check, the wrap for the card), the
  // device key's ECDH, a card-key rotation's re-wrap, a stored unwrapped key.
  recorder.recording = true;
  await (async () => {
    const { post } = api(env);
    const { cardId, card } = await issueAndPersonalise(env, "Hanako Yamada");
    t.after(() => card.close());
    expect(await post(`/v1/cards/${cardId}/credentials`, env.tokens.operator, { slot: "9a", alg: "P256" }), 201);
    await keygenOverApi(env, cardId, card, { slot: "9d", alg: "P256", personalData: registeredData("Hanako Yamada") });
    const keySet: DerivedKeySetRef = { kind: "derived", master: "card-master", cardId, kvn: 1 };
    await custody.generateKeyPair("escrowed", "P256", { extractable: "wrapped", ephemeral: true });
    const spki = await custody.publicKey("escrowed");
    const blob = await custody.wrapPrivateKey("escrowed", { key: ESCROW_KEK_LABEL });
    await custody.unwrapPrivateKey("reproduced", blob, "P256", { key: ESCROW_KEK_LABEL }, { expectSpki: spki, extractable: "wrapped", ephemeral: true });
    assert.equal(await keyCheckInCustody(custody, "reproduced", "P256", spki), undefined);
    const skPrk = await custody.wrapPrivateKey("reproduced", { card: keySet });
    await custody.rewrapPrivateKeys([{ wrapped: skPrk, alg: "P256" }], { card: keySet }, { card: { ...keySet, kvn: 2 } });
    const eph = generateKeyPairSync("ec", { namedCurve: "P-256" });
    await custody.decipher(REPRODUCTION_DEVICE_KEY_LABEL, new Uint8Array(eph.publicKey.export({ format: "der", type: "spki" })));
    await custody.unwrapPrivateKey("stored-unwrapped", blob, "P256", { key: ESCROW_KEK_LABEL }, { expectSpki: spki });
  })();
  recorder.recording = false;
  const made = recorder.made;
  const kinds = new Set(made.map(assertPolicy));
  for (const k of ["public", "ecdh", "card key", "purpose key", "session private", "stored private"]) assert.ok(kinds.has(k), `the flows made a ${k}`);
  const priv = (l: string) => made.find((o) => o.label === l && o.attrs.get(p.CKA_CLASS) === p.CKO_PRIVATE_KEY)!;
  assert.deepEqual(usageOf(priv("escrowed")), [p.CKA_SIGN], "a generated credential key signs only");
  assert.equal(on(priv("escrowed"), p.CKA_EXTRACTABLE), true, "… and leaves custody wrapped");
  assert.deepEqual(usageOf(priv("reproduced")), [p.CKA_SIGN, p.CKA_DERIVE], "a reproduced key signs and does ECDH (the FIG. 10 check)");
  assert.equal(on(priv("stored-unwrapped"), p.CKA_TOKEN), true, "a stored unwrapped key is made on the token directly");
  // Keys derived per card: ENC/MAC (encrypt for the KCV, sign for the CMAC KDF), DEK (encrypt, wrap for PUT KEY,
  // derive), the transport DEK diversified from the KMC (encrypt, wrap), a package key (encrypt) and the
  // private-key wrap key (wrap and unwrap).
  const allowed = [[p.CKA_ENCRYPT, p.CKA_SIGN], [p.CKA_ENCRYPT, p.CKA_WRAP, p.CKA_DERIVE], [p.CKA_ENCRYPT, p.CKA_WRAP], [p.CKA_ENCRYPT], [p.CKA_WRAP, p.CKA_UNWRAP]].map((x) => JSON.stringify(x));
  for (const o of made.filter((x) => x.fn === "C_DeriveKey" && x.attrs.get(p.CKA_KEY_TYPE) === p.CKK_AES))
    assert.ok(allowed.includes(JSON.stringify(usageOf(o))), `a derived key's usage ${JSON.stringify(usageOf(o))}`);
});

test("the issuer does not start on a token with an extraction path open that it was not told to accept; it names the token and the path", { timeout: 10 * 60_000 }, async () => {
  const dir = tempDir("cardkms-hsm-gate-");
  const hsm = softhsmToken(join(dir, "hsm"));
  const config = (custody: Partial<Extract<IssuerConfig["custody"], { kind: "pkcs11" }>>, developmentToken = false): IssuerConfig => ({
    ...DEFAULT_CONFIG,
    database: join(dir, `issuer-${Math.random().toString(36).slice(2)}.db`),
    custody: { kind: "pkcs11", module: hsm.CARDKMS_PKCS11_MODULE, tokenLabel: hsm.CARDKMS_PKCS11_TOKEN, ...custody },
    insecure: { ...DEFAULT_CONFIG.insecure, developmentToken },
    logLevel: "silent",
  });
  const env = { CARDKMS_PKCS11_PIN: hsm.CARDKMS_PKCS11_PIN };
  await assert.rejects(startIssuerServer(config({}), { env, listen: false }), (e: Error) => {
    assert.match(e.message, new RegExp(`custody self-test on pkcs11 token ${hsm.CARDKMS_PKCS11_TOKEN}`));
    assert.match(e.message, /derive-readable \(card master/);
    assert.match(e.message, /acceptOpenPaths/);
    return true;
  });
  await assert.rejects(startIssuerServer(config({ acceptOpenPaths: ["derive-readable", "derive-then-wrap"] }), { env, listen: false }), /unwrap-then-wrap/);
  for (const c of [config({ acceptOpenPaths: [...SOFTHSM2_OPEN_PATHS] }), config({}, true)]) {
    const server = await startIssuerServer(c, { env, listen: false });
    await server.close();
  }
});

test("cardkms custody self-test prints the report; its exit status says whether every path was refused", { timeout: 10 * 60_000 }, async () => {
  const hsm = softhsmToken(join(tempDir("cardkms-hsm-cli-"), "hsm"));
  const env = { CARDKMS_CUSTODY: "pkcs11", ...hsm };
  const json = await runCli(["custody", "self-test", "--json"], env);
  assert.equal(json.code, 3, json.stderr);
  const r = JSON.parse(json.stdout) as CustodySelfTest;
  assert.deepEqual(openPaths(r), [...SOFTHSM2_OPEN_PATHS].sort());
  const text = await runCli(["custody", "self-test"], env);
  assert.equal(text.code, 3, text.stderr);
  assert.match(text.stdout, /OPEN\s+derive-readable\s+card master/);
  assert.match(text.stdout, /refused\s+unwrap-readable\s+escrow KEK \(wrap\) \(CKR_TEMPLATE_INCONSISTENT\)/);
  const soft = await runCli(["custody", "self-test"], { CARDKMS_CUSTODY: "software", CARDKMS_KEYSTORE: join(tempDir("cardkms-ks-cli-"), "keystore.json"), CARDKMS_KEYSTORE_KEY: "00".repeat(32) });
  assert.equal(soft.code, 0, soft.stderr);
  assert.match(soft.stdout, /software keystore/);
});
