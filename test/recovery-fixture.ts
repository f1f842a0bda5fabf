// Shared by the key reproduction API and CLI tests: the card-side checks (does the card sign under a certificate;
// the key lost from the card) and the arbitrators of FIG. 9. The key itself is issued with escrow through the API
// (test/api-env.ts keygenOverApi) or the CLI (cardkms keygen issue --escrow).
import assert from "node:assert/strict";
import { randomBytes, verify, X509Certificate, type KeyObject } from "node:crypto";
import type { KeyPairAlg } from "../src/custody/custody.ts";
import type { PivSlot } from "../src/keygen/device.ts";
import type { Transmit } from "../src/protocol/apdu-client.ts";
import { PivClient } from "../src/protocol/piv/client.ts";
import { join } from "node:path";
import { createCard } from "../src/card/card.ts";
import type { CardRuntime } from "../src/card/runtime.ts";
import { api, expect, relay, type ApiEnv } from "./api-env.ts";
import { tempDir } from "./helpers.ts";
import { TEST_KMC } from "./kmc.ts";

/** The card signs with the key in `slot`, verified with the certificate's public key; false when it cannot. */
export async function cardSignsFor(transmit: Transmit, slot: PivSlot, alg: KeyPairAlg, certificate: Uint8Array): Promise<boolean> {
  const piv = new PivClient(transmit);
  await piv.select();
  await piv.verifyPin("123456");
  const msg = randomBytes(48);
  try {
    const { signature, hash } = await piv.sign(parseInt(slot, 16), alg, msg);
    return verify(hash, msg, { key: new X509Certificate(certificate).publicKey, dsaEncoding: "der" }, signature);
  } catch {
    return false;
  }
}

/** The key is lost from the card (step S5): DELETE KEY with the user's PIN. */
export async function loseKey(transmit: Transmit, slot: PivSlot): Promise<void> {
  const piv = new PivClient(transmit);
  await piv.select();
  await piv.verifyPin("123456");
  const r = await piv.apdu.send({ cla: 0x80, ins: 0xf6, p1: 0, p2: parseInt(slot, 16) });
  assert.equal(r.sw, 0x9000, "DELETE KEY");
}

/** The FIG. 9 policy (testing.ts) for the API: user and credit company indispensable, the credit company after the user. */
export { fig9Policy, FIG9_ARBITRATORS, makeArbitrators } from "./support/recovery-testing.ts";
import { makeArbitrators } from "./support/recovery-testing.ts";

/**
 * A card issued to an existing user through the API and personalised through the relay (issueAndPersonalise issues
 * a card to a new user): the second card of a user, e.g. the replacement of a destroyed one (FIG. 11-12).
 */
export async function issueCardFor(env: ApiEnv, userId: string): Promise<{ cardId: string; card: CardRuntime }> {
  const { post } = api(env);
  const op = env.tokens.operator;
  const issued = expect(await post("/v1/cards", op, { userId }), 201) as { card: { id: string } };
  const cardId = issued.card.id;
  const card = createCard(join(tempDir("cardkms-api-card-"), `${cardId}.card`), randomBytes(32), { kmc: TEST_KMC, cardId: Buffer.from(cardId, "hex") });
  const start = expect(await post(`/v1/cards/${cardId}/personalisation`, op), 201) as { sessionId: string; apdus: string[] };
  expect(await relay(post, op, start, card), 200);
  return { cardId, card };
}

/**
 * One arbitrator registered through the API by the operator (its keys from makeArbitrators), with a token bound to
 * it: what a test of one reproduction needs on the arbitrators' side.
 */
export async function arbitratorOverApi(env: ApiEnv, id: string): Promise<{ keys: ReturnType<typeof makeArbitrators>["keys"]; token: string }> {
  const { post } = api(env);
  const op = env.tokens.operator;
  const { registry, keys } = makeArbitrators([id]);
  const a = registry.require(id);
  const pem = (k: KeyObject) => k.export({ format: "pem", type: "spki" }) as string;
  expect(await post("/v1/recovery/arbitrators", op, { id, signingPublicKey: pem(a.signingKey), encryptionPublicKey: pem(a.encryptionKey) }), 201);
  const token = (expect(await post(`/v1/recovery/arbitrators/${id}/tokens`, op), 201) as { token: string }).token;
  return { keys, token };
}
