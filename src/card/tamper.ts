// Tamper response by signal judgment (seed 000 para 0035 and claim 19: "a means for judging whether an external
// input signal corresponds to the outputting of the symmetric key (Sk) in said memory; and a circuit which erases
// the symmetric key"). The card key never leaves the card, so no legitimate host ever asks for it: a command that
// does is an attack, registered here beforehand as data. An applet that recognises one calls
// `card.zeroize("attempt to read the card key")` and answers 6982.
//
// The registry is deliberately narrow (exact INS and P1-P2, or a GET DATA tag list naming a key-value tag) so that
// no ordinary command of any applet can match it by accident.

import type { CommandApdu } from "../protocol/apdu.ts";

export interface AttackSignal {
  /** What the command tries to do, for the terminated reason and documentation. */
  readonly description: string;
  readonly ins: number;
  /** P1-P2 values (P1 << 8 | P2) that make the command an attack; any when absent. */
  readonly p1p2?: readonly number[];
  /** Tags which, named in a 5C tag list of the command data (GET DATA odd INS), make it an attack. */
  readonly tagList?: readonly number[];
}

/** Tags that would name key values: GP key value (00E1, never defined for output) and cardkms' DF7F. */
const KEY_VALUE_TAGS = [0x00e1, 0xdf7f];

export const ATTACK_SIGNALS: readonly AttackSignal[] = [
  { description: "GET DATA for a key value (tag 00E1 / DF7F)", ins: 0xca, p1p2: [0x00e1, 0xdf7f] },
  { description: "GET DATA (odd INS) for a key value (tag 00E1 / DF7F)", ins: 0xcb, p1p2: [0x00e1, 0xdf7f] },
  { description: "GET DATA (odd INS) with a tag list naming a key value", ins: 0xcb, tagList: KEY_VALUE_TAGS },
];

/** Minimal BER tag-list walk (tags only, as in a 5C value); tolerant: returns what it could read. */
function tagsIn(list: Uint8Array): number[] {
  const out: number[] = [];
  let i = 0;
  while (i < list.length) {
    let tag = list[i++];
    if ((tag & 0x1f) === 0x1f) {
      let n = 0;
      while (i < list.length && n < 2) {
        const b = list[i++];
        tag = (tag << 8) | b;
        n++;
        if (!(b & 0x80)) break;
      }
    }
    out.push(tag);
  }
  return out;
}

/** The 5C tag lists in a command data field (top level only; malformed data yields what parsed so far). */
function tagLists(data: Uint8Array): number[] {
  const out: number[] = [];
  let i = 0;
  while (i + 1 < data.length) {
    const tag = data[i++];
    let len = data[i++];
    if (len & 0x80) {
      const n = len & 0x7f;
      if (n === 0 || n > 2 || i + n > data.length) break;
      len = 0;
      for (let k = 0; k < n; k++) len = (len << 8) | data[i++];
    }
    if (i + len > data.length) break;
    if (tag === 0x5c) out.push(...tagsIn(data.subarray(i, i + len)));
    i += len;
  }
  return out;
}

/** The registered attack signal this command matches, if any. Never throws. */
export function matchAttackSignal(cmd: Pick<CommandApdu, "ins" | "p1" | "p2" | "data">): AttackSignal | undefined {
  const p1p2 = (cmd.p1 << 8) | cmd.p2;
  for (const sig of ATTACK_SIGNALS) {
    if (sig.ins !== cmd.ins) continue;
    if (sig.p1p2 && !sig.p1p2.includes(p1p2)) continue;
    if (sig.tagList) {
      const named = tagLists(cmd.data);
      if (!named.some((t) => sig.tagList!.includes(t))) continue;
    }
    return sig;
  }
  return undefined;
}

/** True when the command asks the card to output its card key (seed 000 claim 19). */
export function isAttackSignal(cmd: Pick<CommandApdu, "ins" | "p1" | "p2" | "data">): boolean {
  return matchAttackSignal(cmd) !== undefined;
}
