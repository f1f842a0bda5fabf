// Arbitrator key rotation (seed 001 embodiment 3; migration 0007_recovery_lifecycle). Arbitrator keys rotate
// (rotateArbitratorKeys) by a KeyRotation document signed with the arbitrator's CURRENT signing key — the operator's
// token relays it but cannot forge it — and, for a new signing key, also signed with the new one (proof of
// possession). Every key version is kept: an approval or approver list is re-verified with the version that verified
// it when it was recorded (KeyedRegistry, keyed-registry.ts), so chains recorded before a rotation still verify.
// Share envelopes stay sealed to the encryption key they were sealed to: the arbitrator keeps its old encryption
// private key until the escrow is re-split (not done here); escrowOf (escrow.ts) shows which shares are sealed to a
// retired key.
//
// Key rotation documents: the arbitrator's side signs them (signKeyRotation), the service's side checks and records
// them (rotateArbitratorKeys). Private keys stay with the arbitrator.

import { verify, type KeyObject } from "node:crypto";
import { arbitrator, type ArbitratorView } from "./arbitrators.ts";
import { bytesEqual, fromB64 } from "./encoding.ts";
import { RecoveryError } from "./errors.ts";
import { ArbitratorRegistry, type Arbitrator } from "./registry.ts";
import { auditRefusal, checkActor, checkId, isObject, p256FromSpki, sha256Hex, type ServiceContext } from "./service-context.ts";
import { isRecoveryRefusal, RecoveryServiceError } from "./service-errors.ts";
import { keyRotationBytes, spkiDer, type KeyRotation } from "./key-rotation-document.ts";

export { keyRotationBytes, signKeyRotation, type KeyRotation, type KeyRotationBody } from "./key-rotation-document.ts";

function verifiesP1363(key: KeyObject, data: Buffer, signature: unknown): boolean {
  if (typeof signature !== "string") return false;
  try {
    const sig = Buffer.from(signature, "base64");
    return sig.length === 64 && verify("sha256", data, { key, dsaEncoding: "ieee-p1363" }, sig);
  } catch {
    return false;
  }
}

/**
 * Rotates an arbitrator's keys (a new signing and/or encryption public key) by a KeyRotation signed with its
 * current signing key (and with the new signing key, when it changes). Refused by name: a stale or replayed
 * document (rotation_stale), a signature that is not the arbitrator's (forged_signature), a key it used before
 * (key_reused), a deregistered arbitrator (arbitrator_disabled). The old version is kept (retired): approvals and
 * approver lists it verified still verify. Shares already sealed to the old encryption key stay so (escrowOf shows
 * them): the arbitrator opens them with its old encryption key until the escrow is re-split. Audited, refusals too.
 * An arbitrator that lost its current signing key cannot rotate: it is deregistered and registered anew.
 */
export async function rotateArbitratorKeys(ctx: ServiceContext, id: string, rotation: KeyRotation, actor: string): Promise<ArbitratorView> {
  try {
    checkActor(actor);
    checkId(id, "arbitrator id");
    const r = rotation as Partial<KeyRotation>;
    const HEX64 = /^[0-9a-f]{64}$/;
    if (
      !isObject(r) ||
      r.format !== "cardkms.recovery.key-rotation/1" ||
      typeof r.arbitrator !== "string" ||
      !Number.isSafeInteger(r.keyVersion) ||
      typeof r.previousSigningKeyId !== "string" ||
      !HEX64.test(r.previousSigningKeyId) ||
      typeof r.previousEncryptionKeyId !== "string" ||
      !HEX64.test(r.previousEncryptionKeyId) ||
      typeof r.signingPublicKey !== "string" ||
      typeof r.encryptionPublicKey !== "string" ||
      typeof r.issuedAt !== "string" ||
      Number.isNaN(Date.parse(r.issuedAt)) ||
      typeof r.signature !== "string"
    )
      throw new RecoveryServiceError("invalid_argument", "expected a key rotation document (format cardkms.recovery.key-rotation/1)", { arbitrator: id });
    if (r.arbitrator !== id) throw new RecoveryServiceError("invalid_argument", `the rotation is for arbitrator ${r.arbitrator}, not ${id}`, { arbitrator: id });
    const doc = r as KeyRotation;
    const rec = await ctx.repo.arbitrator(id);
    if (!rec) throw new RecoveryServiceError("not_found", `no arbitrator ${id}`, { arbitrator: id });
    if (rec.disabledAt !== undefined) throw new RecoveryServiceError("arbitrator_disabled", `arbitrator ${id} is deregistered: its keys no longer rotate`, { arbitrator: id });
    const from = rec.keyVersion ?? 1;
    if (doc.keyVersion !== from + 1 || doc.previousSigningKeyId !== sha256Hex(rec.signingPublicKey) || doc.previousEncryptionKeyId !== sha256Hex(rec.encryptionPublicKey))
      throw new RecoveryServiceError("rotation_stale", `the rotation does not start from ${id}'s current keys (version ${from}): replayed, raced or stale`, { arbitrator: id, keyVersion: from });
    const bytes = keyRotationBytes(doc);
    const current = p256FromSpki(rec.signingPublicKey, "the current signing key");
    if (!verifiesP1363(current, bytes, doc.signature)) throw new RecoveryError("forged_signature", `the rotation is not signed with ${id}'s current signing key`, { arbitrator: id });
    let checked: Arbitrator;
    try {
      checked = new ArbitratorRegistry().register({
        id,
        signingPublicKey: fromB64(doc.signingPublicKey, "signingPublicKey"),
        encryptionPublicKey: fromB64(doc.encryptionPublicKey, "encryptionPublicKey"),
      });
    } catch (e) {
      if (e instanceof RecoveryError || e instanceof TypeError || e instanceof RangeError)
        throw new RecoveryServiceError("invalid_argument", `the new keys must be P-256 public keys, base64 DER SubjectPublicKeyInfo`, { arbitrator: id });
      throw e;
    }
    const signing = spkiDer(checked.signingKey);
    const encryption = spkiDer(checked.encryptionKey);
    const signingChanged = !bytesEqual(signing, rec.signingPublicKey);
    const encryptionChanged = !bytesEqual(encryption, rec.encryptionPublicKey);
    if (!signingChanged && !encryptionChanged) throw new RecoveryServiceError("invalid_argument", "the rotation changes no key", { arbitrator: id });
    if (signingChanged && !verifiesP1363(checked.signingKey, bytes, doc.newKeySignature))
      throw new RecoveryError("forged_signature", `the rotation is not signed with the new signing key (proof of possession)`, { arbitrator: id });
    const history = await ctx.repo.arbitratorKeys([id]);
    if (signingChanged && history.some((k) => bytesEqual(k.signingPublicKey, signing)))
      throw new RecoveryServiceError("key_reused", `${id} used this signing key before: a retired key is never current again`, { arbitrator: id });
    if (encryptionChanged && history.some((k) => bytesEqual(k.encryptionPublicKey, encryption)))
      throw new RecoveryServiceError("key_reused", `${id} used this encryption key before: a retired key is never current again`, { arbitrator: id });
    const at = ctx.at();
    const stored: KeyRotation = { ...doc };
    await ctx.store.transaction(async ({ repo, audit }) => {
      if (!(await repo.rotateArbitratorKeys(id, from, { signingPublicKey: signing, encryptionPublicKey: encryption, at, rotation: JSON.stringify(stored), by: actor })))
        throw new RecoveryServiceError("rotation_stale", `arbitrator ${id}'s keys changed meanwhile`, { arbitrator: id });
      await audit({
        actor,
        action: "recovery.arbitrator.rotate",
        subject: id,
        details: {
          fromVersion: from,
          toVersion: from + 1,
          signingChanged,
          encryptionChanged,
          previousSigningKeyId: doc.previousSigningKeyId,
          previousEncryptionKeyId: doc.previousEncryptionKeyId,
          signingKeyId: sha256Hex(signing),
          encryptionKeyId: sha256Hex(encryption),
        },
        at,
      });
    });
    return (await arbitrator(ctx, id))!;
  } catch (e) {
    if (isRecoveryRefusal(e)) await auditRefusal(ctx, actor, "recovery.arbitrator.rotate.refuse", id, e, {});
    throw e;
  }
}
