// GlobalPlatform SCP03, host side (GP Card Spec v2.3 Amendment D v1.1.2/v1.2; PUT KEY: GP Card Spec v2.3 §11.8 and
// Amendment D §7.2). A server uses it to build protected APDU scripts that an untrusted terminal only relays:
// the terminal sees C-DECRYPTION ciphertext and MACs, and any byte it changes makes the card answer 6988 and end
// the session; any response byte it changes fails the R-MAC check here.
//
// Scp03HostSession is transport-agnostic (bytes in, bytes out). Each wrap() remembers what is needed to check
// the response (MAC chaining value and encryption counter) in a FIFO, and unwrap() consumes it, so a whole script
// can be wrapped first and its responses checked afterwards, in order. Scp03Client drives a session over a
// transmit function and follows 61xx with GET RESPONSE.
//
// Wire details shared with the card live in sm.ts. Secrets (keys, session keys) never appear in error messages.
//
// Between two round trips of a relay run by several servers (issue 16 §1), a session is kept as Scp03SessionState
// (snapshot / restore): only what crossed the wire — the host challenge, the card's INITIALIZE UPDATE answer, the
// MAC chaining value, the counter and the MACs of the commands awaiting their responses — never a key. A restored
// open session gets its session keys again from the static keys (restore) or from key custody (resumeWith), which
// derive them deterministically from the two challenges; the card cryptogram is checked again on the way.

import { randomBytes, timingSafeEqual } from "node:crypto";
import { encodeCommand, parseResponse, type ApduCommand } from "../apdu.ts";
import { transmitAll as transmitAllOn, type Transmit } from "../transmit.ts";
import { aesCbcDecrypt, aesCbcEncrypt, aesCmac, aesEcbEncrypt, isAesKeyLength, pad80, unpad80 } from "./cmac.ts";
import { cryptogram, DERIVE, deriveSessionKeys, type SessionKeys } from "./kdf.ts";
import { concatBytes, counterBlock, INS_EXTERNAL_AUTHENTICATE, INS_INITIALIZE_UPDATE, isProtectedSw, lcBytes, macClass, SEC, VALID_LEVELS, wipe } from "./sm.ts";

export { SEC } from "./sm.ts";

/** A static SCP03 key set; keys as bytes or hex. All three keys have the same length (16, 24 or 32 bytes). */
export interface Scp03Keys {
  kvn?: number;
  enc: Uint8Array | string;
  mac: Uint8Array | string;
  dek: Uint8Array | string;
}

export type { ApduCommand } from "../apdu.ts";

export interface Scp03Options {
  /** Security level for EXTERNAL AUTHENTICATE: 0x00, 0x01, 0x03, 0x11, 0x13 or 0x33. */
  level: number;
  /** Key version number to ask for in INITIALIZE UPDATE (0 = the card's default); defaults to keys.kvn or 0. */
  kvn?: number;
  /** Logical channel 0..3 (encoded in the class byte). */
  channel?: number;
}

/** What the card said in its INITIALIZE UPDATE response (Amendment D Table 7-3). */
export interface InitUpdateInfo {
  diversificationData: Uint8Array;
  kvn: number;
  scpId: number;
  i: number;
  cardChallenge: Uint8Array;
  cardCryptogram: Uint8Array;
  /** The 3-byte sequence counter, when the card uses pseudo-random card challenges. */
  sequenceCounter: number | undefined;
}

/** Protocol-level failure on the host side (wrong card cryptogram, bad R-MAC, session ended...). */
export class Scp03Error extends Error {
  constructor(
    message: string,
    readonly sw?: number,
  ) {
    super(message);
    this.name = "Scp03Error";
  }
}

const swText = (sw: number): string => sw.toString(16).toUpperCase().padStart(4, "0");

function bytes(k: Uint8Array | string, what: string): Uint8Array {
  const b = typeof k === "string" ? new Uint8Array(Buffer.from(k, "hex")) : Uint8Array.from(k);
  if (typeof k === "string" && b.length * 2 !== k.length) throw new Scp03Error(`${what} is not valid hex`);
  return b;
}

function normalizeKeys(keys: Scp03Keys): { enc: Uint8Array; mac: Uint8Array; dek: Uint8Array } {
  const enc = bytes(keys.enc, "ENC key"),
    mac = bytes(keys.mac, "MAC key"),
    dek = bytes(keys.dek, "DEK key");
  if (!isAesKeyLength(enc.length) || mac.length !== enc.length || dek.length !== enc.length) throw new Scp03Error("an SCP03 key set needs three AES keys of the same length (16, 24 or 32 bytes)");
  return { enc, mac, dek };
}

/** SCP03 key check value (Amendment D §7.2 / GP §B.6): first 3 bytes of AES(key, 16 bytes of 01). */
export function keyCheckValue(key: Uint8Array): Uint8Array {
  return aesEcbEncrypt(key, new Uint8Array(16).fill(0x01)).slice(0, 3);
}

/**
 * Encrypts a key component under the static DEK (Amendment D §7.2): AES-CBC, zero ICV; a key that is not a
 * whole number of blocks (AES-192) is zero-padded, its real length travels in the key data.
 */
export function encryptKeyComponent(dek: Uint8Array, key: Uint8Array): Uint8Array {
  const padded = new Uint8Array(Math.ceil(key.length / 16) * 16);
  padded.set(key, 0);
  return aesCbcEncrypt(dek, new Uint8Array(16), padded);
}

/**
 * PUT KEY (GP Card Spec §11.8) for a full SCP03 AES key set (key identifiers 1 ENC, 2 MAC, 3 DEK), in plain: wrap
 * it with a session of level 0x03 or higher. `dek` is the static DEK of the key set the session was opened with.
 * replaceKvn = 0 adds a new key set; otherwise the key set with that KVN is replaced.
 * Key data per key: 88 || Lc || key length || DEK-encrypted key || 03 || KCV. Response: new KVN || 3 × KCV.
 */
export function putKeyCommand(dek: Uint8Array | string, newKeys: Scp03Keys & { kvn: number }, replaceKvn = 0): ApduCommand {
  const d = bytes(dek, "DEK key");
  if (!isAesKeyLength(d.length)) throw new Scp03Error("DEK must be an AES key");
  const k = normalizeKeys(newKeys);
  if (!Number.isInteger(newKeys.kvn) || newKeys.kvn < 1 || newKeys.kvn > 0x7f) throw new Scp03Error("KVN must be 1..127");
  if (!Number.isInteger(replaceKvn) || replaceKvn < 0 || replaceKvn > 0x7f) throw new Scp03Error("replaced KVN must be 0..127");
  const parts: Uint8Array[] = [Uint8Array.of(newKeys.kvn)];
  for (const key of [k.enc, k.mac, k.dek]) {
    const cgram = encryptKeyComponent(d, key);
    parts.push(Uint8Array.of(0x88, cgram.length + 1, key.length), cgram, Uint8Array.of(3), keyCheckValue(key));
  }
  wipe(k.enc, k.mac, k.dek);
  return { cla: 0x80, ins: 0xd8, p1: replaceKvn, p2: 0x81, data: concatBytes(...parts), le: 256 };
}

/** Checks a PUT KEY response (KVN || KCV ENC || KCV MAC || KCV DEK) against the keys that were sent. */
export function checkPutKeyResponse(data: Uint8Array, newKeys: Scp03Keys & { kvn: number }): void {
  const k = normalizeKeys(newKeys);
  const expected = concatBytes(Uint8Array.of(newKeys.kvn), keyCheckValue(k.enc), keyCheckValue(k.mac), keyCheckValue(k.dek));
  wipe(k.enc, k.mac, k.dek);
  if (!Buffer.from(expected).equals(Buffer.from(data))) throw new Scp03Error("PUT KEY response does not confirm the new key set");
}

/** Parses an INITIALIZE UPDATE response (data only, or data || 9000). */
export function parseInitUpdateResponse(resp: Uint8Array): InitUpdateInfo {
  let data = resp;
  if (resp.length === 31 || resp.length === 34 || resp.length === 2) {
    const r = parseResponse(resp);
    if (r.sw !== 0x9000) throw new Scp03Error(`INITIALIZE UPDATE refused with SW ${swText(r.sw)}${r.sw === 0x6a88 ? " (no key set with that version)" : ""}`, r.sw);
    data = r.data;
  }
  if (data.length !== 29 && data.length !== 32) throw new Scp03Error(`INITIALIZE UPDATE response of ${data.length} bytes (expected 29 or 32, S8 mode)`);
  const i = data[12];
  const info: InitUpdateInfo = {
    diversificationData: data.slice(0, 10),
    kvn: data[10],
    scpId: data[11],
    i,
    cardChallenge: data.slice(13, 21),
    cardCryptogram: data.slice(21, 29),
    sequenceCounter: data.length === 32 ? (data[29] << 16) | (data[30] << 8) | data[31] : undefined,
  };
  if (info.scpId !== 0x03) throw new Scp03Error(`card answered with SCP ${info.scpId.toString(16)}, not SCP03`);
  if (i & 0x01) throw new Scp03Error("card uses S16 mode, which this host does not implement");
  if (((i & 0x10) !== 0) !== (data.length === 32)) throw new Scp03Error("sequence counter presence does not match the i parameter");
  return info;
}

interface Pending {
  mcv: Uint8Array;
  counter: number;
}

/**
 * A host session between two round trips, serializable (issue 16 §1): no key, no session key — only values that
 * crossed the wire (hex). "initializing": INITIALIZE UPDATE sent, the card's answer awaited. "open": authenticated;
 * `initUpdate` is the card's answer (its challenge and cryptogram), `mcv`/`counter` the chaining state and `pending`
 * the wrapped commands whose responses are still to be checked, oldest first.
 */
export interface Scp03SessionState {
  level: number;
  channel: number;
  kvn: number;
  state: "initializing" | "open";
  hostChallenge: string;
  initUpdate?: string;
  mcv?: string;
  counter?: number;
  pending?: { mcv: string; counter: number }[];
}

const hexOf = (b: Uint8Array) => Buffer.from(b).toString("hex");
function hexIn(s: unknown, what: string, length?: number): Uint8Array {
  if (typeof s !== "string" || !/^([0-9a-f]{2})*$/.test(s) || (length !== undefined && s.length !== length * 2))
    throw new Scp03Error(`session state: ${what} is not valid hex${length ? ` of ${length} bytes` : ""}`);
  return new Uint8Array(Buffer.from(s, "hex"));
}

export class Scp03HostSession {
  readonly level: number;
  readonly channel: number;
  private readonly kvn: number;
  /** Static keys, when this host holds them; undefined when they live in key custody (see authenticateWith). */
  private readonly keys: { enc: Uint8Array; mac: Uint8Array; dek: Uint8Array } | undefined;
  private hostChallenge: Uint8Array | undefined;
  private sk: SessionKeys | undefined;
  private mcv: Uint8Array = new Uint8Array(16);
  private counter = 0;
  private pending: Pending[] = [];
  /** "suspended": restored open (Scp03SessionState) and waiting for its session keys (resumeWith). */
  private state: "new" | "initializing" | "open" | "suspended" | "closed" = "new";
  info: InitUpdateInfo | undefined;
  /** The card's INITIALIZE UPDATE answer, kept for snapshot() once the session is open. */
  private initUpdateData: Uint8Array | undefined;

  /** `keys` null: the static keys stay in key custody; open the session with challenges() + authenticateWith(). */
  constructor(keys: Scp03Keys | null, opts: Scp03Options) {
    if (!VALID_LEVELS.includes(opts.level)) throw new Scp03Error(`unsupported security level ${opts.level.toString(16)}`);
    const ch = opts.channel ?? 0;
    if (!Number.isInteger(ch) || ch < 0 || ch > 3) throw new Scp03Error("logical channel must be 0..3");
    this.keys = keys ? normalizeKeys(keys) : undefined;
    this.level = opts.level;
    this.channel = ch;
    this.kvn = opts.kvn ?? keys?.kvn ?? 0;
    if (!Number.isInteger(this.kvn) || this.kvn < 0 || this.kvn > 0x7f) throw new Scp03Error("KVN must be 0..127");
  }

  /** True once authenticate() produced EXTERNAL AUTHENTICATE and until the session ends. */
  get open(): boolean {
    return this.state === "open";
  }

  /** Wrapped commands whose responses have not been unwrapped yet. */
  get pendingResponses(): number {
    return this.pending.length;
  }

  /** INITIALIZE UPDATE command bytes: 80 50 KVN 00 08 <host challenge> 00. */
  initializeUpdate(hostChallenge?: Uint8Array): Uint8Array {
    if (hostChallenge && hostChallenge.length !== 8) throw new Scp03Error("host challenge must be 8 bytes");
    this.hostChallenge = hostChallenge ? Uint8Array.from(hostChallenge) : new Uint8Array(randomBytes(8));
    this.state = "initializing";
    return encodeCommand({ cla: 0x80 | this.channel, ins: INS_INITIALIZE_UPDATE, p1: this.kvn, p2: 0, data: this.hostChallenge, le: 256 });
  }

  private staticKeys(): { enc: Uint8Array; mac: Uint8Array; dek: Uint8Array } {
    if (!this.keys) throw new Scp03Error("this session's static keys are in key custody: use challenges() and authenticateWith()");
    return this.keys;
  }

  /**
   * Checks the card cryptogram in the INITIALIZE UPDATE response and returns the EXTERNAL AUTHENTICATE command.
   * Throws Scp03Error when the card cryptogram is wrong (wrong static keys, or not the expected card).
   */
  authenticate(initUpdateResponse: Uint8Array): Uint8Array {
    const { info, context } = this.checkInitUpdate(initUpdateResponse);
    const { enc, mac } = this.staticKeys();
    const sk = deriveSessionKeys(enc, mac, context);
    return this.establish(info, sk, cryptogram(sk.sMac, DERIVE.CARD_CRYPTOGRAM, context), cryptogram(sk.sMac, DERIVE.HOST_CRYPTOGRAM, context));
  }

  /**
   * The challenges of an INITIALIZE UPDATE response, for a host whose static keys live in key custody: it asks
   * custody for the session material (Scp03SessionMaterial) and completes with authenticateWith.
   */
  challenges(initUpdateResponse: Uint8Array): { hostChallenge: Uint8Array; cardChallenge: Uint8Array; kvn: number } {
    const { info } = this.checkInitUpdate(initUpdateResponse);
    return { hostChallenge: Uint8Array.from(this.hostChallenge!), cardChallenge: Uint8Array.from(info.cardChallenge), kvn: info.kvn };
  }

  /** Like authenticate, with session keys and cryptograms computed elsewhere (key custody). */
  authenticateWith(initUpdateResponse: Uint8Array, m: { sEnc: Uint8Array; sMac: Uint8Array; sRmac: Uint8Array; cardCryptogram: Uint8Array; hostCryptogram: Uint8Array }): Uint8Array {
    const { info } = this.checkInitUpdate(initUpdateResponse);
    return this.establish(info, { sEnc: Uint8Array.from(m.sEnc), sMac: Uint8Array.from(m.sMac), sRmac: Uint8Array.from(m.sRmac) }, m.cardCryptogram, m.hostCryptogram);
  }

  private checkInitUpdate(initUpdateResponse: Uint8Array): { info: InitUpdateInfo; context: Uint8Array } {
    if (this.state !== "initializing" || !this.hostChallenge) throw new Scp03Error("authenticate() must follow initializeUpdate()");
    const info = parseInitUpdateResponse(initUpdateResponse);
    if (this.kvn !== 0 && info.kvn !== this.kvn) throw new Scp03Error(`card used key set ${info.kvn}, ${this.kvn} was asked for`);
    if (this.level & SEC.R_MAC && !(info.i & 0x20)) throw new Scp03Error("card does not support R-MAC");
    if (this.level & SEC.R_ENCRYPTION && !(info.i & 0x40)) throw new Scp03Error("card does not support R-ENCRYPTION");
    return { info, context: concatBytes(this.hostChallenge, info.cardChallenge) };
  }

  private establish(info: InitUpdateInfo, sk: SessionKeys, expectedCardCryptogram: Uint8Array, hostCryptogram: Uint8Array): Uint8Array {
    if (!timingSafeEqual(Buffer.from(expectedCardCryptogram), Buffer.from(info.cardCryptogram))) {
      wipe(sk.sEnc, sk.sMac, sk.sRmac);
      this.state = "closed";
      throw new Scp03Error(
        `wrong card cryptogram: the static keys (KVN ${info.kvn}) do not match this card, or it is not the expected card. ` +
          "Each failed attempt counts toward the card's authentication failure limit, after which it erases its keys.",
      );
    }
    this.info = info;
    this.sk = sk;
    this.initUpdateData = initUpdateData(info);
    const cla = 0x84 | this.channel;
    const full = aesCmac(sk.sMac, concatBytes(new Uint8Array(16), Uint8Array.of(macClass(cla), INS_EXTERNAL_AUTHENTICATE, this.level, 0), lcBytes(16, false), hostCryptogram));
    this.mcv = full;
    this.counter = 0;
    this.pending = [];
    this.state = "open";
    return encodeCommand({ cla, ins: INS_EXTERNAL_AUTHENTICATE, p1: this.level, p2: 0, data: concatBytes(hostCryptogram, full.subarray(0, 8)) });
  }

  /** Largest command data one short APDU can carry at this session's level. */
  get maxShortData(): number {
    if (!(this.level & SEC.C_MAC)) return 255;
    return this.level & SEC.C_DECRYPTION ? 239 : 247;
  }

  /**
   * Wraps one command: C-DECRYPTION of its data (level bit 0x02) and C-MAC. The class byte gets the SM bit and the
   * session's logical channel. Extended length is used when the wrapped data needs it or when asked.
   */
  wrap(cmd: ApduCommand, opts: { extended?: boolean } = {}): Uint8Array {
    const sk = this.requireOpen();
    const wireCla = (cmd.cla & 0xf0) | (this.level & SEC.C_MAC ? 0x04 : 0) | this.channel;
    const data = cmd.data ?? new Uint8Array(0);
    if (!(this.level & SEC.C_MAC)) return encodeCommand({ ...cmd, cla: wireCla, data, extended: opts.extended });
    this.counter += 1;
    let body = data;
    if (this.level & SEC.C_DECRYPTION && data.length > 0) {
      const icv = aesEcbEncrypt(sk.sEnc, counterBlock(this.counter, false));
      body = aesCbcEncrypt(sk.sEnc, icv, pad80(data));
    }
    const lc = body.length + 8;
    if (lc > 65535) throw new Scp03Error("wrapped command data exceeds 65535 bytes; use wrapChained()");
    const ext = opts.extended === true || lc > 255 || (cmd.le !== undefined && cmd.le > 256);
    const full = aesCmac(sk.sMac, concatBytes(this.mcv, Uint8Array.of(macClass(wireCla), cmd.ins, cmd.p1, cmd.p2), lcBytes(lc, ext), body));
    this.mcv = full;
    this.pending.push({ mcv: full, counter: this.counter });
    // Responses grow by the R-MAC and R-ENC padding: ask for the maximum when the caller expects data.
    const le = cmd.le === undefined ? undefined : ext ? 65536 : 256;
    return encodeCommand({ cla: wireCla, ins: cmd.ins, p1: cmd.p1, p2: cmd.p2, data: concatBytes(body, full.subarray(0, 8)), le, extended: ext });
  }

  /**
   * Splits long command data into an ISO 7816-4 command chain (CLA b5 on all but the last part) and wraps each part
   * on its own, as the card unwraps each part on its own. Responses to every part must be unwrapped, in order.
   */
  wrapChained(cmd: ApduCommand, maxPart = this.maxShortData): Uint8Array[] {
    if (!Number.isInteger(maxPart) || maxPart < 1 || maxPart > this.maxShortData) throw new Scp03Error(`chain part size must be 1..${this.maxShortData}`);
    const data = cmd.data ?? new Uint8Array(0);
    if (data.length <= maxPart) return [this.wrap(cmd)];
    const out: Uint8Array[] = [];
    for (let o = 0; o < data.length; o += maxPart) {
      const last = o + maxPart >= data.length;
      const part = data.subarray(o, o + maxPart);
      out.push(this.wrap({ cla: last ? cmd.cla : cmd.cla | 0x10, ins: cmd.ins, p1: cmd.p1, p2: cmd.p2, data: part, le: last ? cmd.le : undefined }));
    }
    return out;
  }

  /**
   * Checks and opens the response to the oldest wrapped command not yet unwrapped: verifies the R-MAC (level bit
   * 0x10) and decrypts R-ENCRYPTION (0x20). Throws Scp03Error on a bad R-MAC, which also ends the host session.
   * An error status word carries no R-MAC (Amendment D §6.2.5) and is returned as is; 6988 means the card ended
   * the session.
   */
  unwrap(response: Uint8Array): { data: Uint8Array; sw: number } {
    const sk = this.requireOpen();
    const r = parseResponse(response);
    if (!(this.level & SEC.C_MAC)) return { data: Uint8Array.from(r.data), sw: r.sw };
    const p = this.pending.shift();
    if (!p) throw new Scp03Error("unwrap() without a wrapped command awaiting its response");
    if (!(this.level & SEC.R_MAC)) {
      if (r.sw === 0x6988) this.end();
      return { data: Uint8Array.from(r.data), sw: r.sw };
    }
    if (!isProtectedSw(r.sw)) {
      if (r.sw === 0x6988) this.end();
      if (r.data.length) {
        this.end();
        throw new Scp03Error(`status ${swText(r.sw)} came with unprotected response data`, r.sw);
      }
      return { data: new Uint8Array(0), sw: r.sw };
    }
    if (r.data.length < 8) {
      this.end();
      throw new Scp03Error(`response too short to carry an R-MAC (SW ${swText(r.sw)})`, r.sw);
    }
    const body = r.data.subarray(0, r.data.length - 8);
    const rmac = r.data.subarray(r.data.length - 8);
    const expected = aesCmac(sk.sRmac, concatBytes(p.mcv, body, Uint8Array.of(r.sw >> 8, r.sw & 0xff))).subarray(0, 8);
    if (!Buffer.from(expected).equals(Buffer.from(rmac))) {
      this.end();
      throw new Scp03Error("R-MAC verification failed: the response was altered on its way from the card", r.sw);
    }
    let data: Uint8Array = Uint8Array.from(body);
    if (this.level & SEC.R_ENCRYPTION && body.length > 0) {
      const plain = body.length % 16 ? undefined : unpad80(aesCbcDecrypt(sk.sEnc, aesEcbEncrypt(sk.sEnc, counterBlock(p.counter, true)), body));
      if (!plain) {
        this.end();
        throw new Scp03Error("R-ENCRYPTION: response data does not decrypt to valid padding", r.sw);
      }
      data = Uint8Array.from(plain);
    }
    return { data, sw: r.sw };
  }

  /** PUT KEY for a new key set, encrypted under this session's static DEK, wrapped (needs level 0x03 or higher). */
  putKey(newKeys: Scp03Keys & { kvn: number }, replaceKvn = 0): Uint8Array {
    return this.wrap(putKeyCommand(this.staticKeys().dek, newKeys, replaceKvn));
  }

  /** Ends the session on the host side and wipes the session keys (the static keys stay for a new session). */
  end(): void {
    if (this.sk) wipe(this.sk.sEnc, this.sk.sMac, this.sk.sRmac);
    this.sk = undefined;
    this.pending = [];
    this.state = "closed";
  }

  /**
   * The session between two round trips, without any key (Scp03SessionState): while INITIALIZE UPDATE awaits its
   * answer, or open. Take it before end(), which forgets the pending responses.
   */
  snapshot(): Scp03SessionState {
    const base = { level: this.level, channel: this.channel, kvn: this.kvn, hostChallenge: hexOf(this.hostChallenge ?? new Uint8Array(0)) };
    if (this.state === "initializing") return { ...base, state: "initializing" };
    if ((this.state === "open" || this.state === "suspended") && this.initUpdateData)
      return {
        ...base,
        state: "open",
        initUpdate: hexOf(this.initUpdateData),
        mcv: hexOf(this.mcv),
        counter: this.counter,
        pending: this.pending.map((p) => ({ mcv: hexOf(p.mcv), counter: p.counter })),
      };
    throw new Scp03Error(`a ${this.state} session has no state to keep`);
  }

  /**
   * A session from its snapshot. An "initializing" one continues with authenticate() or challenges() +
   * authenticateWith(). An "open" one: with static `keys` its session keys are derived again here (the card
   * cryptogram must match the one the card sent); with null (keys in custody) it waits for resumeWith().
   */
  static restore(s: Scp03SessionState, keys: Scp03Keys | null): Scp03HostSession {
    if (s.state !== "initializing" && s.state !== "open") throw new Scp03Error("session state: unknown state");
    const host = new Scp03HostSession(keys, { level: s.level, kvn: s.kvn, channel: s.channel });
    host.hostChallenge = hexIn(s.hostChallenge, "host challenge", 8);
    host.state = "initializing";
    if (s.state === "initializing") return host;
    const iu = hexIn(s.initUpdate, "INITIALIZE UPDATE answer");
    const info = parseInitUpdateResponse(iu);
    if (s.kvn !== 0 && info.kvn !== s.kvn) throw new Scp03Error("session state: key version differs from the card's answer");
    const mcv = hexIn(s.mcv, "MAC chaining value", 16);
    if (!Number.isSafeInteger(s.counter) || (s.counter as number) < 0) throw new Scp03Error("session state: bad counter");
    const pending = (s.pending ?? []).map((p, i) => {
      if (!Number.isSafeInteger(p.counter) || p.counter < 1) throw new Scp03Error(`session state: bad counter of pending response ${i}`);
      return { mcv: hexIn(p.mcv, `pending MAC ${i}`, 16), counter: p.counter };
    });
    host.info = info;
    host.initUpdateData = iu;
    host.mcv = mcv;
    host.counter = s.counter as number;
    host.pending = pending;
    host.state = "suspended";
    if (keys) {
      const { enc, mac } = host.staticKeys();
      const context = concatBytes(host.hostChallenge, info.cardChallenge);
      const sk = deriveSessionKeys(enc, mac, context);
      host.resumeWith({ ...sk, cardCryptogram: cryptogram(sk.sMac, DERIVE.CARD_CRYPTOGRAM, context) });
      wipe(sk.sEnc, sk.sMac, sk.sRmac);
    }
    return host;
  }

  /** The challenges of a restored open session: what custody derives its session keys from again (resumeWith). */
  get resumeChallenges(): { hostChallenge: Uint8Array; cardChallenge: Uint8Array; kvn: number } {
    if (this.state !== "suspended" || !this.info || !this.hostChallenge) throw new Scp03Error("resumeChallenges: not a restored session awaiting its keys");
    return { hostChallenge: Uint8Array.from(this.hostChallenge), cardChallenge: Uint8Array.from(this.info.cardChallenge), kvn: this.info.kvn };
  }

  /**
   * Gives a restored open session its session keys again, as custody derived them from the two challenges (copied;
   * the caller wipes its own). The card cryptogram they give must be the one the card sent, else the keys are not
   * this session's (another key set): refused, and the session ends.
   */
  resumeWith(m: { sEnc: Uint8Array; sMac: Uint8Array; sRmac: Uint8Array; cardCryptogram: Uint8Array }): void {
    if (this.state !== "suspended" || !this.info) throw new Scp03Error("resumeWith: not a restored session awaiting its keys");
    if (m.cardCryptogram.length !== this.info.cardCryptogram.length || !timingSafeEqual(Buffer.from(m.cardCryptogram), Buffer.from(this.info.cardCryptogram))) {
      this.end();
      throw new Scp03Error("resumed session keys do not match the card's cryptogram: not this session's key set");
    }
    this.sk = { sEnc: Uint8Array.from(m.sEnc), sMac: Uint8Array.from(m.sMac), sRmac: Uint8Array.from(m.sRmac) };
    this.state = "open";
  }

  private requireOpen(): SessionKeys {
    if (this.state !== "open" || !this.sk) throw new Scp03Error("no open SCP03 session (not authenticated, or ended)");
    return this.sk;
  }
}

export type { Transmit } from "../transmit.ts";

/** The data of an INITIALIZE UPDATE answer (Amendment D Table 7-3), rebuilt from its parsed fields. */
function initUpdateData(i: InitUpdateInfo): Uint8Array {
  const seq = i.sequenceCounter === undefined ? new Uint8Array(0) : Uint8Array.of(i.sequenceCounter >> 16, (i.sequenceCounter >> 8) & 0xff, i.sequenceCounter & 0xff);
  return concatBytes(i.diversificationData, Uint8Array.of(i.kvn, i.scpId, i.i), i.cardChallenge, i.cardCryptogram, seq);
}

/** Sends one APDU and gathers a 61xx response with GET RESPONSE on the same logical channel (../transmit.ts). */
export const transmitAll = (transmit: Transmit, apdu: Uint8Array, channel = 0): Promise<Uint8Array> => transmitAllOn(transmit, apdu, channel, () => new Scp03Error("card keeps answering 61xx"));

/** Computes session keys and cryptograms from the two challenges where the static keys are (key custody). */
export type SessionSource = (
  hostChallenge: Uint8Array,
  cardChallenge: Uint8Array,
  kvn: number,
) => Promise<{ sEnc: Uint8Array; sMac: Uint8Array; sRmac: Uint8Array; cardCryptogram: Uint8Array; hostCryptogram: Uint8Array }>;

/** An SCP03 session over a transmit function: open() authenticates, send() wraps, transmits and unwraps. */
export class Scp03Client {
  private constructor(
    private readonly transmit: Transmit,
    readonly session: Scp03HostSession,
  ) {}

  /**
   * Opens a session with static keys held here, or with a SessionSource when they live in key custody (the
   * source turns the two challenges into session keys and cryptograms, e.g. KeyCustody.scp03Session).
   */
  static async open(transmit: Transmit, keys: Scp03Keys | SessionSource, opts: Scp03Options & { hostChallenge?: Uint8Array }): Promise<Scp03Client> {
    const source = typeof keys === "function" ? keys : undefined;
    const session = new Scp03HostSession(source ? null : (keys as Scp03Keys), opts);
    const iu = await transmitAll(transmit, session.initializeUpdate(opts.hostChallenge), session.channel);
    let ea: Uint8Array;
    if (source) {
      const c = session.challenges(iu);
      ea = session.authenticateWith(iu, await source(c.hostChallenge, c.cardChallenge, c.kvn));
    } else ea = session.authenticate(iu);
    const r = parseResponse(await transmitAll(transmit, ea, session.channel));
    if (r.sw !== 0x9000) {
      session.end();
      throw new Scp03Error(`EXTERNAL AUTHENTICATE refused with SW ${swText(r.sw)}`, r.sw);
    }
    return new Scp03Client(transmit, session);
  }

  /** Sends a command under the session; data longer than one short APDU is sent as a command chain unless extended. */
  async send(cmd: ApduCommand, opts: { extended?: boolean } = {}): Promise<{ data: Uint8Array; sw: number }> {
    const data = cmd.data ?? new Uint8Array(0);
    const apdus = opts.extended || data.length <= this.session.maxShortData ? [this.session.wrap(cmd, opts)] : this.session.wrapChained(cmd);
    let last: { data: Uint8Array; sw: number } = { data: new Uint8Array(0), sw: 0x9000 };
    for (let k = 0; k < apdus.length; k++) {
      last = this.session.unwrap(await transmitAll(this.transmit, apdus[k], this.session.channel));
      if (k < apdus.length - 1 && last.sw !== 0x9000) {
        // The card abandoned the chain: the responses of the parts never sent will not come.
        this.session.end();
        return last;
      }
    }
    return last;
  }

  /** Ends the session on the host side. The card ends its side on SELECT, reset or a new INITIALIZE UPDATE. */
  close(): void {
    this.session.end();
  }
}
