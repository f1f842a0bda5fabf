import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { consistencyProof, EMPTY_ROOT, inclusionProof, leafHash, MerkleFrontier, treeHead, verifyConsistency, verifyInclusion, type Hash } from "./merkle.ts";

const hex = (b: Uint8Array): string => Buffer.from(b).toString("hex");

// The RFC 6962 test leaves and tree heads of Certificate Transparency's reference implementation (merkle_tree_test).
const LEAVES = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"].map((h) => leafHash(Buffer.from(h, "hex")));
const ROOTS = [
  "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
  "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
  "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
  "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
  "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
  "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
  "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
  "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

test("tree heads equal the RFC 6962 reference vectors, computed whole and leaf by leaf", () => {
  assert.equal(hex(EMPTY_ROOT), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  const f = new MerkleFrontier();
  for (let n = 1; n <= 8; n++) {
    assert.equal(hex(treeHead(LEAVES, n)), ROOTS[n - 1], `MTH of ${n}`);
    f.push(LEAVES[n - 1]);
    assert.equal(hex(f.root()), ROOTS[n - 1], `frontier of ${n}`);
  }
});

test("inclusion and consistency proofs of the reference tree: the CT vectors", () => {
  // from CT's reference tests: path for leaf 0 of 8, consistency 1→8, 6→8, 2→5
  assert.deepEqual(inclusionProof(LEAVES, 0, 8).map(hex), [
    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
  ]);
  assert.deepEqual(consistencyProof(LEAVES, 1, 8).map(hex), [
    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
  ]);
  assert.deepEqual(consistencyProof(LEAVES, 6, 8).map(hex), [
    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
  ]);
  assert.deepEqual(consistencyProof(LEAVES, 2, 5).map(hex), ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e", "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]);
});

// distinct leaves (as a log's are: each entry has its own sequence number)
const leavesArb = fc.array(fc.uint8Array({ minLength: 0, maxLength: 8 }), { minLength: 1, maxLength: 70 }).map((ls) => ls.map((l, i) => leafHash(Uint8Array.of(i & 0xff, i >> 8, ...l))));

test("property: every inclusion proof verifies, and any change to leaf, index, path or root makes it fail (the size is bound by the signed checkpoint, not the proof)", () => {
  fc.assert(
    fc.property(leavesArb, fc.nat(), fc.nat(), (leaves, a, b) => {
      const size = 1 + (a % leaves.length);
      const index = b % size;
      const root = treeHead(leaves, size);
      const proof = inclusionProof(leaves, index, size);
      assert.ok(verifyInclusion(leaves[index], index, size, proof, root));
      const other: Hash = leafHash(Uint8Array.of(0xff, index & 0xff, 0xee));
      assert.ok(!verifyInclusion(other, index, size, proof, root), "another leaf");
      if (size > 1) assert.ok(!verifyInclusion(leaves[index], (index + 1) % size, size, proof, root), "another index");
      if (proof.length > 0) {
        const bad = proof.map((h, i) => (i === 0 ? leafHash(h) : h));
        assert.ok(!verifyInclusion(leaves[index], index, size, bad, root), "a changed path");
        assert.ok(!verifyInclusion(leaves[index], index, size, proof.slice(1), root), "a shortened path");
      }
      assert.ok(!verifyInclusion(leaves[index], index, size, proof, leafHash(root)), "another root");
    }),
    { numRuns: 300 },
  );
});

test("property: every consistency proof verifies; a changed, removed or reordered first-tree leaf makes it fail", () => {
  fc.assert(
    fc.property(leavesArb, fc.nat(), fc.nat(), fc.nat(), (leaves, a, b, c) => {
      const n = 1 + (a % leaves.length);
      const m = b % (n + 1);
      const proof = consistencyProof(leaves, m, n);
      const rootM = treeHead(leaves, m);
      const rootN = treeHead(leaves, n);
      assert.ok(verifyConsistency(m, n, rootM, rootN, proof), `consistency ${m} → ${n}`);
      if (m === 0 || m === n) return;
      // the log rewritten: one of the first m leaves changed, then the second tree recomputed and a proof made for it
      const i = c % m;
      const rewritten = leaves.map((l, j) => (j === i ? leafHash(l) : l));
      const forged = consistencyProof(rewritten, m, n);
      assert.ok(!verifyConsistency(m, n, rootM, treeHead(rewritten, n), forged), `leaf ${i} of ${m} rewritten`);
      // truncated and regrown: the first tree's last leaf removed
      const cut = [...leaves.slice(0, m - 1), ...leaves.slice(m)];
      if (cut.length >= n) assert.ok(!verifyConsistency(m, n, rootM, treeHead(cut, n), consistencyProof(cut, m, n)), "truncated");
      assert.ok(!verifyConsistency(m, n, rootM, rootN, proof.slice(0, -1)), "a shortened proof");
      assert.ok(!verifyConsistency(m, n, leafHash(rootM), rootN, proof), "another first root");
    }),
    { numRuns: 300 },
  );
});
