// The key generation device through the HTTP API (issue 4 items 1-3, seed 001 embodiments 1-2; with an escrow,
// embodiment 3 S3), on SQLite and PostgreSQL and on the software keystore and SoftHSM2, the server as its process
// wires it: an operator asks for a key in a card at the terminal; the key pair is generated in the server's custody,
// certified by the center after it compared the entered personal data with the user's record (step 423), written
// into the card through SCP03 (the terminal relays one APDU per round trip and sees the key only wrapped), and is
// then gone from custody. Refusals are problem+json naming the check and who refused, and are audited.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, X509Certificate } from "node:crypto";
import { fromPem } from "../src/ca/pem.ts";
import type { KeyCustody } from "../src/custody/custody.ts";
import { buildSignedCsr } from "../src/keygen/csr.ts";
import type { PivSlot } from "../src/keygen/device.ts";
import { createOperatorToken } from "../src/server/main.ts";
import { testEngines } from "./support/store-testing.ts";
import { api, API_CUSTODIES, type ApiEnv, apiEnvFor, authenticate, expect, issueAndPersonalise, liveRelay, registeredData } from "./api-env.ts";
import { cardSignsFor, makeArbitrators } from "./recovery-fixture.ts";

const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
const pem = (k: { export(o: object): string | Buffer }) => k.export({ format: "pem", type: "spki" }) as string;

/** Every key pair in custody, by the SHA-256 of its public key. */
async function keyPairHashes(custody: KeyCustody): Promise<Set<string>> {
  const out = new Set<string>();
  for (const k of await custody.listKeys()) if (k.kind === "keyPair") out.add(sha256(await custody.publicKey(k.label)));
  return out;
}

async function auditActions(env: ApiEnv, subject: string): Promise<{ action: string; details: Record<string, unknown> }[]> {
  const { get } = api(env);
  const out: { action: string; subject: string; details: Record<string, unknown> }[] = [];
  let after = 0;
  for (;;) {
    const page = expect(await get(`/v1/audit?after=${after}&limit=1000`, env.tokens.auditor), 200) as {
      entries: { seq: number; action: string; subject: string; details: Record<string, unknown> }[];
      next: number | null;
    };
    out.push(...page.entries);
    if (page.next === null) break;
    after = page.next;
  }
  return out.filter((e) => e.subject === subject);
}

for (const [engine, custody] of testEngines().flatMap((e) => API_CUSTODIES.map((c) => [e, c] as const))) {
  test(`${engine.name}, ${custody} custody: the key generation device over HTTP — center checks, card write through the relay, key destroyed, escrow`, { timeout: 10 * 60_000 }, async (t) => {
    const { env, cards } = await apiEnvFor(t, engine, { custody });
    const { get, post, put } = api(env);
    const op = env.tokens.operator;
    const { cardId, card } = await issueAndPersonalise(env, "Hanako Yamada");
    cards.push(card);
    const entered = registeredData("Hanako Yamada");
    const keygen = (body: object, token = op) => post(`/v1/cards/${cardId}/keygen`, token, body).then((r) => liveRelay(post, token, r, "/v1/keygen/sessions", card));
    const caChain = (expect(await get("/v1/ca/certificates"), 200) as { certificates: string[] }).certificates.map((c) => new X509Certificate(c));

    await t.test("personal data that differ from the registration: the center refuses (423), the card gets nothing, the key is gone", async () => {
      const before = await keyPairHashes(env.server.custody);
      const r = await keygen({ slot: "9c", alg: "P256", personalData: { ...entered, organization: "Elsewhere Inc" } });
      const p = expect(r, 422);
      assert.equal(p.check, "personal-data");
      assert.equal(p.refusedBy, "certification-center");
      assert.doesNotMatch(String(p.detail), /Elsewhere|Example Bank/, "field names, never values");
      assert.deepEqual(await keyPairHashes(env.server.custody), before, "no key pair left behind in custody");
      const refused = (await auditActions(env, cardId)).filter((e) => e.action === "keygen.refused");
      assert.equal(refused.length, 1);
      assert.equal(refused[0].details.check, "personal-data");
      // issue 15 §6: what was refused — the key the device had generated (not yet certified: no serial)
      assert.match(String(refused[0].details.publicKeySha256), /^[0-9a-f]{64}$/);
      assert.equal(refused[0].details.serial, undefined);
    });

    for (const [slot, alg] of [
      ["9a", "P256"],
      ["9c", "RSA2048"],
    ] as [PivSlot, "P256" | "RSA2048"][]) {
      await t.test(`slot ${slot} ${alg}: certified, verified, written through SCP03 into the card, which signs under it; the key left custody`, async () => {
        const r = expect(await keygen({ slot, alg, personalData: entered }), 200) as {
          result: { cardId: string; slot: string; alg: string; serial: string; certificate: string; publicKeySha256: string; escrowId?: string };
        };
        const res = r.result;
        assert.equal(res.cardId, cardId);
        assert.equal(res.slot, slot);
        assert.equal(res.escrowId, undefined);
        const cert = new X509Certificate(res.certificate);
        assert.equal(sha256(cert.publicKey.export({ format: "der", type: "spki" })), res.publicKeySha256);
        assert.ok(cert.verify(caChain[0].publicKey), "signed by the site's CA");
        assert.match(cert.subject, /CN=Hanako Yamada/);
        assert.equal(await cardSignsFor((a) => card.transmit(a), slot, alg, fromPem(res.certificate, "CERTIFICATE")), true, "the card signs with the key under the certificate");
        assert.ok(!(await keyPairHashes(env.server.custody)).has(res.publicKeySha256), "the secret key disappeared from the key generation device (step 434)");
        const issued = (await auditActions(env, cardId)).filter((e) => e.action === "keygen.issued" && e.details.serial === res.serial);
        assert.equal(issued.length, 1);
        assert.equal(issued[0].details.publicKeySha256, res.publicKeySha256);
        const rows = await env.server.store.db
          .withTables<{ keygen_public_keys: { public_key_sha256: string } }>()
          .selectFrom("keygen_public_keys")
          .select("public_key_sha256")
          .where("public_key_sha256", "=", res.publicKeySha256)
          .execute();
        assert.equal(rows.length, 1, "the device registered the public key (step 415)");
      });
    }

    await t.test("the CA served to other sites certifies a signed request only through the center's checks", async () => {
      const c = env.server.custody;
      await c.generateKeyPair("test.remote-csr", "P256", { extractable: "never" });
      try {
        const other = await buildSignedCsr(c, "test.remote-csr", { ...entered, commonName: "Not Hanako" });
        const user = (expect(await get(`/v1/cards/${cardId}`, env.tokens.auditor), 200) as { userId: string }).userId;
        const refused = await post("/v1/ca/certify", op, { csr: other.pem, profile: "signature", applicantId: user });
        assert.equal(refused.statusCode, 422, refused.body);
        assert.equal(refused.json().check, "personal-data");
      } finally {
        await c.deleteKey("test.remote-csr");
      }
    });

    await t.test("refused before anything runs: roles, a card not in the issuer's records, an invalid body, escrow without a policy", async () => {
      expect(await post(`/v1/cards/${cardId}/keygen`, env.tokens.auditor, { slot: "9c", alg: "P256", personalData: entered }), 403);
      const terminal = expect(await authenticate(post, cardId, card), 200).token as string;
      expect(await post(`/v1/cards/${cardId}/keygen`, terminal, { slot: "9c", alg: "P256", personalData: entered }), 403);
      expect(await post(`/v1/cards/00112233445566778899/keygen`, op, { slot: "9c", alg: "P256", personalData: entered }), 404);
      expect(await post(`/v1/cards/${cardId}/keygen`, op, { slot: "9b", alg: "P256", personalData: entered }), 400);
      expect(await post(`/v1/cards/${cardId}/keygen`, op, { slot: "9c", alg: "P256", personalData: { ...entered, nickname: "x" } }), 400);
      expect(await post(`/v1/cards/${cardId}/keygen`, op, { slot: "9c", alg: "P256", personalData: {} }), 400);
      const noPolicy = expect(await keygen({ slot: "9d", alg: "P256", personalData: entered, escrow: true }), 422);
      assert.equal(noPolicy.check, "escrow");
      assert.equal(noPolicy.refusedBy, "device");
      // issue 15 §6: refused after the center certified: the audit entry names the certificate and the key
      const escrowRefusal = (await auditActions(env, cardId)).filter((e) => e.action === "keygen.refused" && e.details.check === "escrow").at(-1);
      assert.match(String(escrowRefusal?.details.serial), /^[0-9a-f]+$/);
      assert.match(String(escrowRefusal?.details.publicKeySha256), /^[0-9a-f]{64}$/);
    });

    await t.test("a live session belongs to the operator who opened it", async () => {
      const other = (await createOperatorToken(env.server.store, "otto", ["operator"])).token;
      const before = await keyPairHashes(env.server.custody);
      const start = expect(await post(`/v1/cards/${cardId}/keygen`, op, { slot: "9e", alg: "P256", personalData: entered }), 201) as { sessionId: string; apdus: string[] };
      expect(await post(`/v1/keygen/sessions/${start.sessionId}`, other, { responses: ["9000"] }), 403);
      expect(await post(`/v1/keygen/sessions/${start.sessionId}`, op, { responses: ["9000", "9000"] }), 400);
      assert.equal((await keyPairHashes(env.server.custody)).size, before.size + 1, "the device holds the new key while it waits for the card");
      // a card that answers every APDU with an error: the device refuses by name, revokes and cleans up
      let r = await post(`/v1/keygen/sessions/${start.sessionId}`, op, { responses: ["6982"] });
      for (let i = 0; r.statusCode === 200 && i < 64; i++) r = await post(`/v1/keygen/sessions/${start.sessionId}`, op, { responses: ["6982"] });
      assert.equal(expect(r, 422).check, "card-write");
      expect(await post(`/v1/keygen/sessions/${start.sessionId}`, op, { responses: ["9000"] }), 404);
      assert.deepEqual(await keyPairHashes(env.server.custody), before, "the refused key is gone");
    });

    await t.test("with escrow, under the card's reproduction policy: the escrow names the issued key and its certificate", async () => {
      const { registry } = makeArbitrators(["user"]);
      const u = registry.require("user");
      expect(await post("/v1/recovery/arbitrators", op, { id: "user", signingPublicKey: pem(u.signingKey), encryptionPublicKey: pem(u.encryptionKey) }), 201);
      expect(await put(`/v1/cards/${cardId}/recovery-policy`, op, { version: 1, author: "user", indispensable: ["user"], groups: [], order: [] }), 200);
      const res = (
        expect(await keygen({ slot: "9d", alg: "RSA2048", personalData: entered, escrow: true }), 200) as { result: { escrowId: string; serial: string; publicKeySha256: string; certificate: string } }
      ).result;
      assert.ok(res.escrowId);
      const escrow = expect(await get(`/v1/cards/${cardId}/escrow`, env.tokens.auditor), 200) as { escrowId: string; serial: string; publicKeySha256: string; slot: string };
      assert.equal(escrow.escrowId, res.escrowId);
      assert.equal(escrow.serial, res.serial);
      assert.equal(escrow.publicKeySha256, res.publicKeySha256);
      assert.equal(escrow.slot, "9d");
      assert.ok(!(await keyPairHashes(env.server.custody)).has(res.publicKeySha256), "escrowed only wrapped and split: the key pair itself is gone");
    });
  });
}
