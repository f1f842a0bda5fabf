// The Merkle tree of a transparency log (RFC 9162 §2.1; the same tree as RFC 6962): leaf and node hashes, the tree
// head over the first n leaves, inclusion and consistency proofs and their verification (§2.1.3, §2.1.4). One module
// for every log the project keeps: the audit log's checkpoints (issue 15 §3) and, later, the key server's log of key
// registrations (seed 002). Pure functions over leaf hashes: no storage, no I/O.
//
//   leaf hash  SHA-256(0x00 || leaf data)
//   node hash  SHA-256(0x01 || left || right)
//   MTH({})    SHA-256("")
//   MTH(D[n])  for n > 1: NODE(MTH(D[0:k]), MTH(D[k:n])), k the largest power of two below n

import { createHash } from "node:crypto";

export type Hash = Uint8Array;

const sha256 = (...parts: Uint8Array[]): Hash => {
  const h = createHash("sha256");
  for (const p of parts) h.update(p);
  return new Uint8Array(h.digest());
};

export const EMPTY_ROOT: Hash = sha256();

export function leafHash(data: Uint8Array): Hash {
  return sha256(Uint8Array.of(0x00), data);
}

export function nodeHash(left: Hash, right: Hash): Hash {
  return sha256(Uint8Array.of(0x01), left, right);
}

export function equalHash(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
  return d === 0;
}

/** The largest power of two strictly below n (n ≥ 2). */
function split(n: number): number {
  let k = 1;
  while (k * 2 < n) k *= 2;
  return k;
}

function checkSize(n: number, what: string): void {
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`${what} must be a non-negative integer, not ${n}`);
}

/** MTH over leaves[start:end] (leaf hashes). */
function subtree(leaves: readonly Hash[], start: number, end: number): Hash {
  const n = end - start;
  if (n === 0) return EMPTY_ROOT;
  if (n === 1) return leaves[start];
  const k = split(n);
  return nodeHash(subtree(leaves, start, start + k), subtree(leaves, start + k, end));
}

/** The tree head over the first `size` leaf hashes (default all). */
export function treeHead(leaves: readonly Hash[], size = leaves.length): Hash {
  checkSize(size, "size");
  if (size > leaves.length) throw new RangeError(`a tree of ${size} leaves needs ${size} leaf hashes, not ${leaves.length}`);
  return subtree(leaves, 0, size);
}

/**
 * The tree head computed leaf by leaf with O(log n) memory: the hashes of the perfect subtrees along the right
 * edge (a compact range), for logs streamed from storage a page at a time.
 */
export class MerkleFrontier {
  /** Perfect subtree hashes, largest first; `sizes[i]` leaves under `hashes[i]`. */
  private readonly hashes: Hash[] = [];
  private readonly sizes: number[] = [];
  private count = 0;

  get size(): number {
    return this.count;
  }

  push(leaf: Hash): void {
    let h = leaf;
    let s = 1;
    while (this.sizes.length > 0 && this.sizes[this.sizes.length - 1] === s) {
      h = nodeHash(this.hashes.pop()!, h);
      s += this.sizes.pop()!;
    }
    this.hashes.push(h);
    this.sizes.push(s);
    this.count++;
  }

  root(): Hash {
    if (this.count === 0) return EMPTY_ROOT;
    let h = this.hashes[this.hashes.length - 1];
    for (let i = this.hashes.length - 2; i >= 0; i--) h = nodeHash(this.hashes[i], h);
    return h;
  }
}

/** PATH(m, D[n]) (RFC 9162 §2.1.3.1): the audit path of leaf `index` in the tree of the first `size` leaves. */
export function inclusionProof(leaves: readonly Hash[], index: number, size = leaves.length): Hash[] {
  checkSize(size, "size");
  if (!Number.isSafeInteger(index) || index < 0 || index >= size) throw new RangeError(`leaf ${index} is not in a tree of ${size}`);
  if (size > leaves.length) throw new RangeError(`a tree of ${size} leaves needs ${size} leaf hashes`);
  const path = (m: number, start: number, end: number): Hash[] => {
    const n = end - start;
    if (n === 1) return [];
    const k = split(n);
    return m < k ? [...path(m, start, start + k), subtree(leaves, start + k, end)] : [...path(m - k, start + k, end), subtree(leaves, start, start + k)];
  };
  return path(index, 0, size);
}

/** PROOF(m, D[n]) (RFC 9162 §2.1.4.1): that the tree of the first `n` leaves extends the tree of the first `m`. */
export function consistencyProof(leaves: readonly Hash[], m: number, n = leaves.length): Hash[] {
  checkSize(m, "the first tree's size");
  checkSize(n, "the second tree's size");
  if (m > n) throw new RangeError(`the first tree (${m}) is larger than the second (${n})`);
  if (n > leaves.length) throw new RangeError(`a tree of ${n} leaves needs ${n} leaf hashes`);
  if (m === 0 || m === n) return [];
  const sub = (m: number, start: number, end: number, complete: boolean): Hash[] => {
    const n = end - start;
    if (m === n) return complete ? [] : [subtree(leaves, start, end)];
    const k = split(n);
    return m <= k ? [...sub(m, start, start + k, complete), subtree(leaves, start + k, end)] : [...sub(m - k, start + k, end, false), subtree(leaves, start, start + k)];
  };
  return sub(m, 0, n, true);
}

const lsb = (x: number): boolean => x % 2 === 1;
const half = (x: number): number => Math.floor(x / 2);

/** RFC 9162 §2.1.3.2: does `proof` put `leaf` (its leaf hash) at `index` of the tree of `size` with head `root`? */
export function verifyInclusion(leaf: Hash, index: number, size: number, proof: readonly Hash[], root: Hash): boolean {
  if (!Number.isSafeInteger(index) || !Number.isSafeInteger(size) || index < 0 || index >= size) return false;
  let fn = index;
  let sn = size - 1;
  let r = leaf;
  for (const p of proof) {
    if (sn === 0) return false;
    if (lsb(fn) || fn === sn) {
      r = nodeHash(p, r);
      while (!lsb(fn) && fn !== 0) [fn, sn] = [half(fn), half(sn)];
    } else r = nodeHash(r, p);
    [fn, sn] = [half(fn), half(sn)];
  }
  return sn === 0 && equalHash(r, root);
}

/**
 * RFC 9162 §2.1.4.2: does `proof` show that the tree of `second` leaves with head `secondRoot` extends the tree of
 * `first` leaves with head `firstRoot` (the same first leaves, in order, and nothing else changed)?
 */
export function verifyConsistency(first: number, second: number, firstRoot: Hash, secondRoot: Hash, proof: readonly Hash[]): boolean {
  if (!Number.isSafeInteger(first) || !Number.isSafeInteger(second) || first < 0 || first > second) return false;
  if (first === second) return proof.length === 0 && equalHash(firstRoot, secondRoot);
  if (first === 0) return proof.length === 0; // every tree extends the empty one
  if (proof.length === 0) return false;
  const path = (first & (first - 1)) === 0 ? [firstRoot, ...proof] : [...proof];
  let fn = first - 1;
  let sn = second - 1;
  while (lsb(fn)) [fn, sn] = [half(fn), half(sn)];
  let fr = path[0];
  let sr = path[0];
  for (const c of path.slice(1)) {
    if (sn === 0) return false;
    if (lsb(fn) || fn === sn) {
      fr = nodeHash(c, fr);
      sr = nodeHash(c, sr);
      while (!lsb(fn) && fn !== 0) [fn, sn] = [half(fn), half(sn)];
    } else sr = nodeHash(sr, c);
    [fn, sn] = [half(fn), half(sn)];
  }
  return sn === 0 && equalHash(fr, firstRoot) && equalHash(sr, secondRoot);
}
