// A card's public state, read the only way there is: through APDUs (ISD GET DATA, PIV GET DATA).

import { X509Certificate } from "node:crypto";
import { ISD_AID } from "./scp03/sm.ts";
import { findTlv, parseTlvs } from "./tlv.ts";
import { ApduClient, type Transmit } from "./apdu-client.ts";
import { PivClient, SLOT } from "./piv/client.ts";

const LIFECYCLE: Record<number, string> = { 0x01: "OP_READY", 0x07: "INITIALIZED", 0x0f: "SECURED", 0xff: "TERMINATED" };

export interface CardInfo {
  cardId: string;
  lifecycle: string;
  pinTriesLeft: number;
  pukTriesLeft: number;
  packageSeq: number;
  scpTriesLeft: number;
  /** Monotonic count of the card's state changes (src/protocol/state-counter.ts); 0 from a card that does not report it. */
  stateCounter: number;
  freeBytes: number;
  keySets: { kvn: number; keyLength: number }[];
  certificates: { slot: string; subject: string; issuer: string; notAfter: string }[];
}

const num = (b: Uint8Array | undefined): number => (b ? b.reduce((n, x) => n * 256 + x, 0) : 0);

/** Reads the public state; a terminated card answers 6285 to everything and is reported as such. */
export async function readCardInfo(transmit: Transmit): Promise<CardInfo | { lifecycle: "TERMINATED" }> {
  const apdu = new ApduClient(transmit);
  const sel = await apdu.send({ cla: 0, ins: 0xa4, p1: 4, p2: 0, data: ISD_AID, le: 256 });
  if (sel.sw === 0x6285) return { lifecycle: "TERMINATED" };
  const get = (tag: number, what: string) => apdu.check({ cla: 0x80, ins: 0xca, p1: tag >> 8, p2: tag & 0xff, le: 256 }, `GET DATA ${what}`);
  const cardId = Buffer.from(findTlv(await get(0x0045, "card ID"), 0x45) ?? []).toString("hex");
  const st = parseTlvs(findTlv(await get(0xdf20, "state"), 0xdf20) ?? new Uint8Array(0));
  const res = parseTlvs(findTlv(await get(0xff21, "resources"), 0xff21) ?? new Uint8Array(0));
  const keyInfo = parseTlvs(findTlv(await get(0x00e0, "key information"), 0xe0) ?? new Uint8Array(0));
  const keySets = new Map<number, number>();
  for (const t of keyInfo) if (t.tag === 0xc0 && t.value.length >= 4) keySets.set(t.value[1], t.value[3]);

  const piv = new PivClient(transmit);
  await piv.select();
  const certificates: CardInfo["certificates"] = [];
  for (const [name, ref] of Object.entries(SLOT)) {
    const der = await piv.readCertificate(ref);
    if (!der) continue;
    const c = new X509Certificate(der);
    certificates.push({ slot: `${ref.toString(16)} (${name})`, subject: c.subject.replace(/\n/g, ", "), issuer: c.issuer.replace(/\n/g, ", "), notAfter: c.validTo });
  }
  return {
    cardId,
    lifecycle: LIFECYCLE[num(findTlv(st, 0x80))] ?? "UNKNOWN",
    pinTriesLeft: num(findTlv(st, 0x81)),
    pukTriesLeft: num(findTlv(st, 0x82)),
    packageSeq: num(findTlv(st, 0x83)),
    scpTriesLeft: num(findTlv(st, 0x84)),
    stateCounter: num(findTlv(st, 0x85)),
    freeBytes: num(findTlv(res, 0x82)),
    keySets: [...keySets].map(([kvn, keyLength]) => ({ kvn, keyLength })),
    certificates,
  };
}
