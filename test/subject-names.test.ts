// Issue 9 §4: personal data that goes into certificates is validated at registration — no control characters,
// no lone surrogates, NFC — with a 4xx naming the field, so the user's record and every certificate issued from it
// say the same thing. Over the HTTP API as the server process wires it:
//   - the attacks the review made ("a\0b" certified as CN=a\00b, a lone surrogate recorded as is but certified as
//     U+FFFD, NFD text), at user registration and at the key generation device's entry, on every engine;
//   - a property over arbitrary strings (any UTF-16 code unit, controls, combining marks, surrogates): what
//     registration accepts is certified byte for byte as recorded — the issued certificate's subject is read back
//     from its DER, not through the CA's own name parser — and what it refuses is refused before anything is
//     stored (no user row, no audit entry).
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import * as der from "../src/ca/der.ts";
import { fromPem } from "../src/ca/pem.ts";
import type { Db } from "../src/store/db.ts";
import { testEngines } from "./support/store-testing.ts";
import { api, apiEnvFor, expect, issueAndPersonalise, registeredData, type ApiEnv } from "./api-env.ts";

const OIDS: Record<string, string> = {
  "2.5.4.6": "country",
  "2.5.4.10": "organization",
  "2.5.4.11": "organizationalUnit",
  "2.5.4.3": "commonName",
  "2.5.4.5": "serialNumber",
  "1.2.840.113549.1.9.1": "email",
};

/** The subject of a DER certificate as raw attribute values: field -> [string tag, value octets]. Read with the DER reader only. */
function subjectOctets(cert: Uint8Array): Map<string, [number, Uint8Array]> {
  const top = der.readOnly(cert, der.TAG.SEQUENCE, "Certificate");
  const tbs = der.children(cert, top)[0];
  const fields = der.children(cert, tbs);
  const subject = fields[fields[0].tag === 0xa0 ? 5 : 4];
  const out = new Map<string, [number, Uint8Array]>();
  for (const rdn of der.children(cert, subject)) {
    const atvs = der.children(cert, rdn);
    assert.equal(atvs.length, 1, "one attribute per RDN");
    const [type, value] = der.children(cert, atvs[0]);
    const field = OIDS[der.oidToString(der.bytesOf(cert, type))];
    assert.ok(field, "an attribute the registration knows");
    assert.ok(!out.has(field), `${field} once`);
    out.set(field, [value.tag, der.bytesOf(cert, value)]);
  }
  return out;
}

async function counts(env: ApiEnv): Promise<{ users: number; audit: number }> {
  const db = env.server.store.db as Db;
  const n = async (table: "users" | "audit_log") =>
    Number(
      (
        await db
          .selectFrom(table)
          .select((e) => e.fn.countAll<number>().as("n"))
          .executeTakeFirstOrThrow()
      ).n,
    );
  return { users: await n("users"), audit: await n("audit_log") };
}

/** The review's strings, each with the code point the refusal must name. */
const ATTACKS: [string, string, RegExp][] = [
  ["NUL, the C-string trick", "a\u0000b", /control character U\+0000 at position 1/],
  ["C1 NEL", "Taro\u0085Yamada", /control character U\+0085/],
  ["DEL", "Taro\u007f", /control character U\+007F/],
  ["a lone high surrogate", "a\ud800b", /lone surrogate U\+D800/],
  ["a lone low surrogate", "\udc00ab", /lone surrogate U\+DC00/],
  ["NFD (e + combining acute)", "Rene\u0301", /NFC/],
];

for (const engine of testEngines()) {
  test(`registration and the key generation device refuse control characters, lone surrogates and non-NFC names, naming the field, on ${engine.name}`, { timeout: 10 * 60_000 }, async (t) => {
    const { env, cards } = await apiEnvFor(t, engine, { logLevel: "silent" });
    const { post, get } = api(env);
    const op = env.tokens.operator;
    const target = await issueAndPersonalise(env, "Hanako Yamada");
    cards.push(target.card);
    for (const [what, value, names] of ATTACKS) {
      for (const field of ["commonName", "organization", "organizationalUnit"]) {
        const before = await counts(env);
        const personalData = { ...registeredData("Taro Yamada"), [field]: value };
        const r = expect(await post("/v1/users", op, { personalData }), 422);
        assert.match(String(r.detail), new RegExp(`^personalData\\.${field} `), `${what} in ${field}: the field is named`);
        assert.match(String(r.detail), names, what);
        assert.ok(!String(r.detail).includes(value), "the value itself is not echoed (personal data)");
        assert.deepEqual(await counts(env), before, `${what}: nothing stored, nothing audited`);
        // the key generation device's entry for an existing, active card: refused before a key is made
        const k = expect(await post(`/v1/cards/${target.cardId}/keygen`, op, { slot: "9d", alg: "P256", personalData }), 422);
        assert.match(String(k.detail), new RegExp(`^personalData\\.${field} `));
        assert.deepEqual(await counts(env), before, `${what}: the device generated and recorded nothing`);
      }
    }
    // the same names in NFC and without controls are fine, and come back as sent
    const ok = expect(await post("/v1/users", op, { personalData: { ...registeredData("x"), commonName: "René Ærø 山田 𠀋", organization: "Zoë & Co" } }), 201) as { id: string };
    assert.equal((expect(await get(`/v1/users/${ok.id}`, env.tokens.auditor), 200).personalData as Record<string, string>).commonName, "René Ærø 山田 𠀋");
  });
}

const PLAIN = fc.constantFrom(..."abcdefghijklmnopqrstuvwxyzABCXYZ0123456789 -.'éÅøß山田太郎");
/** One "character" of a hostile name: any UTF-16 code unit (lone surrogates too), any code point, the usual suspects, or plain text. */
const anyUnit = fc.oneof(
  { weight: 4, arbitrary: PLAIN },
  { weight: 2, arbitrary: fc.string({ unit: "grapheme", minLength: 1, maxLength: 1 }) },
  { weight: 2, arbitrary: fc.string({ unit: "binary", minLength: 1, maxLength: 1 }) },
  { weight: 2, arbitrary: fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c)) },
  {
    weight: 2,
    arbitrary: fc.constantFrom(
      "\u0000",
      "\u0007",
      "\t",
      "\n",
      "\u001b",
      "\u007f",
      "\u0085",
      "\u009f",
      "\ud800",
      "\udbff",
      "\udc00",
      "\udfff",
      "\u0301",
      "\u212b",
      "\u1100\u1161",
      "\u200d",
      "\ufeff",
      "\u2028",
      "\u00a0",
      "𠀋",
      "👩‍💻",
    ),
  },
);
/** Names: half plain text and printable single-code-point graphemes (mostly certifiable), half hostile. */
const name = fc.oneof(
  fc.string({ unit: fc.oneof({ weight: 5, arbitrary: PLAIN }, { weight: 1, arbitrary: fc.string({ unit: "grapheme-composite", minLength: 1, maxLength: 1 }) }), minLength: 1, maxLength: 24 }),
  fc.string({ unit: anyUnit, minLength: 0, maxLength: 24 }),
);

test("property: what registration accepts is certified byte for byte as recorded; what it refuses leaves nothing behind", { timeout: 10 * 60_000 }, async (t) => {
  const { env } = await apiEnvFor(t, testEngines()[0], { logLevel: "silent" });
  const { post, get } = api(env);
  const op = env.tokens.operator;
  let accepted = 0;
  let refused = 0;
  await fc.assert(
    fc.asyncProperty(name, fc.option(name, { nil: undefined }), fc.option(name, { nil: undefined }), async (commonName, organization, organizationalUnit) => {
      const personalData: Record<string, string> = { commonName, country: "JP" };
      if (organization !== undefined) personalData.organization = organization;
      if (organizationalUnit !== undefined) personalData.organizationalUnit = organizationalUnit;
      const before = await counts(env);
      const r = await post("/v1/users", op, { personalData });
      if (r.statusCode !== 201) {
        refused++;
        assert.ok(r.statusCode === 400 || r.statusCode === 422, `${r.statusCode}: ${r.body}`);
        assert.match(String(r.headers["content-type"]), /^application\/problem\+json/);
        assert.match(r.json().detail ?? "", /personalData/, "the problem names the personal data");
        assert.deepEqual(await counts(env), before, "refused before anything is stored");
        return;
      }
      accepted++;
      const user = r.json() as { id: string };
      const record = expect(await get(`/v1/users/${user.id}`, env.tokens.auditor), 200).personalData as Record<string, string>;
      assert.deepEqual(record, personalData, "the record is what was sent");
      const cardId = (expect(await post("/v1/cards", op, { userId: user.id }), 201) as { card: { id: string } }).card.id;
      const issued = expect(await post(`/v1/cards/${cardId}/credentials`, op, { slot: "9a", alg: "P256" }), 201) as { certificate: string };
      const subject = subjectOctets(fromPem(issued.certificate, "CERTIFICATE"));
      assert.deepEqual([...subject.keys()].sort(), [...Object.keys(record), "serialNumber"].sort(), "every recorded field, and the card ID");
      for (const [field, value] of Object.entries(record)) {
        const [tag, octets] = subject.get(field)!;
        assert.equal(tag, field === "country" ? der.TAG.PRINTABLE_STRING : der.TAG.UTF8_STRING);
        assert.deepEqual(Buffer.from(octets), Buffer.from(new TextEncoder().encode(value)), `${field}: the certificate holds the recorded bytes`);
        assert.equal(new TextDecoder("utf-8", { fatal: true }).decode(octets), value, `${field}: and they read back as the recorded string, code unit for code unit`);
      }
    }),
    { numRuns: 200 },
  );
  assert.ok(accepted >= 20 && refused >= 20, `both sides were exercised: ${accepted} accepted, ${refused} refused`);
});
