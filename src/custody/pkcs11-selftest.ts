// The custody self-test lives in pkcs11/selftest.ts, beside the rest of the PKCS#11 custody; this path re-exports it
// for the importers that name it (src/server/main.ts, the CLI, the custody interface, tests).

export * from "./pkcs11/selftest.ts";
