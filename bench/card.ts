// Card benchmarks (issue: virtual smart card):
//  - piv_sign_p256: ECDSA P-256 signatures/s through GENERAL AUTHENTICATE on an in-process card (hashing on the
//    terminal side included), with Node's own crypto.sign("sha256") rate measured in the same run as the baseline.
//  - pin_verify_persisted: correct-PIN VERIFY/s, each two tear-safe commits (counter decremented before the
//    comparison, reset after), with durability "none" (OS page cache) and "fsync" (every write flushed). The card
//    has the cheapest PIN KDF cost, so this measures the commits.
//  - pin_verify_kdf_default: milliseconds per correct-PIN VERIFY at the production PIN KDF cost (scrypt N = 2^13,
//    r = 8, p = 1, src/card/pin.ts), durability "fsync": what a cardholder waits, and what each guess costs.

import { createHash, createPublicKey, generateKeyPairSync, randomBytes, sign, verify } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { encodeCommand } from "../src/protocol/apdu.ts";
import { createCard, TRANSPORT_KEY_SET } from "../src/card/card.ts";
import type { Durability } from "../src/card/eeprom.ts";
import { CHEAPEST_PIN_KDF, DEFAULT_PIN_KDF } from "../src/card/pin.ts";
import type { CardRuntime } from "../src/card/runtime.ts";
import type { PinKdf } from "../src/card/state.ts";
import { deliverOnline, personalise } from "../src/issuer/card-scripts.ts";
import { PivClient, pinBlock } from "../src/protocol/piv/client.ts";
import { tlv } from "../src/protocol/tlv.ts";

export interface BenchResult {
  name: string;
  value: number;
  unit: string;
  [extra: string]: unknown;
}

/** Runs fn repeatedly for ~ms milliseconds; returns operations per second. */
function rate(ms: number, fn: () => void): number {
  const end = performance.now() + ms;
  let n = 0;
  const t0 = performance.now();
  while (performance.now() < end) {
    for (let i = 0; i < 50; i++) fn();
    n += 50;
  }
  return n / ((performance.now() - t0) / 1000);
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function preparedCard(dir: string, durability: Durability, pinKdf: PinKdf = DEFAULT_PIN_KDF): Promise<{ card: CardRuntime; pub: ReturnType<typeof createPublicKey> }> {
  const card = createCard(join(dir, `card-${durability}-${randomBytes(4).toString("hex")}.card`), randomBytes(32), { durability, pinKdf });
  const transmit = (a: Uint8Array) => card.transmit(a);
  const sk = { kvn: 1, enc: randomBytes(16).toString("hex"), mac: randomBytes(16).toString("hex"), dek: randomBytes(16).toString("hex") };
  await personalise(transmit, TRANSPORT_KEY_SET, sk);
  const kp = generateKeyPairSync("ec", { namedCurve: "P-256" });
  await deliverOnline(transmit, sk, { keyRef: 0x9a, alg: "P256", pkcs8: new Uint8Array(kp.privateKey.export({ format: "der", type: "pkcs8" })) });
  const piv = new PivClient(transmit);
  await piv.select();
  await piv.verifyPin("123456");
  return { card, pub: kp.publicKey };
}

export async function benchCard(opts: { ms?: number; rounds?: number } = {}): Promise<BenchResult[]> {
  const ms = opts.ms ?? 1000;
  const rounds = opts.rounds ?? 3;
  const dir = mkdtempSync(join(tmpdir(), "cardkms-bench-card-"));
  const out: BenchResult[] = [];
  try {
    // --- signatures: card vs Node crypto, interleaved rounds, medians
    const { card, pub } = await preparedCard(dir, "none");
    const msg = randomBytes(64);
    const node = generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey;
    const header = { cla: 0, ins: 0x87, p1: 0x11, p2: 0x9a, le: 256 };
    // The terminal's APDU for a SHA-256 digest is a fixed template: 00 87 11 9A 26 7C 24 82 00 81 20 <digest> 00.
    const template = Buffer.from(encodeCommand({ ...header, data: tlv(0x7c, tlv(0x82), tlv(0x81, new Uint8Array(32))) }));
    const cardSign = () => {
      createHash("sha256").update(msg).digest().copy(template, 11);
      const r = card.transmit(template);
      if (r[r.length - 2] !== 0x90) throw new Error(`card refused to sign: ${Buffer.from(r.subarray(-2)).toString("hex")}`);
    };
    // Check once that what we time is a real, verifiable signature.
    const probe = card.transmit(encodeCommand({ ...header, data: tlv(0x7c, tlv(0x82), tlv(0x81, createHash("sha256").update(msg).digest())) }));
    const sig = probe.subarray(4, probe.length - 2); // 7C L 82 L sig (short forms for P-256)
    if (!verify("sha256", msg, { key: pub, dsaEncoding: "der" }, sig)) throw new Error("card signature does not verify");
    const cardRates: number[] = [];
    const nodeRates: number[] = [];
    for (let i = 0; i < rounds; i++) {
      nodeRates.push(rate(ms, () => sign("sha256", msg, node)));
      cardRates.push(rate(ms, cardSign));
    }
    const value = median(cardRates);
    const baseline = median(nodeRates);
    out.push({
      name: "piv_sign_p256",
      value: Math.round(value),
      unit: "sig/s",
      baseline: Math.round(baseline),
      ratio: Math.round((value / baseline) * 1000) / 1000,
      path: "in-process GENERAL AUTHENTICATE, SHA-256 on the terminal side",
    });
    card.close();

    // --- persisted state changes: PIN VERIFY with counter update
    const verifyApdu = encodeCommand({ cla: 0, ins: 0x20, p1: 0, p2: 0x80, data: pinBlock("123456") });
    for (const durability of ["none", "fsync"] as const) {
      const { card: c } = await preparedCard(dir, durability, CHEAPEST_PIN_KDF);
      const w0 = c.faults.writes;
      const rates: number[] = [];
      for (let i = 0; i < rounds; i++)
        rates.push(
          rate(durability === "fsync" ? ms * 2 : ms, () => {
            const r = c.transmit(verifyApdu);
            if (r[0] !== 0x90) throw new Error("VERIFY failed");
          }),
        );
      const writes = c.faults.writes - w0;
      c.close();
      out.push({
        name: `pin_verify_persisted_${durability}`,
        value: Math.round(median(rates)),
        unit: "verify/s",
        durability,
        commits_per_verify: 2,
        physical_writes: writes,
        note: durability === "fsync" ? "every commit flushed with fdatasync before the card answers" : "writes reach the OS page cache, not flushed",
      });
    }
    const { card: k } = await preparedCard(dir, "fsync");
    const times: number[] = [];
    for (let i = 0; i < 30 * rounds; i++) {
      const t0 = performance.now();
      if (k.transmit(verifyApdu)[0] !== 0x90) throw new Error("VERIFY failed");
      times.push(performance.now() - t0);
    }
    k.close();
    times.sort((a, b) => a - b);
    const at = (q: number) => Math.round(times[Math.floor(q * (times.length - 1))] * 10) / 10;
    out.push({
      name: "pin_verify_kdf_default",
      value: at(0.5),
      unit: "ms (median)",
      p90: at(0.9),
      kdf: { ...DEFAULT_PIN_KDF },
      durability: "fsync",
      note: "one scrypt and two commits per correct-PIN VERIFY",
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return out;
}
