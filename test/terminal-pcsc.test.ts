// The user terminal through real PC/SC middleware: the card is attached to pcscd (vpcd reader) and the terminal
// reaches it with one long-lived scriptor process (ScriptorTransport). It proves the card to the issuer over
// HTTP, loads its package, and the card signs with the delivered key — the same library as in-process.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes, verify, X509Certificate } from "node:crypto";
import { join } from "node:path";
import { createCard } from "../src/card/card.ts";
import { IssuerApiClient } from "../src/terminal/api-client.ts";
import { PivClient } from "../src/protocol/piv/client.ts";
import { relaySession, UserTerminal } from "../src/terminal/terminal.ts";
import { withAttachedCard } from "../src/transport/pcsc.ts";
import { ScriptorTransport } from "../src/transport/scriptor.ts";
import { startTestServer } from "./terminal-server.ts";
import { tempDir } from "./helpers.ts";
import { TEST_KMC } from "./kmc.ts";

const dir = tempDir("cardkms-terminal-pcsc-");

test("the user terminal over PC/SC (scriptor): card-bound auth, package load, signature", { timeout: 600_000 }, async (t) => {
  const srv = await startTestServer(dir);
  t.after(() => srv.close());
  const op = new IssuerApiClient({ server: srv.url, token: srv.operatorToken });
  const user = await op.registerUser({ commonName: "Ichiro PCSC" });
  const { card } = await op.createCard({ userId: user.id });
  const vc = createCard(join(dir, "c.card"), randomBytes(32), { kmc: TEST_KMC, cardId: new Uint8Array(Buffer.from(card.id, "hex")) });
  t.after(() => vc.close());

  await withAttachedCard(vc, async () => {
    const transport = new ScriptorTransport();
    try {
      // The card issuing machine's relay and the terminal, both through the reader.
      await relaySession(op, (a) => transport.transmit(a), await op.startPersonalisation(card.id));
      const c = await op.requestCredential(card.id, { slot: "9a", alg: "P256" });
      const terminal = await UserTerminal.open({ api: new IssuerApiClient({ server: srv.url }), transport });
      const r = await terminal.sync();
      assert.deepEqual(
        r.packages.map((p) => p.status),
        ["loaded"],
      );
      const piv = new PivClient((a) => transport.transmit(a));
      await piv.select();
      await piv.verifyPin("123456");
      const msg = randomBytes(32);
      const { signature, hash } = await piv.sign(0x9a, "P256", msg);
      assert.ok(verify(hash, msg, { key: new X509Certificate(c.certificate).publicKey, dsaEncoding: "der" }, signature));
    } finally {
      await transport.close();
    }
  });
});
