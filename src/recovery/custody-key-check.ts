// The composed key verification unit 22 (seed 001 embodiment 3, FIG. 10), inside custody: the reproduced key pair
// is checked against the registered public key without leaving custody — the reproduction unwraps E into custody
// and checks it here before writing it into the card. key-check.ts is the same check on a PKCS#8 key in memory.

import { constants, createPublicKey, diffieHellman, generateKeyPairSync, publicEncrypt, randomBytes, verify } from "node:crypto";
import { defaultHash, type KeyCustody, type KeyPairAlg } from "../custody/custody.ts";
import { bytesEqual } from "./encoding.ts";

const NODE_HASH = { "SHA-256": "sha256", "SHA-384": "sha384", "SHA-512": "sha512" } as const;

/**
 * Proves that the key pair `label` in custody is the private half of the registered public key, without the key
 * leaving custody: its public key equals the registered SPKI; it signs a random value that verifies with the
 * registered key (Node, outside custody); and it deciphers what was enciphered to the registered key — RSA:
 * OAEP-SHA256 of a random value; EC: an ephemeral ECDH with the registered key, which custody's ECDH must match.
 * Returns the name of the first failed check, or undefined when all pass. Custody failures propagate.
 */
export async function keyCheckInCustody(custody: KeyCustody, label: string, alg: KeyPairAlg, registeredSpki: Uint8Array): Promise<string | undefined> {
  const pub = createPublicKey({ key: Buffer.from(registeredSpki), format: "der", type: "spki" });
  if (!bytesEqual(await custody.publicKey(label), registeredSpki)) return "public key";
  const r = randomBytes(32);
  const sig = await custody.sign(label, r);
  if (!verify(NODE_HASH[defaultHash(alg)], r, { key: pub, dsaEncoding: "der" }, sig)) return "signature";
  if (alg === "RSA2048" || alg === "RSA3072") {
    const c = publicEncrypt({ key: pub, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256" }, r);
    const d = await custody.decipher(label, c);
    const same = bytesEqual(d, r);
    d.fill(0);
    if (!same) return "decipher";
  } else {
    const eph = generateKeyPairSync("ec", { namedCurve: alg === "P384" ? "P-384" : "P-256" });
    const sent = diffieHellman({ privateKey: eph.privateKey, publicKey: pub });
    const got = await custody.decipher(label, new Uint8Array(eph.publicKey.export({ format: "der", type: "spki" })));
    const same = bytesEqual(got, sent);
    got.fill(0);
    sent.fill(0);
    if (!same) return "decipher (ECDH)";
  }
  r.fill(0);
  return undefined;
}
