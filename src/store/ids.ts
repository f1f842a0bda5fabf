// Row IDs: UUID version 7 (RFC 9562 §5.7): 48 bits of Unix time in ms, then 74 random bits. Time-ordered IDs
// land at the right edge of a primary-key B-tree instead of a random page, so a commit of many inserts dirties
// few index pages (fewer WAL frames on SQLite, less page churn on PostgreSQL). They are not secrets and are not
// used where unguessability matters (API tokens and session IDs come from randomBytes).

import { randomFillSync } from "node:crypto";

const pool = Buffer.alloc(16 * 256);
let next = pool.length;
let lastMs = -1;
let seq = 0;

/** A fresh UUIDv7, lowercase hex with dashes. IDs made in one process sort in the order they were made. */
export function newId(now = Date.now()): string {
  if (next === pool.length) {
    randomFillSync(pool);
    next = 0;
  }
  const b = pool.subarray(next, next + 16);
  next += 16;
  // Monotonic (RFC 9562 method 1): a 12-bit counter in rand_a, seeded low at random in each new millisecond; in
  // the same millisecond, or when the clock steps back, the counter goes on (and carries into the time field).
  if (now > lastMs) {
    lastMs = now;
    seq = b[6] & 0x07;
  } else if (++seq > 0xfff) {
    lastMs++;
    seq = 0;
  }
  b.writeUIntBE(lastMs, 0, 6);
  b[6] = 0x70 | (seq >> 8);
  b[7] = seq & 0xff;
  b[8] = 0x80 | (b[8] & 0x3f);
  const h = b.toString("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
