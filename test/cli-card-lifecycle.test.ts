// Issue 15 §5: `cardkms card suspend | resume | retire | report-destroyed | state` as an operator runs them (child
// processes) against a running issuer server: the card's terminal stops syncing while the card is suspended and
// works again once it is resumed; a retired card does not come back (exit 1 naming the check); an auditor reads the
// state but moves nothing; usage errors exit 2 before anything is sent.
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import type { Role } from "../src/server/auth.ts";
import { createOperatorToken } from "../src/server/main.ts";
import { startTestServer } from "./terminal-server.ts";
import { cliJson, runCli, tempDir } from "./helpers.ts";

const dir = tempDir("cardkms-cli-lifecycle-");
const IMAGE_KEY = "44".repeat(32);

test("the card lifecycle through the CLI against a running server", { timeout: 10 * 60_000 }, async (t) => {
  const srv = await startTestServer(dir);
  t.after(() => srv.close());
  const cli = (args: string[], env: Record<string, string>) => runCli(args, { CARDKMS_IMAGE_KEY: IMAGE_KEY, ...env });
  const token = async (name: string, role: Role) => (await createOperatorToken(srv.server.store, name, [role])).token;
  const operator = { CARDKMS_SERVER: srv.url, CARDKMS_TOKEN: await token("cli-operator", "operator"), CARDKMS_KMC_FILE: srv.kmcFile };
  const auditor = { CARDKMS_SERVER: srv.url, CARDKMS_TOKEN: await token("cli-auditor", "auditor") };
  const terminal = { CARDKMS_SERVER: srv.url };

  const user = cliJson(await cli(["user", "register", "--name", "Mei Kato", "--json"], operator), "user register");
  const image = join(dir, "mei.card");
  const { cardId } = cliJson(await cli(["card", "issue", "--user", user.id, "--image", image, "--json"], operator), "card issue");
  const sync = () => cli(["terminal", "sync", "--card-image", image, "--dir", join(dir, "terminal"), "--json"], terminal);
  assert.equal((await sync()).code, 0);

  const suspended = cliJson(await cli(["card", "suspend", cardId, "--reason", "lost on the train", "--json"], operator), "card suspend");
  assert.deepEqual([suspended.status, suspended.statusChangedBy, suspended.statusReason], ["suspended", "cli-operator", "lost on the train"]);
  const refused = await sync();
  assert.equal(refused.code, 1, "the terminal cannot log the card in while it is suspended");
  const state = cliJson(await cli(["card", "state", cardId, "--json"], auditor), "card state");
  assert.deepEqual([state.status, state.statusReason], ["suspended", "lost on the train"]);
  const human = await cli(["card", "state", cardId], auditor);
  assert.match(human.stdout, new RegExp(`card ${cardId} .*: suspended since .* by cli-operator: lost on the train`));
  const byAuditor = await cli(["card", "resume", cardId, "--reason", "mine now"], auditor);
  assert.equal(byAuditor.code, 1);
  assert.match(byAuditor.stderr, /Forbidden/);

  assert.equal(cliJson(await cli(["card", "resume", cardId, "--reason", "found", "--json"], operator), "card resume").status, "active");
  assert.equal((await sync()).code, 0, "the terminal syncs again");
  assert.equal(cliJson(await cli(["card", "retire", cardId, "--reason", "renewed", "--json"], operator), "card retire").status, "retired");
  const back = await cli(["card", "resume", cardId, "--reason", "undo"], operator);
  assert.equal(back.code, 1);
  assert.match(back.stderr, /card .* is retired: resume .* does not leave retired/);
  assert.equal(cliJson(await cli(["card", "report-destroyed", cardId, "--reason", "shredded", "--json"], operator), "card report-destroyed").status, "destroyed");

  // a usage error: nothing is sent
  assert.equal((await cli(["card", "suspend", "XYZ", "--reason", "r"], operator)).code, 2, "a card ID is hex");
});
