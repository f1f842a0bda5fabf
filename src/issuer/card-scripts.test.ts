// Issue 15 §6: personalisation is done only when the card itself confirms SECURED. SET STATUS answers 6985 both for
// a card already SECURED (a rotation in the field) and, with no MAC on an error status word, for anything a relaying
// terminal makes up; the script now reads the card's life cycle with GET STATUS under the session's R-MAC.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { AppletContext } from "../card/applet.ts";
import type { CommandApdu } from "../protocol/apdu.ts";
import { IssuerSecurityDomain } from "../card/isd.ts";
import { PivApplet } from "../card/piv/applet.ts";
import { CardRuntime } from "../card/runtime.ts";
import { scp03Factory } from "../card/scp03/card-channel.ts";
import type { ScpKeySet } from "../card/state.ts";
import { CardError, SW } from "../protocol/sw.ts";
import { personalise } from "./card-scripts.ts";

const keySet = (kvn: number): ScpKeySet => ({ kvn, enc: randomBytes(16).toString("hex"), mac: randomBytes(16).toString("hex"), dek: randomBytes(16).toString("hex") });

/** An ISD that answers SET STATUS with 6985 and stays OP_READY: a card that says "already SECURED" and is not. */
class ClaimsSecuredIsd extends IssuerSecurityDomain {
  override process(ctx: AppletContext, cmd: CommandApdu): Uint8Array {
    if (cmd.ins === 0xf0) throw new CardError(SW.CONDITIONS_NOT_SATISFIED, "pretends to be SECURED");
    return super.process(ctx, cmd);
  }
}

function blankCard(t: { after: (fn: () => void) => void }, isd: IssuerSecurityDomain = new IssuerSecurityDomain(2)) {
  const dir = mkdtempSync(join(tmpdir(), "cardkms-scripts-"));
  const transport = keySet(0x30);
  const card = CardRuntime.create(join(dir, "card.img"), randomBytes(32), { applets: [isd, new PivApplet()], secureChannel: scp03Factory, keySet: transport, capacity: 4096 });
  t.after(() => {
    card.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return { card, transport };
}

const isSetStatus = (apdu: Uint8Array) => (apdu[0] & 0x80) !== 0 && apdu[1] === 0xf0 && apdu[2] === 0x80 && apdu[3] === 0x0f;

test("an honest card: personalised, SECURED, confirmed by GET STATUS; a card in the field (6985, SECURED) passes as before", async (t) => {
  const { card, transport } = blankCard(t);
  const sk1 = keySet(1);
  await personalise((a) => card.transmit(a), transport, sk1);
  assert.equal(card.state.lifecycle, "SECURED");
  // a rotation in place on a card in the field: SET STATUS answers 6985, GET STATUS says SECURED
  await personalise((a) => card.transmit(a), sk1, keySet(2), { keep: true });
  assert.deepEqual(card.state.keySets.map((k) => k.kvn).sort(), [1, 2]);
});

test("a card that answers SET STATUS with 6985 without being SECURED is not taken as personalised", async (t) => {
  const { card, transport } = blankCard(t, new ClaimsSecuredIsd(2));
  await assert.rejects(
    personalise((a) => card.transmit(a), transport, keySet(1)),
    /life cycle OP_READY, not SECURED/,
  );
  assert.equal(card.state.lifecycle, "OP_READY");
});

test("a relaying terminal that answers 6985 for SET STATUS without forwarding it: refused, the card is still OP_READY", async (t) => {
  const { card, transport } = blankCard(t);
  let forged = 0;
  const terminal = (apdu: Uint8Array) => {
    if (isSetStatus(apdu)) {
      forged++;
      return Uint8Array.of(0x69, 0x85); // an error status word carries no R-MAC: the host cannot tell it from the card's
    }
    return card.transmit(apdu);
  };
  await assert.rejects(personalise(terminal, transport, keySet(1)), /GET STATUS/);
  assert.equal(forged, 1);
  assert.equal(card.state.lifecycle, "OP_READY");
});
