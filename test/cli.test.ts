// The cardkms command as a user runs it (a child process): create, show, apdu, demo, help, and clear errors.
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { createServer, type AddressInfo, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { openCard, transportKeySet } from "../src/card/card.ts";
import { execCli, spawnCli, tempDir, type CliResult } from "./helpers.ts";
import { TEST_KMC, testKmcFile } from "./kmc.ts";

const dir = tempDir("cardkms-cli-");
const KEY = "11".repeat(32);

function cli(args: string[], env: Record<string, string> = { CARDKMS_IMAGE_KEY: KEY }): Promise<CliResult> {
  return execCli(args, { env: { ...process.env, CARDKMS_IMAGE_KEY: "", ...env } });
}

test("create, show and apdu through the CLI, with --json", { timeout: 10 * 60_000 }, async () => {
  const image = join(dir, "a.card");
  const noKmc = await cli(["card", "create", image, "--card-id", "0102030405060708"]);
  assert.equal(noKmc.code, 2, "a blank card needs the manufacturer's KMC");
  assert.match(noKmc.stderr, /--kmc-file .*CARDKMS_KMC_FILE.*--insecure-public-transport-keys/);
  const kmcFile = testKmcFile(dir);
  const created = await cli(["card", "create", image, "--card-id", "0102030405060708", "--capacity", "4096", "--kmc-file", kmcFile, "--json"]);
  assert.equal(created.code, 0, created.stderr);
  assert.deepEqual(JSON.parse(created.stdout), { image, cardId: "0102030405060708", capacity: 4096, transport: "kmc" });
  assert.ok(!created.stdout.toLowerCase().includes(Buffer.from(TEST_KMC).toString("hex")));
  const card = openCard(image, Buffer.from(KEY, "hex"));
  assert.deepEqual(card.state.keySets, [transportKeySet(TEST_KMC, "0102030405060708")], "transport keys diversified from the KMC and the card ID");
  card.close();
  const dev = await cli(["card", "create", join(dir, "dev.card"), "--json"], { CARDKMS_IMAGE_KEY: KEY, CARDKMS_INSECURE_PUBLIC_TRANSPORT_KEYS: "1" });
  assert.equal(dev.code, 0, dev.stderr);
  assert.equal(JSON.parse(dev.stdout).transport, "insecure-public-test-keys");
  const shown = await cli(["card", "show", image, "--json"]);
  assert.equal(shown.code, 0, shown.stderr);
  const info = JSON.parse(shown.stdout);
  assert.equal(info.cardId, "0102030405060708");
  assert.equal(info.lifecycle, "OP_READY");
  assert.deepEqual(info.keySets, [{ kvn: 0x30, keyLength: 16 }]);
  const apdu = await cli(["card", "apdu", image, "00A4040009A00000030800001000", "0020008000", "--json"]);
  assert.equal(apdu.code, 0, apdu.stderr);
  assert.deepEqual(
    JSON.parse(apdu.stdout).map((r: { sw: string }) => r.sw),
    ["9000", "63C3"],
  );
  const wrongKey = await cli(["card", "show", image], { CARDKMS_IMAGE_KEY: "22".repeat(32) });
  assert.equal(wrongKey.code, 1);
  assert.match(wrongKey.stderr, /wrong image key/);
  const noKey = await cli(["card", "show", image], {});
  assert.equal(noKey.code, 2);
  assert.match(noKey.stderr, /CARDKMS_IMAGE_KEY/);
  const exists = await cli(["card", "create", image, "--kmc-file", kmcFile]);
  assert.match(exists.stderr, /already exists/);
});

test("demo --json reports verified signatures; every command has --help", { timeout: 10 * 60_000 }, async () => {
  const demo = await cli(["demo", "--dir", join(dir, "demo"), "--json"], {});
  assert.equal(demo.code, 0, demo.stderr);
  const r = JSON.parse(demo.stdout);
  assert.equal(r.ok, true);
  assert.deepEqual(
    r.signatures.map((s: { verified: boolean }) => s.verified),
    [true, true],
    "the old card and, after the rotation, the new card sign",
  );
  assert.notEqual(r.oldCard.id, r.newCard.id);
  assert.equal(r.audit.ok, true);
  const cardOnly = await cli(["demo", "--card-only", "--dir", join(dir, "demo-card"), "--json"], {});
  assert.equal(cardOnly.code, 0, cardOnly.stderr);
  assert.deepEqual(
    JSON.parse(cardOnly.stdout).signatures.map((s: { verified: boolean }) => s.verified),
    [true, true],
  );
  for (const cmd of [[], ["card"], ["card", "create"], ["card", "show"], ["card", "apdu"], ["card", "attach"], ["demo"]]) {
    const h = await cli([...cmd, "--help"]);
    assert.equal(h.code, 0, `${cmd.join(" ")} --help`);
    assert.match(h.stdout, /Usage: cardkms/);
  }
});

/** A stand-in for vpcd on one address: powers the card on, asks for its ATR, and records who connected where. */
function fakeVpcd(host: string, port: number, seen: { host: string; atr: string }[]): Promise<Server> {
  const frame = (b: number) => Buffer.of(0, 1, b);
  const server = createServer((sock: Socket) => {
    sock.on("error", () => {});
    sock.once("data", (d) => seen.push({ host: sock.localAddress ?? "", atr: d.subarray(2).toString("hex") }));
    sock.write(Buffer.concat([frame(0x01), frame(0x04)])); // POWER ON, GET ATR
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => resolve(server));
  });
}

test("card attach without --host connects where the library would: the quick-ACK address pcsc-up.sh wrote, not 127.0.0.1", { timeout: 10 * 60_000 }, async () => {
  const image = join(dir, "attach.card");
  const created = await cli(["card", "create", image, "--json"], { CARDKMS_IMAGE_KEY: KEY, CARDKMS_INSECURE_PUBLIC_TRANSPORT_KEYS: "1" });
  assert.equal(created.code, 0, created.stderr);
  // As scripts/pcsc-up.sh leaves it: the quick-ACK loopback address in $CARDKMS_PCSC_DIR/vpcd-host.
  const pcscDir = tempDir("cardkms-cli-pcsc-");
  const fastHost = "127.77.0.9";
  writeFileSync(join(pcscDir, "vpcd-host"), fastHost + "\n");
  const seen: { host: string; atr: string }[] = [];
  const plain = await fakeVpcd("127.0.0.1", 0, seen);
  const port = (plain.address() as AddressInfo).port;
  const fast = await fakeVpcd(fastHost, port, seen);
  const env = { ...process.env, CARDKMS_IMAGE_KEY: KEY, CARDKMS_PCSC_DIR: pcscDir, CARDKMS_VPCD_HOST: "" };
  const child = spawnCli(["card", "attach", image, "--port", String(port), "--json"], { env });
  try {
    let out = "";
    let err = "";
    child.stderr.on("data", (d) => (err += d));
    const line = await new Promise<string>((resolve, reject) => {
      child.stdout.on("data", (d) => {
        out += d;
        if (out.includes("\n")) resolve(out.split("\n")[0]);
      });
      child.once("exit", (code) => reject(new Error(`card attach exited ${code}: ${err}`)));
    });
    assert.equal(seen.length, 1, "one connection");
    assert.equal(seen[0].host, fastHost, "the connection went to the quick-ACK address");
    assert.match(seen[0].atr, /^3b/i, "and the card answered with its ATR");
    assert.deepEqual(JSON.parse(line).vpcd, { host: fastHost, port }, "and says where it is attached");
  } finally {
    child.kill("SIGTERM");
    await new Promise((r) => (child.exitCode === null ? child.once("exit", r) : r(null)));
    plain.close();
    fast.close();
  }
  const help = await cli(["card", "attach", "--help"]);
  assert.match(help.stdout.replace(/\s+/g, " "), /--host <host> vpcd host \(default: \$CARDKMS_VPCD_HOST, else the quick-ACK loopback address/);
});
