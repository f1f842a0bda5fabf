// name.ts (issue 9 §4): a subject value is text a relying party can show and compare as it is — no C0/DEL/C1
// control characters, well-formed UTF-16 (no lone surrogate), Unicode NFC — refused naming the field and the code
// point, never the value; and the CA refuses such a name by itself, on the direct path and in a signed request.
import { test } from "node:test";
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { CaRefusal } from "./checks.ts";
import * as der from "./der.ts";
import { encodeName, InvalidSubjectError, parseName, validateSubject, type SubjectName } from "./name.ts";
import { csrWithName, hierarchy, spkiOf } from "../../test/support/ca-testing.ts";

const BAD: [string, string, RegExp][] = [
  ["NUL", "a\u0000b", /control character U\+0000 at position 1/],
  ["BEL", "\u0007ab", /control character U\+0007 at position 0/],
  ["TAB", "a\tb", /control character U\+0009/],
  ["LF", "a\nb", /control character U\+000A/],
  ["ESC", "a\u001b[31mb", /control character U\+001B/],
  ["DEL", "ab\u007f", /control character U\+007F at position 2/],
  ["C1 NEL", "a\u0085b", /control character U\+0085/],
  ["C1 CSI", "a\u009bb", /control character U\+009B/],
  ["lone high surrogate", "a\ud800b", /lone surrogate U\+D800 at position 1/],
  ["lone high surrogate at the end", "ab\udbff", /lone surrogate U\+DBFF at position 2/],
  ["lone low surrogate", "\udc00ab", /lone surrogate U\+DC00 at position 0/],
  ["reversed pair", "a\udc00\ud800b", /lone surrogate U\+DC00 at position 1/],
  ["NFD", "Rene\u0301", /NFC/],
  ["Angstrom sign (NFC: U+00C5)", "\u212b", /NFC/],
  ["conjoining Hangul jamo (NFC: U+AC00)", "\u1100\u1161", /NFC/],
];

const GOOD = ["René", "Ærøskøbing", "山田 太郎", "𠀋 (a surrogate pair)", "👩‍💻 with a zero-width joiner", "Zoë", "O'Brien-Smith", "가"];

test("validateSubject refuses control characters, lone surrogates and non-NFC text, naming the field and the code point, never the value", () => {
  for (const [what, v, reason] of BAD) {
    for (const [subject, field] of [
      [{ commonName: v }, "commonName"],
      [{ organization: v }, "organization"],
      [{ surname: v }, "surname"],
      [{ commonName: "ok", organizationalUnit: ["Retail", v] }, "organizationalUnit"],
    ] as [SubjectName, string][]) {
      assert.throws(
        () => validateSubject(subject),
        (e: unknown) => e instanceof InvalidSubjectError && e.message.startsWith(`subject.${field} `) && reason.test(e.message) && !e.message.includes(v),
        `${what} in ${field}`,
      );
      assert.throws(() => encodeName(subject), InvalidSubjectError, `${what}: the encoder refuses it too`);
    }
    assert.throws(
      () => validateSubject({ commonName: v }, "personalData"),
      (e: Error) => e.message.startsWith("personalData.commonName "),
      "registration names its own field",
    );
  }
  for (const v of GOOD) {
    validateSubject({ commonName: v, organization: v, organizationalUnit: [v, v] });
    assert.equal(parseName(encodeName({ commonName: v })).commonName, v, "and it round-trips as given");
  }
});

/** A DER Name of one commonName whose value is `tag` over `octets` as given. */
const rawName = (tag: number, octets: Uint8Array) => der.sequence(der.tlv(der.TAG.SET, der.sequence(der.oid("2.5.4.3"), der.tlv(tag, octets))));
const utf16be = (s: string) => Buffer.from(s, "utf16le").swap16();

test("the CA refuses such a name itself, asked directly or in a signed request, before it signs anything", async () => {
  const { issuing } = await hierarchy();
  for (const [what, v] of BAD) {
    const spki = spkiOf(generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey);
    await assert.rejects(
      issuing.issue({ subject: { country: "JP", commonName: v, serialNumber: "CARD-1" }, publicKey: spki, profile: "signature" }),
      (e: unknown) => e instanceof CaRefusal && e.check === "subject" && /^subject\.commonName /.test(e.detail),
      what,
    );
  }
  const key = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const spki = spkiOf(key.publicKey);
  for (const [what, name] of [
    ["UTF8String a\\0b", rawName(der.TAG.UTF8_STRING, Uint8Array.from([0x61, 0x00, 0x62]))],
    ["UTF8String with C1 NEL (C2 85)", rawName(der.TAG.UTF8_STRING, Uint8Array.from([0x61, 0xc2, 0x85]))],
    ["UTF8String in NFD", rawName(der.TAG.UTF8_STRING, new TextEncoder().encode("Rene\u0301"))],
    ["BMPString with a lone surrogate", rawName(der.TAG.BMP_STRING, utf16be("a\ud800b"))],
    ["T61String with a NUL", rawName(der.TAG.TELETEX_STRING, Uint8Array.from([0x61, 0x00]))],
  ] as const) {
    await assert.rejects(issuing.issueFromCsr({ csr: csrWithName(spki, name, key.privateKey), profile: "signature" }), (e: unknown) => e instanceof CaRefusal && e.check === "subject", what);
  }
  // and the key was not taken: a good request for it is still certified
  const ok = await issuing.issueFromCsr({ csr: csrWithName(spki, rawName(der.TAG.UTF8_STRING, new TextEncoder().encode("René")), key.privateKey), profile: "signature" });
  assert.ok(ok.serial);
});
