// PIV data objects (NIST SP 800-73-4 Part 1 §3.1, Table 3; Part 2 §3.1.1) and the identifiers the applet uses:
// the application's AID and property template, key references and their certificate objects, CHUID, CCC and
// the Discovery Object. Everything here is pure: building and recognising bytes, no card state changes.

import { createHash } from "node:crypto";
import { ALG_BY_ID, ALG_ID } from "../package.ts";
import { concat, tlv } from "../tlv.ts";

/** PIV Card Application AID (SP 800-73-4 Part 1 §2.2): NIST RID A0 00 00 03 08, PIX 00 00 10 00 01 00. */
export const PIV_AID = Uint8Array.of(0xa0, 0x00, 0x00, 0x03, 0x08, 0x00, 0x00, 0x10, 0x00, 0x01, 0x00);
export const NIST_RID = PIV_AID.subarray(0, 5);
export const PIV_PIX = PIV_AID.subarray(5);
export const PIV_LABEL = "cardkms PIV";

/** Cryptographic algorithm identifiers (SP 800-78-4 Table 6-2) of the asymmetric keys the card holds. */
export { ALG_BY_ID, ALG_ID };
/** AES-128 (SP 800-78-4 Table 6-2), the card management key algorithm. */
export const ALG_AES128 = 0x08;

/** Key references (SP 800-73-4 Part 1 Table 4b) with the tag of their certificate object (Table 3). */
export const KEY_CERT_TAGS: ReadonlyMap<number, number> = new Map<number, number>([
  [0x9a, 0x5fc105], // PIV Authentication
  [0x9c, 0x5fc10a], // Digital Signature
  [0x9d, 0x5fc10b], // Key Management
  [0x9e, 0x5fc101], // Card Authentication
  // Retired Key Management keys 82..95 -> 5FC10D..5FC120
  ...Array.from({ length: 20 }, (_, i) => [0x82 + i, 0x5fc10d + i] as [number, number]),
]);

export const TAG = {
  CHUID: 0x5fc102,
  CCC: 0x5fc107,
  KEY_HISTORY: 0x5fc10c,
  DISCOVERY: 0x7e,
  BIT_GROUP_TEMPLATE: 0x7f61,
} as const;

/** Data objects whose read access rule is "PIN" (SP 800-73-4 Part 1 Table 3); everything else is always readable. */
export const PIN_PROTECTED_OBJECTS: ReadonlySet<number> = new Set([
  0x5fc103, // Cardholder Fingerprints
  0x5fc108, // Cardholder Facial Image
  0x5fc109, // Printed Information
  0x5fc121, // Cardholder Iris Images
]);

/** Tags of every BER-TLV data object of the PIV card application that GET DATA / PUT DATA may name (5FC101..5FC123). */
export function isPivDataObject(tag: number): boolean {
  return tag >= 0x5fc101 && tag <= 0x5fc123;
}

/** The certificate area (seed 000 claim 15, "third area"): the X.509 certificate objects of every key reference. */
export function isCertificateObject(tag: number): boolean {
  for (const t of KEY_CERT_TAGS.values()) if (t === tag) return true;
  return false;
}

export const tagHex = (tag: number): string => tag.toString(16).padStart(tag > 0xff ? 6 : 2, "0");
export const refHex = (ref: number): string => ref.toString(16).padStart(2, "0");

/**
 * Application Property Template answered to SELECT (SP 800-73-4 Part 2 §3.1.1, Table 3):
 * 61 { 4F PIX, 79 { 4F NIST RID }, 50 label, AC { 80 alg ... , 06 00 } }.
 */
export function applicationPropertyTemplate(algs: number[]): Uint8Array {
  const algTlvs = algs.map((a) => tlv(0x80, Uint8Array.of(a)));
  return tlv(0x61, tlv(0x4f, PIV_PIX), tlv(0x79, tlv(0x4f, NIST_RID)), tlv(0x50, new TextEncoder().encode(PIV_LABEL)), tlv(0xac, ...algTlvs, tlv(0x06)));
}

/**
 * Discovery Object (SP 800-73-4 Part 1 §3.3.2): 7E { 4F PIV AID, 5F2F PIN usage policy }.
 * Policy 40 00: only the PIV Card Application PIN satisfies the PIV access control rules (no global PIN, no OCC).
 */
export function discoveryObject(): Uint8Array {
  return tlv(TAG.DISCOVERY, tlv(0x4f, PIV_AID), tlv(0x5f2f, Uint8Array.of(0x40, 0x00)));
}

// --- FASC-N (TIG SCEPACS v2.3 §6.0): 40 characters of 5 bits, 4 data bits LSB first plus odd parity. ---

const SS = 0b1011; // start sentinel 'B' (data bits b1..b4 = 1,1,0,1 -> value 0xB)
const FS = 0b1101; // field separator 'D'
const ES = 0b1111; // end sentinel 'F'

function fascnChar(v: number): number[] {
  const bits = [v & 1, (v >> 1) & 1, (v >> 2) & 1, (v >> 3) & 1];
  const ones = bits.reduce((a, b) => a + b, 0);
  return [...bits, ones % 2 === 0 ? 1 : 0];
}

export interface FascnFields {
  agencyCode: string; // 4 digits
  systemCode: string; // 4 digits
  credentialNumber: string; // 6 digits
  credentialSeries: string; // 1 digit
  individualCredentialIssue: string; // 1 digit
  personIdentifier: string; // 10 digits
  organizationalCategory: string; // 1 digit
  organizationalIdentifier: string; // 4 digits
  personOrganizationAssociation: string; // 1 digit
}

/** Encodes a FASC-N into its 25-byte (200-bit) packed form with the longitudinal redundancy character. */
export function encodeFascn(f: FascnFields): Uint8Array {
  const digits = (s: string, n: number): number[] => {
    if (!new RegExp(`^[0-9]{${n}}$`).test(s)) throw new RangeError(`FASC-N field must be ${n} digits`);
    return [...s].map(Number);
  };
  const chars = [
    SS,
    ...digits(f.agencyCode, 4),
    FS,
    ...digits(f.systemCode, 4),
    FS,
    ...digits(f.credentialNumber, 6),
    FS,
    ...digits(f.credentialSeries, 1),
    FS,
    ...digits(f.individualCredentialIssue, 1),
    FS,
    ...digits(f.personIdentifier, 10),
    ...digits(f.organizationalCategory, 1),
    ...digits(f.organizationalIdentifier, 4),
    ...digits(f.personOrganizationAssociation, 1),
    ES,
  ];
  const lrc = chars.reduce((a, c) => a ^ c, 0);
  const bits = [...chars, lrc].flatMap(fascnChar);
  const out = new Uint8Array(25);
  bits.forEach((b, i) => {
    out[i >> 3] |= b << (7 - (i & 7));
  });
  return out;
}

/**
 * FASC-N of a card whose issuer has no federal agency code (SP 800-73-4 Part 1 §3.3.1 / PIV-I): agency,
 * system and credential number all 9s, organisational category "commercial enterprise"; the card is told
 * apart by its GUID instead.
 */
export const NON_FEDERAL_FASCN: FascnFields = {
  agencyCode: "9999",
  systemCode: "9999",
  credentialNumber: "999999",
  credentialSeries: "0",
  individualCredentialIssue: "1",
  personIdentifier: "0000000000",
  organizationalCategory: "3", // commercial enterprise
  organizationalIdentifier: "0000",
  personOrganizationAssociation: "1",
};

/** Card UUID (RFC 9562 version 8, name-based on the public card ID) used as the CHUID GUID and in the CCC. */
export function cardGuid(cardId: string): Uint8Array {
  const g = createHash("sha256").update("cardkms PIV GUID").update(Buffer.from(cardId, "hex")).digest().subarray(0, 16);
  g[6] = (g[6] & 0x0f) | 0x80; // version 8
  g[8] = (g[8] & 0x3f) | 0x80; // RFC 9562 variant
  return new Uint8Array(g);
}

/**
 * Card Holder Unique Identifier (SP 800-73-4 Part 1 §3.1.2, Table 9):
 * 53 { 30 FASC-N, 34 GUID, 35 expiration YYYYMMDD, 3E issuer signature (empty), FE error detection code }.
 * The issuer's asymmetric signature is left empty: the card cannot sign its own CHUID with an issuer key;
 * an issuer that has one replaces the object with PUT DATA.
 */
export function buildChuid(cardId: string, now: Date, validYears = 5): Uint8Array {
  const exp = new Date(Date.UTC(now.getUTCFullYear() + validYears, now.getUTCMonth(), now.getUTCDate()));
  const ymd = exp.toISOString().slice(0, 10).replace(/-/g, "");
  return tlv(0x53, tlv(0x30, encodeFascn(NON_FEDERAL_FASCN)), tlv(0x34, cardGuid(cardId)), tlv(0x35, new TextEncoder().encode(ymd)), tlv(0x3e), tlv(0xfe));
}

/**
 * Card Capability Container (SP 800-73-4 Part 1 §3.1.1, Table 8): F0 card identifier (GSC-RID A0 00 00 01 16,
 * manufacturer FF, card type 02 = Java-Card-like, 14 bytes from the card GUID), versions 21, data model 10,
 * every other element empty.
 */
export function buildCcc(cardId: string): Uint8Array {
  const cardIdentifier = concat(Uint8Array.of(0xa0, 0x00, 0x00, 0x01, 0x16, 0xff, 0x02), cardGuid(cardId).subarray(0, 14));
  return tlv(
    0x53,
    tlv(0xf0, cardIdentifier),
    tlv(0xf1, Uint8Array.of(0x21)), // capability container version
    tlv(0xf2, Uint8Array.of(0x21)), // capability grammar version
    tlv(0xf3), // applications CardURL
    tlv(0xf4, Uint8Array.of(0x00)), // PKCS#15: no
    tlv(0xf5, Uint8Array.of(0x10)), // registered data model number
    tlv(0xf6), // access control rule table
    tlv(0xf7), // card APDUs
    tlv(0xfa), // redirection tag
    tlv(0xfb), // capability tuples
    tlv(0xfc), // status tuples
    tlv(0xfd), // next CCC
    tlv(0xfe), // error detection code
  );
}

/** Certificate object value (SP 800-73-4 Part 1 Table 10/15): 53 { 70 certificate DER, 71 00 (uncompressed), FE }. */
export function certificateObject(certDer: Uint8Array): Uint8Array {
  return tlv(0x53, tlv(0x70, certDer), tlv(0x71, Uint8Array.of(0x00)), tlv(0xfe));
}
