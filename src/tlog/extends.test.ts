import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { extendsCheckpoint } from "./extends.ts";
import { leafHash, treeHead } from "./merkle.ts";

const leaves = (n: number, salt = 0) => Array.from({ length: n }, (_, i) => leafHash(Uint8Array.of(i & 0xff, i >> 8, salt)));
const cp = (ls: Uint8Array[], size = ls.length) => ({ origin: "t", size, rootHash: treeHead(ls, size), extensions: [] });

test("a log that grew extends its checkpoint; cut short, the first missing entry is named", () => {
  const log = leaves(20);
  const c = cp(log, 13);
  assert.deepEqual(extendsCheckpoint(log, c), { ok: true, size: 20, checkpointSize: 13 });
  assert.deepEqual(extendsCheckpoint(log.slice(0, 13), c), { ok: true, size: 13, checkpointSize: 13 });
  const cut = extendsCheckpoint(log.slice(0, 9), c);
  assert.equal(cut.ok, false);
  assert.deepEqual([!cut.ok && cut.problem, !cut.ok && cut.firstEntry], ["truncated", 10]);
  // replaced wholesale by a shorter consistent log: cut short too
  const replaced = extendsCheckpoint(leaves(11, 7), c);
  assert.deepEqual([!replaced.ok && replaced.problem], ["truncated"]);
});

test("property: a rewrite of any entry under the checkpoint is found; with a mirror, the entry is named", () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 60 }), fc.nat(), fc.nat(), (n, a, b) => {
      const log = leaves(n + (a % 10));
      const c = cp(log, n);
      const j = b % n;
      const rewritten = log.map((l, i) => (i >= j ? leafHash(l) : l)); // entry j+1 and the chain after it
      const r = extendsCheckpoint(rewritten, c);
      assert.equal(r.ok, false);
      assert.equal(!r.ok && r.problem, "rewritten");
      const m = extendsCheckpoint(rewritten, c, log.slice(0, n));
      assert.equal(!m.ok && m.firstEntry, j + 1);
      // rewritten and cut short: the mirror names the rewritten entry first
      const both = extendsCheckpoint(rewritten.slice(0, Math.max(j + 1, n - 1)), c, log.slice(0, n));
      assert.equal(!both.ok && both.firstEntry, j + 1);
    }),
    { numRuns: 200 },
  );
});
