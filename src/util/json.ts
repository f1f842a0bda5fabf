// JSON values and the one canonical JSON of the project: what is hashed, signed or chained is encoded here, so the
// same value always yields the same text (the subset of RFC 8785 this project needs: object keys sorted by UTF-16
// code unit, no whitespace, ECMAScript number text).
//
// Two callers, one encoder: the audit chain (src/store/audit.ts) refuses an undefined member and a key that looks
// like a secret; the signed recovery documents (src/recovery/encoding.ts) drop undefined members and allow integers
// only. Both rules are options here, so the text of every value either accepted before is unchanged (an audit chain
// written before still verifies).

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

export interface CanonicalJsonRules {
  /** An object member whose value is undefined: dropped (as JSON.stringify does; the default) or refused. */
  undefinedMembers?: "drop" | "refuse";
  /** Numbers accepted: any finite number (the default) or safe integers only. */
  numbers?: "finite" | "safe-integer";
  /** Object keys refused wherever they appear (the audit log's secret-looking names). */
  refuseKey?: RegExp;
  /** Names the encoding in error messages ("audit", "canonical JSON"). */
  what?: string;
}

/**
 * Canonical JSON of `value`: object keys sorted, no whitespace, only plain JSON values (no binary, class
 * instance, function or non-finite number). Throws an Error naming the path of what it refuses (never the value).
 */
export function canonicalJson(value: unknown, rules: CanonicalJsonRules = {}, path = "$"): string {
  const what = rules.what ?? "canonical JSON";
  if (value === null) return "null";
  switch (typeof value) {
    case "string":
    case "boolean":
      return JSON.stringify(value);
    case "number":
      if (rules.numbers === "safe-integer" ? !Number.isSafeInteger(value) : !Number.isFinite(value))
        throw new TypeError(`${what}: ${path} is not a ${rules.numbers === "safe-integer" ? "safe integer" : "finite number"}`);
      return JSON.stringify(value);
    case "object": {
      if (Array.isArray(value)) return `[${value.map((v, i) => canonicalJson(v, rules, `${path}[${i}]`)).join(",")}]`;
      const proto = Object.getPrototypeOf(value) as unknown;
      if (proto !== Object.prototype && proto !== null) throw new TypeError(`${what}: ${path} is not plain JSON (no binary values or class instances)`);
      const o = value as Record<string, unknown>;
      const parts: string[] = [];
      for (const k of Object.keys(o).sort()) {
        if (rules.refuseKey?.test(k)) throw new TypeError(`${what}: ${path}.${k} looks like a secret; secrets never go in it`);
        if (o[k] === undefined && rules.undefinedMembers !== "refuse") continue;
        parts.push(`${JSON.stringify(k)}:${canonicalJson(o[k], rules, `${path}.${k}`)}`);
      }
      return `{${parts.join(",")}}`;
    }
    default:
      throw new TypeError(`${what}: ${path} is ${typeof value}, not a JSON value`);
  }
}
