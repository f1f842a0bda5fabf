// Secret key partial data (seed 001, embodiment 3, steps S3 and S8; claims 35 (b), 36, 42, 43): the escrowed
// secret is split so that only a satisfied policy can rebuild it.
//
// Composition. A fresh 32-byte key-encryption key K seals the secret (AES-256-GCM); K alone is split:
//     K = S_ind ⊕ S_g1 ⊕ S_g2 ⊕ ...            (n-of-n over the conditions: every one is needed)
//     S_ind = s_1 ⊕ s_2 ⊕ ... ⊕ s_m            (one part per indispensable party: all m are needed)
//     S_gi  = Shamir k-of-n over group i's members (shamir-secret-sharing; k = 1 is a copy per member)
// Every component but the last is uniformly random and the last is K ⊕ the others, so any proper subset of the
// components — and any group holding fewer than k Shamir shares — is independent of K: this is the seed's
// condition (4), "a conspiracy by some arbitrators is impossible". Splitting K rather than the secret keeps the
// shares 32-33 bytes for an RSA PKCS#8 as for a seed, and gives the final check for free: K either opens the
// sealed secret under GCM or does not.
//
// Integrity, in three layers, so that a wrong or forged share is detected and never silently yields a wrong key:
//   1. each share is sealed to its arbitrator's registered P-256 key (ecies.ts) with the escrow id, card id, share
//      id and arbitrator as additional data — a share from another card does not open;
//   2. the escrow record holds a SHA-256 commitment to each share value, bound to escrow, card, share and
//      arbitrator — a forged share (even one validly encrypted to the arbitrator by someone holding only the
//      public key) is refused by name, naming whose share it was;
//   3. the sealed secret's GCM tag covers the record (commitments included), and the caller's `verify` hook checks
//      the rebuilt key against the registered public key (key-check.ts, FIG. 10 unit 22).
// Secrets are wiped (fill(0)) once used; errors carry ids and counts only.

import { type KeyObject, createCipheriv, createDecipheriv, hkdfSync, randomBytes } from "node:crypto";
import { combine, split } from "shamir-secret-sharing";
import { type ReproductionPolicy, policyDigest, policyParties, validatePolicy } from "./policy.ts";
import type { ArbitratorRegistry } from "./registry.ts";
import { RecoveryError } from "./errors.ts";
import { type SealedBox, openWith, sealTo } from "./ecies.ts";
import { b64, bytesEqual, canonicalJson, fromB64, labelledDigest } from "./encoding.ts";

export const KEK_BYTES = 32;
export const MAX_SECRET_BYTES = 64 * 1024;
const ID = /^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$/;

export type ShareSlot = { kind: "indispensable"; parts: number } | { kind: "group"; group: string; threshold: number; members: number };

export interface ShareDescriptor {
  shareId: string;
  arbitrator: string;
  slot: ShareSlot;
  /** Hex SHA-256 commitment to the share value (see `commitment`). */
  commitment: string;
}

/** What the reproduction device keeps (step S3): no share in it, only commitments and the sealed secret. */
export interface EscrowRecord {
  format: "cardkms.recovery.escrow/1";
  escrowId: string;
  cardId: string;
  policyDigest: string;
  /** 32 random bytes, base64: salts the commitments and the sealing key derivation. */
  salt: string;
  shares: ShareDescriptor[];
  sealed: { iv: string; ciphertext: string; tag: string };
}

export interface ShareEnvelopeHeader {
  format: "cardkms.recovery.share/1";
  escrowId: string;
  cardId: string;
  policyDigest: string;
  shareId: string;
  arbitrator: string;
  slot: ShareSlot;
  /** SHA-256 of the SPKI of the arbitrator's encryption key the share was sealed to, hex. */
  recipientKeyId: string;
}

/** One share as distributed to its arbitrator (step S3): the header in clear, the value sealed to the arbitrator. */
export interface ShareEnvelope {
  header: ShareEnvelopeHeader;
  box: SealedBox;
}

/** A share an arbitrator released for a reproduction (step S6). `value` is secret. */
export interface ReleasedShare {
  escrowId: string;
  cardId: string;
  shareId: string;
  arbitrator: string;
  value: Uint8Array;
}

/** Checks the rebuilt secret, e.g. against the user's registered public key (key-check.ts). */
export type SecretCheck = (secret: Uint8Array) => boolean | Promise<boolean>;

const u8 = (n: number): Uint8Array => crypto.getRandomValues(new Uint8Array(n));

function xorInto(acc: Uint8Array, b: Uint8Array): void {
  for (let i = 0; i < acc.length; i++) acc[i] ^= b[i];
}

/** The commitment to one share value (not secret: the value it commits to is 32 uniformly random bytes). */
export function shareCommitment(escrow: { escrowId: string; cardId: string }, salt: Uint8Array, shareId: string, arbitrator: string, value: Uint8Array): string {
  return labelledDigest("cardkms/recovery/share-commitment/v1", escrow.escrowId, escrow.cardId, salt, shareId, arbitrator, value).toString("hex");
}

function sealingKey(kek: Uint8Array, salt: Uint8Array): Buffer {
  return Buffer.from(hkdfSync("sha256", kek, salt, "cardkms/recovery/escrow-seal/v1", 32));
}

/** The record minus its sealed secret: the additional data the secret is sealed under. */
function escrowAad(r: Omit<EscrowRecord, "sealed">): Buffer {
  return Buffer.from(canonicalJson({ format: r.format, escrowId: r.escrowId, cardId: r.cardId, policyDigest: r.policyDigest, salt: r.salt, shares: r.shares }));
}

const headerAad = (h: ShareEnvelopeHeader): Buffer => Buffer.from(canonicalJson(h));

export interface SplitInput {
  escrowId: string;
  /** The card (personal portable device) the secret belongs to; shares are bound to it. */
  cardId: string;
  /** The escrowed secret: a private key's PKCS#8 DER, a 32-byte seed — any bytes. Not modified. */
  secret: Uint8Array;
  policy: ReproductionPolicy;
  registry: ArbitratorRegistry;
}

/**
 * Step S3: splits `secret` under `policy` and seals each share to its arbitrator. Returns the escrow record (for
 * the reproduction device) and one envelope per share (one to each arbitrator for each place it holds in the
 * policy — a party both indispensable and in a group receives two).
 */
export async function splitSecret(input: SplitInput): Promise<{ escrow: EscrowRecord; envelopes: ShareEnvelope[] }> {
  const { escrowId, cardId, secret, registry } = input;
  if (typeof escrowId !== "string" || !ID.test(escrowId)) throw new RecoveryError("escrow_invalid", "escrow id must be 1-128 characters of [A-Za-z0-9._:@/-]");
  if (typeof cardId !== "string" || !ID.test(cardId)) throw new RecoveryError("escrow_invalid", "card id must be 1-128 characters of [A-Za-z0-9._:@/-]");
  if (!(secret instanceof Uint8Array) || secret.length === 0 || secret.length > MAX_SECRET_BYTES) throw new RecoveryError("escrow_invalid", `the secret must be 1-${MAX_SECRET_BYTES} bytes`);
  const policy = validatePolicy(input.policy, registry);
  for (const p of policyParties(policy)) registry.require(p);
  const digest = policyDigest(policy);
  const salt = u8(32);

  // K and its components; the last component absorbs K so that all of them are needed.
  const kek = u8(KEK_BYTES);
  const nComponents = (policy.indispensable.length ? 1 : 0) + policy.groups.length;
  const components = Array.from({ length: nComponents }, () => u8(KEK_BYTES));
  const last = components[nComponents - 1];
  last.set(kek);
  for (let i = 0; i < nComponents - 1; i++) xorInto(last, components[i]);

  const plan: { shareId: string; arbitrator: string; slot: ShareSlot; value: Uint8Array }[] = [];
  let c = 0;
  if (policy.indispensable.length) {
    const sInd = components[c++];
    const m = policy.indispensable.length;
    const parts = Array.from({ length: m }, () => u8(KEK_BYTES));
    parts[m - 1].set(sInd);
    for (let i = 0; i < m - 1; i++) xorInto(parts[m - 1], parts[i]);
    policy.indispensable.forEach((p, i) => plan.push({ shareId: `ind/${p}`, arbitrator: p, slot: { kind: "indispensable", parts: m }, value: parts[i] }));
  }
  for (const [gi, g] of policy.groups.entries()) {
    const sG = components[c++];
    const n = g.members.length;
    // shamir-secret-sharing takes 2 <= k <= n <= 255; k = 1 is Shamir of degree 0, i.e. a copy for each member.
    const values = g.threshold === 1 ? g.members.map(() => sG.slice()) : await split(sG, n, g.threshold);
    const slot: ShareSlot = { kind: "group", group: g.name, threshold: g.threshold, members: n };
    g.members.forEach((p, i) => plan.push({ shareId: `group/${gi}/${p}`, arbitrator: p, slot, value: values[i] }));
  }

  const record: Omit<EscrowRecord, "sealed"> = {
    format: "cardkms.recovery.escrow/1",
    escrowId,
    cardId,
    policyDigest: digest,
    salt: b64(salt),
    shares: plan.map((s) => ({ shareId: s.shareId, arbitrator: s.arbitrator, slot: s.slot, commitment: shareCommitment({ escrowId, cardId }, salt, s.shareId, s.arbitrator, s.value) })),
  };
  const key = sealingKey(kek, salt);
  const iv = randomBytes(12);
  const cipher = createCipheriv("aes-256-gcm", key, iv);
  cipher.setAAD(escrowAad(record));
  const ciphertext = Buffer.concat([cipher.update(secret), cipher.final()]);
  const escrow: EscrowRecord = { ...record, sealed: { iv: b64(iv), ciphertext: b64(ciphertext), tag: b64(cipher.getAuthTag()) } };

  const envelopes = plan.map((s): ShareEnvelope => {
    const a = registry.require(s.arbitrator);
    const header: ShareEnvelopeHeader = {
      format: "cardkms.recovery.share/1",
      escrowId,
      cardId,
      policyDigest: digest,
      shareId: s.shareId,
      arbitrator: s.arbitrator,
      slot: s.slot,
      recipientKeyId: a.encryptionKeyId,
    };
    return { header, box: sealTo(a.encryptionPoint, s.value, headerAad(header)) };
  });

  for (const x of [kek, key, ...components, ...plan.map((s) => s.value)]) x.fill(0);
  return { escrow, envelopes };
}

/**
 * Step S6, on the arbitrator's side: opens its envelope for the request it approved. Refuses an envelope of
 * another escrow or card (`share_other_escrow`, `share_other_card`) and one that does not open under its key with
 * its header (`share_decrypt_failed`: wrong key, or header or ciphertext altered).
 */
export function openShare(envelope: ShareEnvelope, arbitratorPrivateKey: KeyObject, expected: { escrowId: string; cardId: string }): ReleasedShare {
  const h = envelope.header;
  const details = { shareId: h?.shareId, arbitrator: h?.arbitrator };
  if (h?.format !== "cardkms.recovery.share/1") throw new RecoveryError("share_decrypt_failed", "not a share envelope", details);
  if (h.escrowId !== expected.escrowId) throw new RecoveryError("share_other_escrow", `share ${h.shareId} belongs to escrow ${h.escrowId}, not ${expected.escrowId}`, details);
  if (h.cardId !== expected.cardId) throw new RecoveryError("share_other_card", `share ${h.shareId} belongs to card ${h.cardId}, not ${expected.cardId}`, details);
  const value = openWith(arbitratorPrivateKey, envelope.box, headerAad(h));
  if (!value) throw new RecoveryError("share_decrypt_failed", `share ${h.shareId} does not open under ${h.arbitrator}'s key with its header`, details);
  return { escrowId: h.escrowId, cardId: h.cardId, shareId: h.shareId, arbitrator: h.arbitrator, value };
}

/** Opens the sealed secret with a candidate K: the secret, or undefined when K (or the record) is not the right one. */
export function unsealEscrow(escrow: EscrowRecord, kek: Uint8Array): Uint8Array | undefined {
  let key: Buffer | undefined;
  try {
    const salt = fromB64(escrow.salt, "salt");
    key = sealingKey(kek, salt);
    const d = createDecipheriv("aes-256-gcm", key, fromB64(escrow.sealed.iv, "iv"));
    d.setAAD(escrowAad(escrow));
    d.setAuthTag(fromB64(escrow.sealed.tag, "tag"));
    const out = Buffer.concat([d.update(fromB64(escrow.sealed.ciphertext, "ciphertext")), d.final()]);
    const secret = new Uint8Array(out);
    out.fill(0);
    return secret;
  } catch {
    return undefined;
  } finally {
    key?.fill(0);
  }
}

export interface RebuildOptions {
  /** Only shares of these arbitrators are accepted (the approvers of a verified chain); others are refused. */
  approvers?: Iterable<string>;
  /** Final check of the rebuilt secret; false refuses with `key_check_failed`. */
  verify?: SecretCheck;
}

/**
 * Step S8, the user key composition unit 21 (FIG. 10): checks each released share (escrow and card binding,
 * commitment), that the shares cover every indispensable part and k of each group, rebuilds K, opens the sealed
 * secret and runs the final check. The caller owns the returned secret and should wipe it after use.
 * This function does not judge approvals: reproduce.ts gates it on a verified approval chain.
 */
export async function rebuildSecret(escrow: EscrowRecord, policy: ReproductionPolicy, shares: readonly ReleasedShare[], opts: RebuildOptions = {}): Promise<Uint8Array> {
  if (escrow?.format !== "cardkms.recovery.escrow/1") throw new RecoveryError("escrow_invalid", "not an escrow record");
  if (policyDigest(policy) !== escrow.policyDigest) throw new RecoveryError("policy_mismatch", `the policy is not the one escrow ${escrow.escrowId} was split under`, { escrowId: escrow.escrowId });
  const salt = fromB64(escrow.salt, "salt");
  const approvers = opts.approvers ? new Set(opts.approvers) : undefined;
  const byId = new Map(escrow.shares.map((d) => [d.shareId, d]));
  const accepted = new Map<string, Uint8Array>();

  for (const s of shares) {
    const details = { shareId: s.shareId, arbitrator: s.arbitrator };
    if (s.escrowId !== escrow.escrowId) throw new RecoveryError("share_other_escrow", `share ${s.shareId} from ${s.arbitrator} belongs to escrow ${s.escrowId}, not ${escrow.escrowId}`, details);
    if (s.cardId !== escrow.cardId) throw new RecoveryError("share_other_card", `share ${s.shareId} from ${s.arbitrator} belongs to card ${s.cardId}, not ${escrow.cardId}`, details);
    const d = byId.get(s.shareId);
    if (!d) throw new RecoveryError("share_unknown", `escrow ${escrow.escrowId} has no share ${s.shareId}`, details);
    if (d.arbitrator !== s.arbitrator) throw new RecoveryError("share_wrong_arbitrator", `share ${s.shareId} is ${d.arbitrator}'s, not ${s.arbitrator}'s`, details);
    if (accepted.has(s.shareId)) throw new RecoveryError("share_duplicate", `share ${s.shareId} was released twice`, details);
    if (approvers && !approvers.has(s.arbitrator)) throw new RecoveryError("share_from_non_approver", `${s.arbitrator} has not approved this reproduction`, details);
    if (!(s.value instanceof Uint8Array) || !bytesEqual(Buffer.from(shareCommitment(escrow, salt, d.shareId, d.arbitrator, s.value), "hex"), Buffer.from(d.commitment, "hex")))
      throw new RecoveryError("share_commitment_mismatch", `share ${s.shareId} from ${s.arbitrator} does not match its commitment: wrong or forged`, details);
    accepted.set(s.shareId, s.value);
  }

  const kek = new Uint8Array(KEK_BYTES);
  const scratch: Uint8Array[] = [];
  try {
    if (policy.indispensable.length) {
      const missing = policy.indispensable.filter((p) => !accepted.has(`ind/${p}`));
      if (missing.length) throw new RecoveryError("share_missing", `no share from indispensable ${missing.join(", ")}`, { missing });
      for (const p of policy.indispensable) xorInto(kek, accepted.get(`ind/${p}`)!);
    }
    for (const [gi, g] of policy.groups.entries()) {
      const have = g.members.map((p) => accepted.get(`group/${gi}/${p}`)).filter((v): v is Uint8Array => v !== undefined);
      if (have.length < g.threshold)
        throw new RecoveryError("threshold_not_met", `group ${g.name}: ${have.length} share(s) of the ${g.threshold} needed`, { group: g.name, threshold: g.threshold, have: have.length });
      // The library checks its arguments with `constructor === Uint8Array`, so Buffers are copied to plain arrays.
      const sG = g.threshold === 1 ? have[0].slice() : await combine(have.map((v) => new Uint8Array(v)));
      scratch.push(sG);
      if (sG.length !== KEK_BYTES) throw new RecoveryError("final_check_failed", `group ${g.name} rebuilt a component of the wrong length`, { group: g.name });
      xorInto(kek, sG);
    }
    const secret = unsealEscrow(escrow, kek);
    if (!secret) throw new RecoveryError("final_check_failed", `the rebuilt key does not open escrow ${escrow.escrowId}: a share or the record is wrong`, { escrowId: escrow.escrowId });
    if (opts.verify && !(await opts.verify(secret))) {
      secret.fill(0);
      throw new RecoveryError("key_check_failed", `the rebuilt key of card ${escrow.cardId} does not match its registered public key`, { cardId: escrow.cardId });
    }
    return secret;
  } finally {
    kek.fill(0);
    for (const x of scratch) x.fill(0);
  }
}
