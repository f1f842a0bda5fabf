// Distinguished names (RFC 5280 §4.1.2.4, attribute types from RFC 5280 Appendix A and RFC 4519) built
// structurally from the user's registered data, never parsed from a "CN=…, serialNumber=…" string.
//
// One attribute per RDN, in a fixed order from the most general (C) to the most specific (CN, serialNumber,
// emailAddress). String types follow RFC 5280: PrintableString for countryName and serialNumber, IA5String
// for emailAddress, UTF8String for the rest.
//
// Every value is text a relying party can show and compare as it is (issue 9 §4): no control characters (C0, DEL,
// C1: "CN=a\00b" is the classic trick against readers that take names as C strings), well-formed UTF-16 (a lone
// surrogate has no UTF-8 form: it would be certified as U+FFFD while the record kept it) and Unicode NFC. Non-NFC
// text is refused, not normalised: the CA never certifies a name other than the one it was given (a PKCS#10
// subject is signed by the requester), so the record, the request and the certificate can only agree if one
// canonical form goes in. Registration runs the same check (validateSubject), so a refused name is refused
// before anything is stored.

import { DomainError, type ProblemShape } from "../util/errors.ts";
import * as der from "./der.ts";

/** The subject as the registration knows it. `serialNumber` carries the card ID (or a person's ID number). */
export interface SubjectName {
  country?: string;
  state?: string;
  locality?: string;
  organization?: string;
  /** Several OUs are allowed; one is given as a plain string and comes back as one. */
  organizationalUnit?: string | string[];
  title?: string;
  surname?: string;
  givenName?: string;
  commonName?: string;
  serialNumber?: string;
  email?: string;
  userId?: string;
}

type Field = keyof SubjectName;
type Kind = "utf8" | "printable" | "ia5";

interface AttributeType {
  field: Field;
  oid: string;
  kind: Kind;
  /** Upper bound from RFC 5280 Appendix A (ub-*). */
  max: number;
}

const ATTRIBUTES: AttributeType[] = [
  { field: "country", oid: "2.5.4.6", kind: "printable", max: 2 },
  { field: "state", oid: "2.5.4.8", kind: "utf8", max: 128 },
  { field: "locality", oid: "2.5.4.7", kind: "utf8", max: 128 },
  { field: "organization", oid: "2.5.4.10", kind: "utf8", max: 64 },
  { field: "organizationalUnit", oid: "2.5.4.11", kind: "utf8", max: 64 },
  { field: "title", oid: "2.5.4.12", kind: "utf8", max: 64 },
  { field: "surname", oid: "2.5.4.4", kind: "utf8", max: 64 },
  { field: "givenName", oid: "2.5.4.42", kind: "utf8", max: 64 },
  { field: "commonName", oid: "2.5.4.3", kind: "utf8", max: 64 },
  { field: "serialNumber", oid: "2.5.4.5", kind: "printable", max: 64 },
  { field: "email", oid: "1.2.840.113549.1.9.1", kind: "ia5", max: 255 },
  { field: "userId", oid: "0.9.2342.19200300.100.1.1", kind: "utf8", max: 256 },
];
const OID_DER = new Map(ATTRIBUTES.map((a) => [a.field, der.oid(a.oid)]));
const BY_OID = new Map(ATTRIBUTES.map((a) => [a.oid, a]));
export const SUBJECT_FIELDS: readonly Field[] = ATTRIBUTES.map((a) => a.field);
const FIELD_SET = new Set<string>(SUBJECT_FIELDS);

/** A subject the CA cannot certify as it is (a DomainError refused, check "subject"): the message names the field. */
export class InvalidSubjectError extends DomainError {
  constructor(message: string) {
    super("refused", "subject", message);
    this.name = "InvalidSubjectError";
  }

  override problem(): ProblemShape {
    return { type: "invalid-subject", title: "The registered data cannot be a certificate subject" };
  }
}

const PRINTABLE = /^[A-Za-z0-9 '()+,\-./:=?]*$/;
const utf8 = new TextEncoder();
const TAGS: Record<Kind, number> = { utf8: der.TAG.UTF8_STRING, printable: der.TAG.PRINTABLE_STRING, ia5: der.TAG.IA5_STRING };

function valuesOf(s: SubjectName, f: Field): string[] {
  const v = s[f];
  if (v === undefined) return [];
  return Array.isArray(v) ? v : [v];
}

/** C0 controls, DEL and C1 controls: Unicode general category Cc, U+0000-U+001F and U+007F-U+009F. */
const CONTROL = /\p{Cc}/u;
/** A high surrogate not followed by a low one, or a low surrogate not preceded by a high one. */
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;
const codePoint = (c: string) => `U+${c.codePointAt(0)!.toString(16).toUpperCase().padStart(4, "0")}`;

/**
 * Why `v` cannot be certified as text whatever its attribute (control character, lone surrogate, not NFC), or
 * undefined. Names the offending code point and its position, never the value (it is personal data).
 */
function textProblem(v: string): string | undefined {
  const control = CONTROL.exec(v);
  if (control) return `contains the control character ${codePoint(control[0])} at position ${control.index}`;
  const lone = LONE_SURROGATE.exec(v);
  if (lone) return `is not well-formed Unicode: a lone surrogate ${codePoint(lone[0])} at position ${lone.index}`;
  if (v !== v.normalize("NFC")) return "is not in Unicode Normalization Form C (NFC); send it normalised";
  return undefined;
}

/**
 * Checks a SubjectName against the attribute rules; throws InvalidSubjectError naming the field, as
 * `<where>.<field>` (default "subject"; registration says "personalData").
 */
export function validateSubject(s: SubjectName, where = "subject"): void {
  if (typeof s !== "object" || s === null) throw new InvalidSubjectError(`${where} must be an object`);
  for (const k of Object.keys(s)) {
    if (!FIELD_SET.has(k)) throw new InvalidSubjectError(`${where}: unknown field "${k}"; expected ${SUBJECT_FIELDS.join(", ")}`);
  }
  let count = 0;
  for (const a of ATTRIBUTES) {
    const raw = s[a.field];
    if (raw === undefined) continue;
    const name = `${where}.${a.field}`;
    if (Array.isArray(raw) ? a.field !== "organizationalUnit" || raw.length === 0 : typeof raw !== "string") {
      throw new InvalidSubjectError(`${name} must be a string${a.field === "organizationalUnit" ? " or a non-empty array of strings" : ""}`);
    }
    for (const v of valuesOf(s, a.field)) {
      count++;
      if (typeof v !== "string" || v.length === 0) throw new InvalidSubjectError(`${name} must be a non-empty string`);
      const problem = textProblem(v);
      if (problem) throw new InvalidSubjectError(`${name} ${problem}`);
      if (v !== v.trim()) throw new InvalidSubjectError(`${name} must be a non-empty string without surrounding spaces`);
      if ([...v].length > a.max) throw new InvalidSubjectError(`${name} is longer than ${a.max} characters`);
      if (a.kind === "printable" && !PRINTABLE.test(v)) throw new InvalidSubjectError(`${name} must use PrintableString characters (A-Z a-z 0-9 space '()+,-./:=?)`);
      if (a.kind === "ia5" && !/^[\x20-\x7e]+$/.test(v)) throw new InvalidSubjectError(`${name} must be ASCII`);
      if (a.field === "country" && !/^[A-Z]{2}$/.test(v)) throw new InvalidSubjectError(`${name} must be two upper-case letters (ISO 3166)`);
      if (a.field === "email" && !/^[^@\s]+@[^@\s]+$/.test(v)) throw new InvalidSubjectError(`${name} must be local@domain`);
    }
  }
  if (count === 0) throw new InvalidSubjectError(`${where} must have at least one attribute`);
}

/** DER Name (RDNSequence) for a validated SubjectName. */
export function encodeName(s: SubjectName): Uint8Array {
  validateSubject(s);
  const rdns: Uint8Array[] = [];
  for (const a of ATTRIBUTES) {
    for (const v of valuesOf(s, a.field)) {
      const atv = der.sequence(OID_DER.get(a.field)!, der.tlv(TAGS[a.kind], utf8.encode(v)));
      rdns.push(der.tlv(der.TAG.SET, atv));
    }
  }
  return der.sequence(...rdns);
}

function decodeString(tag: number, bytes: Uint8Array): string {
  switch (tag) {
    case der.TAG.UTF8_STRING:
      return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    case der.TAG.PRINTABLE_STRING:
    case der.TAG.IA5_STRING:
    case der.TAG.TELETEX_STRING:
      return Buffer.from(bytes).toString("latin1");
    case der.TAG.BMP_STRING:
      return Buffer.from(bytes).swap16().toString("utf16le");
    default:
      throw new InvalidSubjectError(`name: unsupported string type 0x${tag.toString(16)}`);
  }
}

/**
 * SubjectName from a DER Name. Throws InvalidSubjectError on an attribute type the CA does not issue
 * (a certificate built from the result would otherwise silently drop it) and on multi-valued RDNs.
 */
export function parseName(name: Uint8Array): SubjectName {
  const out: Record<string, string | string[]> = {};
  try {
    const top = der.readOnly(name, der.TAG.SEQUENCE, "Name");
    for (const rdn of der.children(name, top)) {
      const atvs = der.children(name, rdn);
      if (rdn.tag !== der.TAG.SET || atvs.length !== 1) throw new InvalidSubjectError("name: each RDN must hold exactly one attribute");
      const [t, v] = der.children(name, atvs[0]);
      if (!t || !v || t.tag !== der.TAG.OID) throw new InvalidSubjectError("name: malformed AttributeTypeAndValue");
      const oidText = der.oidToString(der.bytesOf(name, t));
      const a = BY_OID.get(oidText);
      if (!a) throw new InvalidSubjectError(`name: attribute ${oidText} is not one the CA certifies`);
      const value = decodeString(v.tag, der.bytesOf(name, v));
      const prev = out[a.field];
      if (prev === undefined) out[a.field] = value;
      else if (a.field === "organizationalUnit") out[a.field] = [...(Array.isArray(prev) ? prev : [prev]), value];
      else throw new InvalidSubjectError(`name: ${a.field} appears more than once`);
    }
  } catch (e) {
    if (e instanceof InvalidSubjectError) throw e;
    throw new InvalidSubjectError(`name is not DER: ${(e as Error).message}`);
  }
  return out as SubjectName;
}

const norm = (field: Field, v: string) => {
  const s = v.normalize("NFC").trim().replace(/\s+/g, " ");
  return field === "email" || field === "country" ? s.toLowerCase() : s;
};

/**
 * Fields that differ between two subjects (empty when they match). Comparison folds whitespace runs and
 * Unicode normalisation, and is case-insensitive for email and country only. Returns field names, never
 * values: the result goes into refusals and logs, which must not carry personal data.
 */
export function subjectDifferences(a: SubjectName, b: SubjectName): Field[] {
  const diff: Field[] = [];
  for (const f of SUBJECT_FIELDS) {
    const x = valuesOf(a, f).map((v) => norm(f, v));
    const y = valuesOf(b, f).map((v) => norm(f, v));
    if (x.length !== y.length || x.some((v, i) => v !== y[i])) diff.push(f);
  }
  return diff;
}
