// Terminal side of the PIV applet (SP 800-73-4 Part 2) and of the seed's package commands: what a user terminal
// needs to use a card and to relay packages into it. It never sees a private key in clear: packages arrive
// sealed and leave the terminal as they came.

import { createHash } from "node:crypto";
import type { KeyAlg } from "../types.ts";
import { ALG_ID, CERT_OBJECT } from "../package.ts";
import { KEY_CERT_TAGS } from "./objects.ts";
import { concat, findTlv, parseTlvs, tlv } from "../tlv.ts";
import { ApduClient, ApduError, type Command, type Transmit } from "../apdu-client.ts";

export const PIV_AID = Uint8Array.of(0xa0, 0x00, 0x00, 0x03, 0x08, 0x00, 0x00, 0x10, 0x00, 0x01, 0x00);
export const PIV_INS = { IMPORT_KEY: 0xf0, LOAD_PACKAGE: 0xf2, EXPORT_KEY_WRAPPED: 0xf4, DELETE_KEY: 0xf6 } as const;

/** PIV key references by their usual names. */
export const SLOT = { authentication: 0x9a, signature: 0x9c, keyManagement: 0x9d, cardAuthentication: 0x9e } as const;

/** PIN as VERIFY carries it: 6-8 bytes padded with FF to 8. */
export function pinBlock(pin: string): Uint8Array {
  const b = Buffer.from(pin, "utf8");
  if (b.length < 1 || b.length > 8) throw new RangeError("a PIV PIN is 1 to 8 bytes");
  const out = Buffer.alloc(8, 0xff);
  b.copy(out);
  return new Uint8Array(out);
}

const DIGEST_INFO: Record<string, string> = {
  sha256: "3031300d060960864801650304020105000420",
  sha384: "3041300d060960864801650304020205000430",
  sha512: "3051300d060960864801650304020305000440",
};

/** EMSA-PKCS1-v1_5 encoding (RFC 8017 §9.2) of a digest, the block an RSA PIV key signs raw. */
export function pkcs1v15Block(hash: "sha256" | "sha384" | "sha512", digest: Uint8Array, modulusBytes: number): Uint8Array {
  const t = Buffer.concat([Buffer.from(DIGEST_INFO[hash], "hex"), digest]);
  if (modulusBytes < t.length + 11) throw new RangeError("modulus too short for this digest");
  return new Uint8Array(Buffer.concat([Buffer.from([0, 1]), Buffer.alloc(modulusBytes - t.length - 3, 0xff), Buffer.from([0]), t]));
}

/** A PIV data object tag (5FC1xx, 7E ...) as the bytes of a 5C tag list. */
function tagBytes(tag: number): Uint8Array {
  if (!Number.isInteger(tag) || tag <= 0 || tag > 0xffffff) throw new RangeError(`not a data object tag: ${tag}`);
  return Uint8Array.from(tag > 0xffff ? [tag >> 16, (tag >> 8) & 0xff, tag & 0xff] : tag > 0xff ? [tag >> 8, tag & 0xff] : [tag]);
}

/** The certificate object tag of a key reference (9A 9C 9D 9E and the retired key management keys 82-95). */
function certObjectTag(keyRef: number): string | undefined {
  const known = CERT_OBJECT[keyRef.toString(16)];
  if (known) return known;
  const t = KEY_CERT_TAGS.get(keyRef);
  return t === undefined ? undefined : t.toString(16).padStart(6, "0");
}

/**
 * PUT DATA (SP 800-73-4 Part 2 §3.3.1) of a data object: 5C tag | 53 value (an empty value deletes it). The card
 * takes it only under the issuer's secure channel (SCP03 with C-MAC), so this builds the command for such a session
 * (e.g. a CardScript) rather than sending it in clear.
 */
export function putDataCommand(tag: number, value: Uint8Array): Command {
  return { cla: 0x00, ins: 0xdb, p1: 0x3f, p2: 0xff, data: concat(tlv(0x5c, tagBytes(tag)), tlv(0x53, value)) };
}

export class PivClient {
  readonly apdu: ApduClient;
  constructor(transmit: Transmit, opts: { extended?: boolean } = {}) {
    this.apdu = new ApduClient(transmit, opts.extended);
  }

  async select(): Promise<Uint8Array> {
    return this.apdu.check({ cla: 0, ins: 0xa4, p1: 0x04, p2: 0x00, data: PIV_AID, le: 256 }, "SELECT PIV");
  }

  async verifyPin(pin: string): Promise<void> {
    await this.apdu.check({ cla: 0, ins: 0x20, p1: 0, p2: 0x80, data: pinBlock(pin) }, "VERIFY");
  }

  /** Tries left for the PIV PIN (VERIFY with no data), or 0 when blocked. */
  async pinTriesLeft(): Promise<number> {
    const r = await this.apdu.send({ cla: 0, ins: 0x20, p1: 0, p2: 0x80 });
    if ((r.sw & 0xfff0) === 0x63c0) return r.sw & 0x0f;
    if (r.sw === 0x6983) return 0;
    if (r.sw === 0x9000) return Number.POSITIVE_INFINITY; // verified in this session
    throw new ApduError(r.sw, "PIN status");
  }

  /** Raw PIV operation: for EC keys `input` is the digest (ECDSA, DER signature back); for RSA the padded block. */
  async generalAuthenticate(keyRef: number, alg: KeyAlg, input: Uint8Array): Promise<Uint8Array> {
    const data = tlv(0x7c, tlv(0x82), tlv(0x81, input));
    const r = await this.apdu.check({ cla: 0, ins: 0x87, p1: ALG_ID[alg], p2: keyRef, data, le: 256 }, "GENERAL AUTHENTICATE");
    const out = findTlv(findTlv(r, 0x7c) ?? new Uint8Array(0), 0x82);
    if (!out) throw new Error("GENERAL AUTHENTICATE response without a 82 tag");
    return out;
  }

  /**
   * Key establishment with an EC key on the card (SP 800-73-4 Part 2 §3.2.4, SP 800-56A C(0e, 1s)): the card
   * answers the shared secret Z, the x-coordinate of d·Q for the peer's uncompressed point Q. The private key
   * stays on the card. Key management keys (9D, 82-95) and 9E only; needs the PIN for 9D and 82-95.
   */
  async ecdh(keyRef: number, alg: KeyAlg, peerPoint: Uint8Array): Promise<Uint8Array> {
    if (alg !== "P256" && alg !== "P384") throw new RangeError(`ECDH needs an EC key, not ${alg}`);
    const data = tlv(0x7c, tlv(0x82), tlv(0x85, peerPoint));
    const r = await this.apdu.check({ cla: 0, ins: 0x87, p1: ALG_ID[alg], p2: keyRef, data, le: 256 }, "GENERAL AUTHENTICATE (ECDH)");
    const out = findTlv(findTlv(r, 0x7c) ?? new Uint8Array(0), 0x82);
    if (!out) throw new Error("GENERAL AUTHENTICATE response without a 82 tag");
    return out;
  }

  /**
   * RSA decipherment on the card: the raw private-key operation c^d mod n on a block of exactly the modulus
   * length. Removing the padding (OAEP, PKCS#1 v1.5) is the host's job.
   */
  async rsaDecipher(keyRef: number, alg: KeyAlg, block: Uint8Array): Promise<Uint8Array> {
    if (alg !== "RSA2048" && alg !== "RSA3072") throw new RangeError(`RSA decipherment needs an RSA key, not ${alg}`);
    return this.generalAuthenticate(keyRef, alg, block);
  }

  /** Signs `message` with SHA-256 (P-256, RSA) or SHA-384 (P-384): hashing here, the private operation on the card. */
  async sign(keyRef: number, alg: KeyAlg, message: Uint8Array): Promise<{ signature: Uint8Array; hash: "sha256" | "sha384" }> {
    const hash = alg === "P384" ? "sha384" : "sha256";
    const digest = createHash(hash).update(message).digest();
    const input = alg.startsWith("RSA") ? pkcs1v15Block(hash, digest, alg === "RSA2048" ? 256 : 384) : new Uint8Array(digest);
    return { signature: await this.generalAuthenticate(keyRef, alg, input), hash };
  }

  /** The certificate in a key's certificate object, or undefined when the slot has none. */
  async readCertificate(keyRef: number): Promise<Uint8Array | undefined> {
    const tag = certObjectTag(keyRef);
    if (!tag) throw new RangeError(`no certificate object for key reference ${keyRef.toString(16)}`);
    const r = await this.apdu.send({ cla: 0, ins: 0xcb, p1: 0x3f, p2: 0xff, data: tlv(0x5c, Buffer.from(tag, "hex")), le: 256 });
    if (r.sw === 0x6a82) return undefined;
    if (r.sw !== 0x9000) throw new ApduError(r.sw, "GET DATA certificate");
    const inner = findTlv(r.data, 0x53);
    const cert = inner && findTlv(parseTlvs(inner), 0x70);
    if (!cert) throw new Error("certificate object without a 70 tag");
    return Uint8Array.from(cert);
  }

  /**
   * GET DATA of a data object: the content of its 53 template, or undefined when the card has no such object
   * (6A82). Objects with the "PIN" read rule need the PIN verified first.
   */
  async getData(tag: number): Promise<Uint8Array | undefined> {
    const r = await this.apdu.send({ cla: 0, ins: 0xcb, p1: 0x3f, p2: 0xff, data: tlv(0x5c, tagBytes(tag)), le: 256 });
    if (r.sw === 0x6a82) return undefined;
    if (r.sw !== 0x9000) throw new ApduError(r.sw, `GET DATA ${tag.toString(16).toUpperCase()}`);
    const inner = findTlv(r.data, 0x53);
    if (!inner) throw new Error(`data object ${tag.toString(16).toUpperCase()} without a 53 template`);
    return Uint8Array.from(inner);
  }

  /** Relays a sealed package (seed 000 ST23-ST24): the card checks and opens it itself. */
  async loadPackage(pkg: Uint8Array): Promise<void> {
    await this.apdu.check({ cla: 0x80, ins: PIV_INS.LOAD_PACKAGE, p1: 0, p2: 0, data: pkg }, "LOAD PACKAGE");
  }

  /** Asks the card for a key wrapped under its card key (claim 16); needs the PIN. */
  async exportKey(keyRef: number): Promise<Uint8Array> {
    return this.apdu.check({ cla: 0x80, ins: PIV_INS.EXPORT_KEY_WRAPPED, p1: 0, p2: keyRef, le: 256 }, "EXPORT KEY WRAPPED");
  }
}
