// The one way the host side talks to a card: a Transmit function (command APDU bytes in, response APDU bytes out;
// a reader, the virtual card, a relay through the user's terminal) and the one GET RESPONSE loop (ISO 7816-4
// §5.3.4: a 61xx answer says xx more bytes wait; the host fetches them with GET RESPONSE on the same logical
// channel until the card answers with another status word). ApduClient (apdu-client.ts) and the SCP03 host
// (scp03/host.ts) both use it.
//
// Never: interprets the data, or retries anything but 61xx (6Cxx is ApduClient's, as only it knows the command).

import { encodeCommand, parseResponse, type ResponseApdu } from "./apdu.ts";
import { concatBytes } from "./scp03/sm.ts";

export type Transmit = (apdu: Uint8Array) => Promise<Uint8Array> | Uint8Array;

/** A card's answer other than 9000 where 9000 was needed: names the command (`what`) and the status word. */
export class ApduError extends Error {
  constructor(
    readonly sw: number,
    what: string,
  ) {
    super(`${what} failed: card answered ${sw.toString(16).toUpperCase().padStart(4, "0")}`);
    this.name = "ApduError";
  }
}

/** Most GET RESPONSE rounds for one command (a card that keeps answering 61xx is broken or hostile). */
export const MAX_GET_RESPONSE_ROUNDS = 1024;

/** Follows `first` (the card's answer to a command on `channel`) with GET RESPONSE while it says 61xx. */
export async function gatherResponse(transmit: Transmit, first: ResponseApdu, channel: number, onTooMany: () => Error): Promise<ResponseApdu> {
  let r = first;
  const chunks: Uint8Array[] = [Uint8Array.from(r.data)];
  for (let rounds = 0; (r.sw & 0xff00) === 0x6100;) {
    if (++rounds > MAX_GET_RESPONSE_ROUNDS) throw onTooMany();
    r = parseResponse(await transmit(encodeCommand({ cla: channel & 0x03, ins: 0xc0, p1: 0, p2: 0, le: r.sw & 0xff || 256 })));
    chunks.push(Uint8Array.from(r.data));
  }
  return { data: concatBytes(...chunks), sw: r.sw };
}

const tooMany = () => new ApduError(0x6100, `GET RESPONSE (over ${MAX_GET_RESPONSE_ROUNDS} rounds)`);

/**
 * Sends one APDU and gathers a 61xx response with GET RESPONSE on `channel` (by default the command's own logical
 * channel), as a terminal does; answers the whole response APDU (data || SW1 SW2).
 */
export async function transmitAll(transmit: Transmit, apdu: Uint8Array, channel = apdu[0] & 0x03, onTooMany: () => Error = tooMany): Promise<Uint8Array> {
  const r = await gatherResponse(transmit, parseResponse(await transmit(apdu)), channel, onTooMany);
  return concatBytes(r.data, Uint8Array.of(r.sw >> 8, r.sw & 0xff));
}
