// The card runtime: the only way into a card is transmit(APDU). It owns ISO 7816-4 framing (lengths, chaining,
// GET RESPONSE, logical channels, SELECT by AID), hands secure messaging to the channel's SecureChannel, and
// commits persistent state atomically. Nothing but PowerLoss (fault injection) ever throws out of transmit.

import { randomBytes } from "node:crypto";
import type { CommandApdu } from "../protocol/apdu.ts";
import { claChaining, claChannel, claSecureMessaging, encodeResponse, parseCommand } from "../protocol/apdu.ts";
import type { Durability, ImageSecret } from "./eeprom.ts";
import { Eeprom, PowerLoss } from "./eeprom.ts";
import type { CardState, PinKdf, ScpKeySet } from "./state.ts";
import { cloneState, usedBytes } from "./state.ts";
import { CardError, SW } from "../protocol/sw.ts";
import { DEFAULT_PIN_KDF, needsUpgrade, newReference, upgradeReferences } from "./pin.ts";
import { MAX_STATE_COUNTER } from "../protocol/state-counter.ts";

const MAX_CHANNELS = 4;
const MAX_CHAIN = 65536;

// What an applet sees of the card. Applets hold no persistent fields of their own: all persistent data lives in
// CardState and changes only through ctx.card.commit (atomic), so tearing can never split an applet's update.

export interface AppletContext {
  readonly card: CardRuntime;
  readonly channel: number;
  /**
   * GlobalPlatform security level actually applied to this command by the secure channel (0 when it arrived
   * in plain): bit 0x01 C-MAC, 0x02 C-DECRYPTION, 0x10 R-MAC, 0x20 R-ENCRYPTION, 0x80 session authenticated.
   */
  readonly secureLevel: number;
  /** Applet RAM for this channel, cleared on deselect and on reset (CLEAR_ON_DESELECT transient memory). */
  readonly transient: Map<string, unknown>;
}

export interface Applet {
  readonly name: string;
  readonly aid: Uint8Array;
  /** Answers SELECT with the FCI or application property template. */
  select(ctx: AppletContext): Uint8Array;
  /** Processes one complete (unwrapped, de-chained) command; returns response data with SW 9000 or throws CardError. */
  process(ctx: AppletContext, cmd: CommandApdu): Uint8Array | { data: Uint8Array; sw: number };
}

/** Secure-channel session of one logical channel (implemented by SCP03). */
export interface SecureChannel {
  /** GP security level in force (0 when no session is authenticated). */
  readonly level: number;
  readonly authenticated: boolean;
  /** True for commands the secure channel itself answers (INITIALIZE UPDATE, EXTERNAL AUTHENTICATE). */
  owns(cmd: CommandApdu): boolean;
  /** Answers INITIALIZE UPDATE / EXTERNAL AUTHENTICATE. */
  handle(cmd: CommandApdu): Uint8Array;
  /** Checks C-MAC and removes C-DECRYPTION from a command with the SM class bit; throws CardError and ends the session on failure. */
  unwrap(cmd: CommandApdu): CommandApdu;
  /** Adds R-MAC / R-ENCRYPTION to a response of a command that came through unwrap. */
  wrap(data: Uint8Array, sw: number): Uint8Array;
  /** Ends the session (SELECT, reset, error). */
  reset(): void;
}

export type SecureChannelFactory = (card: CardRuntime, channel: number) => SecureChannel;

export interface CardRuntimeOptions {
  applets: Applet[];
  secureChannel: SecureChannelFactory;
  durability?: Durability;
}

export interface CreateCardOptions extends CardRuntimeOptions {
  cardId?: Uint8Array;
  /** Bytes of user data the card can hold (keys, certificates, objects). Default 96 KiB. */
  capacity?: number;
  /** Initial SCP03 key set: the issuer's transport key or the card-unique key Sk. */
  keySet: ScpKeySet;
  pin?: string;
  puk?: string;
  pinTries?: number;
  pukTries?: number;
  /** Cost of the PIN and PUK KDF, kept in the image (pin.ts); default DEFAULT_PIN_KDF, the production cost. */
  pinKdf?: PinKdf;
  scpFailureLimit?: number;
}

interface Channel {
  applet: Applet | undefined;
  transient: Map<string, unknown>;
  sc: SecureChannel;
  chain: { ins: number; p1: number; p2: number; cla: number; parts: Uint8Array[]; size: number } | undefined;
  /** Response data still to be fetched with GET RESPONSE, and the status word that ends it. */
  pending: { data: Uint8Array; sw: number } | undefined;
}

export class CardRuntime {
  private st: CardState;
  private channels: (Channel | undefined)[] = [];
  /** Card RAM shared by applets (e.g. PIN verified), cleared on reset. */
  readonly ram = new Map<string, unknown>();
  private dead = false;

  private constructor(
    private readonly eeprom: Eeprom,
    state: CardState,
    private readonly opts: CardRuntimeOptions,
  ) {
    this.st = state;
    this.powerUp();
  }

  static create(path: string, secret: ImageSecret, o: CreateCardOptions): CardRuntime {
    const capacity = o.capacity ?? 96 * 1024;
    const state: CardState = {
      format: 1,
      cardId: Buffer.from(o.cardId ?? randomBytes(8)).toString("hex"),
      secretId: randomBytes(16).toString("hex"),
      lifecycle: "OP_READY",
      capacity,
      keySets: [o.keySet],
      scpFailures: 0,
      scpFailureLimit: o.scpFailureLimit ?? 10,
      scpCounter: 0,
      pin: newReference(o.pin ?? "123456", o.pinTries ?? 3, o.pinKdf ?? DEFAULT_PIN_KDF),
      puk: newReference(o.puk ?? "12345678", o.pukTries ?? 3, o.pinKdf ?? DEFAULT_PIN_KDF),
      keys: {},
      objects: {},
      packageSeq: 0,
      exportSeq: {},
      stateCounter: 0,
    };
    // The slot holds the JSON image: hex doubles user bytes; allow room for bookkeeping.
    const eeprom = Eeprom.create(path, secret, serialize(state), capacity * 2 + 32 * 1024, { durability: o.durability });
    return new CardRuntime(eeprom, state, o);
  }

  static open(path: string, secret: ImageSecret, o: CardRuntimeOptions): CardRuntime {
    const { eeprom, image } = Eeprom.open(path, secret, { durability: o.durability });
    const card = new CardRuntime(eeprom, JSON.parse(Buffer.from(image).toString("utf8")) as CardState, o);
    card.upgrade();
    return card;
  }

  /**
   * An image made before the PIN KDF or the state counter gets both on load, in one commit: its PIN and PUK hashes
   * stretched (pin.ts), its state counter started from its SCP03 sequence counter (both only ever grew).
   */
  private upgrade(): void {
    if (!needsUpgrade(this.st) && this.st.stateCounter !== undefined) return;
    try {
      this.commit(upgradeReferences);
    } catch (e) {
      // Not written (e.g. no room in the image): the old hashes still verify, and the next power-up tries again.
      if (!(e instanceof CardError)) throw e;
    }
  }

  /** The answer-to-reset: T=1, historical bytes carrying "cardkms" as card issuer's data. */
  static readonly ATR = atr();

  get atr(): Uint8Array {
    return CardRuntime.ATR;
  }

  /** Read-only view of persistent state, for applets. Never hand it out of the card. */
  get state(): Readonly<CardState> {
    return this.st;
  }

  get path(): string {
    return this.eeprom.path;
  }

  /** The EEPROM, exposed only for fault injection and write counting in tests. */
  get faults(): Pick<Eeprom, "fault" | "writes"> {
    return this.eeprom;
  }

  set durability(d: Durability) {
    this.eeprom.durability = d;
  }

  /**
   * Atomically applies `mutate` to persistent state: a copy is changed, checked against the card's capacity
   * (6A84 and nothing written when it would not fit), written through the EEPROM's commit, and only then adopted.
   * Every commit moves the state counter (state-counter.ts) one up in the same write: a changed state never
   * carries an old counter, whatever the power does.
   */
  commit(mutate: (s: CardState) => void): void {
    const counter = this.st.stateCounter ?? this.st.scpCounter;
    if (counter >= MAX_STATE_COUNTER) throw new CardError(SW.CONDITIONS_NOT_SATISFIED, "state counter exhausted");
    const next = cloneState(this.st);
    mutate(next);
    next.stateCounter = counter + 1;
    const used = usedBytes(next);
    if (used > next.capacity && used > usedBytes(this.st)) throw new CardError(SW.NOT_ENOUGH_MEMORY, "card memory full");
    try {
      this.eeprom.commit(serialize(next));
    } catch (e) {
      if (e instanceof PowerLoss) this.dead = true;
      throw e;
    }
    this.st = next;
  }

  /**
   * Tamper response (seed 000 claims 17-19, seed 001 FIG. 16): erases every secret — the card key sets, private
   * keys, PIN/PUK reference data and the secret ID — and terminates the card. Irreversible.
   */
  zeroize(reason: string): void {
    this.commit((s) => {
      s.keySets = [];
      s.keys = {};
      s.secretId = "";
      s.pin = { ...s.pin, hash: "", tries: 0 };
      s.puk = { ...s.puk, hash: "", tries: 0 };
      s.lifecycle = "TERMINATED";
      s.terminatedReason = reason;
    });
    for (const ch of this.channels) ch?.sc.reset();
  }

  /** Warm reset: all RAM is lost (sessions, PIN status, chains, selections); persistent state stays. */
  reset(): Uint8Array {
    this.powerUp();
    return this.atr;
  }

  close(): void {
    this.eeprom.close();
  }

  private powerUp(): void {
    for (const ch of this.channels) ch?.sc.reset();
    this.ram.clear();
    this.channels = [this.newChannel(0)];
  }

  private newChannel(n: number): Channel {
    const isd = this.opts.applets[0];
    return { applet: isd, transient: new Map(), sc: this.opts.secureChannel(this, n), chain: undefined, pending: undefined };
  }

  /** Sends one command APDU and returns the response APDU (data || SW1 SW2). Never throws, except PowerLoss. */
  transmit(raw: Uint8Array): Uint8Array {
    if (this.dead) throw new PowerLoss(-1);
    try {
      return this.process(raw);
    } catch (e) {
      if (e instanceof PowerLoss) {
        this.dead = true;
        throw e;
      }
      const sw = e instanceof CardError ? e.sw : SW.UNKNOWN;
      return encodeResponse({ data: new Uint8Array(0), sw });
    }
  }

  private process(raw: Uint8Array): Uint8Array {
    if (this.st.lifecycle === "TERMINATED") throw new CardError(SW.WARN_TERMINATED, "card terminated");
    const cmd0 = parseCommand(raw);
    // FF is invalid and 20-3F reserved (ISO 7816-4 §5.4.1)
    if (cmd0.cla === 0xff || (cmd0.cla & 0xe0) === 0x20) throw new CardError(SW.CLA_NOT_SUPPORTED, "invalid or reserved class");
    const chNo = claChannel(cmd0.cla);
    if (chNo >= MAX_CHANNELS) throw new CardError(SW.LOGICAL_CHANNEL_NOT_SUPPORTED);
    const ch = this.channels[chNo];
    if (!ch) throw new CardError(SW.LOGICAL_CHANNEL_NOT_SUPPORTED, `channel ${chNo} is not open`);
    const interindustry = (cmd0.cla & 0x80) === 0;

    // GET RESPONSE: next chunk of a long response (ISO 7816-4 §7.6.1)
    if (interindustry && cmd0.ins === 0xc0) {
      if (!ch.pending) throw new CardError(SW.CONDITIONS_NOT_SATISFIED, "no response data pending");
      if (cmd0.p1 !== 0 || cmd0.p2 !== 0) throw new CardError(SW.INCORRECT_P1P2);
      return this.deliver(ch, ch.pending.data, ch.pending.sw, cmd0.le ?? 256, cmd0.extended);
    }
    ch.pending = undefined;

    if (interindustry && cmd0.ins === 0x70 && !claSecureMessaging(cmd0.cla)) return this.manageChannel(ch, chNo, cmd0);

    if (interindustry && cmd0.ins === 0xa4 && !claSecureMessaging(cmd0.cla)) {
      ch.chain = undefined;
      if (claChaining(cmd0.cla)) throw new CardError(SW.CHAINING_NOT_SUPPORTED, "SELECT cannot be chained");
      if (cmd0.p1 !== 0x04) throw new CardError(SW.INCORRECT_P1P2, "only selection by AID");
      return this.select(ch, chNo, cmd0);
    }

    // Secure messaging (GP SCP03): session set-up commands, then unwrap of protected commands.
    if (!interindustry && ch.sc.owns(cmd0)) {
      ch.chain = undefined;
      return this.deliver(ch, ch.sc.handle(cmd0), SW.OK, cmd0.le ?? 256, cmd0.extended);
    }
    let cmd = cmd0;
    let level = 0;
    if (claSecureMessaging(cmd0.cla)) {
      if (!ch.sc.authenticated) throw new CardError(SW.SECURITY_STATUS_NOT_SATISFIED, "no secure channel session");
      cmd = ch.sc.unwrap(cmd0); // throws 6988/6982 and ends the session on a bad MAC
      level = ch.sc.level;
    }
    const wrap = (data: Uint8Array, sw: number): Uint8Array => {
      const out = level ? ch.sc.wrap(data, sw) : data;
      return this.deliver(ch, out, sw, cmd.le ?? 256, cmd.extended);
    };

    // Command chaining (ISO 7816-4 §5.3.3): gather the parts, each unwrapped on its own.
    if (ch.chain && (ch.chain.ins !== cmd.ins || ch.chain.p1 !== cmd.p1 || ch.chain.p2 !== cmd.p2 || (ch.chain.cla & 0xe3) !== (cmd.cla & 0xe3))) {
      ch.chain = undefined;
      throw new CardError(SW.LAST_COMMAND_OF_CHAIN_EXPECTED, "chain interrupted by another command");
    }
    if (claChaining(cmd.cla)) {
      const chain = (ch.chain ??= { ins: cmd.ins, p1: cmd.p1, p2: cmd.p2, cla: cmd.cla, parts: [], size: 0 });
      chain.size += cmd.data.length;
      if (chain.size > MAX_CHAIN) {
        ch.chain = undefined;
        throw new CardError(SW.WRONG_LENGTH, "chained command too long");
      }
      chain.parts.push(Uint8Array.from(cmd.data));
      return wrap(new Uint8Array(0), SW.OK);
    }
    if (ch.chain) {
      const parts = [...ch.chain.parts, cmd.data];
      ch.chain = undefined;
      const data = Buffer.concat(parts);
      if (data.length > MAX_CHAIN) throw new CardError(SW.WRONG_LENGTH, "chained command too long");
      cmd = { ...cmd, data: new Uint8Array(data) };
    }

    if (!ch.applet) throw new CardError(SW.CONDITIONS_NOT_SATISFIED, "no application selected");
    const ctx: AppletContext = { card: this, channel: chNo, secureLevel: level, transient: ch.transient };
    let data: Uint8Array;
    let sw: number = SW.OK;
    try {
      const r = ch.applet.process(ctx, { ...cmd, cla: cmd.cla & ~0x1c });
      if (r instanceof Uint8Array) data = r;
      else ({ data, sw } = r);
    } catch (e) {
      // Errors are still answered under the secure channel so the host can check the R-MAC.
      if (e instanceof CardError && level) return wrap(new Uint8Array(0), e.sw);
      throw e;
    }
    return wrap(data, sw);
  }

  /** Returns at most `le` bytes now; the rest waits for GET RESPONSE behind SW 61xx. */
  private deliver(ch: Channel, data: Uint8Array, sw: number, le: number, extended: boolean): Uint8Array {
    const max = extended ? le : Math.min(le, 256);
    if (data.length <= max) {
      ch.pending = undefined;
      return encodeResponse({ data, sw });
    }
    const rest = data.subarray(max);
    ch.pending = { data: Uint8Array.from(rest), sw };
    return encodeResponse({ data: data.subarray(0, max), sw: SW.BYTES_REMAINING | (rest.length >= 256 ? 0 : rest.length) });
  }

  private select(ch: Channel, chNo: number, cmd: CommandApdu): Uint8Array {
    if ((cmd.p2 & 0xf3) !== 0x00) throw new CardError(SW.INCORRECT_P1P2, "only first-or-only occurrence");
    // An empty AID selects the Issuer Security Domain (GP Card Spec v2.3 §11.9.2.3).
    if (cmd.data.length !== 0 && (cmd.data.length < 5 || cmd.data.length > 16)) throw new CardError(SW.WRONG_DATA, "AID must be 5 to 16 bytes");
    const aid = Buffer.from(cmd.data);
    // Partial AID selection: the given bytes may be a prefix of the applet's AID.
    const applet = aid.length === 0 ? this.opts.applets[0] : this.opts.applets.find((a) => Buffer.from(a.aid).subarray(0, aid.length).equals(aid));
    if (!applet) throw new CardError(SW.FILE_NOT_FOUND, "no application with that AID");
    ch.sc.reset();
    ch.transient.clear();
    ch.applet = applet;
    const ctx: AppletContext = { card: this, channel: chNo, secureLevel: 0, transient: ch.transient };
    const fci = applet.select(ctx);
    return this.deliver(ch, (cmd.p2 & 0x0c) === 0x0c ? new Uint8Array(0) : fci, SW.OK, cmd.le ?? 256, cmd.extended);
  }

  /** MANAGE CHANNEL open/close (ISO 7816-4 §7.1.2). A new channel starts with the issuer security domain selected. */
  private manageChannel(_ch: Channel, chNo: number, cmd: CommandApdu): Uint8Array {
    if (cmd.p1 === 0x00) {
      let n = cmd.p2;
      if (n === 0) {
        n = this.channels.findIndex((c, i) => i > 0 && !c);
        if (n < 0) n = this.channels.length;
        if (n >= MAX_CHANNELS) throw new CardError(SW.FUNC_NOT_SUPPORTED, "no free logical channel");
        if (cmd.le === undefined) throw new CardError(SW.WRONG_LENGTH, "Le expected for channel number");
      } else if (n >= MAX_CHANNELS || this.channels[n]) throw new CardError(SW.INCORRECT_P1P2, "channel unavailable");
      this.channels[n] = this.newChannel(n);
      return encodeResponse({ data: cmd.p2 === 0 ? Uint8Array.of(n) : new Uint8Array(0), sw: SW.OK });
    }
    if (cmd.p1 === 0x80) {
      const n = cmd.p2 === 0 ? chNo : cmd.p2;
      if (n === 0) throw new CardError(SW.INCORRECT_P1P2, "channel 0 cannot be closed");
      if (!this.channels[n]) throw new CardError(SW.INCORRECT_P1P2, "channel not open");
      this.channels[n]!.sc.reset();
      this.channels[n] = undefined;
      return encodeResponse({ data: new Uint8Array(0), sw: SW.OK });
    }
    throw new CardError(SW.INCORRECT_P1P2);
  }
}

function serialize(s: CardState): Uint8Array {
  return Buffer.from(JSON.stringify(s), "utf8");
}

function atr(): Uint8Array {
  const hist = Buffer.concat([Buffer.from([0x80, 0x57]), Buffer.from("cardkms")]);
  const body = Buffer.concat([Buffer.from([0x80 | hist.length, 0x80, 0x01]), hist]);
  let tck = 0;
  for (const b of body) tck ^= b;
  return new Uint8Array(Buffer.concat([Buffer.from([0x3b]), body, Buffer.from([tck])]));
}
