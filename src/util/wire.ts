// The pieces every domain's wire shapes (src/<domain>/wire.ts) are built from: TypeBox schemas of plain strings,
// integers and booleans, closed objects (no other member admitted, none serialised), string enums, bounded arrays,
// and the opaque cursor of a page. A schema here is JSON Schema as the server validates, serialises and publishes
// it; its static type (Static<typeof X>) is what server and clients both use.
//
// Never here: anything of a domain, fastify, a SQL driver — src/terminal/ loads this file.

import { Type, type Static, type TObject, type TSchema } from "typebox";

export const Str = Type.String();
export const Int = Type.Integer();
export const Bool = Type.Boolean();
export const Text = (max: number) => Type.String({ maxLength: max });
export const Strings = (max = 1024) => Type.Array(Str, { maxItems: max });
export const Hex64 = Type.String({ pattern: "^[0-9a-f]{64}$" });
export const B64 = (max: number) => Type.String({ maxLength: max, pattern: "^[A-Za-z0-9+/]*={0,2}$" });
/** A page's `after`: the opaque `next` of the previous page. */
export const Cursor = Type.String({ minLength: 1, maxLength: 512, pattern: "^[A-Za-z0-9_-]+$" });

/** A string out of `values` (a plain enum, not a union of literals: one keyword for the validator and the reader). */
export const Enum = <const T extends readonly string[]>(values: T, o: { description?: string } = {}) => Type.Unsafe<T[number]>({ type: "string", enum: [...values], ...o });

/** An object that admits no other member (and whose serialisation drops any other). */
export const Closed = <P extends Record<string, TSchema>>(properties: P, o: { description?: string; minProperties?: number } = {}) => Type.Object(properties, { additionalProperties: false, ...o });

/** A string or null, published as one `type` array (["string", "null"]) as the routes always did. */
export const NullableStr = (o: { description?: string } = {}) => Type.Unsafe<string | null>({ type: ["string", "null"], ...o });
/** An integer or null, published as one `type` array (["integer", "null"]). */
export const NullableInt = (o: { description?: string } = {}) => Type.Unsafe<number | null>({ type: ["integer", "null"], ...o });

/**
 * An object the server writes with every member named, published as its route always declared it: open, and
 * requiring only `required` (none when absent). Its static type has every member, as the server writes them.
 */
export const Written = <P extends Record<string, TSchema>>(properties: P, o: { required?: (keyof P & string)[] } = {}) =>
  Type.Unsafe<Static<TObject<P>>>({ type: "object", ...(o.required ? { required: o.required } : {}), properties });
