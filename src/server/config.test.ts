import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { ConfigError, DEFAULT_CONFIG, loadConfig } from "./config.ts";
import { tempDir } from "../../test/helpers.ts";

const dir = tempDir();

test("defaults, then file, then environment", () => {
  assert.deepEqual(loadConfig({ env: {} }), DEFAULT_CONFIG);
  const f = join(dir, "c.json");
  writeFileSync(f, JSON.stringify({ listen: { port: 9000 }, database: "postgres://u@127.0.0.1/db" }));
  const c = loadConfig({ file: f, env: { CARDKMS_LISTEN_HOST: "0.0.0.0", CARDKMS_CUSTODY: "pkcs11", CARDKMS_PKCS11_MODULE: "/usr/lib/softhsm/libsofthsm2.so", CARDKMS_PKCS11_TOKEN: "t" } });
  assert.deepEqual(c.listen, { host: "0.0.0.0", port: 9000 });
  assert.equal(c.database, "postgres://u@127.0.0.1/db");
  assert.deepEqual(c.custody, { kind: "pkcs11", module: "/usr/lib/softhsm/libsofthsm2.so", tokenLabel: "t" });
});

test("every problem is reported at once with its source", () => {
  const f = join(dir, "bad.json");
  writeFileSync(f, JSON.stringify({ listen: { port: "x" }, bogus: 1 }));
  try {
    loadConfig({ file: f, env: { CARDKMS_EXPIRY_WINDOW_DAYS: "soon", CARDKMS_LOG_LEVEL: "loud" } });
    assert.fail("expected ConfigError");
  } catch (e) {
    assert.ok(e instanceof ConfigError);
    const all = e.problems.join("\n");
    assert.match(all, /CARDKMS_EXPIRY_WINDOW_DAYS=soon: not an integer/);
    assert.match(all, /\/listen\/port must be integer \(from .*bad\.json\)/);
    assert.match(all, /additional properties \(bogus\)/);
    assert.match(all, /\/logLevel must be equal to one of the allowed values \(from CARDKMS_LOG_LEVEL\)/);
  }
  writeFileSync(f, "{ nope");
  assert.throws(() => loadConfig({ file: f, env: {} }), /bad\.json: /);
  assert.throws(() => loadConfig({ env: { CARDKMS_CUSTODY: "pkcs11" } }), /must have required property 'module'/);
});

test("insecure.publicTransportKeys: off by default, on only by name (file or CARDKMS_INSECURE_PUBLIC_TRANSPORT_KEYS)", () => {
  assert.equal(loadConfig({ env: {} }).insecure.publicTransportKeys, false);
  assert.equal(loadConfig({ env: { CARDKMS_INSECURE_PUBLIC_TRANSPORT_KEYS: "1" } }).insecure.publicTransportKeys, true);
  assert.equal(loadConfig({ env: { CARDKMS_INSECURE_PUBLIC_TRANSPORT_KEYS: "false" } }).insecure.publicTransportKeys, false);
  const f = join(dir, "insecure.json");
  writeFileSync(f, JSON.stringify({ insecure: { publicTransportKeys: true } }));
  assert.equal(loadConfig({ file: f, env: {} }).insecure.publicTransportKeys, true);
  assert.throws(() => loadConfig({ env: { CARDKMS_INSECURE_PUBLIC_TRANSPORT_KEYS: "yes please" } }), /CARDKMS_INSECURE_PUBLIC_TRANSPORT_KEYS=yes please: expected 1 or true, 0 or false/);
  writeFileSync(f, JSON.stringify({ insecure: { publicTransportKeys: "on" } }));
  assert.throws(() => loadConfig({ file: f, env: {} }), /\/insecure\/publicTransportKeys must be boolean/);
});

test("issue 9: limits, metrics access and the webhook allow-list: defaults, file, environment, validated", () => {
  const d = loadConfig({ env: {} });
  assert.equal(d.metrics.access, "token", "/metrics needs an auditor token by default");
  assert.deepEqual(d.webhooks.allowAddresses, [], "no internal address is allowed by default");
  assert.equal(d.limits.rateLimitMax, 300);
  const c = loadConfig({
    env: {
      CARDKMS_RATE_LIMIT_MAX: "50",
      CARDKMS_HANDSHAKES_PER_CARD: "8",
      CARDKMS_TERMINAL_TOKENS_PER_CARD: "2",
      CARDKMS_METRICS_ACCESS: "loopback",
      CARDKMS_METRICS_PORT: "9100",
      CARDKMS_WEBHOOK_ALLOW_ADDRESSES: "127.0.0.1/32, 10.20.0.0/16,fd12::/16",
    },
  });
  assert.deepEqual([c.limits.rateLimitMax, c.limits.handshakesPerCard, c.limits.terminalTokensPerCard, c.limits.rateLimitWindowSeconds], [50, 8, 2, 60]);
  assert.deepEqual(c.metrics, { access: "loopback", host: "127.0.0.1", port: 9100 });
  assert.deepEqual(c.webhooks.allowAddresses, ["127.0.0.1/32", "10.20.0.0/16", "fd12::/16"]);
  const f = join(dir, "limits.json");
  writeFileSync(f, JSON.stringify({ limits: { handshakesPerCardClient: 2 }, metrics: { access: "loopback", host: "::1" } }));
  const fromFile = loadConfig({ file: f, env: {} });
  assert.equal(fromFile.limits.handshakesPerCardClient, 2);
  assert.equal(fromFile.limits.handshakesPerCard, 16, "the other limits keep their defaults");
  assert.equal(fromFile.metrics.host, "::1");
  try {
    loadConfig({ env: { CARDKMS_RATE_LIMIT_MAX: "0", CARDKMS_METRICS_ACCESS: "public" } });
    assert.fail("expected ConfigError");
  } catch (e) {
    assert.ok(e instanceof ConfigError);
    assert.match(e.problems.join("\n"), /\/limits\/rateLimitMax must be >= 1 \(from CARDKMS_RATE_LIMIT_MAX\)/);
    assert.match(e.problems.join("\n"), /\/metrics\/access must be equal to one of the allowed values \(from CARDKMS_METRICS_ACCESS\)/);
  }
  assert.throws(
    () => loadConfig({ env: { CARDKMS_METRICS_ACCESS: "loopback", CARDKMS_METRICS_HOST: "0.0.0.0" } }),
    /\/metrics\/host "0\.0\.0\.0": .*loopback address only .*\(from CARDKMS_METRICS_HOST\)/,
  );
  assert.throws(
    () => loadConfig({ env: { CARDKMS_WEBHOOK_ALLOW_ADDRESSES: "127.0.0.1/32,intranet" } }),
    /\/webhooks\/allowAddresses\/1 "intranet": not an IP address or CIDR range .*\(from CARDKMS_WEBHOOK_ALLOW_ADDRESSES\)/,
  );
  assert.throws(() => loadConfig({ env: { CARDKMS_WEBHOOK_ALLOW_ADDRESSES: "10.0.0.0/33" } }), /not an IP address or CIDR range/);
});
