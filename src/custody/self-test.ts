// What a custody's self-test reports (KeyCustody.selfTest; the PKCS#11 test is pkcs11/selftest.ts): which ways of
// getting a key out of its boundary the token refused, and what it left open. A leaf module, so that the custody
// interface and the PKCS#11 custody name these types without importing each other.

/** What the token accepts beyond PKCS#11 2.20 (probed once per token at open). */
export interface TokenFeatures {
  /** CKA_UNWRAP_TEMPLATE is accepted on a key (SoftHSM2 2.6: yes, and enforced). */
  unwrapTemplate: boolean;
  /** CKA_DERIVE_TEMPLATE is accepted on a key (SoftHSM2 2.6: no, CKR_ATTRIBUTE_TYPE_INVALID). */
  deriveTemplate: boolean;
}

export interface SelfTestPath {
  /** A name from the list above. */
  path: string;
  /** The key role tried. */
  key: string;
  /** "refused" when the token refused the attempt; "open" when it did it. */
  result: "refused" | "open";
  /** The refusal's CKR_ code, or what the token did. */
  detail: string;
}

export interface CustodySelfTest {
  custody: "pkcs11" | "software";
  /** The token (label, manufacturer, model) or the keystore. */
  token: string;
  features?: TokenFeatures;
  paths: SelfTestPath[];
  /** The paths the token did not refuse. */
  open: SelfTestPath[];
  /** Keys stored on the token whose attributes are weaker than the policy (made before it, or by hand). */
  keys: { label: string; problems: string[] }[];
  /** What the test cannot show (by design, or not a token property). */
  notes: string[];
  /** No open path and no weak key. */
  ok: boolean;
}
