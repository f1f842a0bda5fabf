import assert from "node:assert/strict";
import { test } from "node:test";
import { newId } from "./ids.ts";

const V7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

test("UUIDv7: version and variant bits, the time in the first 48 bits", () => {
  const at = Date.UTC(2026, 10, 21, 12, 0, 0, 123);
  const id = newId(at);
  assert.match(id, V7);
  assert.equal(parseInt(id.replace(/-/g, "").slice(0, 12), 16), at);
});

test("IDs made in one process sort in creation order and never repeat (same ms, clock stepping back)", () => {
  const ids: string[] = [];
  const t = Date.now();
  for (let i = 0; i < 5000; i++) ids.push(newId(t + Math.floor(i / 1000)));
  ids.push(newId(t - 5000)); // a clock step back stays after
  assert.equal(new Set(ids).size, ids.length);
  assert.deepEqual([...ids].sort(), ids);
  for (const id of ids) assert.match(id, V7);
});
