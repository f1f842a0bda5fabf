// The PIV Card Application (NIST SP 800-73-4 Part 2 card commands) with the seed's key-custody extension
// (seed 000 para 0032-0035, claims 13-19): the card holds a card-unique key Sk (the SCP03 key set), accepts
// private keys only encrypted under Sk (an SCP03 session with C-DECRYPTION, or a sealed package), and lets a
// private key out only as Sk[PRk] (a sealed export package). Sk itself is never output; a command that asks for
// it is an attack signal (tamper.ts) and zeroizes the card.
//
// Commands (CLA 00 unless stated; SM class bits are removed by the runtime and show up in ctx.secureLevel):
//   SELECT                A4 04 00  AID A0 00 00 03 08 00 00 10 00 01 00 (or a prefix) -> 61 APT
//   GET DATA              CB 3F FF  5C tag -> 53 {...} (7E: the Discovery Object itself)
//   PUT DATA              DB 3F FF  5C tag | 53 value (empty 53 deletes)          admin; certificates: SCP03 C-MAC only
//   VERIFY                20 00 80  PIN padded with FF to 8 bytes | empty: status | P1=FF: reset status
//   CHANGE REFERENCE DATA 24 00 80/81  old(8) | new(8), each FF-padded
//   RESET RETRY COUNTER   2C 00 80  PUK(8) | new PIN(8)
//   GENERAL AUTHENTICATE  87 alg ref  7C{82 00, 81 challenge} -> 7C{82 signature} | 7C{82 00, 85 point} -> 7C{82 Z}
//                         87 alg 9B   7C{81 00} -> 7C{81 random}: a challenge from the card's RNG (OpenSC's
//                                     C_GenerateRandom); there is no card management key, so it authenticates nothing
//   GENERATE ASYMMETRIC   47 00 ref  AC{80 alg} -> 7F49{81 n, 82 e} | 7F49{86 point}          admin
//   IMPORT KEY            80 F0 00 ref  80 alg | 81 PKCS#8 (needs C-DECRYPTION)    SCP03 C-MAC
//                                       or 80 alg | 83 Sk[PRk] (package.ts wrapForCard)
//   LOAD PACKAGE          80 F2 00 00   sealed package (package.ts)                the package authenticates itself
//   EXPORT KEY WRAPPED    80 F4 00 ref  -> sealed export package (Sk[PRk])         PIN
//   DELETE KEY            80 F6 00 ref  key and its certificate object             SCP03 C-MAC, or PIN
// "admin" = an authenticated SCP03 session with at least C-MAC on this channel (GP security level 0x81).

import { randomBytes, X509Certificate } from "node:crypto";
import type { CommandApdu } from "../../protocol/apdu.ts";
import type { Applet, AppletContext } from "../applet.ts";
import { applyPackage, exportPackage, openPackage, unwrapForCard } from "../package.ts";
import { changeReference, resetRetryCounter, triesLeft, verifyReference } from "../pin.ts";
import type { CardRuntime } from "../runtime.ts";
import type { CardState, KeyAlg } from "../state.ts";
import { CardError, SW, check } from "../../protocol/sw.ts";
import { matchAttackSignal } from "../tamper.ts";
import { findTlv, parseTlvs, tlv, type Tlv } from "../../protocol/tlv.ts";
import { ecdhSecret, ecdsaSign, forgetKeys, generateKey, isRsa, loadKey, parsePrivateKey, pkcs8Of, publicKeyTemplate, rsaPrivate } from "./keys.ts";
import { toHex as hex, fromHex as unhex } from "../../util/bytes.ts";
import {
  ALG_BY_ID,
  ALG_ID,
  applicationPropertyTemplate,
  buildCcc,
  buildChuid,
  certificateObject,
  discoveryObject,
  isCertificateObject,
  isPivDataObject,
  KEY_CERT_TAGS,
  PIN_PROTECTED_OBJECTS,
  PIV_AID,
  refHex,
  TAG,
  tagHex,
} from "../../protocol/piv/objects.ts";

export const INS = {
  VERIFY: 0x20,
  CHANGE_REFERENCE_DATA: 0x24,
  RESET_RETRY_COUNTER: 0x2c,
  GENERATE_ASYMMETRIC_KEY_PAIR: 0x47,
  GENERAL_AUTHENTICATE: 0x87,
  GET_DATA: 0xcb,
  PUT_DATA: 0xdb,
  // Proprietary (CLA 80), seed 000 extension
  IMPORT_KEY: 0xf0,
  LOAD_PACKAGE: 0xf2,
  EXPORT_KEY_WRAPPED: 0xf4,
  DELETE_KEY: 0xf6,
} as const;

/** GP security level bits (Amendment D Table 7-6) as the runtime reports them in ctx.secureLevel. */
const SEC_C_MAC = 0x01;
const SEC_C_DECRYPTION = 0x02;
const SEC_AUTHENTICATED = 0x80;

// Security status in card RAM (cleared on reset, shared by the card's logical channels).
const RAM_PIN = "piv.pinVerified";
/** Set by a successful VERIFY; consumed by the next command, for keys with the "PIN always" rule (9C). */
const RAM_PIN_ALWAYS = "piv.pinAlways";

/** Key references whose private key may be used for ECDH key establishment (key management keys, 9E). */
const KEY_AGREEMENT_REFS: ReadonlySet<number> = new Set([0x9d, 0x9e, ...Array.from({ length: 20 }, (_, i) => 0x82 + i)]);

const EMPTY = new Uint8Array(0);

/** The PIV Card Application Administration Key reference (SP 800-73-4 Part 1 Table 4b). */
const CARD_MANAGEMENT_KEY = 0x9b;
/**
 * Symmetric algorithm identifiers a challenge for the card management key may name (SP 800-78-4 Table 6-2: 00 and
 * 03 3-key Triple DES, 08/0A/0C AES-128/192/256), with the challenge length: the algorithm's block size.
 */
const CHALLENGE_LENGTH: ReadonlyMap<number, number> = new Map([
  [0x00, 8],
  [0x03, 8],
  [0x08, 16],
  [0x0a, 16],
  [0x0c, 16],
]);

export interface PivAppletOptions {
  /** Clock for the CHUID expiration date (tests). */
  now?: () => Date;
}

export class PivApplet implements Applet {
  readonly name = "piv";
  readonly aid = PIV_AID;

  constructor(private readonly options: PivAppletOptions = {}) {}

  /** Answers SELECT with the Application Property Template; writes CHUID and CCC on the first selection. */
  select(ctx: AppletContext): Uint8Array {
    try {
      this.ensureIdentityObjects(ctx.card);
    } catch (e) {
      // A full card still selects; GET DATA then reports 6A84 for the missing object.
      if (!(e instanceof CardError)) throw e;
    }
    return applicationPropertyTemplate(Object.values(ALG_ID));
  }

  process(ctx: AppletContext, cmd: CommandApdu): Uint8Array {
    // Seed 000 claim 19: a command asking for the card key is an attack signal; erase Sk and refuse.
    const attack = matchAttackSignal(cmd);
    if (attack) {
      ctx.card.zeroize("attempt to read the card key");
      throw new CardError(SW.SECURITY_STATUS_NOT_SATISFIED, attack.description);
    }
    const ram = ctx.card.ram;
    // "PIN always" holds only for the command right after VERIFY. GET DATA is let through because OpenSC reads
    // the Discovery Object whenever it (re)takes the reader between its VERIFY and its GENERAL AUTHENTICATE.
    const pinAlways = ram.get(RAM_PIN_ALWAYS) === true;
    const interindustry = (cmd.cla & 0x80) === 0;
    if (!(interindustry && (cmd.ins === INS.VERIFY || cmd.ins === INS.GET_DATA))) ram.delete(RAM_PIN_ALWAYS);

    if (interindustry) {
      switch (cmd.ins) {
        case INS.GET_DATA:
          return this.getData(ctx, cmd);
        case INS.PUT_DATA:
          return this.putData(ctx, cmd);
        case INS.VERIFY:
          return this.verify(ctx, cmd);
        case INS.CHANGE_REFERENCE_DATA:
          return this.changeReferenceData(ctx, cmd);
        case INS.RESET_RETRY_COUNTER:
          return this.resetRetryCounter(ctx, cmd);
        case INS.GENERAL_AUTHENTICATE:
          return this.generalAuthenticate(ctx, cmd, pinAlways);
        case INS.GENERATE_ASYMMETRIC_KEY_PAIR:
          return this.generate(ctx, cmd);
        default:
          throw new CardError(SW.INS_NOT_SUPPORTED);
      }
    }
    switch (cmd.ins) {
      case INS.IMPORT_KEY:
        return this.importKey(ctx, cmd);
      case INS.LOAD_PACKAGE:
        return this.loadPackage(ctx, cmd);
      case INS.EXPORT_KEY_WRAPPED:
        return this.exportKey(ctx, cmd);
      case INS.DELETE_KEY:
        return this.deleteKey(ctx, cmd);
      case INS.GET_DATA:
      case INS.PUT_DATA:
      case INS.VERIFY:
      case INS.CHANGE_REFERENCE_DATA:
      case INS.RESET_RETRY_COUNTER:
      case INS.GENERAL_AUTHENTICATE:
      case INS.GENERATE_ASYMMETRIC_KEY_PAIR:
        throw new CardError(SW.CLA_NOT_SUPPORTED, "interindustry command with a proprietary class");
      default:
        throw new CardError(SW.INS_NOT_SUPPORTED);
    }
  }

  // --- data objects --------------------------------------------------------------------------------------------

  /** CHUID and CCC are created once, in one commit, from the public card ID (their GUID is derived from it). */
  private ensureIdentityObjects(card: CardRuntime): void {
    const o = card.state.objects;
    const chuid = tagHex(TAG.CHUID);
    const ccc = tagHex(TAG.CCC);
    if (o[chuid] && o[ccc]) return;
    const now = this.options.now?.() ?? new Date();
    card.commit((s) => {
      s.objects[chuid] ??= hex(buildChuid(s.cardId, now));
      s.objects[ccc] ??= hex(buildCcc(s.cardId));
    });
  }

  /** GET DATA (SP 800-73-4 Part 2 §3.1.2). */
  private getData(ctx: AppletContext, cmd: CommandApdu): Uint8Array {
    requireP1P2(cmd, 0x3f, 0xff);
    const tag = dataObjectTag(cmd.data);
    if (tag === TAG.DISCOVERY) return discoveryObject();
    if (!isPivDataObject(tag)) throw new CardError(SW.FILE_NOT_FOUND, "no such data object");
    if (PIN_PROTECTED_OBJECTS.has(tag) && !pinVerified(ctx)) throw new CardError(SW.SECURITY_STATUS_NOT_SATISFIED);
    if (tag === TAG.CHUID || tag === TAG.CCC) this.ensureIdentityObjects(ctx.card);
    const value = ctx.card.state.objects[tagHex(tag)];
    if (!value) throw new CardError(SW.FILE_NOT_FOUND, "data object not present");
    return unhex(value);
  }

  /** PUT DATA (SP 800-73-4 Part 2 §3.3.1): 5C tag, 53 value; an empty value deletes the object. */
  private putData(ctx: AppletContext, cmd: CommandApdu): Uint8Array {
    requireP1P2(cmd, 0x3f, 0xff);
    const tlvs = parseTlvs(cmd.data);
    check(tlvs.length === 2 && tlvs[0].tag === 0x5c && tlvs[1].tag === 0x53, SW.WRONG_DATA, "expected 5C tag and 53 value");
    const tag = tagOf(tlvs[0].value);
    check(isPivDataObject(tag), SW.WRONG_DATA, "not a writable PIV data object");
    const value = tlvs[1].value;
    if (isCertificateObject(tag)) {
      // Seed 000 claim 15: the certificate area only the issuer writes, through its Sk-keyed secure channel.
      check(scpMac(ctx), SW.SECURITY_STATUS_NOT_SATISFIED, "certificates are written only through SCP03");
      if (value.length) validateCertificateObject(value);
    } else {
      check(admin(ctx), SW.SECURITY_STATUS_NOT_SATISFIED, "PUT DATA needs the issuer's secure channel");
      if (value.length) parseTlvs(value); // the object must be BER-TLV
    }
    const key = tagHex(tag);
    ctx.card.commit((s) => {
      if (value.length) s.objects[key] = hex(tlv(0x53, value));
      else delete s.objects[key];
    });
    return EMPTY;
  }

  // --- PIN -----------------------------------------------------------------------------------------------------

  /** VERIFY (SP 800-73-4 Part 2 §3.2.1). */
  private verify(ctx: AppletContext, cmd: CommandApdu): Uint8Array {
    const ram = ctx.card.ram;
    if (cmd.p1 === 0xff) {
      check(cmd.p2 === 0x80, SW.REFERENCE_NOT_FOUND, "only the PIV PIN (80)");
      check(cmd.data.length === 0, SW.WRONG_LENGTH, "reset of the security status takes no data");
      ram.delete(RAM_PIN);
      ram.delete(RAM_PIN_ALWAYS);
      return EMPTY;
    }
    check(cmd.p1 === 0x00, SW.INCORRECT_P1P2);
    check(cmd.p2 === 0x80, SW.REFERENCE_NOT_FOUND, "only the PIV PIN (80) is verified");
    if (cmd.data.length === 0) {
      if (pinVerified(ctx)) {
        return EMPTY;
      }
      const tries = triesLeft(ctx.card, "pin");
      throw new CardError(tries === 0 ? SW.AUTH_METHOD_BLOCKED : SW.VERIFY_FAILED | Math.min(tries, 15), "PIN not verified");
    }
    check(cmd.data.length === 8, SW.WRONG_LENGTH, "PIN must be padded to 8 bytes");
    const pin = unpad(cmd.data, "pin");
    ram.delete(RAM_PIN);
    ram.delete(RAM_PIN_ALWAYS);
    verifyReference(ctx.card, "pin", pin);
    ram.set(RAM_PIN, true);
    ram.set(RAM_PIN_ALWAYS, true);
    return EMPTY;
  }

  /** CHANGE REFERENCE DATA (SP 800-73-4 Part 2 §3.2.2): P2 80 PIN, 81 PUK. */
  private changeReferenceData(ctx: AppletContext, cmd: CommandApdu): Uint8Array {
    check(cmd.p1 === 0x00, SW.INCORRECT_P1P2);
    const ref = cmd.p2 === 0x80 ? "pin" : cmd.p2 === 0x81 ? "puk" : undefined;
    if (!ref) throw new CardError(SW.REFERENCE_NOT_FOUND, "only PIN (80) and PUK (81)");
    check(cmd.data.length === 16, SW.WRONG_LENGTH, "old and new value, 8 bytes each");
    const oldValue = unpad(cmd.data.subarray(0, 8), ref);
    const newValue = unpad(cmd.data.subarray(8), ref);
    if (ref === "pin") {
      ctx.card.ram.delete(RAM_PIN);
      ctx.card.ram.delete(RAM_PIN_ALWAYS);
    }
    changeReference(ctx.card, ref, oldValue, newValue);
    return EMPTY;
  }

  /** RESET RETRY COUNTER (SP 800-73-4 Part 2 §3.2.3): PUK, then the new PIN. */
  private resetRetryCounter(ctx: AppletContext, cmd: CommandApdu): Uint8Array {
    check(cmd.p1 === 0x00, SW.INCORRECT_P1P2);
    check(cmd.p2 === 0x80, SW.REFERENCE_NOT_FOUND, "only the PIV PIN (80)");
    check(cmd.data.length === 16, SW.WRONG_LENGTH, "PUK and new PIN, 8 bytes each");
    const puk = unpad(cmd.data.subarray(0, 8), "puk");
    const pin = unpad(cmd.data.subarray(8), "pin");
    ctx.card.ram.delete(RAM_PIN);
    resetRetryCounter(ctx.card, puk, pin);
    return EMPTY;
  }

  // --- keys ------------------------------------------------------------------------------------------------------

  /** GENERAL AUTHENTICATE (SP 800-73-4 Part 2 §3.2.4): signature / RSA decryption (81) or ECDH (85). */
  private generalAuthenticate(ctx: AppletContext, cmd: CommandApdu, pinAlways: boolean): Uint8Array {
    if (cmd.p2 === CARD_MANAGEMENT_KEY) return managementKeyChallenge(cmd);
    const alg = ALG_BY_ID.get(cmd.p1);
    if (!alg) throw new CardError(SW.INCORRECT_P1P2, "unsupported algorithm");
    check(KEY_CERT_TAGS.has(cmd.p2), SW.INCORRECT_P1P2, "not a key reference");
    const dyn = dynamicAuthTemplate(cmd.data);
    const response = findTlv(dyn, 0x82);
    const challenge = findTlv(dyn, 0x81);
    const peer = findTlv(dyn, 0x85);
    check(response !== undefined && response.length === 0, SW.WRONG_DATA, "82 00 (response requested) expected");
    check((challenge === undefined) !== (peer === undefined), SW.WRONG_DATA, "exactly one of 81 challenge, 85 point");
    const ref = refHex(cmd.p2);
    const stored = ctx.card.state.keys[ref];
    if (!stored) throw new CardError(SW.REFERENCE_NOT_FOUND, "no key in that slot");
    check(stored.alg === alg, SW.INCORRECT_P1P2, "algorithm does not match the key");
    // Access rules (SP 800-73-4 Part 1 Table 4b): 9E always; 9C PIN immediately before; others PIN this session.
    if (cmd.p2 === 0x9c) check(pinAlways, SW.SECURITY_STATUS_NOT_SATISFIED, "digital signature key needs the PIN right before");
    else if (cmd.p2 !== 0x9e) check(pinVerified(ctx), SW.SECURITY_STATUS_NOT_SATISFIED, "PIN not verified");
    const key = loadKey(ctx.card, ref);
    let out: Uint8Array;
    if (peer) {
      check(!isRsa(alg), SW.WRONG_DATA, "ECDH needs an ECC key");
      check(KEY_AGREEMENT_REFS.has(cmd.p2), SW.CONDITIONS_NOT_SATISFIED, "not a key management key");
      out = ecdhSecret(key, peer);
    } else if (isRsa(alg)) out = rsaPrivate(key, challenge!);
    else out = ecdsaSign(key, challenge!);
    return tlv(0x7c, tlv(0x82, out));
  }

  /** GENERATE ASYMMETRIC KEY PAIR (SP 800-73-4 Part 2 §3.3.2); admin only. */
  private generate(ctx: AppletContext, cmd: CommandApdu): Uint8Array {
    check(cmd.p1 === 0x00, SW.INCORRECT_P1P2);
    check(KEY_CERT_TAGS.has(cmd.p2), SW.INCORRECT_P1P2, "not a key reference");
    check(admin(ctx), SW.SECURITY_STATUS_NOT_SATISFIED, "key generation needs the issuer's secure channel");
    const tlvs = parseTlvs(cmd.data);
    check(tlvs.length === 1 && tlvs[0].tag === 0xac, SW.WRONG_DATA, "AC control reference template expected");
    const algId = findTlv(tlvs[0].value, 0x80);
    const alg = algId?.length === 1 ? ALG_BY_ID.get(algId[0]) : undefined;
    if (!alg) throw new CardError(SW.WRONG_DATA, "unsupported algorithm");
    const key = generateKey(alg);
    const pkcs8 = pkcs8Of(key);
    this.storeKey(ctx.card, refHex(cmd.p2), alg, pkcs8, "generated");
    return publicKeyTemplate(alg, key);
  }

  /**
   * IMPORT KEY (proprietary 80 F0 00 ref, data 80 alg | 81 PKCS#8): seed 000 claim 13 online path — the key
   * crossed the terminal encrypted under session keys derived from Sk, so only a session with C-MAC and
   * C-DECRYPTION may carry it.
   */
  private importKey(ctx: AppletContext, cmd: CommandApdu): Uint8Array {
    try {
      check(cmd.p1 === 0x00, SW.INCORRECT_P1P2);
      check(KEY_CERT_TAGS.has(cmd.p2), SW.INCORRECT_P1P2, "not a key reference");
      const session = SEC_AUTHENTICATED | SEC_C_MAC;
      check((ctx.secureLevel & session) === session, SW.SECURITY_STATUS_NOT_SATISFIED, "IMPORT KEY needs an SCP03 session with C-MAC");
      const tlvs = parseTlvs(cmd.data);
      const algId = findTlv(tlvs, 0x80);
      const clear = findTlv(tlvs, 0x81);
      const skPrk = findTlv(tlvs, 0x83);
      const alg = algId?.length === 1 ? ALG_BY_ID.get(algId[0]) : undefined;
      if (!alg || (clear === undefined) === (skPrk === undefined)) throw new CardError(SW.WRONG_DATA, "80 alg and one of 81 PKCS#8, 83 Sk[PRk] expected");
      // A PKCS#8 in clear only ever crosses the terminal encrypted by the session (C-DECRYPTION); Sk[PRk] is
      // wrapped under this card's key already (seed 000 ST22-ST24), so C-MAC suffices for it.
      if (clear) check(ctx.secureLevel & SEC_C_DECRYPTION, SW.SECURITY_STATUS_NOT_SATISFIED, "a clear private key comes in only under C-DECRYPTION");
      const der = clear ?? unwrapForCard(ctx.card.state, skPrk!);
      const pkcs8 = pkcs8Of(parsePrivateKey(alg, der));
      if (skPrk) der.fill(0);
      this.storeKey(ctx.card, refHex(cmd.p2), alg, pkcs8, "imported");
      return EMPTY;
    } finally {
      // Under C-DECRYPTION the data is the card's own plaintext copy: wipe it. (A plain command's data is the
      // caller's buffer, and was refused above.)
      if (ctx.secureLevel & SEC_C_DECRYPTION) cmd.data.fill(0);
    }
  }

  /**
   * LOAD PACKAGE (proprietary 80 F2 00 00, data: a sealed package): seed 000 ST24-ST25 offline path. The package
   * authenticates itself (sealed under Sk for this card, sequence-numbered), so no session or PIN is needed;
   * key, certificate and sequence number are committed together. A new key without a certificate removes the
   * slot's old certificate, which would no longer match.
   */
  private loadPackage(ctx: AppletContext, cmd: CommandApdu): Uint8Array {
    requireP1P2(cmd, 0x00, 0x00);
    const opened = openPackage(ctx.card.state, cmd.data);
    const ref = parseInt(opened.keyRef, 16);
    const certTag = KEY_CERT_TAGS.get(ref);
    if (certTag === undefined || refHex(ref) !== opened.keyRef) throw new CardError(SW.WRONG_DATA, "package names no PIV key reference");
    let pkcs8: Uint8Array | undefined;
    if (opened.pkcs8) {
      pkcs8 = pkcs8Of(parsePrivateKey(opened.alg, opened.pkcs8));
      opened.pkcs8.fill(0);
    }
    if (opened.cert) parseCertificate(opened.cert);
    try {
      ctx.card.commit((s) => {
        applyPackage(s, { ...opened, pkcs8 });
        const objKey = tagHex(certTag);
        if (opened.cert) s.objects[objKey] = hex(certificateObject(opened.cert));
        else if (pkcs8) delete s.objects[objKey];
      });
    } finally {
      pkcs8?.fill(0);
    }
    return EMPTY;
  }

  /**
   * EXPORT KEY WRAPPED (proprietary 80 F4 00 ref): seed 000 claim 16 — the key leaves only as Sk[PRk], a sealed
   * export package that only this card can open again (and a successor card holding this card's key set as a
   * predecessor key set, package.ts), together with its certificate. Sealed under the newest key set of this
   * card's own and its own card ID, never a predecessor's. Needs the PIN.
   */
  private exportKey(ctx: AppletContext, cmd: CommandApdu): Uint8Array {
    check(cmd.p1 === 0x00, SW.INCORRECT_P1P2);
    check(KEY_CERT_TAGS.has(cmd.p2), SW.INCORRECT_P1P2, "not a key reference");
    check(cmd.data.length === 0, SW.WRONG_LENGTH, "no command data");
    check(pinVerified(ctx), SW.SECURITY_STATUS_NOT_SATISFIED, "PIN not verified");
    const ref = refHex(cmd.p2);
    const cert = certificateOf(ctx.card.state, cmd.p2);
    const { bytes, exportSeq } = exportPackage(ctx.card.state, ref, cert);
    ctx.card.commit((s) => {
      s.exportSeq[ref] = exportSeq;
    });
    return bytes;
  }

  /** DELETE KEY (proprietary 80 F6 00 ref): key and certificate object; SCP03 C-MAC or PIN. Frees card memory. */
  private deleteKey(ctx: AppletContext, cmd: CommandApdu): Uint8Array {
    check(cmd.p1 === 0x00, SW.INCORRECT_P1P2);
    const certTag = KEY_CERT_TAGS.get(cmd.p2);
    if (certTag === undefined) throw new CardError(SW.INCORRECT_P1P2, "not a key reference");
    check(cmd.data.length === 0, SW.WRONG_LENGTH, "no command data");
    check(scpMac(ctx) || pinVerified(ctx), SW.SECURITY_STATUS_NOT_SATISFIED, "needs SCP03 or the PIN");
    const ref = refHex(cmd.p2);
    if (!ctx.card.state.keys[ref]) throw new CardError(SW.REFERENCE_NOT_FOUND, "no key in that slot");
    ctx.card.commit((s) => {
      delete s.keys[ref];
      delete s.objects[tagHex(certTag)];
    });
    forgetKeys(ctx.card);
    return EMPTY;
  }

  private storeKey(card: CardRuntime, ref: string, alg: KeyAlg, pkcs8: Buffer, origin: "generated" | "imported"): void {
    try {
      card.commit((s) => {
        s.keys[ref] = { alg, pkcs8: pkcs8.toString("hex"), origin };
      });
    } finally {
      pkcs8.fill(0);
    }
  }
}

// --- helpers ---------------------------------------------------------------------------------------------------

function requireP1P2(cmd: CommandApdu, p1: number, p2: number): void {
  check(cmd.p1 === p1 && cmd.p2 === p2, SW.INCORRECT_P1P2);
}

function pinVerified(ctx: AppletContext): boolean {
  return ctx.card.ram.get(RAM_PIN) === true;
}

/** An authenticated SCP03 session with at least C-MAC on this command (the issuer, holding Sk). */
function scpMac(ctx: AppletContext): boolean {
  return (ctx.secureLevel & (SEC_AUTHENTICATED | SEC_C_MAC)) === (SEC_AUTHENTICATED | SEC_C_MAC);
}

/** Card administration (key generation, PUT DATA): the issuer's SCP03 session. */
function admin(ctx: AppletContext): boolean {
  return scpMac(ctx);
}

/** A data object tag from 1 to 3 bytes. */
function tagOf(b: Uint8Array): number {
  check(b.length >= 1 && b.length <= 3, SW.WRONG_DATA, "tag of 1 to 3 bytes expected");
  return b.reduce((t, x) => (t << 8) | x, 0);
}

/** The one tag of a GET DATA tag list (PIV names exactly one object per command). */
function dataObjectTag(data: Uint8Array): number {
  const tlvs = parseTlvs(data);
  check(tlvs.length === 1 && tlvs[0].tag === 0x5c, SW.WRONG_DATA, "5C tag list with one tag expected");
  return tagOf(tlvs[0].value);
}

/** The contents of the 7C dynamic authentication template, which must be the whole command data. */
function dynamicAuthTemplate(data: Uint8Array): Tlv[] {
  const outer = parseTlvs(data);
  check(outer.length === 1 && outer[0].tag === 0x7c, SW.WRONG_DATA, "7C dynamic authentication template expected");
  return parseTlvs(outer[0].value);
}

/**
 * GENERAL AUTHENTICATE to the card management key 9B asking for a challenge, 7C{81 00} (SP 800-73-4 Part 2
 * Appendix A.1, the first step of the administrator's challenge-response): answered 7C{81 challenge}, fresh from the
 * card's RNG, as long as the algorithm's block. This card has no card management key — administration is the
 * issuer's SCP03 session (`admin`) — so the challenge is random numbers and nothing more: OpenSC reads its
 * C_GenerateRandom this way. Nothing is kept; any other template for 9B (a witness request 80, a response 82) is
 * refused with 6982, so no response to a challenge ever authenticates anything.
 */
function managementKeyChallenge(cmd: CommandApdu): Uint8Array {
  const length = CHALLENGE_LENGTH.get(cmd.p1);
  if (length === undefined) throw new CardError(SW.INCORRECT_P1P2, "not a card management key algorithm");
  const dyn = dynamicAuthTemplate(cmd.data);
  check(!dyn.some((t) => t.tag === 0x80 || t.tag === 0x82 || (t.tag === 0x81 && t.value.length > 0)), SW.SECURITY_STATUS_NOT_SATISFIED, "no card management key: administration is through SCP03");
  check(dyn.length === 1 && dyn[0].tag === 0x81, SW.WRONG_DATA, "7C{81 00} (challenge requested) expected");
  return tlv(0x7c, tlv(0x81, randomBytes(length)));
}

/**
 * Removes the FF padding of a PIN or PUK (SP 800-73-4 Part 2 §2.4.3): 6 to 8 bytes, then only FF. A PIN is made
 * of digits. A malformed value is refused with 6A80 before any retry is spent.
 */
function unpad(b: Uint8Array, ref: "pin" | "puk"): Uint8Array {
  let n = b.indexOf(0xff);
  if (n < 0) n = b.length;
  for (let i = n; i < b.length; i++) check(b[i] === 0xff, SW.WRONG_DATA, "bad padding");
  check(n >= 6 && n <= 8, SW.WRONG_DATA, "reference data must be 6 to 8 bytes");
  const v = b.subarray(0, n);
  if (ref === "pin") for (const c of v) check(c >= 0x30 && c <= 0x39, SW.WRONG_DATA, "PIN must be digits");
  return v;
}

function parseCertificate(der: Uint8Array): X509Certificate {
  try {
    return new X509Certificate(der);
  } catch {
    throw new CardError(SW.WRONG_DATA, "not an X.509 certificate");
  }
}

/** Certificate object content: 70 certificate (DER, or compressed when 71 says so), 71 CertInfo, FE. */
function validateCertificateObject(value: Uint8Array): void {
  const tlvs = parseTlvs(value);
  const cert = findTlv(tlvs, 0x70);
  const info = findTlv(tlvs, 0x71);
  check(cert !== undefined && cert.length > 0, SW.WRONG_DATA, "70 certificate expected");
  check(info === undefined || info.length === 1, SW.WRONG_DATA, "71 CertInfo is one byte");
  if (!info || (info[0] & 0x01) === 0) parseCertificate(cert);
}

/** The DER certificate of key reference `ref`, when its object holds an uncompressed one. */
function certificateOf(state: Readonly<CardState>, ref: number): Uint8Array | undefined {
  const tag = KEY_CERT_TAGS.get(ref);
  const stored = tag === undefined ? undefined : state.objects[tagHex(tag)];
  if (!stored) return undefined;
  try {
    const content = findTlv(unhex(stored), 0x53);
    const info = content && findTlv(content, 0x71);
    if (info?.[0] && info[0] & 0x01) return undefined;
    return content && findTlv(content, 0x70);
  } catch {
    return undefined;
  }
}
