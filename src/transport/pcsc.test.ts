// Output parsers of the PC/SC command-line clients (pure; the live paths are in vpcd.test.ts).

import { test } from "node:test";
import assert from "node:assert/strict";
import { parseOpenscTool, parseScriptor } from "./pcsc.ts";

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex").toUpperCase();

test("parseOpenscTool: single-line, space-ending ASCII, padded multi-line dumps, no data", () => {
  const out = [
    "Sending: 00 A4 04 00 07 A0 00 00 03 08 00 00 ",
    "Received (SW1=0x90, SW2=0x00):",
    "61 03 4F 01 41 a.O.A",
    "Sending: 00 EE 00 00 03 41 42 20 ",
    "Received (SW1=0x90, SW2=0x00):",
    "41 42 20 AB ",
    "Sending: 00 CA 00 12 00 ",
    "Received (SW1=0x90, SW2=0x00):",
    "00 01 02 03 04 05 06 07 08 09 0A 0B 0C 0D 0E 0F ................",
    "41 20                                           A ",
    "Sending: 00 20 00 80 ",
    "Received (SW1=0x63, SW2=0xC2)",
    "",
  ].join("\n");
  const r = parseOpenscTool(out);
  assert.equal(r.length, 4);
  assert.equal(hex(r[0].data), "61034F0141");
  assert.equal(r[0].command, "00A4040007A0000003080000");
  assert.equal(hex(r[1].data), "414220");
  assert.equal(hex(r[2].data), "000102030405060708090A0B0C0D0E0F4120");
  assert.equal(r[3].sw, 0x63c2);
  assert.equal(r[3].data.length, 0);
});

test("parseScriptor: wrapped responses and status text", () => {
  const out = [
    "Using given card reader: Virtual PCD 00 00",
    "> 00 A4 04 00 07 A0 00 00 03 08 00 00 ",
    "< 61 03 4F 01 41 90 00 : Normal processing.",
    "> 00 CA 00 12 00 ",
    "< 00 01 02 03 04 05 06 07 08 09 0A 0B 0C 0D 0E 0F ",
    "10 11 61 02 : 0x02 bytes of response still available.",
    "> 00 B0 00 00 ",
    "< 6D 00 : Instruction code not supported or invalid.",
  ].join("\n");
  const r = parseScriptor(out);
  assert.equal(r.length, 3);
  assert.equal(hex(r[0].data), "61034F0141");
  assert.equal(r[1].sw, 0x6102);
  assert.equal(hex(r[1].data), "000102030405060708090A0B0C0D0E0F1011");
  assert.equal(r[2].sw, 0x6d00);
});
