// ECIES over P-256 for share envelopes (SEC 1 v2 §5.1 in its modern form): an ephemeral ECDH key pair, the
// shared secret run through HKDF-SHA256 (RFC 5869) with both public points as salt, and AES-256-GCM
// (NIST SP 800-38D) whose additional data is the envelope header — the escrow, card, share and arbitrator it
// belongs to — so that a share cannot be moved to another card, slot or arbitrator without failing to open.
// Seed 001 (embodiment 3): "it is preferable to encipher the secret key partial data ... because otherwise there
// is a high probability for being able to reproduce the secret key of the user by wiretapping".

import { type KeyObject, createCipheriv, createDecipheriv, createECDH, hkdfSync, randomBytes } from "node:crypto";

export interface SealedBox {
  /** The ephemeral public key, uncompressed point, base64. */
  epk: string;
  iv: string;
  ciphertext: string;
  tag: string;
}

/** HKDF info of share envelopes; other uses (share releases, share-release.ts) pass their own label. */
const INFO = Buffer.from("cardkms/recovery/ecies-p256-hkdf-sha256-aes256gcm/v1");

function kdf(z: Uint8Array, epk: Uint8Array, recipient: Uint8Array, info: Uint8Array): Buffer {
  return Buffer.from(hkdfSync("sha256", z, Buffer.concat([epk, recipient]), info, 32));
}

/** Encrypts `plaintext` to the P-256 point `recipient` (0x04 || X || Y), authenticating `aad`; `info` labels the use. */
export function sealTo(recipient: Uint8Array, plaintext: Uint8Array, aad: Uint8Array, info: Uint8Array = INFO): SealedBox {
  const ecdh = createECDH("prime256v1");
  const epk = ecdh.generateKeys();
  const z = ecdh.computeSecret(recipient);
  const key = kdf(z, epk, recipient, info);
  z.fill(0);
  const iv = randomBytes(12);
  const c = createCipheriv("aes-256-gcm", key, iv);
  c.setAAD(aad);
  const ciphertext = Buffer.concat([c.update(plaintext), c.final()]);
  key.fill(0);
  return { epk: epk.toString("base64"), iv: iv.toString("base64"), ciphertext: ciphertext.toString("base64"), tag: c.getAuthTag().toString("base64") };
}

/**
 * Opens a box with the recipient's private key. Returns undefined when it does not open — wrong key, wrong
 * additional data, or any byte changed — without saying which: the caller names the refusal.
 */
export function openWith(recipientPrivate: KeyObject, box: SealedBox, aad: Uint8Array): Uint8Array | undefined {
  try {
    const epk = Buffer.from(box.epk, "base64");
    if (epk.length !== 65 || epk[0] !== 4) return undefined;
    // The recipient's scalar into an ECDH object: cheaper than building a KeyObject for the ephemeral point, and
    // computeSecret refuses a point that is not on the curve.
    const scalar = Buffer.from(recipientPrivate.export({ format: "jwk" }).d ?? "", "base64url");
    const ecdh = createECDH("prime256v1");
    ecdh.setPrivateKey(scalar);
    scalar.fill(0);
    const z = ecdh.computeSecret(epk);
    try {
      return openWithSecret(z, epk, ecdh.getPublicKey(), box, aad);
    } finally {
      z.fill(0);
    }
  } catch {
    return undefined;
  }
}

/**
 * The symmetric half of opening a box, given the ECDH shared secret `z` (computed by whoever holds the recipient's
 * key: openWith above, or custody's ECDH for a key that never leaves it), the box's ephemeral point and the
 * recipient's point. Undefined when it does not open; the caller wipes `z`.
 */
export function openWithSecret(z: Uint8Array, epk: Uint8Array, recipient: Uint8Array, box: SealedBox, aad: Uint8Array, info: Uint8Array = INFO): Uint8Array | undefined {
  const key = kdf(z, epk, recipient, info);
  try {
    const iv = Buffer.from(box.iv, "base64");
    const tag = Buffer.from(box.tag, "base64");
    if (iv.length !== 12 || tag.length !== 16) return undefined;
    const d = createDecipheriv("aes-256-gcm", key, iv);
    d.setAAD(aad);
    d.setAuthTag(tag);
    const out = Buffer.concat([d.update(Buffer.from(box.ciphertext, "base64")), d.final()]);
    const plain = new Uint8Array(out);
    out.fill(0);
    return plain;
  } catch {
    return undefined;
  } finally {
    key.fill(0);
  }
}
