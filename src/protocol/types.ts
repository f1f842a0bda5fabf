// Types the card and the host share on the wire: the key algorithms a card holds and an SCP03 static key set.

/** The key pair algorithms a card holds (PIV algorithm identifiers: protocol/package.ts ALG_ID). */
export type KeyAlg = "RSA2048" | "RSA3072" | "P256" | "P384";

/** One SCP03 static key set: the seed's card-unique symmetric key Sk (seed 000 para 0032, claim 14 "first area"). */
export interface ScpKeySet {
  kvn: number;
  enc: string;
  mac: string;
  dek: string;
  /**
   * The card ID (hex) this key set was diversified for, when that is a predecessor card (seed 000 para 0081: the
   * new card 30x* holds the old card's Sk1). Its purpose keys (package keys, private-key wrap key) are derived
   * with that card ID, so the card opens the predecessor's Sk1[PRk]. Absent: this card's own key set. Set once,
   * by the ISD's STORE DATA key origin (isd.ts); a PUT KEY that replaces the key set drops it.
   */
  origin?: string;
}
