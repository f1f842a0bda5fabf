// The user's enciphered data (seed 001 claims 41, 48; FIG. 11-12): data enciphered under the public key of the
// card's key management key (PIV slot 9D), so that only the card can open it again. Anyone holding the card's
// public key or certificate enciphers; deciphering makes the CARD do the private-key operation — GENERAL
// AUTHENTICATE ECDH for an EC key, the raw RSA operation for an RSA key — and the host only finishes the job
// (HKDF, or OAEP decoding, then AES-256-GCM). The private key never leaves the card.
//
// Envelope, format "cardkms-enciphered" version 1: UTF-8 JSON, one object, byte strings base64url:
//   { "format": "cardkms-enciphered", "v": 1,
//     "alg": "ECIES-HKDF-SHA256-A256GCM" | "RSA-OAEP-SHA256-A256GCM",
//     "key": "P256" | "P384" | "RSA2048" | "RSA3072",     the card key's algorithm (GENERAL AUTHENTICATE P1)
//     "kid": hex SHA-256 of the recipient's SubjectPublicKeyInfo DER,
//     "epk": ephemeral public point 04‖X‖Y (ECIES)  |  "ek": RSA-OAEP-SHA256 of the content key (RSA),
//     "aad": the caller's associated data (authenticated, not secret, e.g. an object ID),
//     "iv": 12 bytes, "ct": ciphertext, "tag": 16-byte GCM tag }
// ECIES: Z = x(e·Q) (the card computes x(d·E)); content key = HKDF-SHA-256(Z, salt = epk ‖ kid, info =
// "cardkms-enciphered/v1 " ‖ key, 32 bytes). RSA: a random 32-byte content key under RSA-OAEP (SHA-256, MGF1-
// SHA-256, empty label). Either way AES-256-GCM's additional data is the header — format, v, alg, key, kid,
// epk/ek, aad, in that order, as canonical JSON — so no header field can be changed without the envelope failing
// to open. The kid lets a card that does not hold the recipient key be told apart (from its certificate) before
// any card operation, with an error naming both keys.

import {
  X509Certificate,
  createCipheriv,
  createDecipheriv,
  createHash,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  hkdfSync,
  publicEncrypt,
  randomBytes,
  constants,
  timingSafeEqual,
  type KeyObject,
} from "node:crypto";
import type { KeyAlg } from "./types.ts";
import { ApduError, type Transmit } from "./apdu-client.ts";

/** Largest envelope accepted (the envelope format's 16 MiB of plaintext, base64url and header). */
export const MAX_ENVELOPE_BYTES = 24 * 1024 * 1024;
import { toB64url as b64 } from "../util/bytes.ts";
import { PivClient } from "./piv/client.ts";

export const ENVELOPE_FORMAT = "cardkms-enciphered";
export const ENVELOPE_VERSION = 1;
export const ALG_ECIES = "ECIES-HKDF-SHA256-A256GCM";
export const ALG_RSA_OAEP = "RSA-OAEP-SHA256-A256GCM";
/** Largest plaintext enciphered in one envelope (the envelope is meant for records, not bulk files). */
export const MAX_PLAINTEXT = 16 * 1024 * 1024;

export type EnvelopeAlg = typeof ALG_ECIES | typeof ALG_RSA_OAEP;

export type EncipheredErrorCode =
  /** Not an envelope of this format and version, or a field of the wrong shape. */
  | "malformed"
  /** The recipient key is of a kind this format does not cover. */
  | "unsupported"
  /** The card's key is not the envelope's recipient key. */
  | "wrong-card"
  /** The envelope does not open: altered, or (when the card's key could not be checked first) not for this card. */
  | "tampered"
  /** The caller expected other associated data than the envelope carries. */
  | "aad-mismatch"
  /** The card refused the private-key operation (PIN not verified, no key in the slot ...). */
  | "card-refused";

export class EncipheredError extends Error {
  constructor(
    readonly code: EncipheredErrorCode,
    message: string,
    readonly sw?: number,
  ) {
    super(message);
    this.name = "EncipheredError";
  }
}

/** A parsed envelope. Byte strings are raw bytes here. */
export interface Envelope {
  format: typeof ENVELOPE_FORMAT;
  v: typeof ENVELOPE_VERSION;
  alg: EnvelopeAlg;
  key: KeyAlg;
  /** SHA-256 of the recipient's SPKI DER, lowercase hex. */
  kid: string;
  epk?: Uint8Array;
  ek?: Uint8Array;
  aad: Uint8Array;
  iv: Uint8Array;
  ct: Uint8Array;
  tag: Uint8Array;
}

/** The recipient: a public key with what the envelope says about it. */
export interface Recipient {
  key: KeyObject;
  alg: KeyAlg;
  /** SHA-256 of the SPKI DER, hex. */
  kid: string;
  spki: Uint8Array;
}

const EC_LEN: Partial<Record<KeyAlg, number>> = { P256: 32, P384: 48 };
const RSA_LEN: Partial<Record<KeyAlg, number>> = { RSA2048: 256, RSA3072: 384 };
const KEY_ALGS: readonly KeyAlg[] = ["P256", "P384", "RSA2048", "RSA3072"];

/**
 * The recipient key from a certificate (DER or X509Certificate), an SPKI DER, or a public KeyObject. EC P-256 /
 * P-384 and RSA 2048 / 3072 — the keys the card holds.
 */
export function recipientOf(publicKey: Uint8Array | X509Certificate | KeyObject): Recipient {
  let key: KeyObject;
  if (publicKey instanceof X509Certificate) key = publicKey.publicKey;
  else if (publicKey instanceof Uint8Array) {
    let cert: X509Certificate | undefined;
    try {
      cert = new X509Certificate(publicKey);
    } catch {
      cert = undefined;
    }
    try {
      key = cert ? cert.publicKey : createPublicKey({ key: Buffer.from(publicKey), format: "der", type: "spki" });
    } catch {
      throw new EncipheredError("unsupported", "the recipient is neither an X.509 certificate nor a SubjectPublicKeyInfo (DER)");
    }
  } else key = publicKey.type === "private" ? createPublicKey(publicKey) : publicKey;
  if (key.type !== "public") throw new EncipheredError("unsupported", "the recipient must be a public key");
  const d = key.asymmetricKeyDetails ?? {};
  let alg: KeyAlg | undefined;
  if (key.asymmetricKeyType === "ec") alg = d.namedCurve === "prime256v1" ? "P256" : d.namedCurve === "secp384r1" ? "P384" : undefined;
  else if (key.asymmetricKeyType === "rsa") alg = d.modulusLength === 2048 ? "RSA2048" : d.modulusLength === 3072 ? "RSA3072" : undefined;
  if (!alg)
    throw new EncipheredError("unsupported", `the recipient key (${key.asymmetricKeyType ?? "?"} ${d.namedCurve ?? d.modulusLength ?? ""}) is not one a card holds: EC P-256, P-384 or RSA 2048, 3072`);
  const spki = new Uint8Array(key.export({ format: "der", type: "spki" }));
  return { key, alg, spki, kid: createHash("sha256").update(spki).digest("hex") };
}

/** The header as GCM's additional data: fixed field order, canonical JSON. */
function headerBytes(e: Omit<Envelope, "iv" | "ct" | "tag">): Buffer {
  const h: Record<string, string | number> = { format: e.format, v: e.v, alg: e.alg, key: e.key, kid: e.kid };
  if (e.epk) h.epk = b64(e.epk);
  if (e.ek) h.ek = b64(e.ek);
  h.aad = b64(e.aad);
  return Buffer.from(JSON.stringify(h), "utf8");
}

function contentKeyEcies(z: Uint8Array, epk: Uint8Array, kid: string, key: KeyAlg): Buffer {
  const salt = Buffer.concat([epk, Buffer.from(kid, "hex")]);
  return Buffer.from(hkdfSync("sha256", z, salt, Buffer.from(`${ENVELOPE_FORMAT}/v${ENVELOPE_VERSION} ${key}`, "utf8"), 32));
}

/** Uncompressed point 04‖X‖Y of an EC public key. */
function pointOf(key: KeyObject, len: number): Buffer {
  const jwk = key.export({ format: "jwk" });
  const coord = (s: string | undefined) => {
    const v = Buffer.from(s ?? "", "base64url");
    return Buffer.concat([Buffer.alloc(len - v.length), v]);
  };
  return Buffer.concat([Buffer.of(4), coord(jwk.x), coord(jwk.y)]);
}

/**
 * Enciphers `plaintext` for the card holding the private key of `cardPublicKey` (the certificate or SPKI of its
 * key management key, slot 9D). `aad` is bound to the envelope and carried in it in clear: name the object, the
 * user, never a secret. Returns the envelope bytes.
 */
export function encipherForCard(cardPublicKey: Uint8Array | X509Certificate | KeyObject | Recipient, plaintext: Uint8Array, aad: Uint8Array = new Uint8Array(0)): Uint8Array {
  const r = "kid" in cardPublicKey ? cardPublicKey : recipientOf(cardPublicKey);
  if (plaintext.length > MAX_PLAINTEXT) throw new RangeError(`plaintext of ${plaintext.length} bytes is over the envelope limit (${MAX_PLAINTEXT})`);
  let cek: Buffer;
  let head: Omit<Envelope, "iv" | "ct" | "tag">;
  const ecLen = EC_LEN[r.alg];
  if (ecLen) {
    const eph = generateKeyPairSync("ec", { namedCurve: r.alg === "P256" ? "prime256v1" : "secp384r1" });
    const epk = pointOf(eph.publicKey, ecLen);
    const z = diffieHellman({ privateKey: eph.privateKey, publicKey: r.key });
    cek = contentKeyEcies(z, epk, r.kid, r.alg);
    z.fill(0);
    head = { format: ENVELOPE_FORMAT, v: ENVELOPE_VERSION, alg: ALG_ECIES, key: r.alg, kid: r.kid, epk, aad: Uint8Array.from(aad) };
  } else {
    cek = randomBytes(32);
    const ek = publicEncrypt({ key: r.key, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256" }, cek);
    head = { format: ENVELOPE_FORMAT, v: ENVELOPE_VERSION, alg: ALG_RSA_OAEP, key: r.alg, kid: r.kid, ek, aad: Uint8Array.from(aad) };
  }
  const iv = randomBytes(12);
  const c = createCipheriv("aes-256-gcm", cek, iv);
  c.setAAD(headerBytes(head));
  const ct = Buffer.concat([c.update(plaintext), c.final()]);
  cek.fill(0);
  const env: Record<string, string | number> = JSON.parse(headerBytes(head).toString("utf8")) as Record<string, string | number>;
  env.iv = b64(iv);
  env.ct = b64(ct);
  env.tag = b64(c.getAuthTag());
  return new Uint8Array(Buffer.from(JSON.stringify(env), "utf8"));
}

const B64URL = /^[A-Za-z0-9_-]*$/;

/** Parses and checks an envelope's shape (not its authenticity: only the card's key opens it). */
export function parseEnvelope(bytes: Uint8Array | string): Envelope {
  let o: unknown;
  try {
    o = JSON.parse(typeof bytes === "string" ? bytes : Buffer.from(bytes).toString("utf8"));
  } catch {
    throw new EncipheredError("malformed", "not an enciphered-data envelope (not JSON)");
  }
  if (typeof o !== "object" || o === null || Array.isArray(o)) throw new EncipheredError("malformed", "not an enciphered-data envelope (not a JSON object)");
  const r = o as Record<string, unknown>;
  // Messages never echo the input's values: what was handed over may be plaintext by mistake.
  if (r.format !== ENVELOPE_FORMAT) throw new EncipheredError("malformed", `not an enciphered-data envelope (format is not ${ENVELOPE_FORMAT})`);
  if (r.v !== ENVELOPE_VERSION) {
    const v = typeof r.v === "number" && Number.isSafeInteger(r.v) ? ` ${r.v}` : "";
    throw new EncipheredError("malformed", `envelope version${v} is not supported (this library reads version ${ENVELOPE_VERSION})`);
  }
  const bytesOf = (name: string, len?: number): Uint8Array => {
    const v = r[name];
    if (typeof v !== "string" || !B64URL.test(v)) throw new EncipheredError("malformed", `envelope field ${name} must be base64url`);
    const b = new Uint8Array(Buffer.from(v, "base64url"));
    if (b64(b) !== v) throw new EncipheredError("malformed", `envelope field ${name} is not canonical base64url`);
    if (len !== undefined && b.length !== len) throw new EncipheredError("malformed", `envelope field ${name} must be ${len} bytes, not ${b.length}`);
    return b;
  };
  const alg = r.alg;
  if (alg !== ALG_ECIES && alg !== ALG_RSA_OAEP) throw new EncipheredError("unsupported", `envelope algorithm is not supported (this library reads ${ALG_ECIES} and ${ALG_RSA_OAEP})`);
  const key = r.key as KeyAlg;
  if (!KEY_ALGS.includes(key)) throw new EncipheredError("unsupported", `envelope key type is not supported (${KEY_ALGS.join(", ")})`);
  if (typeof r.kid !== "string" || !/^[0-9a-f]{64}$/.test(r.kid)) throw new EncipheredError("malformed", "envelope field kid must be 64 lowercase hex digits");
  const known = new Set(["format", "v", "alg", "key", "kid", "aad", "iv", "ct", "tag", alg === ALG_ECIES ? "epk" : "ek"]);
  for (const k of Object.keys(r)) if (!known.has(k)) throw new EncipheredError("malformed", `envelope field ${/^[a-z]{1,8}$/.test(k) ? k : "(unnamed)"} is not part of ${alg}`);
  const env: Envelope = { format: ENVELOPE_FORMAT, v: ENVELOPE_VERSION, alg, key, kid: r.kid, aad: bytesOf("aad"), iv: bytesOf("iv", 12), ct: bytesOf("ct"), tag: bytesOf("tag", 16) };
  if (alg === ALG_ECIES) {
    const len = EC_LEN[key];
    if (!len) throw new EncipheredError("malformed", `${ALG_ECIES} needs an EC key, not ${key}`);
    env.epk = bytesOf("epk", 1 + 2 * len);
    if (env.epk[0] !== 4) throw new EncipheredError("malformed", "envelope field epk must be an uncompressed point");
  } else {
    const len = RSA_LEN[key];
    if (!len) throw new EncipheredError("malformed", `${ALG_RSA_OAEP} needs an RSA key, not ${key}`);
    env.ek = bytesOf("ek", len);
  }
  return env;
}

/** The SHA-256 (hex) of the public key in a card slot's certificate, or undefined when the slot has no certificate. */
export async function cardKid(piv: PivClient, slot: number): Promise<string | undefined> {
  const der = await piv.readCertificate(slot);
  return der ? recipientOf(der).kid : undefined;
}

/** SHA-256 / MGF1 (RFC 8017 §B.2.1). */
function mgf1(seed: Uint8Array, len: number): Buffer {
  const out: Buffer[] = [];
  for (let c = 0, n = 0; n < len; c++) {
    const counter = Buffer.alloc(4);
    counter.writeUInt32BE(c);
    const h = createHash("sha256").update(seed).update(counter).digest();
    out.push(h);
    n += h.length;
  }
  return Buffer.concat(out).subarray(0, len);
}

const L_HASH = createHash("sha256").digest(); // SHA-256 of the empty label

/**
 * EME-OAEP decoding (RFC 8017 §7.1.2 step 3) of the block the card's raw RSA operation returned. One failure for
 * every way it can be wrong, decided after all checks ran.
 */
function oaepDecode(em: Uint8Array, k: number): Buffer | undefined {
  const hLen = 32;
  if (em.length !== k || k < 2 * hLen + 2) return undefined;
  const maskedSeed = em.subarray(1, 1 + hLen);
  const maskedDb = em.subarray(1 + hLen);
  const seed = Buffer.from(maskedSeed);
  const seedMask = mgf1(maskedDb, hLen);
  for (let i = 0; i < hLen; i++) seed[i] ^= seedMask[i];
  const db = Buffer.from(maskedDb);
  const dbMask = mgf1(seed, db.length);
  for (let i = 0; i < db.length; i++) db[i] ^= dbMask[i];
  let bad = em[0];
  bad |= timingSafeEqual(db.subarray(0, hLen), L_HASH) ? 0 : 1;
  // Find the 01 after the zero padding without branching on where it is.
  let found = 0;
  let index = 0;
  for (let i = hLen; i < db.length; i++) {
    const isOne = db[i] === 1 ? 1 : 0;
    const isZero = db[i] === 0 ? 1 : 0;
    index = found === 0 && isOne === 1 ? i : index;
    bad |= found === 0 && isOne === 0 && isZero === 0 ? 1 : 0;
    found |= isOne;
  }
  bad |= found ^ 1;
  seed.fill(0);
  if (bad !== 0) {
    db.fill(0);
    return undefined;
  }
  const m = Buffer.from(db.subarray(index + 1));
  db.fill(0);
  return m;
}

export interface DecipherOptions {
  /** Verifies the PIN right before the card operation (9D needs the PIN in the session). Never stored. */
  pin?: string;
  /** The associated data the caller expects (e.g. the object ID); refused when the envelope carries other. */
  aad?: Uint8Array;
  /**
   * Check the card's key against the envelope's kid from the slot's certificate before using it (default true).
   * A card with no certificate in the slot is not checked; a wrong key then shows as "does not open".
   */
  checkKid?: boolean;
  /** SELECT the PIV application first (default: only when a transmit function is given). */
  select?: boolean;
}

function cardRefusal(e: ApduError, what: string): EncipheredError {
  const sw = e.sw.toString(16).toUpperCase().padStart(4, "0");
  switch (e.sw) {
    case 0x6982:
      return new EncipheredError("card-refused", `the card refused ${what} (${sw}): verify the PIN first`, e.sw);
    case 0x6983:
      return new EncipheredError("card-refused", `the card refused ${what} (${sw}): the PIN is blocked`, e.sw);
    case 0x6a88:
      return new EncipheredError("wrong-card", `the card has no key in that slot (${sw}): it cannot decipher this envelope`, e.sw);
    case 0x6a86:
      return new EncipheredError("wrong-card", `the card's key in that slot is not of the envelope's key type (${sw})`, e.sw);
    case 0x6985:
      return new EncipheredError("card-refused", `the card's key in that slot may not be used for ${what} (${sw})`, e.sw);
    case 0x6a80:
      return new EncipheredError("tampered", `the card refused the envelope's key material (${sw}): the envelope was altered`, e.sw);
    default:
      return new EncipheredError("card-refused", `the card refused ${what} (${sw})`, e.sw);
  }
}

/**
 * Opens an envelope with the card: the card does the private-key operation with the key in `slot` (9D, the key
 * management key, as a rule), the host derives the content key and opens AES-256-GCM. Returns the plaintext
 * (the caller's to wipe). Throws EncipheredError: "wrong-card" when the card's key is not the recipient,
 * "tampered" when the envelope does not open, "card-refused" when the card refuses (e.g. PIN not verified).
 */
export async function decipherWithCard(card: PivClient | Transmit, slot: number, envelope: Uint8Array | string | Envelope, opts: DecipherOptions = {}): Promise<Uint8Array> {
  const env = envelope instanceof Uint8Array || typeof envelope === "string" ? parseEnvelope(envelope) : envelope;
  if (opts.aad !== undefined && !Buffer.from(opts.aad).equals(Buffer.from(env.aad))) {
    throw new EncipheredError("aad-mismatch", "the envelope is bound to other associated data than expected (another object, or moved)");
  }
  const piv = card instanceof PivClient ? card : new PivClient(card);
  if (opts.select ?? !(card instanceof PivClient)) await piv.select();
  let kidChecked = false;
  if (opts.checkKid ?? true) {
    const onCard = await cardKid(piv, slot).catch((e: unknown) => {
      if (e instanceof EncipheredError) return undefined; // a certificate of a key kind we do not cover
      throw e;
    });
    if (onCard !== undefined) {
      if (onCard !== env.kid) {
        throw new EncipheredError(
          "wrong-card",
          `this envelope is enciphered for key ${env.kid.slice(0, 16)}…, but the card's key in slot ${slot.toString(16).toUpperCase()} is ${onCard.slice(0, 16)}…: another card (or another key) holds the recipient key`,
        );
      }
      kidChecked = true;
    }
  }
  if (opts.pin !== undefined) {
    try {
      await piv.verifyPin(opts.pin);
    } catch (e) {
      if (e instanceof ApduError) throw new EncipheredError("card-refused", `the card refused the PIN (${e.sw.toString(16).toUpperCase()})`, e.sw);
      throw e;
    }
  }
  const notOpen = () =>
    new EncipheredError("tampered", kidChecked ? "the envelope does not open: it was altered" : "the envelope does not open: it was altered, or this card does not hold the recipient key");
  let cek: Buffer | undefined;
  try {
    if (env.alg === ALG_ECIES) {
      let z: Uint8Array;
      try {
        z = await piv.ecdh(slot, env.key, env.epk!);
      } catch (e) {
        if (e instanceof ApduError) throw cardRefusal(e, "ECDH");
        throw e;
      }
      cek = contentKeyEcies(z, env.epk!, env.kid, env.key);
      z.fill(0);
    } else {
      let em: Uint8Array;
      try {
        em = await piv.rsaDecipher(slot, env.key, env.ek!);
      } catch (e) {
        if (e instanceof ApduError) throw cardRefusal(e, "RSA decipherment");
        throw e;
      }
      cek = oaepDecode(em, RSA_LEN[env.key]!);
      em.fill(0);
      if (!cek || cek.length !== 32) throw notOpen();
    }
    const d = createDecipheriv("aes-256-gcm", cek, env.iv);
    d.setAAD(headerBytes(env));
    d.setAuthTag(env.tag);
    try {
      const out = Buffer.concat([d.update(env.ct), d.final()]);
      const plain = new Uint8Array(out);
      out.fill(0);
      return plain;
    } catch {
      throw notOpen();
    }
  } finally {
    cek?.fill(0);
  }
}

/** The envelope's public description: who it is for and what it is bound to (nothing secret). */
export function envelopeInfo(envelope: Uint8Array | string): { alg: EnvelopeAlg; key: KeyAlg; kid: string; aad: Uint8Array; size: number } {
  const e = parseEnvelope(envelope);
  return { alg: e.alg, key: e.key, kid: e.kid, aad: e.aad, size: e.ct.length };
}
