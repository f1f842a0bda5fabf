// Host side of ISO 7816-4 framing: sends a command, follows 61xx with GET RESPONSE, retries 6Cxx with the exact
// Le, and splits long data into a command chain when the card (or reader) only takes short APDUs.

import { encodeCommand, parseResponse, type ApduCommand, type ResponseApdu } from "./apdu.ts";

import { ApduError, gatherResponse, transmitAll, type Transmit } from "./transmit.ts";

export { ApduError, type Transmit } from "./transmit.ts";

export type Command = ApduCommand;

export class ApduClient {
  constructor(
    private readonly transmit: Transmit,
    /** Use extended-length APDUs instead of chaining and GET RESPONSE. */
    private readonly extended = false,
  ) {}

  /** Sends a command and returns the complete response. */
  async send(c: Command): Promise<ResponseApdu> {
    const data = c.data ?? new Uint8Array(0);
    if (!this.extended && data.length > 255) {
      for (let off = 0; off < data.length; off += 255) {
        const last = off + 255 >= data.length;
        const part = data.subarray(off, off + 255);
        const r = await this.exchange({ ...c, cla: last ? c.cla : c.cla | 0x10, data: part, le: last ? c.le : undefined });
        if (!last && r.sw !== 0x9000) return r;
        if (last) return r;
      }
    }
    return this.exchange(c);
  }

  /** Like send, but throws ApduError unless the card answers 9000. */
  async check(c: Command, what: string): Promise<Uint8Array> {
    const r = await this.send(c);
    if (r.sw !== 0x9000) throw new ApduError(r.sw, what);
    return r.data;
  }

  private async exchange(c: Command): Promise<ResponseApdu> {
    const le = c.le === undefined ? undefined : this.extended ? c.le : Math.min(c.le, 256);
    let r = parseResponse(await this.transmit(encodeCommand({ ...c, le, extended: this.extended && (le ?? 0) > 0 })));
    if ((r.sw & 0xff00) === 0x6c00) r = parseResponse(await this.transmit(encodeCommand({ ...c, le: r.sw & 0xff || 256 })));
    return gatherResponse(this.transmit, r, c.cla, () => new ApduError(r.sw, "GET RESPONSE (the card keeps answering 61xx)"));
  }
}

/** Transmits and gathers 61xx with GET RESPONSE on the command's logical channel, as a terminal does. */
export function transmitFollowing(transmit: Transmit, apdu: Uint8Array): Promise<Uint8Array> {
  return transmitAll(transmit, apdu);
}
