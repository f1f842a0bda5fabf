import { test } from "node:test";
import assert from "node:assert/strict";
import { parseTlvs, findTlv } from "../tlv.ts";
import { applicationPropertyTemplate, buildCcc, buildChuid, cardGuid, discoveryObject, encodeFascn, NON_FEDERAL_FASCN } from "./objects.ts";

const hex = (b: Uint8Array): string => Buffer.from(b).toString("hex");

test("FASC-N encoding matches the well-known non-federal value (9999 9999 999999 0 1 0000000000 3 0000 1)", () => {
  // The value YubiKey PIV tooling writes as its default CHUID FASC-N.
  assert.equal(hex(encodeFascn(NON_FEDERAL_FASCN)), "d4e739da739ced39ce739d836858210842108421c84210c3eb");
  assert.throws(() => encodeFascn({ ...NON_FEDERAL_FASCN, agencyCode: "99A9" }), RangeError);
});

test("CHUID: FASC-N, card-derived GUID, expiry five years on, empty signature, in that order", () => {
  const chuid = buildChuid("0102030405060708", new Date(Date.UTC(2024, 1, 29)));
  const [outer] = parseTlvs(chuid);
  assert.equal(outer.tag, 0x53);
  const inner = parseTlvs(outer.value);
  assert.deepEqual(
    inner.map((t) => t.tag),
    [0x30, 0x34, 0x35, 0x3e, 0xfe],
  );
  assert.equal(inner[0].value.length, 25);
  assert.deepEqual(inner[1].value, cardGuid("0102030405060708"));
  assert.equal(Buffer.from(inner[2].value).toString(), "20290301"); // 29 Feb 2029 does not exist
  assert.equal(inner[3].value.length, 0);
  assert.notDeepEqual(cardGuid("0102030405060708"), cardGuid("0102030405060709"));
  const g = cardGuid("0102030405060708");
  assert.equal(g[6] >> 4, 8);
  assert.equal(g[8] >> 6, 2);
});

test("CCC carries the card identifier and the SP 800-73-4 version numbers", () => {
  const [outer] = parseTlvs(buildCcc("0102030405060708"));
  const inner = parseTlvs(outer.value);
  assert.deepEqual(
    inner.map((t) => t.tag),
    [0xf0, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xfa, 0xfb, 0xfc, 0xfd, 0xfe],
  );
  assert.equal(hex(inner[0].value).slice(0, 14), "a000000116ff02");
  assert.equal(inner[0].value.length, 21);
  assert.equal(hex(findTlv(inner, 0xf1)!), "21");
  assert.equal(hex(findTlv(inner, 0xf5)!), "10");
});

test("Discovery Object and Application Property Template bytes", () => {
  assert.equal(hex(discoveryObject()), "7e124f0ba0000003080000100001005f2f024000");
  assert.equal(
    hex(applicationPropertyTemplate([0x07, 0x11])),
    "61" + "28" + "4f06000010000100" + "79074f05a000000308" + "500b" + Buffer.from("cardkms PIV").toString("hex") + "ac08800107800111" + "0600",
  );
});
