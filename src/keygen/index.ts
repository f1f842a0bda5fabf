// Seed 001 embodiments 1-2: the key generation device, the certification center's checks, and the pieces
// between them. No HTTP here; server/ and cli/ wire these.
export { KeyGenerationDevice, type IssueCardRequest, type IssuedCard, type InsertedCard, type KeyGenerationDeviceOptions, type PivSlot } from "./device.ts";
export { CertificationCenter, MemoryRegistrationBook, centerChecks, signedRequestCheck, type RegistrationLookup, type CertificationCenterOptions } from "./center.ts";
export { MemoryIssuedKeyRegistry, publicKeySha256Of, type IssuedKeyRegistry, type GeneratedKeyRecord } from "./registry.ts";
export { buildSignedCsr, subjectToName, csrSignatureAlgorithm, type SignedCsr } from "./csr.ts";
export { verifyIssuedCertificate, type CertificateExpectation } from "./verify.ts";
export { KeyGenerationRefusal, deviceRefusal, type DeviceCheck, type RefusedBy } from "./errors.ts";
export { readCardSecretId, writeKeyIntoCard } from "./card-io.ts";
export type { KeyEscrowHook, EscrowInput } from "./escrow.ts";
