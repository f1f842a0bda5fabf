// The composed key verification unit 22 (seed 001, embodiment 3, FIG. 10): "A random number is generated, and
// this random number is enciphered by the public key ... Then, the enciphered random number is deciphered by the
// reproduced secret key, and if the deciphered result coincides with the original random number, it can be
// ascertained that the public key and the reproduced secret key are consistent."
// For RSA that is RSAES-OAEP (RFC 8017 §7.1) of a random value; for an EC key the analogue of enciphering to the
// public key is an ephemeral ECDH with it (the reproduced private key must derive the same secret). Both also sign
// a random value and verify it with the registered key, and compare the public key derived from the reproduced
// private key with the registered one.

import { type KeyObject, constants, createECDH, createPrivateKey, createPublicKey, privateDecrypt, publicEncrypt, randomBytes, sign, verify } from "node:crypto";
import type { SecretCheck } from "./shares.ts";

export type PublicKeyInput = KeyObject | string | Uint8Array;

function toPublic(k: PublicKeyInput): KeyObject {
  if (typeof k === "string") return createPublicKey(k);
  if (k instanceof Uint8Array) return createPublicKey({ key: Buffer.from(k), format: "der", type: "spki" });
  return k.type === "public" ? k : createPublicKey(k);
}

/**
 * A check for `rebuildSecret`/`reproduce`: parses the rebuilt secret as PKCS#8 DER and proves it is the private
 * half of `registered` with `rounds` random round trips. Returns false (never throws) on any mismatch.
 */
export function keyPairCheck(registered: PublicKeyInput, rounds = 1): SecretCheck {
  const pub = toPublic(registered);
  const spki = pub.export({ format: "der", type: "spki" });
  const pubJwk = pub.asymmetricKeyType === "ec" ? pub.export({ format: "jwk" }) : undefined;
  return (secret) => {
    let priv: KeyObject;
    try {
      priv = createPrivateKey({ key: Buffer.from(secret), format: "der", type: "pkcs8" });
    } catch {
      return false;
    }
    try {
      if (priv.asymmetricKeyType !== pub.asymmetricKeyType) return false;
      if (!createPublicKey(priv).export({ format: "der", type: "spki" }).equals(spki)) return false;
      for (let i = 0; i < rounds; i++) {
        const r = randomBytes(32);
        switch (pub.asymmetricKeyType) {
          case "rsa": {
            const c = publicEncrypt({ key: pub, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256" }, r);
            if (!privateDecrypt({ key: priv, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256" }, c).equals(r)) return false;
            break;
          }
          case "ec": {
            // "Encipher" to the registered key: an ephemeral ECDH with it; "decipher" with the reproduced key.
            const curve = pub.asymmetricKeyDetails!.namedCurve!;
            const eph = createECDH(curve);
            const epk = eph.generateKeys();
            const sent = eph.computeSecret(Buffer.concat([Uint8Array.of(4), Buffer.from(pubJwk!.x!, "base64url"), Buffer.from(pubJwk!.y!, "base64url")]));
            const mine = createECDH(curve);
            mine.setPrivateKey(Buffer.from(priv.export({ format: "jwk" }).d!, "base64url"));
            const got = mine.computeSecret(epk);
            const same = got.equals(sent);
            got.fill(0);
            sent.fill(0);
            if (!same) return false;
            break;
          }
        }
        const alg = pub.asymmetricKeyType === "ed25519" || pub.asymmetricKeyType === "ed448" ? null : "sha256";
        if (!verify(alg, r, pub, sign(alg, r, priv))) return false;
      }
      return true;
    } catch {
      return false;
    }
  };
}
