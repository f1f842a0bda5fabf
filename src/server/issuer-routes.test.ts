// Seed 000 ST11-ST25 over the HTTP API, on every storage engine, with a virtual card: a user is registered, a
// card issued and personalised through the relay endpoints, a credential requested, the terminal authenticated
// by the card's SCP03 cryptogram, the package fetched, loaded into the card and acknowledged, a second
// credential delivered online through a relay session, a certificate revoked and found on the CRL. Along the
// way: 401/403 for missing or wrong credentials, another card's terminal token refused, relay sessions held by
// their opener only, and no token in any log line.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes, verify, X509Certificate } from "node:crypto";
import type { CardRuntime } from "../card/runtime.ts";
import { testEngines } from "../../test/support/store-testing.ts";
import { PivClient } from "../protocol/piv/client.ts";
import { api, authenticate, expect, issueAndPersonalise, issuerApiEnv, relay } from "../../test/api-env.ts";
for (const engine of testEngines()) {
  test(`the issuing flows over HTTP on ${engine.name}`, { timeout: 10 * 60_000 }, async () => {
    const env = await issuerApiEnv(engine);
    const { get, post } = api(env);
    const { operator: op, auditor: aud, admin } = env.tokens;
    const cards: CardRuntime[] = [];
    try {
      // ST11-ST15: register, issue, personalise through the relay
      const { user, cardId, card } = await issueAndPersonalise(env, "Hanako Yamada");
      cards.push(card);
      assert.deepEqual(expect(await get(`/v1/users/${user.id}`, aud), 200).personalData, user.personalData);
      expect(await post(`/v1/cards/${cardId}/personalisation`, op), 409);
      expect(await post("/v1/cards", op, { userId: user.id, cardId }), 409);
      expect(await post("/v1/cards", op, { userId: "no-such-user" }), 404);

      // ST16-ST22: a credential, its package waiting for the terminal
      const c1 = expect(await post(`/v1/cards/${cardId}/credentials`, op, { slot: "9a", alg: "P256" }), 201) as { keyPairId: string; serial: string; certificate: string; packageSeq: number };
      assert.equal(c1.packageSeq, 1);
      const cert1 = new X509Certificate(c1.certificate);
      assert.match(cert1.subject, /CN=Hanako Yamada/);
      expect(await post(`/v1/cards/${cardId}/credentials`, op, { slot: "9a", alg: "P256" }), 409);

      // the terminal: the card proves itself, the terminal gets a token bound to it
      expect(await authenticate(post, cardId, card, true), 401);
      const auth = expect(await authenticate(post, cardId, card), 200) as { token: string; expiresAt: string };
      assert.ok(Date.parse(auth.expiresAt) > Date.now());
      const term = auth.token;

      // ST22-ST25: fetch, load into the card, acknowledge
      const pk = expect(await get(`/v1/cards/${cardId}/packages?after=0`, term), 200) as { packages: { seq: number; body: string; status: string }[] };
      assert.deepEqual(
        pk.packages.map((p) => p.seq),
        [1],
      );
      const piv = new PivClient((a) => card.transmit(a));
      await piv.select();
      await piv.loadPackage(new Uint8Array(Buffer.from(pk.packages[0].body, "base64")));
      expect(await post(`/v1/cards/${cardId}/packages/1/ack`, term), 204);
      expect(await post(`/v1/cards/${cardId}/packages/1/ack`, term), 204); // a retried ack is harmless
      expect(await post(`/v1/cards/${cardId}/packages/7/ack`, term), 404);
      const signs = async (slot: number, certPem: string, alg: "P256" | "P384") => {
        await piv.verifyPin("123456");
        const msg = randomBytes(32);
        const { signature, hash } = await piv.sign(slot, alg, msg);
        return verify(hash, msg, { key: new X509Certificate(certPem).publicKey, dsaEncoding: "der" }, signature);
      };
      assert.ok(await signs(0x9a, c1.certificate, "P256"), "the card signs with the delivered key");
      assert.equal((expect(await get(`/v1/cards/${cardId}/packages`, op), 200).packages as { status: string }[])[0].status, "acknowledged");

      // another card's terminal is refused this card
      const other = await issueAndPersonalise(env, "Taro Suzuki");
      cards.push(other.card);
      const otherTerm = (expect(await authenticate(post, other.cardId, other.card), 200) as { token: string }).token;
      expect(await get(`/v1/cards/${cardId}/packages`, otherTerm), 403);
      expect(await post(`/v1/cards/${cardId}/packages/1/ack`, otherTerm), 403);
      expect(await post(`/v1/cards/${cardId}/credentials/${c1.keyPairId}/online`, otherTerm), 403);
      expect(await get(`/v1/cards/${other.cardId}/packages`, otherTerm), 200);

      // addition (claim 7), delivered online: the terminal relays the session the server drives
      const c2 = expect(await post(`/v1/cards/${cardId}/credentials`, op, { slot: "9e", alg: "P384" }), 201) as { keyPairId: string; serial: string; certificate: string };
      const online = expect(await post(`/v1/cards/${cardId}/credentials/${c2.keyPairId}/online`, term), 201) as { sessionId: string; apdus: string[] };
      expect(await post(`/v1/relay/${online.sessionId}`, admin, { responses: ["9000", "9000"] }), 403); // not the opener
      const done = expect(await relay(post, term, online, card), 200) as { done: boolean; results: { sw: number }[] };
      assert.equal(done.done, true);
      assert.ok(done.results.every((r) => r.sw === 0x9000));
      expect(await post(`/v1/relay/${online.sessionId}`, term, { responses: ["9000"] }), 404); // finished
      assert.ok(await signs(0x9e, c2.certificate, "P384"));
      expect(await post(`/v1/cards/${cardId}/credentials/no-such-key/online`, op), 404);

      // a relay that goes wrong is a 422 naming the reason
      const bad = expect(await post(`/v1/cards/${cardId}/credentials/${c2.keyPairId}/online`, op), 201) as { sessionId: string };
      const refused = expect(await post(`/v1/relay/${bad.sessionId}`, op, { responses: ["6a82", "9000"] }), 422);
      assert.match(String(refused.detail), /SELECT/);

      // the card as the system DB knows it: key sets and key pairs, no secrets
      const view = expect(await get(`/v1/cards/${cardId}`, aud), 200) as { keySets: Record<string, unknown>[]; keyPairs: { id: string; certificates: unknown[] }[] };
      assert.equal(view.keySets.length, 1);
      assert.ok(!("custodyRef" in view.keySets[0]));
      assert.deepEqual(view.keyPairs.map((k) => k.id).sort(), [c1.keyPairId, c2.keyPairId].sort());

      // revocation reaches the CRL
      const rv = expect(await post(`/v1/certificates/${c1.serial}/revoke`, op, { reason: "keyCompromise" }), 200);
      assert.equal(rv.reason, "keyCompromise");
      expect(await post(`/v1/certificates/${"ab".repeat(16)}/revoke`, op, { reason: "keyCompromise" }), 404);
      const crl = await get("/v1/crl");
      assert.equal(crl.statusCode, 200);
      assert.equal(crl.headers["content-type"], "application/pkix-crl");
      assert.ok(crl.rawPayload.includes(Buffer.from(c1.serial, "hex")), "the CRL lists the serial");

      // audit: paged entries and a verified chain
      const page = expect(await get("/v1/audit?limit=3", aud), 200) as { entries: { seq: number }[]; next: number };
      assert.deepEqual(
        page.entries.map((e) => e.seq),
        [1, 2, 3],
      );
      const rest = expect(await get(`/v1/audit?after=${page.next}`, aud), 200) as { entries: { action: string }[] };
      const actions = rest.entries.map((e) => e.action);
      for (const a of ["credential.delivered", "certificate.revoked", "terminal.authenticated", "terminal.refused"]) assert.ok(actions.includes(a), `audit has ${a}`);
      const verified = expect(await get("/v1/audit/verify", aud), 200);
      assert.equal(verified.ok, true);
      assert.ok((verified.entries as number) > 10);

      // authentication and roles
      expect(await post("/v1/users", undefined, { personalData: { commonName: "x" } }), 401);
      expect(await post("/v1/users", "ckms_not-a-real-token-at-all", { personalData: { commonName: "x" } }), 401);
      expect(await post("/v1/users", aud, { personalData: { commonName: "x" } }), 403);
      expect(await post("/v1/users", term, { personalData: { commonName: "x" } }), 403);
      expect(await get("/v1/audit", op), 403);
      expect(await get(`/v1/cards/${cardId}/packages`, aud), 403);
      expect(await get(`/v1/cards/${cardId}`, term), 403);

      // metrics count the acts
      const metrics = (await get("/metrics", aud)).body;
      assert.match(metrics, /cardkms_deliveries_total\{path="package"\} 1/);
      assert.match(metrics, /cardkms_deliveries_total\{path="online"\} 1/);
      assert.match(metrics, /cardkms_revocations_total 1/);
      assert.match(metrics, /cardkms_issuances_total 2/);

      // no token, of an operator or a terminal, in any log line
      const logs = env.logs.join("");
      assert.ok(env.logs.length > 20, "the server logged the requests");
      for (const secret of [op, aud, admin, term, otherTerm]) assert.ok(!logs.includes(secret), "a token reached the log");
    } finally {
      for (const c of cards) c.close();
      await env.close();
    }
  });
}
