// Test-only applet and secure channel for runtime tests that must not depend on GP or PIV.
import type { Applet, SecureChannel, SecureChannelFactory } from "../src/card/applet.ts";
import { CardError, SW } from "../src/protocol/sw.ts";

/** INS 01 echoes data; INS 02 returns P1P2 × 256 bytes; INS 03 commits data as object "e0"; INS 04 reads it. */
export class EchoApplet implements Applet {
  readonly name = "echo";
  constructor(readonly aid: Uint8Array = Uint8Array.from([0xf0, 0x63, 0x6b, 0x6d, 0x73, 0x01])) {}
  select(): Uint8Array {
    return Uint8Array.of(0x6f, 0x00);
  }
  process(ctx: Parameters<Applet["process"]>[0], cmd: Parameters<Applet["process"]>[1]) {
    switch (cmd.ins) {
      case 0x01:
        return cmd.data;
      case 0x02: {
        const n = ((cmd.p1 << 8) | cmd.p2) * 256;
        return Uint8Array.from({ length: n }, (_, i) => i & 0xff);
      }
      case 0x03:
        ctx.card.commit((s) => {
          s.objects.e0 = Buffer.from(cmd.data).toString("hex");
        });
        return new Uint8Array(0);
      case 0x04:
        return new Uint8Array(Buffer.from(ctx.card.state.objects.e0 ?? "", "hex"));
      case 0x05:
        throw new Error("an applet bug");
      default:
        throw new CardError(SW.INS_NOT_SUPPORTED);
    }
  }
}

/** A secure channel that no host can open: every SM command is refused. */
export const noSecureChannel: SecureChannelFactory = (): SecureChannel => ({
  level: 0,
  authenticated: false,
  owns: (cmd) => cmd.ins === 0x50 || cmd.ins === 0x82,
  handle: () => {
    throw new CardError(SW.CONDITIONS_NOT_SATISFIED);
  },
  unwrap: () => {
    throw new CardError(SW.SECURITY_STATUS_NOT_SATISFIED);
  },
  wrap: (d) => d,
  reset: () => {},
});
