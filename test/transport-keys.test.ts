// Issue 17 §3: a recording of the personalisation relay must not give the new card's key Sk. Blank cards carry
// transport keys of their own, diversified from the card manufacturer's master key (KMC) — in the factory
// (createCard) and in the issuer's custody, which took the KMC in through a key ceremony — and the GlobalPlatform
// public test keys only in the development mode, where the attack below still works.
//
// The attack: from the recorded INITIALIZE UPDATE (both challenges) and the public keys 40..4F, the SCP03 session
// keys; with S-ENC, the PUT KEY command's C-DECRYPTION; with the static DEK, the key cryptograms in it: ENC, MAC and
// DEK of Sk, whose check values are compared with custody's.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { parseCommand } from "../src/protocol/apdu.ts";
import { createCard, TRANSPORT_KEY_SET } from "../src/card/card.ts";
import type { CardRuntime } from "../src/card/runtime.ts";
import { aesCbcDecrypt, aesEcbEncrypt, unpad80 } from "../src/protocol/scp03/cmac.ts";
import { keyCheckValue, parseInitUpdateResponse } from "../src/protocol/scp03/host.ts";
import { cryptogram, DERIVE, deriveSessionKeys } from "../src/protocol/scp03/kdf.ts";
import { counterBlock } from "../src/protocol/scp03/sm.ts";
import type { KeySetKcvs, KeySetRef } from "../src/custody/custody.ts";
import { SoftwareCustody } from "../src/custody/software.ts";
import { personaliseFromTransport } from "../src/issuer/card-scripts.ts";
import { combineKmcComponents, importKmc, KMC_LABEL, splitKmc, TransportKeyError } from "../src/issuer/transport-keys.ts";
import { auditEntries, type AuditEntry } from "../src/store/audit.ts";
import { testEngines } from "./support/store-testing.ts";
import { api, API_CUSTODIES, apiEnvFor, expect, relay, type ApiEnv } from "./api-env.ts";
import { cliJson, runCli, tempDir } from "./helpers.ts";
import { importTestKmc, TEST_KMC } from "./kmc.ts";

const dir = tempDir("cardkms-transport-");
const engine = testEngines()[0];
const hex = (b: Uint8Array): string => Buffer.from(b).toString("hex");
const kcvOf = (k: Uint8Array): string => hex(keyCheckValue(k));

type Wire = { cmd: Uint8Array; resp: Uint8Array }[];

/** What the relaying terminal sees: every APDU it forwards to `card`, and every answer. */
function recording(card: CardRuntime, wire: Wire): CardRuntime {
  return {
    transmit(a: Uint8Array): Uint8Array {
      const r = card.transmit(a);
      wire.push({ cmd: Uint8Array.from(a), resp: Uint8Array.from(r) });
      return r;
    },
  } as CardRuntime;
}

/**
 * The attack on a recording, with the public test keys: whether the card's cryptogram shows the session keys right,
 * and the KCVs of the keys the PUT KEY carried as decrypted with them (undefined when it does not even parse).
 */
function attack(wire: Wire): { cardCryptogramMatches: boolean; kcvs: KeySetKcvs | undefined } {
  const t = { enc: Buffer.from(TRANSPORT_KEY_SET.enc, "hex"), mac: Buffer.from(TRANSPORT_KEY_SET.mac, "hex"), dek: Buffer.from(TRANSPORT_KEY_SET.dek, "hex") };
  const iu = wire.findIndex((w) => (w.cmd[0] & 0x80) !== 0 && w.cmd[1] === 0x50);
  assert.ok(iu >= 0, "the recording holds INITIALIZE UPDATE");
  const hostChallenge = parseCommand(wire[iu].cmd).data;
  const info = parseInitUpdateResponse(wire[iu].resp);
  const context = Buffer.concat([hostChallenge, info.cardChallenge]);
  const sk = deriveSessionKeys(t.enc, t.mac, context);
  const cardCryptogramMatches = hex(cryptogram(sk.sMac, DERIVE.CARD_CRYPTOGRAM, context)) === hex(info.cardCryptogram);
  // the encryption counter counts the protected commands after EXTERNAL AUTHENTICATE
  let counter = 0;
  let putKey: Uint8Array | undefined;
  for (const w of wire.slice(iu + 1)) {
    const c = parseCommand(w.cmd);
    if (c.ins === 0x82 || (c.cla & 0x04) === 0) continue;
    counter++;
    if (c.ins === 0xd8) {
      putKey = c.data;
      break;
    }
  }
  assert.ok(putKey, "the recording holds PUT KEY");
  const body = putKey.subarray(0, putKey.length - 8); // C-MAC last
  const plain = unpad80(aesCbcDecrypt(sk.sEnc, aesEcbEncrypt(sk.sEnc, counterBlock(counter, false)), body));
  // new KVN || 3 x (88 Lc keyLength cryptogram 03 KCV)
  const keys: Uint8Array[] = [];
  for (let o = 1; plain && keys.length < 3 && o + 3 <= plain.length && plain[o] === 0x88;) {
    const lc = plain[o + 1];
    const cgram = plain.subarray(o + 3, o + 2 + lc);
    if (cgram.length % 16 !== 0 || cgram.length === 0) break;
    keys.push(aesCbcDecrypt(t.dek, new Uint8Array(16), cgram).subarray(0, plain[o + 2]));
    o += 2 + lc + 4;
  }
  return { cardCryptogramMatches, kcvs: keys.length === 3 ? { kvn: plain![0], enc: kcvOf(keys[0]), mac: kcvOf(keys[1]), dek: kcvOf(keys[2]) } : undefined };
}

/** A card issued over the API, made by the factory with `cardOpts`, personalised through a recording relay. */
async function personaliseRecorded(env: ApiEnv, cards: CardRuntime[], cardOpts: { kmc?: Uint8Array }): Promise<{ wire: Wire; custodyKcvs: KeySetKcvs; cardId: string }> {
  const { post } = api(env);
  const op = env.tokens.operator;
  const user = expect(await post("/v1/users", op, { personalData: { commonName: "Relay Recorded" } }), 201);
  const cardId = (expect(await post("/v1/cards", op, { userId: user.id }), 201) as { card: { id: string } }).card.id;
  const card = createCard(join(dir, `${cardId}.card`), randomBytes(32), { ...cardOpts, cardId: Buffer.from(cardId, "hex") });
  cards.push(card);
  const wire: Wire = [];
  const start = expect(await post(`/v1/cards/${cardId}/personalisation`, op), 201) as { sessionId: string; apdus: string[] };
  expect(await relay(post, op, start, recording(card, wire)), 200);
  const issuer = env.server.issuer;
  const ref = JSON.parse((await issuer.currentKeySet(await issuer.card(cardId))).custodyRef) as KeySetRef;
  return { wire, custodyKcvs: await env.server.custody.keySetKcvs(ref), cardId };
}

test("development mode (public test keys): a recording of the personalisation relay gives the new card's Sk", { timeout: 10 * 60_000 }, async (t) => {
  const { env, cards } = await apiEnvFor(t, engine, { logLevel: "warn", insecure: { publicTransportKeys: true } });
  assert.ok(
    env.logs.some((l) => /INSECURE DEVELOPMENT MODE/.test(l) && /"level":40/.test(l)),
    "the server warns loudly at start",
  );
  const { wire, custodyKcvs, cardId } = await personaliseRecorded(env, cards, {});
  const got = attack(wire);
  assert.equal(got.cardCryptogramMatches, true, "the public keys open the recorded session");
  assert.deepEqual(got.kcvs, custodyKcvs, "ENC, MAC and DEK of Sk recovered: their KCVs are custody's");
  const audit: AuditEntry[] = [];
  for await (const e of auditEntries(env.server.store.db)) if (e.action === "card.personalised" && e.subject === cardId) audit.push(e);
  assert.equal(audit[0]?.details.transport, "insecure-public-test-keys", "the audit log marks the card");
});

for (const custody of API_CUSTODIES)
  test(`per-card transport keys from the KMC (the default), derived in ${custody} custody: the same recording gives nothing`, { timeout: 10 * 60_000 }, async (t) => {
    const { env, cards } = await apiEnvFor(t, engine, { logLevel: "warn", custody });
    assert.ok(!env.logs.some((l) => /publicTransportKeys/.test(l)));
    const { wire, custodyKcvs } = await personaliseRecorded(env, cards, { kmc: TEST_KMC });
    const got = attack(wire);
    assert.equal(got.cardCryptogramMatches, false, "the public keys do not open the recorded session");
    assert.notDeepEqual(got.kcvs, custodyKcvs, "what the attack decrypts is not Sk");
    assert.equal(Buffer.concat(wire.flatMap((w) => [w.cmd, w.resp])).indexOf(Buffer.from(TEST_KMC)), -1, "the KMC never crosses the relay");
  });

test("outside development mode the issuer refuses the public test keys, with clear errors", { timeout: 10 * 60_000 }, async (t) => {
  const { env, cards } = await apiEnvFor(t, engine, { logLevel: "silent" });
  const { post, get } = api(env);
  const op = env.tokens.operator;
  const user = expect(await post("/v1/users", op, { personalData: { commonName: "Refused" } }), 201);
  const issue = async () => (expect(await post("/v1/cards", op, { userId: user.id }), 201) as { card: { id: string } }).card.id;
  const personalise = async (cardId: string, card: CardRuntime) => {
    cards.push(card);
    return relay(post, op, expect(await post(`/v1/cards/${cardId}/personalisation`, op), 201) as { sessionId: string; apdus: string[] }, card);
  };

  // a blank card that still carries the public test keys: the relay fails, saying so; the card stays waiting
  const a = await issue();
  const onPublic = expect(await personalise(a, createCard(join(dir, `${a}.card`), randomBytes(32), { cardId: Buffer.from(a, "hex") })), 422);
  assert.match(String(onPublic.detail), /GlobalPlatform public test keys .* refused outside development mode/);
  assert.equal(expect(await get(`/v1/cards/${a}`, env.tokens.auditor), 200).status, "issued");
  // a factory card, but not the one issued: its key diversification data says so
  const b = await issue();
  const wrongCard = expect(await personalise(b, createCard(join(dir, `${b}-other.card`), randomBytes(32), { kmc: TEST_KMC })), 422);
  assert.match(String(wrongCard.detail), /key diversification data .* not the card this session is for/);

  // no KMC in custody: no card is issued, and the message names the key ceremony and the development mode
  assert.equal(await env.server.custody.deleteKey(KMC_LABEL), true);
  const noKmc = expect(await post("/v1/cards", op, { userId: user.id }), 422);
  assert.match(String(noKmc.detail), /no card manufacturer master key \(KMC\) labelled transport-kmc .*cardkms custody import-kmc/);
  assert.match(String(noKmc.detail), /CARDKMS_INSECURE_PUBLIC_TRANSPORT_KEYS=1/);
  assert.equal((await env.server.store.listCardsForUser(String(user.id))).length, 2, "the refused request registered no card");
});

test("personaliseFromTransport: per-card keys from the KMC in custody; the public keys only when asked for", async () => {
  const custody = await SoftwareCustody.open({ path: join(dir, "pft.json"), key: randomBytes(32).toString("hex") });
  try {
    const blank = (kmc?: Uint8Array) => {
      const cardId = randomBytes(8).toString("hex");
      const card = createCard(join(dir, `pft-${cardId}.card`), randomBytes(32), { kmc, cardId: Buffer.from(cardId, "hex") });
      return { cardId, card, transmit: (a: Uint8Array) => card.transmit(a) };
    };
    const c1 = blank(TEST_KMC);
    await assert.rejects(personaliseFromTransport(c1.transmit, custody, c1.cardId), (e: unknown) => e instanceof TransportKeyError && /cardkms custody import-kmc/.test(e.message));
    await importTestKmc(custody);
    const { transport } = await personaliseFromTransport(c1.transmit, custody, c1.cardId);
    assert.equal(transport.kind, "kmc");
    const c2 = blank();
    await assert.rejects(personaliseFromTransport(c2.transmit, custody, c2.cardId), /public test keys/);
    const dev = await personaliseFromTransport(c2.transmit, custody, c2.cardId, "card-master", { insecurePublicTransportKeys: true });
    assert.equal(dev.transport.kind, "stored");
    for (const c of [c1, c2]) c.card.close();
  } finally {
    await custody.close();
  }
});

test("the key ceremony: 2 or 3 components, each checked against its KCV, combined inside; only the KCV shown", async () => {
  const custody = await SoftwareCustody.open({ path: join(dir, "ceremony.json"), key: randomBytes(32).toString("hex") });
  try {
    const kmc = new Uint8Array(randomBytes(32));
    const c1 = new Uint8Array(randomBytes(32)),
      c2 = new Uint8Array(randomBytes(32));
    const c3 = kmc.map((x, i) => x ^ c1[i] ^ c2[i]);
    const comp = (v: Uint8Array) => ({ value: Uint8Array.from(v), kcv: kcvOf(v) });
    const refused = async (components: { value: Uint8Array; kcv: string }[], text: RegExp) => {
      await assert.rejects(importKmc(custody, components, "kmc-x"), (e: unknown) => e instanceof TransportKeyError && text.test(e.message));
      assert.equal(await custody.hasKey("kmc-x"), false);
    };
    await refused([comp(c1), { value: c2, kcv: kcvOf(c3) }, comp(c3)], /component 2 does not match its key check value/);
    await refused([comp(c1)], /2 or 3 components/);
    await refused([comp(c1), comp(c2), comp(c3), comp(c1)], /2 or 3 components/);
    await refused([comp(c1), comp(c2.subarray(0, 16))], /component 2 is not 32 bytes/);
    await refused([comp(c1), comp(c1)], /cancel out/);
    await refused([comp(c1), { value: c2, kcv: "zz" }], /6 hex digits/);
    // the manufacturer's split is the ceremony's inverse, for 2 and 3 custodians
    for (const n of [2, 3] as const) assert.deepEqual(combineKmcComponents(splitKmc(kmc, n)), kmc);
    const done = await importKmc(custody, [comp(c1), comp(c2), comp(c3)], "kmc-256");
    assert.deepEqual(done, { label: "kmc-256", bits: 256, kcv: kcvOf(kmc).toUpperCase() });
    assert.deepEqual(await custody.keyInfo("kmc-256"), { label: "kmc-256", kind: "secret", type: "aes", bits: 256, usage: ["derive"], extractable: "never" });
    // the factory card made with the same KMC is personalised over the keys custody derives from it
    const cardId = randomBytes(8).toString("hex");
    const card = createCard(join(dir, "ceremony.card"), randomBytes(32), { kmc, cardId: Buffer.from(cardId, "hex") });
    await personaliseFromTransport((a) => card.transmit(a), custody, cardId, "card-master", { kmc: "kmc-256" });
    card.close();
  } finally {
    await custody.close();
  }
});

test(
  "cardkms card manufacturer-kmc hands out a KMC and its components; cardkms custody import-kmc takes them from files, refused on a wrong KCV, never printing a key",
  { timeout: 10 * 60_000 },
  async () => {
    const home = tempDir("cardkms-import-kmc-");
    const made = await runCli(["card", "manufacturer-kmc", join(home, "kmc"), "--json"]);
    const out = cliJson(made, "manufacturer-kmc") as { kmc: { file: string; kcv: string }; components: { file: string; kcv: string }[] };
    const read = (f: string) => new Uint8Array(Buffer.from(readFileSync(f, "utf8").trim(), "hex"));
    const kmc = read(out.kmc.file);
    const [c1, c2] = out.components.map((c) => read(c.file));
    const files = out.components.map((c) => c.file);
    assert.equal(out.kmc.kcv, kcvOf(kmc).toUpperCase());
    assert.deepEqual(
      out.components.map((c) => c.kcv),
      [kcvOf(c1).toUpperCase(), kcvOf(c2).toUpperCase()],
    );
    assert.deepEqual(Uint8Array.from(c1.map((x, i) => x ^ c2[i])), kmc, "the components XOR to the KMC");
    for (const f of [out.kmc.file, ...files]) assert.equal(statSync(f).mode & 0o777, 0o600, `${f} is owner-only`);
    for (const secret of [kmc, c1, c2]) assert.ok(!(made.stdout + made.stderr).toLowerCase().includes(hex(secret)), "a key value was printed");
    const again = await runCli(["card", "manufacturer-kmc", join(home, "kmc")]);
    assert.equal(again.code, 2, "an existing directory is never overwritten");
    const keystore = join(home, "keystore.json");
    const key = randomBytes(32).toString("hex");
    const env = { CARDKMS_CUSTODY: "software", CARDKMS_KEYSTORE: keystore, CARDKMS_KEYSTORE_KEY: key, CARDKMS_PKCS11_TOKEN: "", CARDKMS_PKCS11_MODULE: "" };
    const cmd = (kcvs: string[], comps = files) => ["custody", "import-kmc", ...comps.flatMap((f, i) => ["--component", f, "--kcv", kcvs[i]]), "--json"];
    const [wrong, one, ok] = [await runCli(cmd([kcvOf(c1), kcvOf(c1)]), env), await runCli(cmd([kcvOf(c1)], files.slice(0, 1)), env), await runCli(cmd([kcvOf(c1), kcvOf(c2)]), env)];
    assert.equal(wrong.code, 1, wrong.stderr);
    assert.match(wrong.stderr, /component 2 does not match its key check value/);
    assert.equal(one.code, 2, one.stderr);
    assert.match(one.stderr, /2 or 3 components/);
    assert.deepEqual(cliJson(ok, "import-kmc"), { label: KMC_LABEL, bits: 128, kcv: kcvOf(kmc).toUpperCase() });
    for (const r of [wrong, one, ok]) for (const secret of [kmc, c1, c2]) assert.ok(!(r.stdout + r.stderr).toLowerCase().includes(hex(secret)), "a key value was printed");
    const custody = await SoftwareCustody.open({ path: keystore, key });
    try {
      assert.deepEqual((await custody.keyInfo(KMC_LABEL))?.usage, ["derive"]);
      const cardId = randomBytes(8).toString("hex");
      const card = createCard(join(home, "c.card"), randomBytes(32), { kmc, cardId: Buffer.from(cardId, "hex") });
      await personaliseFromTransport((a) => card.transmit(a), custody, cardId);
      card.close();
    } finally {
      await custody.close();
    }
  },
);
