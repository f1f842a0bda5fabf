// Host side of the GlobalPlatform Issuer Security Domain (GP Card Spec v2.3 §11; the card's side: src/card/isd.ts):
// the commands an issuer sends the ISD inside an SCP03 session and how it reads their answers — STORE DATA key set
// origin (DF22), GET STATUS (P2 02) and the card life cycle codes (§11.1.1).
//
// Never: a session, a key or I/O; these only build commands and parse answers.

import type { ApduCommand } from "./apdu.ts";
import { findTlv, parseTlvs, tlv } from "./tlv.ts";
import { fromHex } from "../util/bytes.ts";

/** The card life cycle states the ISD knows. */
export type Lifecycle = "OP_READY" | "SECURED" | "TERMINATED";

/** Life cycle codes (GP §11.1.1). */
export const LIFECYCLE_CODE: Readonly<Record<Lifecycle, number>> = { OP_READY: 0x01, SECURED: 0x0f, TERMINATED: 0xff };

/** Tag of the key set origin data object (STORE DATA, GET DATA). */
export const TAG_KEY_ORIGIN = 0xdf22;

const u8 = (...b: number[]): Uint8Array => Uint8Array.from(b);

/**
 * Host side: the STORE DATA that binds key set `kvn` to the predecessor card `predecessorCardId` (hex), to be
 * sent in an SCP03 session with at least C-MAC.
 */
export function keyOriginCommand(kvn: number, predecessorCardId: string): ApduCommand {
  if (!Number.isInteger(kvn) || kvn < 1 || kvn > 0x7f) throw new RangeError("KVN must be 1..127");
  if (!/^([0-9a-f]{2}){1,16}$/.test(predecessorCardId)) throw new RangeError("card ID must be 1..16 bytes of lowercase hex");
  return { cla: 0x80, ins: 0xe2, p1: 0x90, p2: 0x00, data: tlv(TAG_KEY_ORIGIN, tlv(0x83, u8(kvn)), tlv(0x45, fromHex(predecessorCardId))) };
}

/** Host side: GET STATUS of the ISD in the GP TLV format (P2 02), to send under a secure channel with R-MAC. */
export function getStatusCommand(): ApduCommand {
  return { cla: 0x80, ins: 0xf2, p1: 0x80, p2: 0x02, data: tlv(0x4f, new Uint8Array(0)), le: 256 };
}

/** Host side: the card life cycle GET STATUS (P2 02) answered, by name (a code this card does not use: its hex). */
export function cardLifecycleOf(response: Uint8Array): Lifecycle | string {
  const entry = findTlv(parseTlvs(response), 0xe3);
  const code = entry && findTlv(parseTlvs(entry), 0x9f70);
  if (!code || code.length !== 1) throw new RangeError("GET STATUS: no life cycle state in the answer");
  const name = (Object.keys(LIFECYCLE_CODE) as Lifecycle[]).find((l) => LIFECYCLE_CODE[l] === code[0]);
  return name ?? code[0].toString(16).padStart(2, "0").toUpperCase();
}
