// The GlobalPlatform Issuer Security Domain (GP Card Spec v2.3 §9 and §11; SCP03 key handling per Amendment D).
// AID A000000151000000; applets[0] of every card, selected by default on every logical channel.
//
//   GET DATA   80/00 CA tag (§11.3):  0045 card image number (public card ID), 0066 card recognition data,
//              00E0 key information template, 00C1 sequence counter, 9F7F CPLC, FF21 extended card resources,
//              DF20 cardkms public state (lifecycle, PIN/PUK tries left, package sequence, SCP tries left, state
//              counter), DF21 secret ID (only in a session with R-ENCRYPTION), DF23 the state counter report: after
//              INITIALIZE UPDATE on the channel, DF23 { 80 counter (8), 81 MAC under the session's S-MAC (8) }
//              (state-counter.ts; 6985 without a session): how the issuer notices an image that went back.
//   PUT KEY    80 D8 (§11.8, Amendment D §7.2): a full SCP03 AES key set, keys encrypted under the static DEK of the
//              session's key set (AES-CBC, zero ICV), KCV = first 3 bytes of AES(key, 16 x 01). Needs C-MAC and
//              C-DECRYPTION. P1 = 0 adds a key set, P1 = KVN replaces it. Response: KVN || KCVs.
//              Replacing a key set drops its predecessor binding (the new keys are this card's own).
//   STORE DATA 80 E2 90 00 (§11.11; P1 = last block, BER-TLV data), "key set origin" — binds a key set to the
//              predecessor card it was diversified for (seed 000 para 0081: the new card 30x* holds the old card's
//              Sk1). Data: DF22 { 83 KVN(1), 45 predecessor card image number (1..16) }. Needs an authenticated
//              session with C-MAC (the data is public, the binding is not: only the issuer may make it). Set once:
//              the same binding again is 9000 and changes nothing, another one 6985; the card must keep a key
//              set of its own (6985), the predecessor must not be this card (6A80), the KVN must exist (6A88).
//              One commit. With PUT KEY before it, personalisation is two commits; the state between them (Sk1
//              held as if it were the new card's own key set) opens nothing of the old card — its exports name the
//              old card ID, which no key set is bound to yet (6982) — and seals nothing: exports go under the
//              newest own key set, Sk2 (KVN 2 > 1). A torn personalisation is finished by STORE DATA alone.
//   GET DATA   80 CA DF 22: the bindings, DF22 { 83 KVN, 45 card ID } per predecessor key set (public).
//   SET STATUS 80 F0 80 0F (§11.10): OP_READY -> SECURED, in an authenticated session.
//   GET STATUS 80 F2 80 P2 (§11.4): the card's life cycle state, in an authenticated session (6982 outside one), so
//              that under R-MAC the host knows the answer is the card's own (SET STATUS answers 6985 "already
//              SECURED" with no MAC — a relaying terminal can forge that). P1 80 only (the ISD; this ISD does not
//              see the runtime's applets: other P1 6A86); P2 02 answers E3 { 4F ISD AID, 9F70 life cycle, C5
//              privileges (3) } (GP TLV format), P2 00 the legacy AID length || AID || life cycle || privileges
//              (1); get-next (P2 b1) 6A86, as there is one entry. Data: the search qualifier 4F with an AID prefix
//              (4F 00: any); a prefix of another AID 6A88; anything else 6A80. Life cycle codes (§11.1.1): OP_READY
//              01, SECURED 0F, TERMINATED FF.
// Commands that ask for the card key are attack signals (tamper.ts): the card zeroizes itself and answers 6982.

import type { CommandApdu } from "../protocol/apdu.ts";
import type { Applet, AppletContext } from "./applet.ts";
import { aesCbcDecrypt, aesEcbEncrypt, isAesKeyLength } from "../protocol/scp03/cmac.ts";
import { scp03ChannelOf, staticKeys } from "./scp03/card-channel.ts";
import { ISD_AID, I_PARAM, SEC, concatBytes, wipe } from "../protocol/scp03/sm.ts";
import { encodeStateCounterReport, TAG_STATE_COUNTER } from "../protocol/state-counter.ts";
import type { CardState, ScpKeySet } from "./state.ts";
import { LIFECYCLE_CODE, TAG_KEY_ORIGIN } from "../protocol/isd.ts";
import { usedBytes } from "./state.ts";
import { CardError, SW } from "../protocol/sw.ts";
import { matchAttackSignal } from "./tamper.ts";
import { findTlv, parseTlvs, tlv } from "../protocol/tlv.ts";
import { fromHex } from "../util/bytes.ts";

export { ISD_AID } from "../protocol/scp03/sm.ts";
// The host side (issuer scripts) lives in protocol/isd.ts.
export { cardLifecycleOf, getStatusCommand, keyOriginCommand, TAG_KEY_ORIGIN } from "../protocol/isd.ts";

/** Most SCP03 key sets the card holds. */
export const MAX_KEY_SETS = 8;

const u8 = (...b: number[]): Uint8Array => Uint8Array.from(b);
const be = (n: number, len: number): Uint8Array => {
  const out = new Uint8Array(len);
  let v = n;
  for (let i = len - 1; i >= 0; i--) {
    out[i] = v & 0xff;
    v = Math.floor(v / 256);
  }
  return out;
};

/** GP OIDs under 1.2.840.114283 (2A 86 48 86 FC 6B). */
const GP_OID = [0x2a, 0x86, 0x48, 0x86, 0xfc, 0x6b];

function cardRecognitionData(): Uint8Array {
  const oid = (...arcs: number[]): Uint8Array => tlv(0x06, u8(...GP_OID, ...arcs));
  return tlv(
    0x66,
    tlv(
      0x73,
      oid(0x01), // GP card recognition data
      tlv(0x60, oid(0x02, 0x02, 0x03)), // GP Card Spec 2.3
      tlv(0x63, oid(0x03)), // card identification scheme
      tlv(0x64, oid(0x04, 0x03, I_PARAM)), // SCP03, i = 70
    ),
  );
}

function keyInformation(st: Readonly<CardState>): Uint8Array {
  const entries: Uint8Array[] = [];
  for (const ks of st.keySets) {
    const len = ks.enc.length / 2;
    for (const id of [1, 2, 3]) entries.push(tlv(0xc0, u8(id, ks.kvn, 0x88, len)));
  }
  return tlv(0xe0, ...entries);
}

/** CPLC-like data (GP §H.6 layout, 42 bytes): only the IC serial number and batch come from the card ID. */
function cplc(st: Readonly<CardState>): Uint8Array {
  const d = new Uint8Array(42);
  const id = fromHex(st.cardId);
  d.set(id.subarray(0, 4), 12); // IC serial number
  d.set(id.subarray(4, 6), 16); // IC batch identifier
  return tlv(0x9f7f, d);
}

function extendedResources(st: Readonly<CardState>, applets: number): Uint8Array {
  const free = Math.max(0, st.capacity - usedBytes(st as CardState));
  return tlv(0xff21, tlv(0x81, be(applets, 2)), tlv(0x82, be(free, 4)), tlv(0x83, be(0, 4)));
}

function publicState(st: Readonly<CardState>): Uint8Array {
  return tlv(
    0xdf20,
    tlv(0x80, u8(LIFECYCLE_CODE[st.lifecycle])),
    tlv(0x81, u8(st.pin.tries)),
    tlv(0x82, u8(st.puk.tries)),
    tlv(0x83, be(st.packageSeq, 4)),
    tlv(0x84, u8(Math.max(0, st.scpFailureLimit - st.scpFailures))),
    tlv(0x85, be(st.stateCounter ?? 0, 8)),
  );
}

/** GET DATA DF23: the state counter, MACed under this channel's SCP03 session (state-counter.ts). */
function stateCounterReport(ctx: AppletContext): Uint8Array {
  const counter = ctx.card.state.stateCounter ?? 0;
  const mac = scp03ChannelOf(ctx.card, ctx.channel)?.stateCounterMac(counter);
  if (!mac) throw new CardError(SW.CONDITIONS_NOT_SATISFIED, "the state counter report needs INITIALIZE UPDATE first");
  return encodeStateCounterReport(counter, mac);
}

function keyOrigins(st: Readonly<CardState>): Uint8Array {
  const bound = st.keySets.filter((k) => k.origin !== undefined).sort((a, b) => a.kvn - b.kvn);
  return concatBytes(...bound.map((k) => tlv(TAG_KEY_ORIGIN, tlv(0x83, u8(k.kvn)), tlv(0x45, fromHex(k.origin!)))));
}

/** Key check value of an SCP03 AES key (Amendment D §7.2). */
function kcv(key: Uint8Array): Uint8Array {
  return aesEcbEncrypt(key, new Uint8Array(16).fill(0x01)).slice(0, 3);
}

function requireProprietary(cmd: CommandApdu): void {
  if ((cmd.cla & 0x80) === 0) throw new CardError(SW.CLA_NOT_SUPPORTED, "GlobalPlatform class expected");
}

function authenticated(ctx: AppletContext): boolean {
  return (ctx.secureLevel & SEC.AUTHENTICATED) !== 0;
}

export class IssuerSecurityDomain implements Applet {
  readonly name = "isd";
  readonly aid = ISD_AID;

  /** Number of applications reported in FF21 (the ISD does not see the runtime's applet list). */
  constructor(private readonly installedApplets = 1) {}

  select(_ctx: AppletContext): Uint8Array {
    // FCI (GP §11.9.3.1): AID, and in the proprietary template the maximum command data length.
    return tlv(0x6f, tlv(0x84, this.aid), tlv(0xa5, tlv(0x9f65, u8(0xff))));
  }

  process(ctx: AppletContext, cmd: CommandApdu): Uint8Array {
    const attack = matchAttackSignal(cmd);
    if (attack) {
      ctx.card.zeroize("attempt to read the card key");
      throw new CardError(SW.SECURITY_STATUS_NOT_SATISFIED, attack.description);
    }
    switch (cmd.ins) {
      case 0xca:
        return this.getData(ctx, cmd);
      case 0xd8:
        return this.putKey(ctx, cmd);
      case 0xe2:
        return this.storeData(ctx, cmd);
      case 0xf0:
        return this.setStatus(ctx, cmd);
      case 0xf2:
        return this.getStatus(ctx, cmd);
      default:
        throw new CardError(SW.INS_NOT_SUPPORTED);
    }
  }

  private getData(ctx: AppletContext, cmd: CommandApdu): Uint8Array {
    if (cmd.data.length) throw new CardError(SW.WRONG_LENGTH, "GET DATA takes no command data");
    const st = ctx.card.state;
    const tag = (cmd.p1 << 8) | cmd.p2;
    switch (tag) {
      case 0x0045:
        return tlv(0x45, fromHex(st.cardId));
      case 0x0066:
        return cardRecognitionData();
      case 0x00e0:
        return keyInformation(st);
      case 0x00c1:
        return tlv(0xc1, be(st.scpCounter, 3));
      case 0x9f7f:
        return cplc(st);
      case 0xff21:
        return extendedResources(st, this.installedApplets);
      case 0xdf20:
        return publicState(st);
      case 0xdf22:
        return keyOrigins(st);
      case TAG_STATE_COUNTER:
        return stateCounterReport(ctx);
      case 0xdf21:
        // The secret ID leaves the card only encrypted: the session must protect this very response.
        if (!authenticated(ctx) || !(ctx.secureLevel & SEC.R_ENCRYPTION)) throw new CardError(SW.SECURITY_STATUS_NOT_SATISFIED, "secret ID needs R-ENCRYPTION");
        if (!st.secretId) throw new CardError(SW.REFERENCE_DATA_NOT_USABLE);
        return tlv(0xdf21, fromHex(st.secretId));
      default:
        throw new CardError(SW.REFERENCE_NOT_FOUND, "no such data object");
    }
  }

  private putKey(ctx: AppletContext, cmd: CommandApdu): Uint8Array {
    requireProprietary(cmd);
    const need = SEC.AUTHENTICATED | SEC.C_MAC | SEC.C_DECRYPTION;
    if ((ctx.secureLevel & need) !== need) throw new CardError(SW.SECURITY_STATUS_NOT_SATISFIED, "PUT KEY needs C-MAC and C-DECRYPTION");
    const session = scp03ChannelOf(ctx.card, ctx.channel);
    const kvn = session?.keyVersion;
    const current = kvn === undefined ? undefined : ctx.card.state.keySets.find((k) => k.kvn === kvn);
    if (!current) throw new CardError(SW.SECURITY_STATUS_NOT_SATISFIED, "the session's key set is gone");
    if (cmd.p1 & 0x80) throw new CardError(SW.INCORRECT_P1P2, "multi-command PUT KEY is not supported");
    if (cmd.p2 !== 0x81) throw new CardError(SW.INCORRECT_P1P2, "PUT KEY must carry a full key set (P2 81)");
    const replace = cmd.p1 & 0x7f;
    const d = cmd.data;
    if (d.length < 1) throw new CardError(SW.WRONG_LENGTH);
    const newKvn = d[0];
    if (newKvn < 1 || newKvn > 0x7f) throw new CardError(SW.WRONG_DATA, "KVN must be 1..127");

    const stat = staticKeys(current);
    wipe(stat.enc, stat.mac);
    const dek = stat.dek;
    const keys: Uint8Array[] = [];
    const kcvs: Uint8Array[] = [];
    try {
      let o = 1;
      for (let k = 0; k < 3; k++) {
        if (o + 3 > d.length) throw new CardError(SW.WRONG_LENGTH, "key data truncated");
        const type = d[o],
          blockLen = d[o + 1],
          keyLen = d[o + 2];
        if (type !== 0x88) throw new CardError(SW.WRONG_DATA, "only AES keys (type 88)");
        if (!isAesKeyLength(keyLen) || (keys.length && keyLen !== keys[0].length)) throw new CardError(SW.WRONG_DATA, "bad AES key length");
        const cgramLen = blockLen - 1;
        if (cgramLen !== Math.ceil(keyLen / 16) * 16) throw new CardError(SW.WRONG_DATA, "key block length");
        if (o + 2 + blockLen + 1 > d.length) throw new CardError(SW.WRONG_LENGTH, "key data truncated");
        const cgram = d.subarray(o + 3, o + 2 + blockLen);
        o += 2 + blockLen;
        const kcvLen = d[o++];
        if (kcvLen !== 3 || o + 3 > d.length) throw new CardError(SW.WRONG_DATA, "KCV must be 3 bytes");
        const check = d.subarray(o, o + 3);
        o += 3;
        const plain = aesCbcDecrypt(dek, new Uint8Array(16), cgram);
        const key = plain.slice(0, keyLen);
        wipe(plain);
        const mine = kcv(key);
        if (!Buffer.from(mine).equals(Buffer.from(check))) {
          wipe(key);
          throw new CardError(SW.WRONG_DATA, "key check value mismatch");
        }
        keys.push(key);
        kcvs.push(mine);
      }
      if (o !== d.length) throw new CardError(SW.WRONG_LENGTH, "trailing bytes after the key set");

      const sets = ctx.card.state.keySets;
      if (replace !== 0 && !sets.some((k) => k.kvn === replace)) throw new CardError(SW.REFERENCE_NOT_FOUND, "no key set to replace");
      if (sets.some((k) => k.kvn === newKvn && k.kvn !== replace)) throw new CardError(SW.WRONG_DATA, "KVN already in use");
      if (replace === 0 && sets.length >= MAX_KEY_SETS) throw new CardError(SW.NOT_ENOUGH_MEMORY, "no room for another key set");
      const hex = (b: Uint8Array): string => Buffer.from(b).toString("hex");
      const entry: ScpKeySet = { kvn: newKvn, enc: hex(keys[0]), mac: hex(keys[1]), dek: hex(keys[2]) };
      ctx.card.commit((s) => {
        if (replace === 0) s.keySets.push(entry);
        else s.keySets = s.keySets.map((k) => (k.kvn === replace ? entry : k));
      });
      return concatBytes(u8(newKvn), ...kcvs);
    } finally {
      wipe(dek, ...keys);
    }
  }

  /** STORE DATA key set origin: see the header. The only data object STORE DATA takes here is DF22. */
  private storeData(ctx: AppletContext, cmd: CommandApdu): Uint8Array {
    requireProprietary(cmd);
    if (!authenticated(ctx) || !(ctx.secureLevel & SEC.C_MAC)) throw new CardError(SW.SECURITY_STATUS_NOT_SATISFIED, "STORE DATA needs a secure channel with C-MAC");
    if (cmd.p1 !== 0x90 || cmd.p2 !== 0x00) throw new CardError(SW.INCORRECT_P1P2, "STORE DATA must be one last block of BER-TLV data (P1 90, P2 00)");
    const top = parseTlvs(cmd.data);
    if (top.length !== 1 || top[0].tag !== TAG_KEY_ORIGIN) throw new CardError(SW.WRONG_DATA, "STORE DATA takes exactly one DF22 key set origin");
    const inner = parseTlvs(top[0].value);
    const kvnField = findTlv(inner, 0x83);
    const idField = findTlv(inner, 0x45);
    if (inner.length !== 2 || kvnField?.length !== 1 || !idField || idField.length < 1 || idField.length > 16)
      throw new CardError(SW.WRONG_DATA, "DF22 must hold 83 KVN (1 byte) and 45 card ID (1..16 bytes)");
    const kvn = kvnField[0];
    const origin = Buffer.from(idField).toString("hex");
    const st = ctx.card.state;
    if (origin === st.cardId) throw new CardError(SW.WRONG_DATA, "a key set of this card cannot have this card as its predecessor");
    const ks = st.keySets.find((k) => k.kvn === kvn);
    if (!ks) throw new CardError(SW.REFERENCE_NOT_FOUND, "no key set with that KVN");
    if (ks.origin === origin) return new Uint8Array(0);
    if (ks.origin !== undefined) throw new CardError(SW.CONDITIONS_NOT_SATISFIED, "the key set is already bound to another card");
    if (!st.keySets.some((k) => k.kvn !== kvn && k.origin === undefined)) throw new CardError(SW.CONDITIONS_NOT_SATISFIED, "the card must keep a key set of its own");
    ctx.card.commit((s) => {
      s.keySets = s.keySets.map((k) => (k.kvn === kvn ? { ...k, origin } : k));
    });
    return new Uint8Array(0);
  }

  private getStatus(ctx: AppletContext, cmd: CommandApdu): Uint8Array {
    return getStatusResponse(ctx, cmd);
  }

  private setStatus(ctx: AppletContext, cmd: CommandApdu): Uint8Array {
    requireProprietary(cmd);
    if (!authenticated(ctx) || !(ctx.secureLevel & SEC.C_MAC)) throw new CardError(SW.SECURITY_STATUS_NOT_SATISFIED, "SET STATUS needs a secure channel");
    if (cmd.p1 !== 0x80 || cmd.p2 !== 0x0f) throw new CardError(SW.INCORRECT_P1P2, "only ISD -> SECURED is supported");
    if (cmd.data.length) throw new CardError(SW.WRONG_LENGTH);
    if (ctx.card.state.lifecycle !== "OP_READY") throw new CardError(SW.CONDITIONS_NOT_SATISFIED, "life cycle only moves forward");
    ctx.card.commit((s) => {
      s.lifecycle = "SECURED";
    });
    return new Uint8Array(0);
  }
}

/** ISD privileges reported by GET STATUS (GP §11.1.2): Security Domain, Card Lock, Card Terminate, Card Reset, CVM Management. */
const ISD_PRIVILEGES = u8(0x9e, 0x00, 0x00);

/** GET STATUS of the ISD (see the header): the card's life cycle state. */
function getStatusResponse(ctx: AppletContext, cmd: CommandApdu): Uint8Array {
  requireProprietary(cmd);
  if (!authenticated(ctx)) throw new CardError(SW.SECURITY_STATUS_NOT_SATISFIED, "GET STATUS needs a secure channel");
  if (cmd.p1 !== 0x80) throw new CardError(SW.INCORRECT_P1P2, "GET STATUS reports the Issuer Security Domain only (P1 80)");
  if (cmd.p2 !== 0x00 && cmd.p2 !== 0x02) throw new CardError(SW.INCORRECT_P1P2, "GET STATUS: P2 00 or 02 (one entry: no next occurrence)");
  const top = parseTlvs(cmd.data);
  const aid = findTlv(top, 0x4f);
  if (top.length === 0 || top[0].tag !== 0x4f || !aid || aid.length > 16) throw new CardError(SW.WRONG_DATA, "GET STATUS: the search qualifier is 4F (an AID or its prefix)");
  if (!Buffer.from(ISD_AID.subarray(0, aid.length)).equals(Buffer.from(aid))) throw new CardError(SW.REFERENCE_NOT_FOUND, "no such application");
  const lifecycle = u8(LIFECYCLE_CODE[ctx.card.state.lifecycle]);
  if (cmd.p2 === 0x00) return concatBytes(u8(ISD_AID.length), ISD_AID, lifecycle, ISD_PRIVILEGES.subarray(0, 1));
  return tlv(0xe3, tlv(0x4f, ISD_AID), tlv(0x9f70, lifecycle), tlv(0xc5, ISD_PRIVILEGES));
}

/** The ISD instance to put first in CardRuntime's applet list. */
export const isd = new IssuerSecurityDomain();
