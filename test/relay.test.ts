// The issuer's relay engine against an untrusted terminal: it can forward, but any change to a command or a
// response is detected, and a tampered key delivery never changes the card.
import { test } from "node:test";
import assert from "node:assert/strict";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { join } from "node:path";
import { wrapForCard } from "../src/protocol/package.ts";
import { deliveryScript, personalise } from "../src/issuer/card-scripts.ts";
import { RelayError, RelaySession } from "../src/issuer/relay.ts";
import { transmitFollowing } from "../src/protocol/apdu-client.ts";
import { readCardInfo } from "../src/protocol/card-info.ts";
import { tempDir } from "./helpers.ts";
import { factoryCard } from "./kmc.ts";

const dir = tempDir();

async function setup(name: string) {
  const { card, transport } = factoryCard(join(dir, `${name}.card`), randomBytes(32));
  const transmit = (a: Uint8Array) => card.transmit(a);
  const sk = { kvn: 1, enc: randomBytes(16).toString("hex"), mac: randomBytes(16).toString("hex"), dek: randomBytes(16).toString("hex") };
  await personalise(transmit, transport, sk);
  await readCardInfo(transmit); // the first PIV selection writes CHUID and CCC
  const info = await readCardInfo(transmit);
  assert.ok("cardId" in info);
  const pkcs8 = new Uint8Array(generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey.export({ format: "der", type: "pkcs8" }));
  const script = deliveryScript(sk, { keyRef: 0x9a, alg: "P256", skPrk: wrapForCard(sk, info.cardId, pkcs8) });
  return { card, transmit, sk, script, free: info.freeBytes };
}

/** A terminal that relays, optionally changing one byte of one command or one response of round 2. */
async function relay(s: RelaySession, transmit: (a: Uint8Array) => Uint8Array, tamper?: { index: number; where: "command" | "response" }) {
  let apdus = s.start();
  let round = 0;
  for (;;) {
    round++;
    const responses: Uint8Array[] = [];
    for (const [i, a0] of apdus.entries()) {
      const a = Uint8Array.from(a0);
      if (round === 2 && tamper?.where === "command" && tamper.index === i) a[a.length - 3] ^= 0x01;
      const r = Uint8Array.from(await transmitFollowing(transmit, a));
      if (round === 2 && tamper?.where === "response" && tamper.index === i && r.length > 2) r[0] ^= 0x01;
      responses.push(r);
    }
    const n = await s.next(responses);
    if ("results" in n) return n.results;
    apdus = n.apdus;
  }
}

test("an honest relay delivers the key", async () => {
  const { card, transmit, script, free } = await setup("ok");
  const results = await relay(new RelaySession(script.keys, script.aid, script.commands), transmit);
  script.check(results);
  const info = await readCardInfo(transmit);
  assert.ok("freeBytes" in info && info.freeBytes < free, "the key is on the card");
  card.close();
});

test("a relay that alters the key command: the card refuses it and nothing changes", async () => {
  const { card, transmit, script, free } = await setup("cmd");
  const s = new RelaySession(script.keys, script.aid, script.commands);
  const results = await relay(s, transmit, { index: 1, where: "command" });
  assert.equal(results[0].sw, 0x6988);
  assert.throws(() => script.check(results), /6988/);
  const info = await readCardInfo(transmit);
  assert.ok("freeBytes" in info && info.freeBytes === free, "nothing stored");
  card.close();
});

test("a relay that alters a response is caught by the R-MAC", async () => {
  const { card, transmit, script } = await setup("resp");
  await assert.rejects(relay(new RelaySession(script.keys, script.aid, script.commands), transmit, { index: 1, where: "response" }), RelayError);
  card.close();
});
