// Signed notes (C2SP signed-note) and the checkpoints of a transparency log (C2SP tlog-checkpoint), as Go's checksum
// database, Sigstore's logs and the transparency-dev witnesses write them:
//
//   <origin>\n<tree size>\n<base64 root hash>\n[extension lines\n]   the note text (tlog-checkpoint)
//   \n                                                              a blank line
//   — <key name> <base64(key ID (4 bytes, big-endian) || signature)>\n   one or more signature lines
//
// Signatures here are of C2SP signature type 0x02: ECDSA (P-256, SHA-256, ASN.1 DER) as github.com/transparency-dev/
// witness implements it, with key ID = SHA-256(DER SubjectPublicKeyInfo)[:4] — the type a key in an HSM (PKCS#11
// CKM_ECDSA) can make; Ed25519 (type 0x01) is not a key type of the project's custody. A verifier key is written
// `<name>+<key ID, 8 hex digits>+<base64(0x02 || SPKI DER)>`, after Go's note package.
//
// Verifying follows the spec: signatures by unknown keys are ignored; a known key's signature that fails rejects the
// note; at least one known key must have signed.

import { createHash, createPublicKey, verify as nodeVerify } from "node:crypto";

export class NoteError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "NoteError";
  }
}

/** C2SP signed-note signature type of ECDSA signatures (transparency-dev/witness). */
export const SIG_TYPE_ECDSA = 0x02;
/** Bounds a verifier applies before parsing (the spec asks to accept at least 16 signatures). */
const MAX_NOTE_BYTES = 64 * 1024;
const MAX_SIGNATURES = 32;

export interface NoteSigner {
  name: string;
  keyId: number;
  /** The signature over the note text (its UTF-8 bytes, final newline included). */
  sign(text: Uint8Array): Promise<Uint8Array>;
}

export interface NoteVerifier {
  name: string;
  keyId: number;
  verify(text: Uint8Array, signature: Uint8Array): boolean;
}

function checkKeyName(name: string): void {
  if (typeof name !== "string" || name.length === 0 || /[\s+]/u.test(name) || /\p{Cc}/u.test(name))
    throw new NoteError(`a key name must be non-empty, without spaces, plus signs or control characters: ${JSON.stringify(String(name).slice(0, 40))}`);
}

/** Key ID of an ECDSA key (type 0x02): the first 4 bytes of SHA-256 over its DER SubjectPublicKeyInfo. */
export function ecdsaKeyId(spki: Uint8Array): number {
  return createHash("sha256").update(spki).digest().readUInt32BE(0);
}

/** A verifier for ECDSA (P-256 or P-384, SHA-256, DER) signatures by the key `spki` under `name`. */
export function ecdsaVerifier(name: string, spki: Uint8Array): NoteVerifier {
  checkKeyName(name);
  let key: ReturnType<typeof createPublicKey>;
  try {
    key = createPublicKey({ key: Buffer.from(spki), format: "der", type: "spki" });
  } catch {
    throw new NoteError("the verifier key is not a DER SubjectPublicKeyInfo");
  }
  if (key.asymmetricKeyType !== "ec" || !["prime256v1", "secp384r1"].includes(key.asymmetricKeyDetails?.namedCurve ?? "")) throw new NoteError("an ECDSA note key is on P-256 or P-384");
  return { name, keyId: ecdsaKeyId(spki), verify: (text, sig) => nodeVerify("sha256", text, { key, dsaEncoding: "der" }, sig) };
}

/** `<name>+<key ID hex>+<base64(0x02 || SPKI)>`: what an auditor pins to check notes. */
export function verifierKey(name: string, spki: Uint8Array): string {
  const v = ecdsaVerifier(name, spki);
  return `${name}+${v.keyId.toString(16).padStart(8, "0")}+${Buffer.concat([Buffer.of(SIG_TYPE_ECDSA), Buffer.from(spki)]).toString("base64")}`;
}

export function parseVerifierKey(vkey: string): NoteVerifier & { spki: Uint8Array } {
  const m = /^([^+\s]+)\+([0-9a-f]{8})\+([A-Za-z0-9+/=]+)$/.exec(typeof vkey === "string" ? vkey.trim() : "");
  if (!m) throw new NoteError("a verifier key is <name>+<8 hex digits>+<base64 key>");
  const raw = Buffer.from(m[3], "base64");
  if (raw[0] !== SIG_TYPE_ECDSA) throw new NoteError(`verifier key type 0x${(raw[0] ?? 0).toString(16)} is not ECDSA (0x02)`);
  const spki = new Uint8Array(raw.subarray(1));
  const v = ecdsaVerifier(m[1], spki);
  if (v.keyId !== parseInt(m[2], 16)) throw new NoteError("the verifier key's ID does not match its key");
  return { ...v, spki };
}

function checkText(text: string): void {
  if (!text.endsWith("\n")) throw new NoteError("a note text ends in a newline");
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x20 && c !== 0x0a) throw new NoteError("a note holds no control characters but newline");
  }
  if (text.endsWith("\n\n")) throw new NoteError("a note text does not end in a blank line");
}

/** The signed note: `text` followed by a blank line and one signature line per signer. */
export async function signNote(text: string, signers: readonly NoteSigner[]): Promise<string> {
  checkText(text);
  if (signers.length === 0) throw new NoteError("a note needs a signer");
  const bytes = new TextEncoder().encode(text);
  const lines: string[] = [];
  for (const s of signers) {
    checkKeyName(s.name);
    const id = Buffer.alloc(4);
    id.writeUInt32BE(s.keyId >>> 0);
    lines.push(`\u2014 ${s.name} ${Buffer.concat([id, Buffer.from(await s.sign(bytes))]).toString("base64")}\n`);
  }
  return `${text}\n${lines.join("")}`;
}

/** Opens a signed note with the known keys; the text, and the names of the keys whose signatures verified. */
export function openNote(note: string, verifiers: readonly NoteVerifier[]): { text: string; verifiedBy: string[] } {
  if (typeof note !== "string") throw new NoteError("a note is text");
  if (Buffer.byteLength(note, "utf8") > MAX_NOTE_BYTES) throw new NoteError(`a note is at most ${MAX_NOTE_BYTES} bytes`);
  if (note.includes("\uFFFD") || /[\uD800-\uDFFF]/.test(note.replace(/[\uD800-\uDBFF][\uDC00-\uDFFF]/g, ""))) throw new NoteError("a note is valid UTF-8");
  const split = note.lastIndexOf("\n\n");
  if (split < 0 || !note.endsWith("\n")) throw new NoteError("malformed note: no blank line before the signatures");
  const text = note.slice(0, split + 1);
  checkText(text);
  const sigLines = note.slice(split + 2, -1).split("\n");
  if (sigLines.length > MAX_SIGNATURES) throw new NoteError(`a note carries at most ${MAX_SIGNATURES} signatures`);
  const bytes = new TextEncoder().encode(text);
  const verifiedBy: string[] = [];
  for (const line of sigLines) {
    const m = /^\u2014 (\S+) ([A-Za-z0-9+/=]+)$/.exec(line);
    if (!m) throw new NoteError("malformed signature line");
    const raw = Buffer.from(m[2], "base64");
    if (raw.length < 5) throw new NoteError("malformed signature");
    const id = raw.readUInt32BE(0);
    const v = verifiers.find((k) => k.name === m[1] && k.keyId === id);
    if (!v) continue; // an unknown key: ignored
    if (!v.verify(bytes, raw.subarray(4))) throw new NoteError(`the signature by ${v.name} does not verify: the note was altered, or not signed by that key`);
    verifiedBy.push(v.name);
  }
  if (verifiedBy.length === 0) throw new NoteError("no signature by a known key");
  return { text, verifiedBy };
}

/** A transparency log's checkpoint (C2SP tlog-checkpoint): which log, how many entries, the root of their tree. */
export interface Checkpoint {
  origin: string;
  size: number;
  rootHash: Uint8Array;
  /** Extension lines (opaque to this module). */
  extensions: string[];
}

export function formatCheckpoint(c: Checkpoint): string {
  if (!c.origin || /\p{Cc}/u.test(c.origin)) throw new NoteError("a checkpoint's origin is one non-empty line");
  if (!Number.isSafeInteger(c.size) || c.size < 0) throw new NoteError("a checkpoint's size is a non-negative integer");
  if (c.rootHash.length !== 32) throw new NoteError("a checkpoint's root hash is 32 bytes");
  for (const e of c.extensions) if (!e || /\p{Cc}/u.test(e)) throw new NoteError("a checkpoint's extension is one non-empty line");
  return [c.origin, String(c.size), Buffer.from(c.rootHash).toString("base64"), ...c.extensions].join("\n") + "\n";
}

export function parseCheckpoint(text: string): Checkpoint {
  const lines = text.split("\n");
  if (lines.length < 4 || lines[lines.length - 1] !== "") throw new NoteError("a checkpoint is origin, size and root hash, one per line");
  const [origin, size, root, ...rest] = lines.slice(0, -1);
  if (!origin) throw new NoteError("a checkpoint's origin is not empty");
  if (!/^(0|[1-9][0-9]{0,15})$/.test(size) || !Number.isSafeInteger(Number(size))) throw new NoteError("a checkpoint's size is a decimal without leading zeros");
  const rootHash = Buffer.from(root, "base64");
  if (rootHash.length !== 32 || rootHash.toString("base64") !== root) throw new NoteError("a checkpoint's root hash is 32 bytes in base64");
  if (rest.some((e) => e === "")) throw new NoteError("a checkpoint has no empty extension line");
  return { origin, size: Number(size), rootHash: new Uint8Array(rootHash), extensions: rest };
}
