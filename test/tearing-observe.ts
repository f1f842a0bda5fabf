// Observation of a card for the tearing test (test/tearing.test.ts) — through APDUs only, never through the image.
//
// An observation is a plain JSON value, so two observations are compared with deep equality. It is taken right
// after a power-up, in an order that reads everything before changing anything:
//   1. the public state (readCardInfo: life cycle, PIN/PUK tries, package sequence, SCP tries, free bytes, key
//      sets, certificates) and the SCP03 sequence counter (GET DATA 00C1) — no writes;
//   2. the key in slot 9E (card authentication: usable without the PIN) — no writes: it must answer 6A88 (absent)
//      or sign a digest whose signature verifies with a public key we know, or, for a key generated on the card
//      whose public key nobody saw (the power went before the answer), with the public key the card reveals
//      through ECDH with the curve's generator G (x(d·G) is the x-coordinate of its own public key);
//   3. destructive probes, each a follow-up command that must still work: LOAD PACKAGE of export packages,
//      opening an SCP03 session with each candidate key set, VERIFY with candidate PINs, RESET RETRY COUNTER with
//      candidate PUKs. They change counters, but only after everything above was read, and they do the same thing
//      on the same state, so their results are as deterministic as the state they probe.
// A terminated card answers 6285 to everything; a card that does so only partly is reported as such (never legal).

import { createHash, createPublicKey, verify, type KeyObject } from "node:crypto";
import { ISD_AID } from "../src/protocol/scp03/sm.ts";
import { Scp03Client, Scp03Error } from "../src/protocol/scp03/host.ts";
import type { ScpKeySet } from "../src/card/state.ts";
import { findTlv, tlv } from "../src/protocol/tlv.ts";
import { ApduClient, type Transmit } from "../src/protocol/apdu-client.ts";
import { readCardInfo, type CardInfo } from "../src/protocol/card-info.ts";
import { PIV_AID, pinBlock, pkcs1v15Block } from "../src/protocol/piv/client.ts";

export interface Probes {
  /** SCP03 key sets to try, by label (in order). Empty for cards where any INITIALIZE UPDATE would zeroize. */
  scp: [string, ScpKeySet][];
  /** PIN candidates tried in order with VERIFY until one is accepted (a blocked PIN answers "blocked"). */
  pins: [string, string][];
  /** PUK candidates tried in order with RESET RETRY COUNTER. */
  puks: [string, string][];
  /** Export packages of slot 9E to load back, by label (only the newest export of a slot loads). */
  exportPackages?: [string, Uint8Array][];
}

export interface KnownKey {
  label: string;
  alg: "P256" | "RSA2048";
  publicKey: KeyObject;
}

export interface LiveObservation {
  terminated: false;
  info: CardInfo & { scpSequenceCounter: number };
  /** "absent", a known key's label, "fresh-P256" (a whole key nobody knew), or "broken: ..." (never legal). */
  slot9e: string;
  exportLoad?: Record<string, string>;
  scp: Record<string, string>;
  pin: string;
  puk: string;
}

export type Observation = LiveObservation | { terminated: "fully" | "partially"; answers: string[] };

const PIN_PAD = (v: string): Uint8Array => pinBlock(v);
const sw4 = (sw: number): string => sw.toString(16).toUpperCase().padStart(4, "0");

// --- P-256 arithmetic needed to turn x(Q) into the two candidate public keys ------------------------------------

const P = 2n ** 256n - 2n ** 224n + 2n ** 192n + 2n ** 96n - 1n;
const B = 0x5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604bn;
const G = Buffer.from("04" + "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296" + "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5", "hex");

function modPow(b: bigint, e: bigint, m: bigint): bigint {
  let r = 1n;
  let x = b % m;
  let k = e;
  while (k > 0n) {
    if (k & 1n) r = (r * x) % m;
    x = (x * x) % m;
    k >>= 1n;
  }
  return r;
}

const b64 = (n: bigint): string => Buffer.from(n.toString(16).padStart(64, "0"), "hex").toString("base64url");

/** The two P-256 public keys with x-coordinate `xBytes` (or none when x is not on the curve). */
function p256Candidates(xBytes: Uint8Array): KeyObject[] {
  const x = BigInt("0x" + Buffer.from(xBytes).toString("hex"));
  const rhs = (((x * x * x - 3n * x + B) % P) + P) % P;
  const y = modPow(rhs, (P + 1n) / 4n, P); // P = 3 mod 4
  if ((y * y) % P !== rhs) return [];
  return [y, (P - y) % P].map((yy) => createPublicKey({ key: { kty: "EC", crv: "P-256", x: b64(x), y: b64(yy) }, format: "jwk" }));
}

function xOf(pub: KeyObject): string {
  return Buffer.from(pub.export({ format: "jwk" }).x ?? "", "base64url").toString("hex");
}

// --- the probes -----------------------------------------------------------------------------------------------------

const MESSAGE = Buffer.from("cardkms tearing test: is the key whole?");
const DIGEST = createHash("sha256").update(MESSAGE).digest();

async function select(apdu: ApduClient, aid: Uint8Array): Promise<number> {
  return (await apdu.send({ cla: 0, ins: 0xa4, p1: 4, p2: 0, data: aid, le: 256 })).sw;
}

/** Slot 9E: absent, a known key, a fresh whole P-256 key, or broken. */
async function probeSlot9e(apdu: ApduClient, known: KnownKey[]): Promise<string> {
  const ga = (alg: number, inner: Uint8Array) => apdu.send({ cla: 0, ins: 0x87, p1: alg, p2: 0x9e, data: tlv(0x7c, tlv(0x82), inner), le: 256 });
  const out = (d: Uint8Array): Uint8Array | undefined => findTlv(findTlv(d, 0x7c) ?? new Uint8Array(0), 0x82);
  const ec = await ga(0x11, tlv(0x81, DIGEST));
  if (ec.sw === 0x6a88) return "absent";
  if (ec.sw === 0x9000) {
    const sig = out(ec.data);
    if (!sig) return "broken: signature without 82";
    const dh = await ga(0x11, tlv(0x85, G));
    const x = dh.sw === 0x9000 ? out(dh.data) : undefined;
    if (!x) return `broken: ECDH with G answered ${sw4(dh.sw)}`;
    const ok = (pub: KeyObject): boolean => verify("sha256", MESSAGE, { key: pub, dsaEncoding: "der" }, sig);
    const xHex = Buffer.from(x).toString("hex");
    const k = known.find((kk) => kk.alg === "P256" && xOf(kk.publicKey) === xHex);
    if (k) return ok(k.publicKey) ? k.label : `broken: ${k.label}'s x-coordinate but its signature does not verify`;
    return p256Candidates(x).some(ok) ? "fresh-P256" : "broken: P-256 signature does not verify with the card's own public key";
  }
  if (ec.sw !== 0x6a86) return `broken: GENERAL AUTHENTICATE P-256 answered ${sw4(ec.sw)}`;
  const rsa = await ga(0x07, tlv(0x81, pkcs1v15Block("sha256", DIGEST, 256)));
  if (rsa.sw !== 0x9000) return `broken: GENERAL AUTHENTICATE RSA-2048 answered ${sw4(rsa.sw)}`;
  const sig = out(rsa.data);
  if (!sig) return "broken: signature without 82";
  const k = known.find((kk) => kk.alg === "RSA2048" && verify("sha256", MESSAGE, kk.publicKey, sig));
  return k ? k.label : "broken: RSA-2048 signature verifies with no known key";
}

/** Opens a session with a key set: "opens", "absent" (6A88), "wrong keys" (card cryptogram), or the failure. */
async function probeScp(transmit: Transmit, ks: ScpKeySet): Promise<string> {
  try {
    const c = await Scp03Client.open(transmit, ks, { level: 0x33, kvn: ks.kvn });
    c.close();
    return "opens";
  } catch (e) {
    if (!(e instanceof Scp03Error)) throw e;
    if (e.sw === 0x6a88) return "absent";
    if (/wrong card cryptogram/.test(e.message)) return "wrong keys";
    return `error: ${e.message}`;
  }
}

async function probePins(apdu: ApduClient, pins: [string, string][]): Promise<string> {
  for (const [label, value] of pins) {
    const r = await apdu.send({ cla: 0, ins: 0x20, p1: 0, p2: 0x80, data: PIN_PAD(value) });
    if (r.sw === 0x9000) return label;
    if (r.sw === 0x6983) return "blocked";
    if ((r.sw & 0xfff0) !== 0x63c0) return `error: VERIFY answered ${sw4(r.sw)}`;
  }
  return "none accepted";
}

async function probePuks(apdu: ApduClient, puks: [string, string][]): Promise<string> {
  for (const [label, value] of puks) {
    const data = new Uint8Array(Buffer.concat([PIN_PAD(value), PIN_PAD("11223344")]));
    const r = await apdu.send({ cla: 0, ins: 0x2c, p1: 0, p2: 0x80, data });
    if (r.sw === 0x9000) return label;
    if (r.sw === 0x6983) return "blocked";
    if ((r.sw & 0xfff0) !== 0x63c0) return `error: RESET RETRY COUNTER answered ${sw4(r.sw)}`;
  }
  return "none accepted";
}

/** Every kind of command a terminated card gets must answer 6285. */
async function terminatedAnswers(apdu: ApduClient): Promise<string[]> {
  const cmds = [
    { cla: 0, ins: 0xa4, p1: 4, p2: 0, data: ISD_AID, le: 256 },
    { cla: 0x80, ins: 0xca, p1: 0xdf, p2: 0x20, le: 256 },
    { cla: 0x80, ins: 0x50, p1: 0, p2: 0, data: new Uint8Array(8), le: 256 },
    { cla: 0, ins: 0xa4, p1: 4, p2: 0, data: PIV_AID, le: 256 },
    { cla: 0, ins: 0x20, p1: 0, p2: 0x80, data: PIN_PAD("123456") },
    { cla: 0, ins: 0x87, p1: 0x11, p2: 0x9e, data: tlv(0x7c, tlv(0x82), tlv(0x81, DIGEST)), le: 256 },
  ];
  const out: string[] = [];
  for (const c of cmds) out.push(sw4((await apdu.send(c)).sw));
  return out;
}

/** Observes a freshly powered-up card (see the header). */
export async function observe(transmit: Transmit, probes: Probes, known: KnownKey[]): Promise<Observation> {
  const apdu = new ApduClient(transmit);
  const info = await readCardInfo(transmit);
  if (!("cardId" in info)) {
    const answers = await terminatedAnswers(apdu);
    return { terminated: answers.every((a) => a === "6285") ? "fully" : "partially", answers };
  }
  if ((await select(apdu, ISD_AID)) !== 0x9000) throw new Error("SELECT ISD failed on a live card");
  const seq = await apdu.check({ cla: 0x80, ins: 0xca, p1: 0x00, p2: 0xc1, le: 256 }, "GET DATA sequence counter");
  const c1 = findTlv(seq, 0xc1) ?? new Uint8Array(0);
  const scpSequenceCounter = c1.reduce((n, b) => n * 256 + b, 0);
  if ((await select(apdu, PIV_AID)) !== 0x9000) throw new Error("SELECT PIV failed on a live card");
  const slot9e = await probeSlot9e(apdu, known);
  let exportLoad: Record<string, string> | undefined;
  for (const [label, pkg] of probes.exportPackages ?? []) {
    exportLoad ??= {};
    exportLoad[label] = sw4((await apdu.send({ cla: 0x80, ins: 0xf2, p1: 0, p2: 0, data: pkg })).sw);
  }
  const scp: Record<string, string> = {};
  for (const [label, ks] of probes.scp) scp[label] = await probeScp(transmit, ks);
  if ((await select(apdu, PIV_AID)) !== 0x9000) throw new Error("SELECT PIV failed on a live card");
  const pin = await probePins(apdu, probes.pins);
  const puk = await probePuks(apdu, probes.puks);
  const o: LiveObservation = { terminated: false, info: { ...info, scpSequenceCounter }, slot9e, scp, pin, puk };
  if (exportLoad !== undefined) o.exportLoad = exportLoad;
  return o;
}
