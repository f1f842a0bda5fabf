import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { parseTlvs, tlv, concat } from "./tlv.ts";
import { CardError } from "./sw.ts";
import { h } from "../../test/helpers.ts";

test("round-trips tags of 1-3 bytes and long lengths", () => {
  fc.assert(
    fc.property(fc.constantFrom(0x53, 0x5c, 0x7f49, 0x5fc105), fc.uint8Array({ maxLength: 70000 }), (tag, value) => {
      const [t] = parseTlvs(tlv(tag, value));
      assert.equal(t.tag, tag);
      assert.equal(Buffer.compare(t.value, value), 0);
    }),
    { numRuns: 50 },
  );
  const two = parseTlvs(concat(tlv(0x80, h("11")), tlv(0x81, h("2233"))));
  assert.equal(parseTlvs(h("FF2103810100"))[0].tag, 0xff21, "GlobalPlatform FFxx tags are tags, not padding");
  assert.deepEqual(
    two.map((t) => t.tag),
    [0x80, 0x81],
  );
});

test("malformed TLV is refused with 6A80", () => {
  for (const bad of ["53", "5305AA", "5F", "5FC1", "538401020304", "5381"]) {
    assert.throws(
      () => parseTlvs(h(bad)),
      (e: unknown) => e instanceof CardError && e.sw === 0x6a80,
      bad,
    );
  }
});
