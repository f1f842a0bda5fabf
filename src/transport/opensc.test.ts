// How OpenSC 0.23 (Debian 12) meets our card through pcscd + vpcd: card identification, the PKCS#11 token, and
// the commands its drivers send on connect. Signing with loaded keys is in src/card/piv/opensc.test.ts (it
// uses withAttachedCard from ./pcsc.ts). Needs pcscd with the vpcd reader (scripts/pcsc-up.sh, run by
// withAttachedCard); fails rather than skips without it.
//
// Observed (OpenSC 0.23.0, card ATR 3B 89 80 01 80 57 "cardkms" .., unknown to OpenSC):
//  - No ATR entry or OPENSC_CONF is needed: with the default driver list, several drivers first probe with
//    SELECTs of their own AIDs (627601FF000000, A00000000101, E82B0601040181C31F0201, D233..4549442076 P2=0C)
//    and GET DATA 00 CA DF 30, all refused; then the PIV driver sends GET DATA 5C 7E (discovery object),
//    SELECT A000000308 00001000 (PIV AID without the version bytes — partial selection), GET DATA CCC 5FC107
//    and discovery again, and identifies a "Personal Identity Verification Card".
//  - It reads objects with a short Le first (61xx answers), then repeats GET DATA with the full length.
//  - pkcs11-tool -L: token "PIV_II" (manufacturer piv_II, "PKCS#15 emulated") on slot "Virtual PCD 00 00";
//    it reads CHUID 5FC102 (serial number from it), the certificate objects 5FC105/0A/0B/01, keys history
//    5FC10C, and checks the PIN status with VERIFY 00 20 00 80 without data (63Cx).
//  - pcscd leaves the card powered and the PIV applet selected between client sessions, so a later session
//    may not SELECT again.
//  - test/fixtures/opensc.conf (card_drivers = PIV-II) removes the foreign probes; nothing else changes.

import "reflect-metadata";
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { isd } from "../card/isd.ts";
import { PivApplet } from "../card/piv/applet.ts";
import { CardRuntime } from "../card/runtime.ts";
import { scp03Factory } from "../card/scp03/card-channel.ts";
import { pkcs11Tool, recordingCard, run, withAttachedCard } from "./pcsc.ts";
import { VPCD_READER } from "./vpcd.ts";

const PIV_SELECT = "00A40400";

function pivCard(): { card: CardRuntime; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), "cardkms-opensc-test-"));
  const keySet = { kvn: 0x30, enc: randomBytes(16).toString("hex"), mac: randomBytes(16).toString("hex"), dek: randomBytes(16).toString("hex") };
  const card = CardRuntime.create(join(dir, "card.img"), randomBytes(32), { applets: [isd, new PivApplet()], secureChannel: scp03Factory, keySet, durability: "none" });
  return {
    card,
    cleanup: () => {
      card.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

test("OpenSC identifies the card as PIV with its default configuration", { timeout: 10 * 60_000 }, async () => {
  const { card, cleanup } = pivCard();
  const rec = recordingCard(card);
  try {
    await withAttachedCard(rec, async () => {
      const r = await run("opensc-tool", ["-r", VPCD_READER, "-n"]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /Personal Identity Verification Card/);
      const headers = rec.log.map((l) => l.header);
      assert.ok(headers.includes(PIV_SELECT), `SELECT seen: ${headers.join(" ")}`);
      assert.ok(headers.includes("00CB3FFF"), "GET DATA seen");
      // every GET DATA of the discovery object / CCC ends in success once PIV is selected
      const afterSelect = rec.log.slice(rec.log.findIndex((l) => l.header === PIV_SELECT && l.sw === 0x9000));
      assert.ok(afterSelect.some((l) => l.header === "00CB3FFF" && l.sw === 0x9000));
    });
  } finally {
    cleanup();
  }
});

test("pkcs11-tool sees a PIV_II token in the vpcd slot; the PIV-II-only config drops foreign probes", { timeout: 10 * 60_000 }, async () => {
  const { card, cleanup } = pivCard();
  const rec = recordingCard(card);
  try {
    await withAttachedCard(rec, async () => {
      for (const pinPiv of [false, true]) {
        rec.log.length = 0;
        const slots = await pkcs11Tool(["-L"], { pinPiv });
        assert.equal(slots.code, 0, slots.stderr);
        const slot0 = slots.stdout.split(/\nSlot /)[0] + slots.stdout.split(/\nSlot /).find((s) => s.includes(VPCD_READER));
        assert.match(slot0, /token label\s+: PIV_II/);
        assert.match(slot0, /PIN initialized/);
        const foreignSelects = rec.log.filter((l) => l.header.startsWith("00A404") && l.sw !== 0x9000);
        if (pinPiv) assert.equal(foreignSelects.length, 0, "PIV-II only: no other driver probes");
        else assert.ok(foreignSelects.length > 0, "default config: other drivers probe first");
        // PIN status check without a PIN (VERIFY with no data) — never a PIN from OpenSC unprompted
        assert.ok(rec.log.some((l) => l.header === "00200080" && (l.sw & 0xfff0) === 0x63c0));
      }
      const objs = await pkcs11Tool(["-O"], { pinPiv: true });
      assert.equal(objs.code, 0, objs.stderr);
      assert.match(objs.stdout, /Card Holder Unique Identifier/);
      assert.match(objs.stdout, /Card Capability Container/);
    });
  } finally {
    cleanup();
  }
});
