// Configuration reaches what the server issues: validity.cardDays bounds the card, validity.certificateDays every
// end-entity certificate (all card-key profiles). On both engines.

import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { test } from "node:test";
import { testEngines } from "./support/store-testing.ts";
import { api, expect, issuerApiEnv, issueAndPersonalise } from "./api-env.ts";

const DAY = 86_400_000;

for (const engine of testEngines()) {
  test(`validity configuration on ${engine.name}: cards and certificates end when the configuration says`, async () => {
    // (the env is made inside the test: tempDir registers its cleanup with the enclosing test)
    const env = await issuerApiEnv(engine, { logLevel: "warn", validity: { cardDays: 400, keySetDays: 200, certificateDays: 10 } });
    try {
      const { post, get } = api(env);
      const t0 = Date.now();
      const { cardId, card: vc } = await issueAndPersonalise(env, "Vera Validity");
      const card = expect(await get(`/v1/cards/${cardId}`, env.tokens.auditor), 200) as { validUntil: number };
      assert.ok(Math.abs(card.validUntil - (t0 + 400 * DAY)) < 60_000, `card valid until ${new Date(card.validUntil).toISOString()}`);
      for (const [slot, profile] of [
        ["9a", "authentication"],
        ["9c", "signature"],
        ["9d", "keyManagement"],
      ] as const) {
        const cred = expect(await post(`/v1/cards/${cardId}/credentials`, env.tokens.operator, { slot, alg: "P256" }), 201) as { certificate: string };
        const x = new X509Certificate(cred.certificate);
        const days = (Date.parse(x.validTo) - Date.parse(x.validFrom)) / DAY;
        // notBefore is backdated by up to the profile's 5 minutes (not before the CA itself)
        assert.ok(days >= 10 && days < 10.01, `${profile} certificate valid for ${days} days`);
      }
      vc.close();
    } finally {
      await env.close();
    }
  });
}
