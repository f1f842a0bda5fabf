import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { encodeCommand, parseCommand } from "./apdu.ts";
import { CardError, SW } from "./sw.ts";
import { h } from "../../test/helpers.ts";

test("parses the seven ISO 7816-4 cases", () => {
  assert.deepEqual(parseCommand(h("00A40400")).le, undefined); // case 1
  assert.equal(parseCommand(h("00CA006600")).le, 256); // case 2S, Le 00 = 256
  const c3 = parseCommand(h("00A4040003A00000"));
  assert.deepEqual([...c3.data], [0xa0, 0, 0]);
  assert.equal(c3.le, undefined);
  const c4 = parseCommand(h("00A4040003A0000010"));
  assert.equal(c4.le, 0x10);
  assert.equal(parseCommand(h("00CB3FFF000000")).le, 65536); // 2E
  const c3e = parseCommand(h("00DB3FFF000003010203"));
  assert.equal(c3e.extended, true);
  assert.equal(c3e.data.length, 3);
  const c4e = parseCommand(h("00DB3FFF0000030102030100"));
  assert.equal(c4e.le, 256);
});

test("refuses malformed lengths with 6700", () => {
  for (const bad of ["00", "00A404", "00A4040005A000", "00A4040002A0000000", "00DB3FFF0000", "00DB3FFF0000000102", "00DB3FFF00000401"]) {
    assert.throws(
      () => parseCommand(h(bad)),
      (e: unknown) => e instanceof CardError && e.sw === SW.WRONG_LENGTH,
      bad,
    );
  }
});

test("encode/parse round trip for every length combination", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 600 }), fc.option(fc.integer({ min: 1, max: 65536 }), { nil: undefined }), fc.boolean(), (data, le, forceExt) => {
      const raw = encodeCommand({ cla: 0, ins: 0xdb, p1: 0x3f, p2: 0xff, data, le, extended: forceExt });
      const c = parseCommand(raw);
      assert.deepEqual([...c.data], [...data]);
      assert.equal(c.le, le);
    }),
  );
});
