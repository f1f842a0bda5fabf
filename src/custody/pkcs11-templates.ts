// The key policy of the PKCS#11 custody lives in pkcs11/templates.ts, beside the rest of the PKCS#11 custody; this
// path re-exports it for the importers that name it.

export * from "./pkcs11/templates.ts";
