// Key reproduction by arbitrators (seed 001, embodiment 3): policy as data, shares, the signed approval chain.
// The core (policy, shares, approvals, reproduce) is a pure domain module: no HTTP, no storage. It owns the
// algebra and the checks; it never logs, stores or returns in an error a secret, a share value or a private key.
// service.ts is the domain service on top of it, with storage (the system DB), custody and the audit log: what
// routes and the CLI call.

export * from "./errors.ts";
export * from "./registry.ts";
export * from "./policy.ts";
export * from "./shares.ts";
export * from "./approvals.ts";
export * from "./reproduce.ts";
export { keyPairCheck } from "./key-check.ts";
export * from "./service.ts";
