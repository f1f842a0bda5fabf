// What an applet sees of the card. Applets hold no persistent fields of their own: all persistent data lives in
// CardState and changes only through ctx.card.commit (atomic), so tearing can never split an applet's update.

import type { CommandApdu } from "./apdu.ts";
import type { CardRuntime } from "./runtime.ts";

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
