import { test } from "node:test";
import assert from "node:assert/strict";
import * as der from "./der.ts";

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

test("time: UTCTime through 2049, GeneralizedTime from 2050 (RFC 5280 §4.1.2.5)", () => {
  assert.equal(
    Buffer.from(der.time(new Date("2049-12-31T23:59:59.999Z")))
      .toString("latin1")
      .slice(2),
    "491231235959Z",
  );
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

test("assertDer: one DER element, walked through; every BER-only form is refused naming it", () => {
  const seq = (...p: Uint8Array[]) => der.sequence(...p);
  const ok = seq(
    der.smallInteger(0),
    der.oid("1.2.840.10045.2.1"),
    Uint8Array.of(1, 1, 0xff),
    Uint8Array.of(5, 0),
    der.bitString(Uint8Array.of(1, 2)),
    der.explicit(0, der.sequence()),
    Uint8Array.of(0x80, 1, 7),
  );
  der.assertDer(ok);
  const bad: [string, Uint8Array, RegExp][] = [
    ["INTEGER 00 01", seq(Uint8Array.of(2, 2, 0, 1)), /INTEGER not in minimal form/],
    ["INTEGER FF 80", seq(Uint8Array.of(2, 2, 0xff, 0x80)), /INTEGER not in minimal form/],
    ["empty INTEGER", seq(Uint8Array.of(2, 0)), /without content/],
    ["ENUMERATED 00 05", seq(Uint8Array.of(0x0a, 2, 0, 5)), /minimal/],
    ["BOOLEAN 01", seq(Uint8Array.of(1, 1, 1)), /BOOLEAN/],
    ["NULL with content", seq(Uint8Array.of(5, 1, 0)), /NULL/],
    ["BIT STRING with 8 unused bits", seq(Uint8Array.of(3, 2, 8, 0)), /unused-bits/],
    ["BIT STRING unused bits not zero", seq(Uint8Array.of(3, 2, 1, 1)), /must be zero/],
    ["OID subidentifier 80 01", seq(Uint8Array.of(6, 3, 0x2a, 0x80, 0x01)), /not minimal/],
    ["OID truncated", seq(Uint8Array.of(6, 2, 0x2a, 0x86)), /truncated/],
    ["constructed OCTET STRING", seq(Uint8Array.of(0x24, 3, 4, 1, 0)), /constructed encoding/],
    ["end-of-contents", seq(Uint8Array.of(0, 0)), /end-of-contents/],
    ["long form for a short length", Uint8Array.of(0x30, 0x81, 3, 2, 1, 0), /non-minimal length/],
    ["indefinite length", Uint8Array.of(0x30, 0x80, 2, 1, 0, 0, 0), /unsupported length/],
    ["trailing octets", der.concat([ok, Uint8Array.of(0)]), /trailing/],
    ["nested INTEGER padding deep inside", seq(seq(seq(der.explicit(2, Uint8Array.of(2, 2, 0, 0x7f))))), /INTEGER not in minimal form/],
  ];
  for (const [what, b, msg] of bad) assert.throws(() => der.assertDer(b), msg, what);
});

test("assertDer: deep nesting is refused fast, without recursion", () => {
  // 100,000 nested SEQUENCEs (what blows a recursive parser's stack), built from the inside out
  let len = 0;
  const headers: Uint8Array[] = [];
  for (let i = 0; i < 100_000; i++) {
    const h =
      len < 0x80
        ? Uint8Array.of(0x30, len)
        : len < 0x100
          ? Uint8Array.of(0x30, 0x81, len)
          : len < 0x10000
            ? Uint8Array.of(0x30, 0x82, len >> 8, len & 0xff)
            : Uint8Array.of(0x30, 0x83, len >> 16, (len >> 8) & 0xff, len & 0xff);
    headers.push(h);
    len += h.length;
  }
  const inner = der.concat(headers.reverse());
  assert.throws(() => der.assertDer(inner), /nested deeper than 32 levels/);
});
