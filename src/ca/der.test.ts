import { test } from "node:test";
import assert from "node:assert/strict";
import * as der from "./der.ts";

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

test("time: UTCTime through 2049, GeneralizedTime from 2050 (RFC 5280 §4.1.2.5)", () => {
  assert.equal(Buffer.from(der.time(new Date("2049-12-31T23:59:59.999Z"))).toString("latin1").slice(2), "491231235959Z");
  assert.equal(der.time(new Date("2049-12-31T23:59:59Z"))[0], der.TAG.UTC_TIME);
  const g = der.time(new Date("2050-01-01T00:00:00Z"));
  assert.equal(g[0], der.TAG.GENERALIZED_TIME);
  assert.equal(Buffer.from(g).toString("latin1").slice(2), "20500101000000Z");
});

test("integers are minimal and positive", () => {
  assert.equal(hex(der.unsignedInteger(Uint8Array.of(0, 0, 0x7f))), "02017f");
  assert.equal(hex(der.unsignedInteger(Uint8Array.of(0x80))), "02020080");
  assert.equal(hex(der.smallInteger(0)), "020100");
  assert.equal(hex(der.smallInteger(256)), "02020100");
});

test("OIDs encode and decode (X.690 §8.19)", () => {
  assert.equal(hex(der.oid("1.2.840.113549.1.1.11")), "06092a864886f70d01010b");
  assert.equal(hex(der.oid("2.5.29.14")), "0603551d0e");
  assert.equal(der.oidToString(der.oid("1.3.6.1.4.1.311.20.2.2").subarray(2)), "1.3.6.1.4.1.311.20.2.2");
  assert.equal(der.oidToString(der.oid("2.999.3").subarray(2)), "2.999.3");
  assert.throws(() => der.oid("1.40"), /bad OID/);
});

test("long lengths round-trip and the reader refuses overruns and non-minimal lengths", () => {
  const big = der.octetString(new Uint8Array(300));
  assert.equal(hex(big.subarray(0, 4)), "0482012c");
  const t = der.readOnly(big, der.TAG.OCTET_STRING, "x");
  assert.equal(t.end - t.start, 300);
  assert.throws(() => der.readTlv(big.subarray(0, 100), 0), /overruns/);
  assert.throws(() => der.readTlv(Uint8Array.of(0x04, 0x81, 0x05, 1, 2, 3, 4, 5), 0), /non-minimal/);
  assert.throws(() => der.readTlv(Uint8Array.of(0x30, 0x80, 0, 0), 0), /unsupported length/);
});
