// APDU fuzzer for the cardkms card (ISO 7816-4 framing, the GlobalPlatform ISD, SCP03 and the PIV applet), shared by
// test/fuzz.test.ts (CI, 100,000 APDUs) and bench/fuzz.ts (long runs).
//
//   * a prepared card image (personalised with a card key Sk, keys in 9A 9C 9D 9E and an RSA key in 82, certificates),
//     copied for every fresh card;
//   * a corpus of VALID APDUs for the ISD and PIV, plus a corpus of commands to send inside an SCP03 session;
//   * structural mutators (re-encoded with consistent lengths, so they reach the applets) and raw byte mutators
//     (lengths, truncation, splicing, random bytes);
//   * oracles: transmit never throws, every response is >= 2 bytes with a plausible status word and never 6F00,
//     error status words carry no data, response data never exceeds Ne, an altered SCP03-wrapped command is answered
//     6988 and changes nothing, and the card stays usable (warm reset, SELECT PIV, 9E signature that verifies).
//
// Everything random comes from one seeded PRNG, so a run is reproduced from its seed (the card's own nonces aside).

import { copyFileSync, mkdirSync, rmSync } from "node:fs";
import { createHash, generateKeyPairSync, randomBytes, verify, type KeyObject } from "node:crypto";
import { join } from "node:path";
import { claChannel, claSecureMessaging, encodeCommand, parseCommand, type CommandApdu } from "../src/protocol/apdu.ts";
import { createCard, openCard } from "../src/card/card.ts";
import { TRANSPORT_KEY_SET } from "../src/card/card.ts";
import { sealPackage, pivCertObject } from "../src/protocol/package.ts";
import type { CardRuntime } from "../src/card/runtime.ts";
import { putKeyCommand, Scp03HostSession, type ApduCommand } from "../src/protocol/scp03/host.ts";
import { keyOriginCommand } from "../src/card/isd.ts";
import { macClass } from "../src/protocol/scp03/sm.ts";
import type { ScpKeySet } from "../src/card/state.ts";
import { concat, findTlv, tlv } from "../src/protocol/tlv.ts";
import { createCertificateAuthority, issueCertificate } from "../src/ca/x509-issuer.ts";
import { deliverOnline, personalise } from "../src/issuer/card-scripts.ts";
import { CHEAPEST_PIN_KDF } from "../src/card/pin.ts";

// --- PRNG ----------------------------------------------------------------------------------------------------------

/** sfc32: small, fast, good enough for fuzzing, and deterministic from a 32-bit seed. */
export class Rng {
  private a = 0x9e3779b9;
  private b = 0x243f6a88;
  private c = 0xb7e15162;
  private d: number;
  constructor(seed: number) {
    this.d = seed >>> 0;
    for (let i = 0; i < 16; i++) this.next();
  }
  next(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return t >>> 0;
  }
  float(): number {
    return this.next() / 4294967296;
  }
  int(n: number): number {
    return Math.floor(this.float() * n);
  }
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }
  bool(p = 0.5): boolean {
    return this.float() < p;
  }
  pick<T>(a: readonly T[]): T {
    return a[this.int(a.length)];
  }
  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i += 4) {
      const v = this.next();
      out[i] = v & 0xff;
      if (i + 1 < n) out[i + 1] = (v >>> 8) & 0xff;
      if (i + 2 < n) out[i + 2] = (v >>> 16) & 0xff;
      if (i + 3 < n) out[i + 3] = v >>> 24;
    }
    return out;
  }
}

/** FUZZ_SEED (decimal or 0x hex) or the fixed CI default. */
export function seedFromEnv(fallback = 0x7e57c0de): number {
  const s = process.env.FUZZ_SEED;
  if (!s) return fallback;
  const n = Number(s);
  if (!Number.isFinite(n)) throw new Error(`FUZZ_SEED ${s} is not a number`);
  return n >>> 0;
}

export function countFromEnv(fallback = 100_000): number {
  const s = process.env.FUZZ_COUNT;
  if (!s) return fallback;
  const n = Number(s);
  if (!Number.isInteger(n) || n < 1) throw new Error(`FUZZ_COUNT ${s} is not a positive integer`);
  return n;
}

// --- helpers ---------------------------------------------------------------------------------------------------------

export const hx = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("hex").toUpperCase();
export const uh = (s: string): Uint8Array => new Uint8Array(Buffer.from(s.replace(/\s/g, ""), "hex"));
export const swOf = (r: Uint8Array): number => (r[r.length - 2] << 8) | r[r.length - 1];
export const dataOf = (r: Uint8Array): Uint8Array => r.subarray(0, r.length - 2);

export const PIV_AID = uh("A000000308000010000100");
export const ISD_AID = uh("A000000151000000");
export const ALG = { RSA2048: 0x07, RSA3072: 0x05, P256: 0x11, P384: 0x14 } as const;

export const apdu = (cla: number, ins: number, p1: number, p2: number, data?: Uint8Array, le?: number, extended?: boolean): Uint8Array =>
  encodeCommand({ cla, ins, p1, p2, data: data?.length ? data : undefined, le, extended });

export const selectApdu = (aid: Uint8Array, cla = 0): Uint8Array => apdu(cla, 0xa4, 0x04, 0x00, aid, 256);
export const pinBlock = (pin: string): Uint8Array => {
  const out = new Uint8Array(8).fill(0xff);
  out.set(Buffer.from(pin, "ascii"));
  return out;
};
export const getDataPiv = (tag: string, le = 256, cla = 0): Uint8Array => apdu(cla, 0xcb, 0x3f, 0xff, tlv(0x5c, uh(tag)), le);
export const signApdu = (ref: number, alg: number, digest: Uint8Array, cla = 0): Uint8Array => apdu(cla, 0x87, alg, ref, tlv(0x7c, tlv(0x82), tlv(0x81, digest)), 256);

/** Plausible ISO 7816-4 / GP status words: 9000, 61xx, 62xx, 63xx (63Cx, and 6300 for GP authentication), 6Cxx, 67xx..6Fxx. */
export function plausibleSw(sw: number): boolean {
  const hi = sw >> 8;
  if (sw === 0x9000) return true;
  if (hi === 0x61 || hi === 0x62 || hi === 0x6c) return true;
  if (hi === 0x63) return sw === 0x6300 || (sw & 0xf0) === 0xc0;
  return hi >= 0x67 && hi <= 0x6f;
}

/** Status words after which ISO 7816-4 §5.6 says the response has no data field (errors, not warnings). */
const isErrorSw = (sw: number): boolean => sw >> 8 >= 0x64 && sw >> 8 !== 0x90;

// --- the prepared card image ----------------------------------------------------------------------------------------

export interface FuzzImage {
  dir: string;
  golden: string;
  secret: Uint8Array;
  sk: ScpKeySet;
  cardId: string;
  pin: string;
  puk: string;
  /** 9E public key, to verify the health check signature; the stored PKCS#8 (hex), to tell a legit replacement. */
  pub9e: KeyObject;
  pkcs8Of9e: string;
  /** A peer point for ECDH with 9D. */
  peerPoint: Uint8Array;
  /** Sealed packages for this card: 9D key (seq 1000), 9A key + certificate (seq 1001). */
  packages: Uint8Array[];
  /** A valid certificate object value (53 {70 cert, 71 00, FE}) and a DER certificate. */
  certObject: Uint8Array;
  certDer: Uint8Array;
  /** A P-256 PKCS#8 to import in sessions. */
  importPkcs8: Uint8Array;
}

const ecPkcs8 = (curve: "P-256" | "P-384"): { pkcs8: Uint8Array; pub: KeyObject } => {
  const k = generateKeyPairSync("ec", { namedCurve: curve });
  return { pkcs8: new Uint8Array(k.privateKey.export({ format: "der", type: "pkcs8" })), pub: k.publicKey };
};

function uncompressedPoint(pub: KeyObject): Uint8Array {
  const jwk = pub.export({ format: "jwk" });
  return concat(Uint8Array.of(4), Buffer.from(jwk.x!, "base64url"), Buffer.from(jwk.y!, "base64url"));
}

/**
 * Builds the golden image: personalised over SCP03 (transport key -> Sk KVN 01, SECURED), P-256 keys in 9E (no PIN
 * needed), 9A (with certificate) and 9D, P-384 in 9C (via a sealed package), RSA-2048 in 82. Closed afterwards.
 */
export async function prepareImage(dir: string, opts: { scpFailureLimit?: number } = {}): Promise<FuzzImage> {
  mkdirSync(dir, { recursive: true });
  const golden = join(dir, "golden.card");
  rmSync(golden, { force: true });
  const secret = new Uint8Array(randomBytes(32));
  const pin = "123456";
  const puk = "12345678";
  const card = createCard(golden, secret, { durability: "none", pin, puk, scpFailureLimit: opts.scpFailureLimit, pinKdf: CHEAPEST_PIN_KDF });
  const transmit = async (a: Uint8Array): Promise<Uint8Array> => card.transmit(a);
  const sk: ScpKeySet = { kvn: 0x01, enc: randomBytes(16).toString("hex"), mac: randomBytes(16).toString("hex"), dek: randomBytes(16).toString("hex") };
  await personalise(transmit, TRANSPORT_KEY_SET, sk);
  const cardId = card.state.cardId;

  const ca = await createCertificateAuthority("CN=cardkms fuzz CA");
  const k9e = ecPkcs8("P-256");
  const k9a = ecPkcs8("P-256");
  const k9d = ecPkcs8("P-256");
  const k9c = ecPkcs8("P-384");
  const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const cert9a = new Uint8Array((await issueCertificate(ca, { subject: "CN=fuzz 9A", publicKey: k9a.pub, usage: "authentication" })).rawData);
  const cert9c = new Uint8Array((await issueCertificate(ca, { subject: "CN=fuzz 9C", publicKey: k9c.pub, usage: "signature" })).rawData);
  await deliverOnline(transmit, sk, { keyRef: 0x9e, alg: "P256", pkcs8: k9e.pkcs8 });
  await deliverOnline(transmit, sk, { keyRef: 0x9a, alg: "P256", pkcs8: k9a.pkcs8, cert: cert9a });
  await deliverOnline(transmit, sk, { keyRef: 0x9d, alg: "P256", pkcs8: k9d.pkcs8 });
  await deliverOnline(transmit, sk, { keyRef: 0x82, alg: "RSA2048", pkcs8: new Uint8Array(rsa.privateKey.export({ format: "der", type: "pkcs8" })) });
  const p9c = sealPackage(sk, { cardId, keyRef: "9c", seq: 1, alg: "P384", pkcs8: k9c.pkcs8, cert: cert9c });
  card.transmit(selectApdu(PIV_AID));
  const r = card.transmit(apdu(0x80, 0xf2, 0, 0, p9c));
  if (swOf(r) !== 0x9000) throw new Error(`golden image: LOAD PACKAGE ${hx(r)}`);
  const pkcs8Of9e = card.state.keys["9e"]?.pkcs8;
  if (!pkcs8Of9e || !card.state.keys["9c"] || !card.state.keys["82"]) throw new Error("golden image: keys missing");
  card.close();

  const peer = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const packages = [
    sealPackage(sk, { cardId, keyRef: "9d", seq: 1000, alg: "P256", pkcs8: ecPkcs8("P-256").pkcs8 }),
    sealPackage(sk, { cardId, keyRef: "9a", seq: 1001, alg: "P256", pkcs8: k9a.pkcs8, cert: cert9a }),
  ];
  return {
    dir,
    golden,
    secret,
    sk,
    cardId,
    pin,
    puk,
    pub9e: k9e.pub,
    pkcs8Of9e,
    peerPoint: uncompressedPoint(peer.publicKey),
    packages,
    certObject: findTlv(pivCertObject(cert9a), 0x53)!,
    certDer: cert9a,
    importPkcs8: ecPkcs8("P-256").pkcs8,
  };
}

let cardSerial = 0;

/** A fresh card powered up from a copy of the golden image (durability "none": the OS page cache is enough here). */
export function freshCard(img: FuzzImage): CardRuntime {
  const path = join(img.dir, `card-${process.pid}-${++cardSerial}.card`);
  copyFileSync(img.golden, path);
  return openCard(path, img.secret, { durability: "none" });
}

export function discardCard(card: CardRuntime): void {
  card.close();
  rmSync(card.path, { force: true });
}

// --- corpus --------------------------------------------------------------------------------------------------------

/** A corpus entry: a short sequence of valid APDUs (a chain, or SELECT then a command); one of them gets mutated. */
export interface Seed {
  name: string;
  weight: number;
  apdus: Uint8Array[];
}

/** Splits data into a command chain (CLA b5 on all but the last part). */
function chained(cla: number, ins: number, p1: number, p2: number, data: Uint8Array, part: number, le?: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let o = 0; o < data.length; o += part) {
    const last = o + part >= data.length;
    out.push(apdu(last ? cla : cla | 0x10, ins, p1, p2, data.subarray(o, o + part), last ? le : undefined));
  }
  return out;
}

export function plainCorpus(img: FuzzImage, rng: Rng): Seed[] {
  const digest = (n: number): Uint8Array => rng.bytes(n);
  const selPiv = selectApdu(PIV_AID);
  const selIsd = selectApdu(ISD_AID);
  const piv = (name: string, weight: number, ...a: Uint8Array[]): Seed => ({ name, weight, apdus: [selPiv, ...a] });
  const isd = (name: string, weight: number, ...a: Uint8Array[]): Seed => ({ name, weight, apdus: [selIsd, ...a] });
  const one = (name: string, weight: number, a: Uint8Array): Seed => ({ name, weight, apdus: [a] });
  const gaSign = tlv(0x7c, tlv(0x82), tlv(0x81, digest(32)));
  const rsaBlock = new Uint8Array(256);
  rsaBlock.set(uh("0001"), 0);
  rsaBlock.fill(0xff, 2, 200);
  rsaBlock.set(digest(55), 201);
  const putChuid = concat(tlv(0x5c, uh("5FC102")), tlv(0x53, tlv(0x30, digest(25)), tlv(0x34, digest(16)), tlv(0xfe)));
  const putCert = concat(tlv(0x5c, uh("5FC105")), tlv(0x53, img.certObject));
  const importData = concat(tlv(0x80, Uint8Array.of(ALG.P256)), tlv(0x81, img.importPkcs8));
  const ia = uh("0123456789ABCDEF");
  return [
    // ISO 7816-4 framing handled by the runtime
    one("SELECT ISD", 4, selIsd),
    one("SELECT PIV", 6, selPiv),
    one("SELECT PIV prefix", 2, apdu(0, 0xa4, 4, 0, PIV_AID.subarray(0, 9), 256)),
    one("SELECT PIV no FCI", 2, apdu(0, 0xa4, 4, 0x0c, PIV_AID)),
    one("SELECT PIV extended", 1, apdu(0, 0xa4, 4, 0, PIV_AID, 65536, true)),
    one("GET RESPONSE", 3, apdu(0, 0xc0, 0, 0, undefined, 256)),
    { name: "SELECT PIV Le 16 + GET RESPONSE", weight: 2, apdus: [apdu(0, 0xa4, 4, 0, PIV_AID, 16), apdu(0, 0xc0, 0, 0, undefined, 0x10)] },
    one("MANAGE CHANNEL open", 2, apdu(0, 0x70, 0, 0, undefined, 1)),
    one("MANAGE CHANNEL open 2", 1, apdu(0, 0x70, 0, 2)),
    one("MANAGE CHANNEL close 1", 2, apdu(0, 0x70, 0x80, 1)),
    { name: "channel 1: SELECT PIV, GET DATA", weight: 2, apdus: [apdu(0, 0x70, 0, 1), selectApdu(PIV_AID, 1), getDataPiv("5FC102", 256, 1), apdu(1, 0x70, 0x80, 0)] },
    // ISD (GP)
    isd("GET DATA 45", 2, apdu(0x80, 0xca, 0x00, 0x45, undefined, 256)),
    isd("GET DATA 66", 1, apdu(0x80, 0xca, 0x00, 0x66, undefined, 256)),
    isd("GET DATA E0", 1, apdu(0x80, 0xca, 0x00, 0xe0, undefined, 256)),
    isd("GET DATA C1", 1, apdu(0x80, 0xca, 0x00, 0xc1, undefined, 256)),
    isd("GET DATA 9F7F", 1, apdu(0x80, 0xca, 0x9f, 0x7f, undefined, 256)),
    isd("GET DATA FF21", 1, apdu(0x80, 0xca, 0xff, 0x21, undefined, 256)),
    isd("GET DATA DF20", 2, apdu(0x80, 0xca, 0xdf, 0x20, undefined, 256)),
    isd("GET DATA DF21", 1, apdu(0x80, 0xca, 0xdf, 0x21, undefined, 256)),
    isd("INITIALIZE UPDATE", 3, apdu(0x80, 0x50, 0x00, 0x00, digest(8), 256)),
    isd("INITIALIZE UPDATE KVN 01", 1, apdu(0x80, 0x50, 0x01, 0x00, digest(8), 256)),
    { name: "INITIALIZE UPDATE + EXTERNAL AUTHENTICATE (wrong)", weight: 2, apdus: [selIsd, apdu(0x80, 0x50, 0, 0, digest(8), 256), apdu(0x84, 0x82, 0x33, 0, digest(16))] },
    isd("PUT KEY (plain)", 1, encodeCommand(putKeyCommand(img.sk.dek, { kvn: 0x20, enc: digest(16), mac: digest(16), dek: digest(16) }))),
    isd("SET STATUS", 1, apdu(0x80, 0xf0, 0x80, 0x0f)),
    isd("STORE DATA key set origin (plain)", 1, encodeCommand(keyOriginCommand(img.sk.kvn, "a1a2a3a4a5a6a7a8"))),
    isd("GET DATA DF22", 1, apdu(0x80, 0xca, 0xdf, 0x22, undefined, 256)),
    // PIV
    piv("GET DATA discovery", 3, apdu(0, 0xcb, 0x3f, 0xff, tlv(0x5c, uh("7E")), 256)),
    piv("GET DATA CHUID", 3, getDataPiv("5FC102")),
    piv("GET DATA CCC", 2, getDataPiv("5FC107")),
    piv("GET DATA cert 9A", 3, getDataPiv("5FC105")),
    piv("GET DATA cert 9A Le 64", 1, getDataPiv("5FC105", 64)),
    piv("GET DATA cert 9A extended", 2, apdu(0, 0xcb, 0x3f, 0xff, tlv(0x5c, uh("5FC105")), 65536, true)),
    piv("GET DATA cert 9C", 1, getDataPiv("5FC10A")),
    piv("GET DATA facial image (PIN)", 1, getDataPiv("5FC108")),
    piv("GET DATA chained", 2, ...chained(0, 0xcb, 0x3f, 0xff, tlv(0x5c, uh("5FC102")), 2, 256)),
    piv("VERIFY", 6, apdu(0, 0x20, 0, 0x80, pinBlock(img.pin))),
    piv("VERIFY wrong", 2, apdu(0, 0x20, 0, 0x80, pinBlock("999999"))),
    piv("VERIFY status", 2, apdu(0, 0x20, 0, 0x80)),
    piv("VERIFY reset", 1, apdu(0, 0x20, 0xff, 0x80)),
    piv("CHANGE REFERENCE DATA PIN", 1, apdu(0, 0x24, 0, 0x80, concat(pinBlock(img.pin), pinBlock(img.pin)))),
    piv("CHANGE REFERENCE DATA PUK", 1, apdu(0, 0x24, 0, 0x81, concat(pinBlock(img.puk), pinBlock(img.puk)))),
    piv("RESET RETRY COUNTER", 2, apdu(0, 0x2c, 0, 0x80, concat(pinBlock(img.puk), pinBlock(img.pin)))),
    piv("SIGN 9E", 6, signApdu(0x9e, ALG.P256, digest(32))),
    piv("SIGN 9E SHA-512 digest", 1, signApdu(0x9e, ALG.P256, digest(64))),
    piv("SIGN 9E extended", 2, apdu(0, 0x87, ALG.P256, 0x9e, gaSign, 65536, true)),
    piv("SIGN 9E chained", 2, ...chained(0, 0x87, ALG.P256, 0x9e, gaSign, 16, 256)),
    piv("VERIFY + SIGN 9A", 3, apdu(0, 0x20, 0, 0x80, pinBlock(img.pin)), signApdu(0x9a, ALG.P256, digest(32))),
    piv("VERIFY + SIGN 9C", 2, apdu(0, 0x20, 0, 0x80, pinBlock(img.pin)), signApdu(0x9c, ALG.P384, digest(48))),
    piv("VERIFY + ECDH 9D", 3, apdu(0, 0x20, 0, 0x80, pinBlock(img.pin)), apdu(0, 0x87, ALG.P256, 0x9d, tlv(0x7c, tlv(0x82), tlv(0x85, img.peerPoint)), 256)),
    piv("VERIFY + RSA 82 (rare)", 0.3, apdu(0, 0x20, 0, 0x80, pinBlock(img.pin)), apdu(0, 0x87, ALG.RSA2048, 0x82, tlv(0x7c, tlv(0x82), tlv(0x81, rsaBlock)), 65536, true)),
    piv("GENERATE (plain, refused)", 2, apdu(0, 0x47, 0, 0x9d, tlv(0xac, tlv(0x80, Uint8Array.of(ALG.P256))), 256)),
    piv("PUT DATA CHUID (plain, refused)", 2, apdu(0, 0xdb, 0x3f, 0xff, putChuid)),
    piv("PUT DATA cert (plain, refused)", 1, apdu(0, 0xdb, 0x3f, 0xff, putCert)),
    piv("IMPORT KEY (plain, refused)", 1, apdu(0x80, 0xf0, 0, 0x9d, importData)),
    piv("LOAD PACKAGE 9D", 2, apdu(0x80, 0xf2, 0, 0, img.packages[0])),
    piv("LOAD PACKAGE 9A + cert extended", 1, apdu(0x80, 0xf2, 0, 0, img.packages[1], undefined, true)),
    piv("LOAD PACKAGE 9A + cert chained", 1, ...chained(0x80, 0xf2, 0, 0, img.packages[1], 200)),
    piv("VERIFY + EXPORT 9A", 2, apdu(0, 0x20, 0, 0x80, pinBlock(img.pin)), apdu(0x80, 0xf4, 0, 0x9a, undefined, 65536, true)),
    piv("DELETE KEY empty slot", 1, apdu(0x80, 0xf6, 0, 0x85)),
    // Commands whose P1-P2 the tamper registry judges: the fuzzer sometimes turns them into an attack signal.
    isd("GET DATA key information (attack neighbour)", 0.5, apdu(0x80, 0xca, 0x00, 0xe0, undefined, 256)),
    { name: "external authenticate bytes", weight: 0.5, apdus: [apdu(0x84, 0x82, 0x33, 0, ia)] },
  ];
}

export interface SessionSeed {
  name: string;
  weight: number;
  applet: "isd" | "piv";
  cmd: ApduCommand;
}

/** Commands that make sense inside an SCP03 session. RSA generation is left out (slow); 9E is never touched. */
export function sessionCorpus(img: FuzzImage, rng: Rng): SessionSeed[] {
  const kvn = (): number => rng.range(0x40, 0x7f);
  const key = (): Uint8Array => rng.bytes(16);
  const pk = putKeyCommand(img.sk.dek, { kvn: kvn(), enc: key(), mac: key(), dek: key() });
  return [
    { name: "ISD GET DATA E0", weight: 3, applet: "isd", cmd: { cla: 0x80, ins: 0xca, p1: 0, p2: 0xe0, le: 256 } },
    { name: "ISD GET DATA DF21", weight: 2, applet: "isd", cmd: { cla: 0x80, ins: 0xca, p1: 0xdf, p2: 0x21, le: 256 } },
    { name: "ISD GET DATA DF20", weight: 2, applet: "isd", cmd: { cla: 0x80, ins: 0xca, p1: 0xdf, p2: 0x20, le: 256 } },
    { name: "ISD PUT KEY (new KVN)", weight: 1, applet: "isd", cmd: pk },
    { name: "ISD SET STATUS", weight: 1, applet: "isd", cmd: { cla: 0x80, ins: 0xf0, p1: 0x80, p2: 0x0f } },
    // Binds a key set a fuzzed PUT KEY may have added (0x40..0x7f) to a predecessor; Sk itself stays the card's own.
    { name: "ISD STORE DATA key set origin", weight: 1, applet: "isd", cmd: keyOriginCommand(kvn(), Buffer.from(rng.bytes(8)).toString("hex")) },
    { name: "PIV GET DATA CHUID", weight: 3, applet: "piv", cmd: { cla: 0, ins: 0xcb, p1: 0x3f, p2: 0xff, data: tlv(0x5c, uh("5FC102")), le: 256 } },
    { name: "PIV PUT DATA printed info", weight: 2, applet: "piv", cmd: { cla: 0, ins: 0xdb, p1: 0x3f, p2: 0xff, data: concat(tlv(0x5c, uh("5FC109")), tlv(0x53, tlv(0x01, rng.bytes(20)))) } },
    { name: "PIV PUT DATA cert 9D", weight: 1, applet: "piv", cmd: { cla: 0, ins: 0xdb, p1: 0x3f, p2: 0xff, data: concat(tlv(0x5c, uh("5FC10B")), tlv(0x53, img.certObject)) } },
    { name: "PIV GENERATE P-256 9D", weight: 2, applet: "piv", cmd: { cla: 0, ins: 0x47, p1: 0, p2: 0x9d, data: tlv(0xac, tlv(0x80, Uint8Array.of(ALG.P256))), le: 256 } },
    { name: "PIV GENERATE P-384 83", weight: 1, applet: "piv", cmd: { cla: 0, ins: 0x47, p1: 0, p2: 0x83, data: tlv(0xac, tlv(0x80, Uint8Array.of(ALG.P384))), le: 256 } },
    { name: "PIV IMPORT KEY 84", weight: 2, applet: "piv", cmd: { cla: 0x80, ins: 0xf0, p1: 0, p2: 0x84, data: concat(tlv(0x80, Uint8Array.of(ALG.P256)), tlv(0x81, img.importPkcs8)) } },
    { name: "PIV SIGN 9E", weight: 2, applet: "piv", cmd: { cla: 0, ins: 0x87, p1: ALG.P256, p2: 0x9e, data: tlv(0x7c, tlv(0x82), tlv(0x81, rng.bytes(32))), le: 256 } },
    { name: "PIV DELETE KEY 84", weight: 1, applet: "piv", cmd: { cla: 0x80, ins: 0xf6, p1: 0, p2: 0x84 } },
  ];
}

// --- mutators ------------------------------------------------------------------------------------------------------

const INTERESTING_CLA = [0x00, 0x80, 0x84, 0x04, 0x08, 0x0c, 0x10, 0x90, 0x94, 0x01, 0x02, 0x03, 0x20, 0x40, 0x41, 0x60, 0xa0, 0xe0, 0xfe, 0xff];
const INTERESTING_INS = [0xa4, 0xc0, 0x70, 0xca, 0xcb, 0xdb, 0xd8, 0xf0, 0xf2, 0xf4, 0xf6, 0xe2, 0x20, 0x24, 0x2c, 0x47, 0x87, 0x50, 0x82, 0x00, 0xff, 0x0e, 0x44];
const INTERESTING_P1P2 = [0x0000, 0x3fff, 0x0400, 0x040c, 0x0080, 0x0081, 0xff80, 0x119e, 0x119a, 0x149c, 0x0782, 0x800f, 0x0045, 0xdf20, 0xdf21, 0xffff, 0x0001, 0x8001, 0x8003, 0x0004];
const INTERESTING_LEN = [0x00, 0x01, 0x7f, 0x80, 0x81, 0x82, 0x83, 0x84, 0xff];
/** P1-P2 of the tamper registry: GET DATA of a key value. Drawn rarely, so the zeroize path is exercised. */
const ATTACK_P1P2 = [0x00e1, 0xdf7f];

/** Byte offsets of TLV length fields in `data` (walking constructed tags), for length corruption. */
function tlvLengthOffsets(data: Uint8Array, base = 0, depth = 0, out: number[] = []): number[] {
  let i = 0;
  while (i < data.length && out.length < 64) {
    const tag0 = data[i++];
    let constructed = (tag0 & 0x20) !== 0;
    if ((tag0 & 0x1f) === 0x1f) {
      let n = 0;
      while (i < data.length && n++ < 2 && data[i++] & 0x80);
    }
    if (i >= data.length) return out;
    const lenAt = i;
    let len = data[i++];
    if (len & 0x80) {
      const n = len & 0x7f;
      if (n === 0 || n > 3 || i + n > data.length) return out;
      len = 0;
      for (let k = 0; k < n; k++) len = (len << 8) | data[i++];
    }
    out.push(base + lenAt);
    if (i + len > data.length) return out;
    if (tag0 === 0x7c || tag0 === 0x53) constructed = true;
    if (constructed && depth < 4) tlvLengthOffsets(data.subarray(i, i + len), base + i, depth + 1, out);
    i += len;
  }
  return out;
}

function mutateData(rng: Rng, d0: Uint8Array): Uint8Array {
  const d: Uint8Array = Uint8Array.from(d0);
  switch (rng.int(10)) {
    case 0: // bit flips
      if (d.length) for (let k = rng.range(1, 4); k > 0; k--) d[rng.int(d.length)] ^= 1 << rng.int(8);
      return d;
    case 1: // random byte
      if (d.length) d[rng.int(d.length)] = rng.int(256);
      return d;
    case 2: {
      // insert
      const at = rng.int(d.length + 1);
      return concat(d.subarray(0, at), rng.bytes(rng.range(1, 8)), d.subarray(at));
    }
    case 3: {
      // delete
      const at = rng.int(d.length + 1);
      return concat(d.subarray(0, at), d.subarray(Math.min(d.length, at + rng.range(1, 8))));
    }
    case 4: // truncate
      return d.subarray(0, rng.int(d.length + 1));
    case 5:
    case 6: {
      // TLV length corruption
      const offs = tlvLengthOffsets(d);
      if (!offs.length) return rng.bytes(rng.range(0, 40));
      const at = rng.pick(offs);
      d[at] = rng.bool(0.5) ? rng.pick(INTERESTING_LEN) : (d[at] + rng.pick([1, -1, 2, -2, 0x80])) & 0xff;
      return d;
    }
    case 7: // TLV tag corruption: first byte or a byte after a length
      if (d.length) d[rng.bool(0.5) ? 0 : rng.int(d.length)] = rng.pick([0x5c, 0x53, 0x7c, 0x81, 0x82, 0x85, 0xac, 0x80, 0x1f, 0x5f, 0xdf, 0x00, 0xff]);
      return d;
    case 8: // append junk TLV
      return concat(d, tlv(rng.pick([0x5c, 0x53, 0x81, 0x99, 0x7c]), rng.bytes(rng.range(0, 12))));
    default:
      return rng.bool(0.3) ? new Uint8Array(d.length).fill(rng.pick([0x00, 0xff])) : rng.bytes(rng.range(0, 300));
  }
}

/** Mutates the parsed command and re-encodes it: lengths stay consistent, so the mutation reaches the applet. */
function mutateStructural(rng: Rng, c0: CommandApdu): Uint8Array {
  const c: CommandApdu = { ...c0, data: Uint8Array.from(c0.data) };
  for (let n = rng.range(1, 2); n > 0; n--) {
    switch (rng.int(12)) {
      case 0:
      case 1:
      case 2:
      case 3:
        c.data = mutateData(rng, c.data);
        break;
      case 4:
        c.cla = rng.bool(0.7) ? rng.pick(INTERESTING_CLA) : rng.int(256);
        break;
      case 5:
        c.ins = rng.bool(0.7) ? rng.pick(INTERESTING_INS) : rng.int(256);
        break;
      case 6: {
        const p = rng.bool(0.02) ? rng.pick(ATTACK_P1P2) : rng.bool(0.5) ? rng.pick(INTERESTING_P1P2) : rng.int(65536);
        if (rng.bool(0.6)) [c.p1, c.p2] = [p >> 8, p & 0xff];
        else if (rng.bool(0.5)) c.p1 = p >> 8;
        else c.p2 = p & 0xff;
        break;
      }
      case 7:
        c.le = rng.pick([undefined, 1, rng.range(1, 256), 256, rng.range(257, 65536), 65536]);
        break;
      case 8:
        c.extended = !c.extended;
        break;
      case 9:
        c.cla ^= 0x10; // chaining bit
        break;
      case 10:
        c.cla ^= (c.cla & 0x40) === 0 ? rng.pick([0x04, 0x08, 0x0c]) : 0x20; // secure messaging bits
        break;
      default:
        c.cla ^= rng.range(1, 3); // logical channel
        break;
    }
  }
  if (c.data.length > 65535) c.data = c.data.subarray(0, 65535);
  return encodeCommand({ cla: c.cla, ins: c.ins, p1: c.p1, p2: c.p2, data: c.data, le: c.le, extended: c.extended && (c.data.length > 0 || c.le !== undefined) });
}

/** Raw byte mutations: they mostly break the framing (Lc, Le, truncation) or splice two commands. */
function mutateRaw(rng: Rng, a0: Uint8Array, other: () => Uint8Array): Uint8Array {
  const a = Uint8Array.from(a0);
  switch (rng.int(9)) {
    case 0:
      if (a.length) for (let k = rng.range(1, 3); k > 0; k--) a[rng.int(a.length)] ^= 1 << rng.int(8);
      return a;
    case 1: {
      const at = rng.int(a.length + 1);
      return concat(a.subarray(0, at), rng.bytes(rng.range(1, 4)), a.subarray(at));
    }
    case 2: {
      const at = rng.int(a.length + 1);
      return concat(a.subarray(0, at), a.subarray(Math.min(a.length, at + rng.range(1, 4))));
    }
    case 3: // truncation (header included)
      return a.subarray(0, rng.int(a.length + 1));
    case 4: // Lc rewrite: short, or the extended two bytes
      if (a.length > 4) a[4] = rng.bool(0.5) ? rng.pick(INTERESTING_LEN) : (a[4] + rng.pick([1, -1])) & 0xff;
      if (a.length > 6 && a[4] === 0 && rng.bool(0.5)) a[5 + rng.int(2)] = rng.int(256);
      return a;
    case 5: // Le rewrite: change, drop or add
      if (rng.bool(0.4)) return a.subarray(0, Math.max(4, a.length - rng.range(1, 2)));
      if (rng.bool(0.5)) return concat(a, rng.bool(0.5) ? Uint8Array.of(rng.int(256)) : Uint8Array.of(0, rng.int(256), rng.int(256)));
      if (a.length > 4) a[a.length - 1] = rng.int(256);
      return a;
    case 6: {
      // splice: head of this command, tail of another
      const b = other();
      return concat(a.subarray(0, rng.int(a.length + 1)), b.subarray(rng.int(b.length + 1)));
    }
    case 7: // two commands back to back
      return concat(a, other());
    default: // header bytes only
      if (a.length) a[rng.int(Math.min(4, a.length))] = rng.int(256);
      return a;
  }
}

export function mutate(rng: Rng, a: Uint8Array, other: () => Uint8Array): Uint8Array {
  let out = a;
  let parsed: CommandApdu | undefined;
  try {
    parsed = parseCommand(a);
  } catch {
    parsed = undefined;
  }
  if (parsed && rng.bool(0.65)) out = mutateStructural(rng, parsed);
  if (!parsed || out === a || rng.bool(0.3)) out = mutateRaw(rng, out, other);
  return out;
}

function randomApdu(rng: Rng): Uint8Array {
  if (rng.bool(0.003)) return rng.bytes(rng.range(300, 70000));
  const n = rng.int(301);
  const b = rng.bytes(n);
  // Half the time, a plausible header so the random body meets the framing rules rather than only CLA checks.
  if (n >= 4 && rng.bool(0.5)) {
    b[0] = rng.pick(INTERESTING_CLA);
    b[1] = rng.pick(INTERESTING_INS);
  }
  return b;
}

// --- the fuzzer ----------------------------------------------------------------------------------------------------

export interface FuzzFinding {
  kind: "6F00" | "throw" | "implausible SW" | "short response" | "data with error SW" | "data exceeds Ne" | "SCP03 altered command" | "SCP03 session" | "health";
  apdu: string;
  detail: string;
  /** The APDUs sent just before, oldest first (hex). */
  context: string[];
}

export interface FuzzEvents {
  /** Card zeroized itself after a GET DATA for the card key (tamper.ts). */
  zeroizedAttack: number;
  /** Card zeroized itself after too many failed SCP03 authentications. */
  zeroizedScp: number;
  zeroizedOther: number;
  /** Transitions of the PIN / PUK retry counter to 0. */
  pinBlocked: number;
  pukBlocked: number;
  /** PIN and PUK both blocked at a health check: the card is recreated. */
  pinPukBlockedRecreated: number;
  /** 9E key deleted or replaced by a legitimate (e.g. PIN-authorised DELETE KEY) command. */
  key9eChanged: number;
  recreated: number;
  healthChecks: number;
  sessions: number;
  sessionMutations: number;
  sessionMacRejected: number;
}

export interface FuzzResult {
  seed: number;
  count: number;
  seconds: number;
  findings: FuzzFinding[];
  sixF00: string[];
  events: FuzzEvents;
  /** Status word counts (61xx, 63Cx and 6Cxx grouped). */
  sw: Record<string, number>;
}

export interface FuzzOptions {
  img: FuzzImage;
  count: number;
  seed: number;
  /** APDUs between health checks. Default 5000. */
  checkEvery?: number;
  /** Share of fuzz iterations spent inside SCP03 sessions. Default 0.06. */
  sessionRate?: number;
  /** Share of pure random APDUs. Default 0.12. */
  randomRate?: number;
  /** Stop collecting findings after this many (the run continues). Default 200. */
  maxFindings?: number;
}

const swKey = (sw: number): string => {
  const hi = sw >> 8;
  if (hi === 0x61 || hi === 0x6c) return `${hi.toString(16).toUpperCase()}xx`;
  if ((sw & 0xfff0) === 0x63c0) return "63Cx";
  return sw.toString(16).toUpperCase().padStart(4, "0");
};

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

function tryParse(a: Uint8Array): CommandApdu | undefined {
  try {
    return parseCommand(a);
  } catch {
    return undefined;
  }
}

/** True when the card will take `c` through SCP03 unwrap (C-MAC check) on `channel`, per runtime.ts's dispatch order. */
function reachesUnwrap(c: CommandApdu, channel: number): boolean {
  // Invalid (FF) and reserved (20-3F) classes are refused with 6E00 before secure messaging is looked at.
  if (c.cla === 0xff || (c.cla & 0xe0) === 0x20 || claChannel(c.cla) !== channel) return false;
  const inter = (c.cla & 0x80) === 0;
  if (inter && c.ins === 0xc0) return false; // GET RESPONSE
  if (!inter && (c.ins === 0x50 || c.ins === 0x82)) return false; // the secure channel's own commands
  return claSecureMessaging(c.cla);
}

/** True when the C-MAC covers the same bytes (Le, SM-bit variants and channel bits are outside it). */
function macEquivalent(a: CommandApdu, b: CommandApdu): boolean {
  return macClass(a.cla) === macClass(b.cla) && a.ins === b.ins && a.p1 === b.p1 && a.p2 === b.p2 && a.extended === b.extended && equalBytes(a.data, b.data);
}

export class Fuzzer {
  private card: CardRuntime;
  private readonly rng: Rng;
  private readonly corpus: Seed[];
  private readonly totalWeight: number;
  private readonly session: SessionSeed[];
  private readonly history: string[] = [];
  readonly findings: FuzzFinding[] = [];
  readonly sixF00: string[] = [];
  readonly sw: Record<string, number> = {};
  readonly events: FuzzEvents = {
    zeroizedAttack: 0,
    zeroizedScp: 0,
    zeroizedOther: 0,
    pinBlocked: 0,
    pukBlocked: 0,
    pinPukBlockedRecreated: 0,
    key9eChanged: 0,
    recreated: 0,
    healthChecks: 0,
    sessions: 0,
    sessionMutations: 0,
    sessionMacRejected: 0,
  };
  sent = 0;
  private pinTries: number;
  private pukTries: number;
  private readonly maxFindings: number;

  constructor(
    private readonly img: FuzzImage,
    seed: number,
    opts: { maxFindings?: number } = {},
  ) {
    this.rng = new Rng(seed);
    this.corpus = plainCorpus(img, this.rng);
    this.totalWeight = this.corpus.reduce((n, s) => n + s.weight, 0);
    this.session = sessionCorpus(img, this.rng);
    this.maxFindings = opts.maxFindings ?? 200;
    this.card = freshCard(img);
    this.pinTries = this.card.state.pin.tries;
    this.pukTries = this.card.state.puk.tries;
  }

  get runtime(): CardRuntime {
    return this.card;
  }

  close(): void {
    discardCard(this.card);
  }

  private finding(kind: FuzzFinding["kind"], a: Uint8Array, detail: string): void {
    if (this.findings.length < this.maxFindings) this.findings.push({ kind, apdu: hx(a.length > 600 ? a.subarray(0, 600) : a), detail, context: this.history.slice(-8) });
  }

  private recreate(): void {
    discardCard(this.card);
    this.card = freshCard(this.img);
    this.events.recreated++;
    this.pinTries = this.card.state.pin.tries;
    this.pukTries = this.card.state.puk.tries;
    this.history.length = 0;
  }

  /** Sends one APDU and applies the per-response oracles. Undefined when transmit threw (a finding). */
  send(a: Uint8Array): Uint8Array | undefined {
    this.sent++;
    let r: Uint8Array;
    try {
      r = this.card.transmit(a);
    } catch (e) {
      this.finding("throw", a, String(e));
      this.recreate();
      return undefined;
    }
    const shown = hx(a.length > 300 ? a.subarray(0, 300) : a) + (a.length > 300 ? `...(${a.length} bytes)` : "");
    if (r.length < 2) {
      this.finding("short response", a, `response ${hx(r)}`);
      this.history.push(shown);
      return undefined;
    }
    const sw = swOf(r);
    const k = swKey(sw);
    this.sw[k] = (this.sw[k] ?? 0) + 1;
    if (sw === 0x6f00) {
      if (this.sixF00.length < this.maxFindings) this.sixF00.push(shown);
      this.finding("6F00", a, "an exception escaped an applet");
    } else if (!plausibleSw(sw)) this.finding("implausible SW", a, `SW ${k}`);
    const n = r.length - 2;
    if (n > 0 && isErrorSw(sw)) this.finding("data with error SW", a, `${n} data bytes with SW ${k}`);
    const c = tryParse(a);
    if (c && n > 0) {
      const ne = c.le ?? 256;
      const max = c.extended ? ne : Math.min(ne, 256);
      if (n > max) this.finding("data exceeds Ne", a, `${n} data bytes for Ne ${ne}${c.extended ? " (extended)" : ""}`);
    }
    this.history.push(shown);
    if (this.history.length > 64) this.history.splice(0, this.history.length - 32);
    this.afterResponse();
    return r;
  }

  /** Tracks legitimate state events; a zeroized card is replaced at once (nothing more to fuzz on it). */
  private afterResponse(): void {
    const st = this.card.state;
    if (st.lifecycle === "TERMINATED") {
      const why = st.terminatedReason ?? "";
      if (why.includes("card key")) this.events.zeroizedAttack++;
      else if (why.includes("secure channel")) this.events.zeroizedScp++;
      else this.events.zeroizedOther++;
      this.recreate();
      return;
    }
    if (st.pin.tries === 0 && this.pinTries !== 0) this.events.pinBlocked++;
    if (st.puk.tries === 0 && this.pukTries !== 0) this.events.pukBlocked++;
    this.pinTries = st.pin.tries;
    this.pukTries = st.puk.tries;
  }

  /** Sends and follows 61xx with GET RESPONSE on the same channel; the concatenated response. */
  private sendAll(a: Uint8Array, channel: number): Uint8Array | undefined {
    let r = this.send(a);
    if (!r) return undefined;
    const chunks: Uint8Array[] = [dataOf(r)];
    let guard = 0;
    while (swOf(r) >> 8 === 0x61 && guard++ < 300) {
      r = this.send(apdu(channel, 0xc0, 0, 0, undefined, swOf(r) & 0xff || 256));
      if (!r) return undefined;
      chunks.push(dataOf(r));
    }
    return concat(...chunks, r.subarray(r.length - 2));
  }

  private pickSeed(): Seed {
    let x = this.rng.float() * this.totalWeight;
    for (const s of this.corpus) if ((x -= s.weight) < 0) return s;
    return this.corpus[this.corpus.length - 1];
  }

  private anyCorpusApdu = (): Uint8Array => this.rng.pick(this.pickSeed().apdus);

  /** One fuzz iteration: a mutated corpus sequence, a random APDU, or an SCP03 session episode. */
  step(sessionRate: number, randomRate: number): void {
    const x = this.rng.float();
    if (x < sessionRate) return this.sessionEpisode();
    if (x < sessionRate + randomRate) {
      this.send(randomApdu(this.rng));
      return;
    }
    const seed = this.pickSeed();
    const target = this.rng.bool(0.85) ? this.rng.range(Math.min(1, seed.apdus.length - 1), seed.apdus.length - 1) : -1;
    for (let i = 0; i < seed.apdus.length; i++) {
      const a = i === target ? mutate(this.rng, seed.apdus[i], this.anyCorpusApdu) : seed.apdus[i];
      this.send(a);
    }
  }

  /**
   * SELECT an applet, open an SCP03 session with Sk, send a few wrapped commands; about half the time alter one on
   * the wire. An altered command that reaches the C-MAC check must be answered 6988 without any state change, and
   * the session must then be gone (the next correctly wrapped command is answered 6982).
   */
  private sessionEpisode(): void {
    this.events.sessions++;
    const rng = this.rng;
    const applet = rng.bool(0.6) ? "piv" : "isd";
    const sel = this.send(selectApdu(applet === "piv" ? PIV_AID : ISD_AID));
    if (!sel || swOf(sel) !== 0x9000) return;
    const level = rng.pick([0x01, 0x03, 0x11, 0x13, 0x33]);
    const host = new Scp03HostSession(this.img.sk, { level, kvn: this.img.sk.kvn });
    const iuCmd = host.initializeUpdate(rng.bytes(8));
    const iu = this.send(iuCmd);
    if (!iu) return;
    if (swOf(iu) !== 0x9000) {
      // The only legitimate refusal: the failure limit was reached and the card zeroized itself (afterResponse).
      if (swOf(iu) !== 0x6285) this.finding("SCP03 session", iuCmd, `INITIALIZE UPDATE answered ${swKey(swOf(iu))}`);
      return;
    }
    let ea: Uint8Array;
    try {
      ea = host.authenticate(iu);
    } catch (e) {
      this.finding("SCP03 session", iuCmd, `host rejected INITIALIZE UPDATE response: ${String(e)}`);
      return;
    }
    const ear = this.send(ea);
    if (!ear) return;
    if (swOf(ear) !== 0x9000) {
      this.finding("SCP03 session", ea, `EXTERNAL AUTHENTICATE answered ${swKey(swOf(ear))}`);
      return;
    }
    const candidates = this.session.filter((s) => s.applet === applet);
    for (let n = rng.range(1, 4); n > 0; n--) {
      const seed = rng.pick(candidates);
      const parts = host.wrapChained(seed.cmd);
      const mutateAt = rng.bool(0.5) ? rng.int(parts.length) : -1;
      for (let i = 0; i < parts.length; i++) {
        if (i !== mutateAt) {
          const r = this.sendAll(parts[i], 0);
          if (!r) return;
          let u: { data: Uint8Array; sw: number };
          try {
            u = host.unwrap(r);
          } catch (e) {
            this.finding("SCP03 session", parts[i], `response to ${seed.name} failed the host's check: ${String(e)}`);
            return;
          }
          if (u.sw !== 0x9000 && i < parts.length - 1) return; // chain abandoned by the card
          if (u.sw === 0x6988 || !host.open) return;
          continue;
        }
        this.events.sessionMutations++;
        const orig = parseCommand(parts[i]);
        const m = mutate(rng, parts[i], this.anyCorpusApdu);
        const mc = tryParse(m);
        if (mc && reachesUnwrap(mc, 0) && !macEquivalent(orig, mc)) {
          const before = JSON.stringify(this.card.state);
          const r = this.send(m);
          if (!r) return;
          if (this.card.state.lifecycle === "TERMINATED") return;
          if (swOf(r) !== 0x6988 || r.length !== 2) this.finding("SCP03 altered command", m, `answered ${hx(r)} instead of 6988 (${seed.name}, level ${level.toString(16)})`);
          else this.events.sessionMacRejected++;
          if (JSON.stringify(this.card.state) !== before) this.finding("SCP03 altered command", m, `persistent state changed (${seed.name})`);
          // The card must have ended the session: the next correctly wrapped command is refused.
          const next = host.wrap({ cla: 0x80, ins: 0xca, p1: 0xdf, p2: 0x20, le: 256 });
          const r2 = this.send(next);
          if (r2 && swOf(r2) !== 0x6982) this.finding("SCP03 altered command", next, `command after a rejected MAC answered ${hx(r2)}, expected 6982 (session closed)`);
        } else this.send(m); // plain, a different channel, or the same MACed bytes: only the general oracles apply
        return;
      }
    }
  }

  /**
   * The card must still be usable: warm reset, SELECT PIV, sign with 9E (no PIN) and verify the signature. Legitimate
   * reasons for a card that cannot (PIN and PUK blocked, 9E deleted by a PIN-authorised DELETE KEY) are counted and the
   * card is recreated.
   */
  healthCheck(): boolean {
    this.events.healthChecks++;
    const st = this.card.state;
    if (st.keys["9e"]?.pkcs8 !== this.img.pkcs8Of9e) {
      this.events.key9eChanged++;
      this.recreate();
    } else if (st.pin.tries === 0 && st.puk.tries === 0) {
      this.events.pinPukBlockedRecreated++;
      this.recreate();
    }
    const fail = (what: string, a: Uint8Array, r: Uint8Array | undefined): boolean => {
      this.finding("health", a, `${what}: ${r ? hx(r) : "threw"}`);
      this.recreate();
      return false;
    };
    try {
      this.card.reset();
    } catch (e) {
      return fail(`reset threw ${String(e)}`, new Uint8Array(0), undefined);
    }
    const tx = (a: Uint8Array): Uint8Array | undefined => {
      try {
        return this.card.transmit(a);
      } catch {
        return undefined;
      }
    };
    const sel = selectApdu(PIV_AID);
    const r1 = tx(sel);
    if (!r1 || swOf(r1) !== 0x9000) return fail("SELECT PIV", sel, r1);
    const message = this.rng.bytes(40);
    const ga = signApdu(0x9e, ALG.P256, createHash("sha256").update(message).digest());
    const r2 = tx(ga);
    if (!r2 || swOf(r2) !== 0x9000) return fail("GENERAL AUTHENTICATE 9E", ga, r2);
    let sig: Uint8Array | undefined;
    try {
      sig = findTlv(findTlv(dataOf(r2), 0x7c) ?? new Uint8Array(0), 0x82);
    } catch {
      sig = undefined;
    }
    if (!sig || !verify("sha256", message, { key: this.img.pub9e, dsaEncoding: "der" }, sig)) return fail("9E signature does not verify", ga, r2);
    return true;
  }

  run(o: { count: number; checkEvery?: number; sessionRate?: number; randomRate?: number }): void {
    const every = o.checkEvery ?? 5000;
    let next = this.sent + every;
    while (this.sent < o.count) {
      this.step(o.sessionRate ?? 0.06, o.randomRate ?? 0.12);
      if (this.sent >= next) {
        this.healthCheck();
        next = this.sent + every;
      }
    }
    this.healthCheck();
  }
}

/** Runs `count` fuzz APDUs on fresh copies of the prepared image. */
export function runFuzz(o: FuzzOptions): FuzzResult {
  const t0 = process.hrtime.bigint();
  const f = new Fuzzer(o.img, o.seed, { maxFindings: o.maxFindings });
  try {
    f.run({ count: o.count, checkEvery: o.checkEvery, sessionRate: o.sessionRate, randomRate: o.randomRate });
  } finally {
    f.close();
  }
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  return { seed: o.seed, count: f.sent, seconds, findings: f.findings, sixF00: f.sixF00, events: f.events, sw: f.sw };
}

/** Readable report of a run's findings (for assertion messages). */
export function describeFindings(r: FuzzResult, max = 30): string {
  const lines = r.findings.slice(0, max).map((f) => `${f.kind}: ${f.detail}\n    APDU ${f.apdu}\n    after ${f.context.slice(-4).join(" | ")}`);
  return `seed ${r.seed} (rerun with FUZZ_SEED=${r.seed}): ${r.findings.length} finding(s)\n${lines.join("\n")}`;
}
