// Key reproduction by arbitrators (seed 001, embodiment 3): policy as data, shares, the signed approval chain.
// A pure domain module: no HTTP, no storage. It owns the algebra and the checks; it never logs, stores or returns
// in an error a secret, a share value or a private key.

export * from "./errors.ts";
export * from "./registry.ts";
export * from "./policy.ts";
export * from "./shares.ts";
export * from "./approvals.ts";
export * from "./reproduce.ts";
export { keyPairCheck } from "./key-check.ts";
