// GlobalPlatform SCP03, card side (GP Card Spec v2.3 Amendment D v1.1.2/v1.2), one session per logical channel.
//
//   INITIALIZE UPDATE   80 50 KVN 00 08 <host challenge>                     (Amendment D §7.1.1)
//     response: key diversification data (10) || KVN || 03 || i=70 || card challenge (8) || card cryptogram (8)
//               || sequence counter (3)                                      (Table 7-3, S8 mode)
//     The key diversification data is the public card ID right-aligned (derivation.ts keyDiversificationData):
//     what the factory and the issuer diversify the card's transport keys from.
//     The card challenge is pseudo-random (§6.2.2.1): KDF(Key-ENC, 02, sequence counter || ISD AID, 64), where the
//     3-byte sequence counter is the persistent `scpCounter`, incremented and committed before it is used.
//   EXTERNAL AUTHENTICATE  84 82 level 00 10 <host cryptogram> <C-MAC>         (§7.1.2)
//     levels 00, 01, 03, 11, 13, 33 (Table 7-6); C-MAC over a zero MAC chaining value.
//   Protected commands: C-MAC (§6.2.4), C-DECRYPTION (§6.2.6) with ICV = AES(S-ENC, counter); the counter is
//   incremented for every command of the session, with or without data. Responses: R-ENCRYPTION (§6.2.7, ICV from
//   the counter with first byte 80) and R-MAC (§6.2.5) over chaining value || data || SW, not on error SWs.
//
// Failure counting (seed 000 claims 17-19, seed 001 FIG. 16), with the same anti-tearing rule as the PIN:
// INITIALIZE UPDATE commits scpFailures+1 BEFORE the host can prove anything; only a successful EXTERNAL
// AUTHENTICATE commits it back to 0. So a wrong host cryptogram, a bad EXTERNAL AUTHENTICATE MAC, an abandoned
// session (a host that found the card cryptogram wrong) and a power cut in between all count as failures, as on
// real GP cards. When scpFailures has reached scpFailureLimit, the card zeroizes itself.
//
// Nothing but CardError (and PowerLoss from commit) leaves this module.

import { timingSafeEqual } from "node:crypto";
import type { CommandApdu } from "../../protocol/apdu.ts";
import type { SecureChannel, SecureChannelFactory } from "../applet.ts";
import type { CardRuntime } from "../runtime.ts";
import type { ScpKeySet } from "../state.ts";
import { CardError, SW } from "../../protocol/sw.ts";
import { aesCbcDecrypt, aesCbcEncrypt, aesCmac, aesEcbEncrypt, isAesKeyLength, pad80, unpad80 } from "../../protocol/scp03/cmac.ts";
import { cryptogram, DERIVE, deriveSessionKeys, pseudoRandomChallenge } from "../../protocol/scp03/kdf.ts";
import { keyDiversificationData } from "../../protocol/derivation.ts";
import { stateCounterMac } from "../../protocol/state-counter.ts";
import {
  concatBytes,
  counterBlock,
  I_PARAM,
  INS_EXTERNAL_AUTHENTICATE,
  INS_INITIALIZE_UPDATE,
  isProtectedSw,
  ISD_AID,
  lcBytes,
  macClass,
  SEC,
  SW_AUTH_FAILED,
  VALID_LEVELS,
  wipe,
} from "../../protocol/scp03/sm.ts";

export { ISD_AID, SEC } from "../../protocol/scp03/sm.ts";

const MAX_SEQUENCE = 0xffffff;

interface Session {
  kvn: number;
  sEnc: Uint8Array;
  sMac: Uint8Array;
  sRmac: Uint8Array;
  context: Uint8Array;
  authenticated: boolean;
  /** Security level requested in EXTERNAL AUTHENTICATE (without the AUTHENTICATED bit). */
  level: number;
  /** MAC chaining value: the full 16-byte C-MAC of the last command accepted. */
  mcv: Uint8Array;
  /** Encryption counter: number of protected commands received in this session. */
  counter: number;
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

/** Reads a stored key set; a malformed one (never written by PUT KEY) is refused with 6984. */
export function staticKeys(ks: ScpKeySet): { enc: Uint8Array; mac: Uint8Array; dek: Uint8Array } {
  const enc = new Uint8Array(Buffer.from(ks.enc, "hex"));
  const mac = new Uint8Array(Buffer.from(ks.mac, "hex"));
  const dek = new Uint8Array(Buffer.from(ks.dek, "hex"));
  if (!isAesKeyLength(enc.length) || mac.length !== enc.length || dek.length !== enc.length) throw new CardError(SW.REFERENCE_DATA_NOT_USABLE, "stored key set is not a valid AES key set");
  return { enc, mac, dek };
}

/** The live SCP03 channel objects of each card, so the ISD can reach its channel's session (PUT KEY needs the KVN). */
const registry = new WeakMap<CardRuntime, Map<number, Scp03CardChannel>>();

/** The SCP03 session object of a card's logical channel, when the card was built with scp03Factory. */
export function scp03ChannelOf(card: CardRuntime, channel: number): Scp03CardChannel | undefined {
  return registry.get(card)?.get(channel);
}

export class Scp03CardChannel implements SecureChannel {
  private s: Session | undefined;

  constructor(
    private readonly card: CardRuntime,
    readonly channel: number,
  ) {
    let m = registry.get(card);
    if (!m) registry.set(card, (m = new Map()));
    m.set(channel, this);
  }

  get level(): number {
    return this.s?.authenticated ? SEC.AUTHENTICATED | this.s.level : 0;
  }

  get authenticated(): boolean {
    return this.s?.authenticated === true;
  }

  /** KVN of the key set of the current authenticated session (for PUT KEY), or undefined. */
  get keyVersion(): number | undefined {
    return this.s?.authenticated ? this.s.kvn : undefined;
  }

  /**
   * The MAC of a state counter report (../state-counter.ts) under this channel's session S-MAC and challenges,
   * authenticated or not yet; undefined when no INITIALIZE UPDATE opened a session here.
   */
  stateCounterMac(counter: number): Uint8Array | undefined {
    return this.s && stateCounterMac(this.s.sMac, this.s.context, counter);
  }

  owns(cmd: CommandApdu): boolean {
    return (cmd.cla & 0x80) !== 0 && (cmd.ins === INS_INITIALIZE_UPDATE || cmd.ins === INS_EXTERNAL_AUTHENTICATE);
  }

  handle(cmd: CommandApdu): Uint8Array {
    if (cmd.ins === INS_INITIALIZE_UPDATE) return this.initializeUpdate(cmd);
    if (cmd.ins === INS_EXTERNAL_AUTHENTICATE) return this.externalAuthenticate(cmd);
    throw new CardError(SW.INS_NOT_SUPPORTED);
  }

  private initializeUpdate(cmd: CommandApdu): Uint8Array {
    this.reset(); // a new INITIALIZE UPDATE ends whatever session this channel had
    if ((cmd.cla & 0x0c) !== 0) throw new CardError(SW.CLA_NOT_SUPPORTED, "INITIALIZE UPDATE is sent in plain");
    if (cmd.p2 !== 0) throw new CardError(SW.INCORRECT_P1P2);
    if (cmd.data.length !== 8) throw new CardError(SW.WRONG_LENGTH, "host challenge must be 8 bytes (S8 mode)");
    const st = this.card.state;
    if (st.scpFailures >= st.scpFailureLimit) {
      this.card.zeroize("repeated secure channel authentication failures");
      throw new CardError(SW.WARN_TERMINATED, "card terminated");
    }
    const ks = cmd.p1 === 0 ? st.keySets[0] : st.keySets.find((k) => k.kvn === cmd.p1);
    if (!ks) throw new CardError(SW.REFERENCE_NOT_FOUND, "no key set with that version");
    const keys = staticKeys(ks);
    if (st.scpCounter >= MAX_SEQUENCE) throw new CardError(SW.CONDITIONS_NOT_SATISFIED, "sequence counter exhausted");
    // Anti-tearing: the new sequence counter and the pessimistic failure count land before anything is revealed.
    this.card.commit((s) => {
      s.scpCounter += 1;
      s.scpFailures += 1;
    });
    const n = this.card.state.scpCounter;
    const seq = Uint8Array.of((n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff);
    const hostChallenge = Uint8Array.from(cmd.data);
    const cardChallenge = pseudoRandomChallenge(keys.enc, seq, ISD_AID);
    const context = concatBytes(hostChallenge, cardChallenge);
    const sk = deriveSessionKeys(keys.enc, keys.mac, context);
    wipe(keys.enc, keys.mac, keys.dek);
    const cardCryptogram = cryptogram(sk.sMac, DERIVE.CARD_CRYPTOGRAM, context);
    this.s = { kvn: ks.kvn, ...sk, context, authenticated: false, level: 0, mcv: new Uint8Array(16), counter: 0 };
    return concatBytes(keyDiversificationData(st.cardId), Uint8Array.of(ks.kvn, 0x03, I_PARAM), cardChallenge, cardCryptogram, seq);
  }

  private externalAuthenticate(cmd: CommandApdu): Uint8Array {
    const s = this.s;
    if (!s || s.authenticated) throw new CardError(SW.CONDITIONS_NOT_SATISFIED, "EXTERNAL AUTHENTICATE must follow INITIALIZE UPDATE");
    if ((cmd.cla & 0x04) === 0) {
      this.reset();
      throw new CardError(SW.SECURITY_STATUS_NOT_SATISFIED, "EXTERNAL AUTHENTICATE must carry a C-MAC");
    }
    if (cmd.p2 !== 0 || !VALID_LEVELS.includes(cmd.p1)) {
      this.reset();
      throw new CardError(SW.INCORRECT_P1P2, "unsupported security level");
    }
    if (cmd.data.length !== 16) {
      this.reset();
      throw new CardError(SW.WRONG_LENGTH, "host cryptogram and C-MAC must be 16 bytes");
    }
    const hostCryptogram = cmd.data.subarray(0, 8);
    const mac = cmd.data.subarray(8, 16);
    const full = aesCmac(s.sMac, concatBytes(s.mcv, Uint8Array.of(macClass(cmd.cla), cmd.ins, cmd.p1, cmd.p2), lcBytes(16, cmd.extended), hostCryptogram));
    const expected = cryptogram(s.sMac, DERIVE.HOST_CRYPTOGRAM, s.context);
    const ok = equal(expected, hostCryptogram) && equal(full.subarray(0, 8), mac);
    if (!ok) {
      this.reset();
      const st = this.card.state;
      if (st.scpFailures >= st.scpFailureLimit) this.card.zeroize("repeated secure channel authentication failures");
      throw new CardError(SW_AUTH_FAILED, "host cryptogram verification failed");
    }
    this.card.commit((st) => {
      st.scpFailures = 0;
    });
    s.authenticated = true;
    s.level = cmd.p1;
    s.mcv = full;
    s.counter = 0;
    return new Uint8Array(0);
  }

  unwrap(cmd: CommandApdu): CommandApdu {
    const s = this.s;
    if (!s?.authenticated) throw new CardError(SW.SECURITY_STATUS_NOT_SATISFIED, "no secure channel session");
    const fail = (): never => {
      this.reset();
      throw new CardError(SW.SM_DATA_OBJECTS_INCORRECT, "secure messaging check failed");
    };
    if (!(s.level & SEC.C_MAC)) {
      // A level-00 session expects no secure messaging: a command claiming it cannot be checked.
      this.reset();
      throw new CardError(SW.SECURITY_STATUS_NOT_SATISFIED, "session has no C-MAC");
    }
    s.counter += 1;
    if (cmd.data.length < 8) fail();
    const body = cmd.data.subarray(0, cmd.data.length - 8);
    const mac = cmd.data.subarray(cmd.data.length - 8);
    const full = aesCmac(s.sMac, concatBytes(s.mcv, Uint8Array.of(macClass(cmd.cla), cmd.ins, cmd.p1, cmd.p2), lcBytes(cmd.data.length, cmd.extended), body));
    if (!equal(full.subarray(0, 8), mac)) fail();
    s.mcv = full;
    let data: Uint8Array = Uint8Array.from(body);
    if (s.level & SEC.C_DECRYPTION && body.length > 0) {
      if (body.length % 16) fail();
      const icv = aesEcbEncrypt(s.sEnc, counterBlock(s.counter, false));
      const plain = unpad80(aesCbcDecrypt(s.sEnc, icv, body));
      if (!plain) return fail();
      data = Uint8Array.from(plain);
    }
    return { ...cmd, data };
  }

  wrap(data: Uint8Array, sw: number): Uint8Array {
    const s = this.s;
    if (!s?.authenticated) return data;
    // Amendment D §6.2.5: an error status word is returned alone, without R-MAC or data.
    if (!isProtectedSw(sw)) return new Uint8Array(0);
    let out = data;
    if (s.level & SEC.R_ENCRYPTION && data.length > 0) {
      const icv = aesEcbEncrypt(s.sEnc, counterBlock(s.counter, true));
      out = aesCbcEncrypt(s.sEnc, icv, pad80(data));
    }
    if (s.level & SEC.R_MAC) {
      const rmac = aesCmac(s.sRmac, concatBytes(s.mcv, out, Uint8Array.of(sw >> 8, sw & 0xff)));
      out = concatBytes(out, rmac.subarray(0, 8));
    }
    return out;
  }

  reset(): void {
    if (this.s) wipe(this.s.sEnc, this.s.sMac, this.s.sRmac);
    this.s = undefined;
  }
}

/** The SecureChannelFactory to give CardRuntime: one SCP03 session per logical channel. */
export const scp03Factory: SecureChannelFactory = (card, channel) => new Scp03CardChannel(card, channel);
