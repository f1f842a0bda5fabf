// Migration 0009: "never certified before" keyed on the canonical encoding of a key (issue 17 item 4).
//
// From now on the CA refuses any SubjectPublicKeyInfo that is not node:crypto's own DER encoding of its key, and
// keys ca_certified_keys by the SHA-256 of that encoding (src/ca/spki.ts). Rows written before hold the hash of the
// SPKI as it was given. For keys from custody and from ordinary CSRs (openssl, the key generation device) that is
// the same hash — they were always canonical — but a key once submitted in a crafted encoding (a modulus written
// 00 00‖n, an exponent written 00 01 00 01, a long-form length) was claimed under the hash of those bytes only, and
// its canonical encoding could be certified once more. This migration reads every issued certificate's key,
// re-encodes it with node:crypto, and where the hash differs adds the canonical hash to ca_certified_keys (first
// serial: that certificate), so such a key counts as certified in every encoding. ca_issued_certificates keeps the
// hash of what was certified. Certificates whose key node:crypto cannot read (e.g. a point off the curve) are left
// as they are: no encoding of such a key is accepted any more.
//
// Self-contained on purpose (node:crypto and a minimal DER walk, no project code): a migration never changes.
// P-256 and P-384 keys in the one DER form — almost every row — are recognised by their bytes without decoding.
// The keygen registry (keygen_public_keys) needs nothing: every key in it came from custody, whose SPKIs are
// node:crypto's own encoding.

import { createHash, createPublicKey } from "node:crypto";
import type { Kysely, Migration } from "kysely";
import type { Engine } from "../db.ts";

interface Row {
  ca_id: string;
  serial: string;
  public_key_sha256: string;
  der: Uint8Array;
}

type Tables = {
  ca_issued_certificates: Row;
  ca_certified_keys: { ca_id: string; public_key_sha256: string; first_serial: string };
};

/** SPKI DER prefixes of P-256 / P-384 keys with an uncompressed point, and their whole lengths. */
const EC_FORMS: [Buffer, number][] = [
  [Buffer.from("3059301306072a8648ce3d020106082a8648ce3d03010703420004", "hex"), 91],
  [Buffer.from("3076301006072a8648ce3d020106052b8104002203620004", "hex"), 120],
];

/** [content start, content end] of the TLV at `p` (definite lengths only), or undefined. */
function tlv(b: Uint8Array, p: number, limit: number): [number, number] | undefined {
  if (p + 2 > limit) return undefined;
  let len = b[p + 1];
  let q = p + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 4 || q + n > limit) return undefined;
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + b[q++];
  }
  return q + len <= limit ? [q, q + len] : undefined;
}

/** The SubjectPublicKeyInfo bytes of a DER certificate: the 7th element of the TBSCertificate (6th without a version). */
function spkiOf(cert: Uint8Array): Uint8Array | undefined {
  const top = tlv(cert, 0, cert.length);
  const tbs = top && tlv(cert, top[0], top[1]);
  if (!tbs) return undefined;
  let p = tbs[0];
  for (let i = cert[p] === 0xa0 ? 6 : 5; i > 0; i--) {
    const t = tlv(cert, p, tbs[1]);
    if (!t) return undefined;
    p = t[1];
  }
  const spki = tlv(cert, p, tbs[1]);
  return spki && cert[p] === 0x30 ? cert.subarray(p, spki[1]) : undefined;
}

function canonicalSha256(spki: Uint8Array): string | undefined {
  const b = Buffer.from(spki.buffer, spki.byteOffset, spki.byteLength);
  if (EC_FORMS.some(([prefix, length]) => b.length === length && b.subarray(0, prefix.length).equals(prefix))) return createHash("sha256").update(b).digest("hex");
  try {
    return createHash("sha256").update(createPublicKey({ key: b, format: "der", type: "spki" }).export({ type: "spki", format: "der" })).digest("hex");
  } catch {
    return undefined;
  }
}

export function canonicalKeyHashes(_engine: Engine): Migration {
  return {
    async up(raw: Kysely<unknown>): Promise<void> {
      const db = raw as unknown as Kysely<Tables>;
      let after: [string, string] | undefined;
      for (;;) {
        let q = db.selectFrom("ca_issued_certificates").select(["ca_id", "serial", "public_key_sha256", "der"]);
        if (after) {
          const [caId, serial] = after;
          q = q.where((eb) => eb.or([eb("ca_id", ">", caId), eb.and([eb("ca_id", "=", caId), eb("serial", ">", serial)])]));
        }
        const rows = await q.orderBy("ca_id").orderBy("serial").limit(1000).execute();
        if (rows.length === 0) return;
        for (const r of rows) {
          const spki = spkiOf(new Uint8Array(r.der));
          const canonical = spki && canonicalSha256(spki);
          if (!canonical || canonical === r.public_key_sha256) continue;
          await db
            .insertInto("ca_certified_keys")
            .values({ ca_id: r.ca_id, public_key_sha256: canonical, first_serial: r.serial })
            .onConflict((oc) => oc.columns(["ca_id", "public_key_sha256"]).doNothing())
            .execute();
        }
        const last = rows[rows.length - 1];
        after = [last.ca_id, last.serial];
      }
    },
    // The added claims are true statements about certified keys: nothing to undo.
    async down(): Promise<void> {},
  };
}
