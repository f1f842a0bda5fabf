import { test } from "node:test";
import assert from "node:assert/strict";
import { generateKeyPairSync, sign } from "node:crypto";
import { ecdsaKeyId, ecdsaVerifier, formatCheckpoint, NoteError, openNote, parseCheckpoint, parseVerifierKey, signNote, verifierKey, type NoteSigner } from "./note.ts";

function key(name: string, curve = "P-256"): { signer: NoteSigner; spki: Uint8Array } {
  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: curve });
  const spki = new Uint8Array(publicKey.export({ format: "der", type: "spki" }));
  return { spki, signer: { name, keyId: ecdsaKeyId(spki), sign: async (t) => new Uint8Array(sign("sha256", t, { key: privateKey, dsaEncoding: "der" })) } };
}

const text = "example.test/log\n42\n" + Buffer.alloc(32, 7).toString("base64") + "\n";

test("a signed note opens with its key; the format is C2SP's: text, blank line, em-dash signature lines", async () => {
  const a = key("example.test/log");
  const note = await signNote(text, [a.signer]);
  assert.ok(note.startsWith(text + "\n\u2014 example.test/log "));
  assert.ok(note.endsWith("\n"));
  const sig = Buffer.from(note.trimEnd().split(" ").pop()!, "base64");
  assert.equal(sig.readUInt32BE(0), a.signer.keyId, "the signature starts with the key ID");
  assert.deepEqual(openNote(note, [ecdsaVerifier("example.test/log", a.spki)]), { text, verifiedBy: ["example.test/log"] });
});

test("a note is refused when altered, signed by nobody known, or by a known key that did not sign it", async () => {
  const a = key("example.test/log");
  const b = key("witness.test/w1", "P-384");
  const note = await signNote(text, [a.signer, b.signer]);
  const va = ecdsaVerifier("example.test/log", a.spki);
  const vb = ecdsaVerifier("witness.test/w1", b.spki);
  assert.deepEqual(openNote(note, [va, vb]).verifiedBy, ["example.test/log", "witness.test/w1"]);
  assert.deepEqual(openNote(note, [vb]).verifiedBy, ["witness.test/w1"], "an unknown key's signature is ignored");
  assert.throws(() => openNote(note.replace("\n42\n", "\n43\n"), [va]), /does not verify/);
  assert.throws(() => openNote(note, [ecdsaVerifier("other.test/log", a.spki)]), /no signature by a known key/);
  // the same name with another key: ignored (another key ID), so nobody known signed
  assert.throws(() => openNote(note, [ecdsaVerifier("example.test/log", key("x").spki)]), /no signature by a known key/);
  // a known name and key ID whose signature is swapped for another's
  const forged = note.replace(
    /\u2014 example\.test\/log (\S+)/,
    (_m, s: string) => `\u2014 example.test/log ${Buffer.concat([Buffer.from(s, "base64").subarray(0, 4), Buffer.alloc(70, 1)]).toString("base64")}`,
  );
  assert.throws(() => openNote(forged, [va]), /does not verify/);
  for (const bad of ["", text, text + "\n", note.replace("\u2014", "-"), note + "junk\n", "a\u0007b\n\n\u2014 x AAAAAAA=\n"])
    assert.throws(() => openNote(bad, [va]), NoteError, JSON.stringify(bad.slice(0, 30)));
});

test("verifier keys round-trip and are checked; key names refuse spaces and plus signs", () => {
  const a = key("example.test/log");
  const vkey = verifierKey("example.test/log", a.spki);
  assert.match(vkey, /^example\.test\/log\+[0-9a-f]{8}\+/);
  const v = parseVerifierKey(vkey);
  assert.equal(v.keyId, a.signer.keyId);
  assert.deepEqual(v.spki, a.spki);
  assert.throws(() => parseVerifierKey(vkey.replace(/\+[0-9a-f]{8}\+/, "+00000000+")), /ID does not match/);
  const [, name, id, b64] = /^([^+]+)\+([0-9a-f]{8})\+(.+)$/.exec(vkey)!;
  const ed = Buffer.from(b64, "base64");
  ed[0] = 0x01;
  assert.throws(() => parseVerifierKey(`${name}+${id}+${ed.toString("base64")}`), /not ECDSA/);
  for (const n of ["", "a b", "a+b", "a\tb"]) assert.throws(() => verifierKey(n, a.spki), /key name/);
});

test("checkpoints: origin, size, base64 root, extension lines; strict parsing", () => {
  const c = { origin: "cardkms/audit", size: 1234, rootHash: new Uint8Array(32).fill(9), extensions: ["x-head 1234"] };
  const t = formatCheckpoint(c);
  assert.equal(t, `cardkms/audit\n1234\n${Buffer.alloc(32, 9).toString("base64")}\nx-head 1234\n`);
  assert.deepEqual(parseCheckpoint(t), c);
  for (const bad of [
    "cardkms/audit\n01\nAAAA\n",
    "cardkms/audit\n12\n",
    "\n1\n" + Buffer.alloc(32).toString("base64") + "\n",
    "o\n-1\n" + Buffer.alloc(32).toString("base64") + "\n",
    "o\n1\n" + Buffer.alloc(31).toString("base64") + "\n",
    "o\n1\n" + Buffer.alloc(32).toString("base64") + "\n\n",
  ])
    assert.throws(() => parseCheckpoint(bad), NoteError, JSON.stringify(bad));
});
