// Host side of ISO 7816-4 framing: sends a command, follows 61xx with GET RESPONSE, retries 6Cxx with the exact
// Le, and splits long data into a command chain when the card (or reader) only takes short APDUs.

import { encodeCommand, parseResponse, type ApduCommand, type ResponseApdu } from "./apdu.ts";

import { transmitAll } from "./scp03/host.ts";

export type Transmit = (apdu: Uint8Array) => Promise<Uint8Array> | Uint8Array;

export type Command = ApduCommand;

export class ApduError extends Error {
  constructor(
    readonly sw: number,
    what: string,
  ) {
    super(`${what} failed: card answered ${sw.toString(16).toUpperCase().padStart(4, "0")}`);
    this.name = "ApduError";
  }
}

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
    const chunks = [r.data];
    while ((r.sw & 0xff00) === 0x6100) {
      r = parseResponse(await this.transmit(encodeCommand({ cla: c.cla & 0x03, ins: 0xc0, p1: 0, p2: 0, le: r.sw & 0xff || 256 })));
      chunks.push(r.data);
    }
    return { data: new Uint8Array(Buffer.concat(chunks)), sw: r.sw };
  }
}

/** Transmits and gathers 61xx with GET RESPONSE on the command's logical channel, as a terminal does. */
export function transmitFollowing(transmit: (apdu: Uint8Array) => Promise<Uint8Array> | Uint8Array, apdu: Uint8Array): Promise<Uint8Array> {
  return transmitAll(transmit, apdu, apdu[0] & 0x03);
}
