// PEM (RFC 7468) for certificates, CRLs and certification requests.

export type PemLabel = "CERTIFICATE" | "X509 CRL" | "CERTIFICATE REQUEST";

export function toPem(der: Uint8Array, label: PemLabel): string {
  const b64 = Buffer.from(der.buffer, der.byteOffset, der.byteLength).toString("base64");
  return `-----BEGIN ${label}-----\n${b64.replace(/.{1,64}/g, "$&\n")}-----END ${label}-----\n`;
}

/** Every PEM block with the label, in order. */
export function fromPemAll(pem: string, label: PemLabel): Uint8Array[] {
  const re = new RegExp(`-----BEGIN ${label}-----([A-Za-z0-9+/=\\s]*?)-----END ${label}-----`, "g");
  return [...pem.matchAll(re)].map((m) => new Uint8Array(Buffer.from(m[1].replace(/\s+/g, ""), "base64")));
}

/** The first PEM block with the label; throws saying which label was expected. */
export function fromPem(pem: string, label: PemLabel): Uint8Array {
  const [first] = fromPemAll(pem, label);
  if (!first || first.length === 0) throw new Error(`expected a PEM block "-----BEGIN ${label}-----"`);
  return first;
}
