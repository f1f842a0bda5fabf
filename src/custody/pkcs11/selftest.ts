// The custody self-test (issue 17 §1): at start-up the PKCS#11 custody tries, with the user PIN it runs with, the
// paths by which a PIN holder could get a key out of the token, against probe keys made with exactly the templates
// of the project's key roles (templates.ts), and reads back the attributes of every key stored on the token.
// It reports, per path, whether the token refused it. What it tries:
//
//   read-value            C_GetAttributeValue(CKA_VALUE) of a secret or private key
//   wrap-unextractable    C_WrapKey of a never-extractable key under a key of the caller's
//   set-attribute         C_SetAttributeValue switching a usage on (CKA_ENCRYPT on the card master, CKA_DECRYPT on
//                         the escrow KEK or the CA key) or CKA_EXTRACTABLE on
//   copy                  C_CopyObject into a copy with another usage
//   derive-readable       C_DeriveKey(CKM_AES_CBC_ENCRYPT_DATA) from the card master into CKA_SENSITIVE=false: a
//                         card's Sk (seed 000) in clear
//   derive-then-wrap      the same into a sensitive but extractable key, then C_WrapKey under an AES key of the
//                         caller's
//   unwrap-readable       C_UnwrapKey of an escrow blob (a private key wrapped under the escrow KEK) into
//                         CKA_SENSITIVE=false: the escrowed key (seed 001) in clear
//   unwrap-then-wrap      the same into a sensitive but extractable key, then C_WrapKey under a key of the caller's
//   decrypt-with-kek      C_Decrypt (CKM_AES_ECB) under the escrow KEK, with which RFC 5649 can be undone by hand
//
// The probe keys are session objects, destroyed at the end; no key value is ever read into this process (a path
// counts as open when the token accepts the call; an output is wiped unread). Real keys are never changed: a
// set-attribute or copy attempt runs only against probes.

import type * as Pkcs11Types from "pkcs11js";
import type { Handle, P11 } from "./types.ts";
import type { CustodySelfTest, SelfTestPath, TokenFeatures } from "../self-test.ts";

export type { CustodySelfTest, SelfTestPath } from "../self-test.ts";
import { aesKeyTemplate, ckrName, privateKeyTemplate, publicKeyTemplate, secretUsageFlags } from "./templates.ts";

/** What the self-test needs of the custody: the module, its logged-in session and the token's features. */
export interface SelfTestContext {
  p: P11;
  mod: Pkcs11Types.PKCS11;
  session: Handle;
  slot?: Handle;
  tokenLabel: string;
  features: TokenFeatures;
}

const ckr = (e: unknown): string => ckrName(e) ?? (e instanceof Error ? e.message.split("\n")[0] : String(e));

/** Runs every path against fresh probe keys and reads back the stored keys. */
export function runSelfTest(c: SelfTestContext): CustodySelfTest {
  const { p, mod, session } = c;
  const made: Handle[] = [];
  const keep = (h: Handle): Handle => (made.push(h), h);
  const paths: SelfTestPath[] = [];
  const attempt = (path: string, key: string, f: () => unknown): void => {
    try {
      const out = f();
      if (Buffer.isBuffer(out)) out.fill(0);
      paths.push({ path, key, result: "open", detail: "the token did it" });
    } catch (e) {
      paths.push({ path, key, result: "refused", detail: ckr(e) });
    }
  };
  const aes = (t: Pkcs11Types.Template): Handle => keep(mod.C_GenerateKey(session, { mechanism: p.CKM_AES_KEY_GEN }, t));
  const opts = { token: false, features: c.features };
  try {
    // The caller's own wrapping key: an AES key it can read (what a PIN holder makes to take keys out under).
    const mine = aes([
      { type: p.CKA_CLASS, value: p.CKO_SECRET_KEY },
      { type: p.CKA_KEY_TYPE, value: p.CKK_AES },
      { type: p.CKA_VALUE_LEN, value: 32 },
      { type: p.CKA_TOKEN, value: false },
      { type: p.CKA_SENSITIVE, value: false },
      { type: p.CKA_EXTRACTABLE, value: true },
      { type: p.CKA_WRAP, value: true },
    ]);
    const wrapUnderMine = (h: Handle): Buffer => mod.C_WrapKey(session, { mechanism: p.CKM_AES_KEY_WRAP_PAD }, mine, h, Buffer.alloc(8192));

    // The card master (seed 000: every card's Sk is diversified from it).
    const MASTER = "card master (derive)";
    const master = aes(aesKeyTemplate(p, { ...opts, on: secretUsageFlags(p, ["derive"]), extractable: false, bytes: 32 }));
    const cbcData: Pkcs11Types.AesCBC = { type: p.CK_PARAMS_AES_CBC, iv: Buffer.alloc(16), data: Buffer.alloc(16, 0x5a) };
    const deriveFrom = (base: Handle, t: Pkcs11Types.Template): Handle =>
      keep(
        mod.C_DeriveKey(session, { mechanism: p.CKM_AES_CBC_ENCRYPT_DATA, parameter: cbcData }, base, [
          { type: p.CKA_CLASS, value: p.CKO_SECRET_KEY },
          { type: p.CKA_KEY_TYPE, value: p.CKK_AES },
          { type: p.CKA_VALUE_LEN, value: 16 },
          { type: p.CKA_TOKEN, value: false },
          ...t,
        ]),
      );
    attempt("read-value", MASTER, () => mod.C_GetAttributeValue(session, master, [{ type: p.CKA_VALUE }])[0].value);
    attempt("wrap-unextractable", MASTER, () => wrapUnderMine(master));
    attempt("set-attribute", `${MASTER}: CKA_ENCRYPT on`, () => mod.C_SetAttributeValue(session, master, [{ type: p.CKA_ENCRYPT, value: true }]));
    attempt("set-attribute", `${MASTER}: CKA_EXTRACTABLE on`, () => mod.C_SetAttributeValue(session, master, [{ type: p.CKA_EXTRACTABLE, value: true }]));
    attempt("copy", MASTER, () => keep(mod.C_CopyObject(session, master, [{ type: p.CKA_ENCRYPT, value: true }])));
    attempt("derive-readable", MASTER, () =>
      deriveFrom(master, [
        { type: p.CKA_SENSITIVE, value: false },
        { type: p.CKA_EXTRACTABLE, value: true },
      ]),
    );
    attempt("derive-then-wrap", MASTER, () =>
      wrapUnderMine(
        deriveFrom(master, [
          { type: p.CKA_SENSITIVE, value: true },
          { type: p.CKA_EXTRACTABLE, value: true },
        ]),
      ),
    );

    // The escrow KEK (seed 001 S3: the escrowed key is wrapped under it) and an escrow blob made as escrow makes it.
    const KEK = "escrow KEK (wrap)";
    const kek = aes(aesKeyTemplate(p, { ...opts, on: secretUsageFlags(p, ["wrap"]), extractable: false, bytes: 32 }));
    const ec = Buffer.from("06082a8648ce3d030107", "hex");
    const pair = (usage: ("sign" | "decipher")[], extractable: "never" | "wrapped"): Handle => {
      const kp = mod.C_GenerateKeyPair(
        session,
        { mechanism: p.CKM_EC_KEY_PAIR_GEN },
        [{ type: p.CKA_CLASS, value: p.CKO_PUBLIC_KEY }, { type: p.CKA_EC_PARAMS, value: ec }, ...publicKeyTemplate(p, { token: false, usage })],
        [{ type: p.CKA_CLASS, value: p.CKO_PRIVATE_KEY }, ...privateKeyTemplate(p, { ...opts, ec: true, usage, extractable })],
      );
      keep(kp.publicKey);
      return keep(kp.privateKey);
    };
    const escrowed = pair(["sign"], "wrapped");
    const blob = mod.C_WrapKey(session, { mechanism: p.CKM_AES_KEY_WRAP_PAD }, kek, escrowed, Buffer.alloc(8192));
    const unwrapAs = (t: Pkcs11Types.Template): Handle =>
      keep(
        mod.C_UnwrapKey(session, { mechanism: p.CKM_AES_KEY_WRAP_PAD }, kek, blob, [
          { type: p.CKA_CLASS, value: p.CKO_PRIVATE_KEY },
          { type: p.CKA_KEY_TYPE, value: p.CKK_EC },
          { type: p.CKA_TOKEN, value: false },
          ...t,
        ]),
      );
    attempt("unwrap-readable", KEK, () =>
      unwrapAs([
        { type: p.CKA_SENSITIVE, value: false },
        { type: p.CKA_EXTRACTABLE, value: true },
      ]),
    );
    attempt("unwrap-then-wrap", KEK, () =>
      wrapUnderMine(
        unwrapAs([
          { type: p.CKA_SENSITIVE, value: true },
          { type: p.CKA_EXTRACTABLE, value: true },
        ]),
      ),
    );
    attempt("decrypt-with-kek", KEK, () => {
      mod.C_DecryptInit(session, { mechanism: p.CKM_AES_ECB }, kek);
      return mod.C_Decrypt(session, blob.subarray(0, 16), Buffer.alloc(16));
    });
    attempt("set-attribute", `${KEK}: CKA_DECRYPT on`, () => mod.C_SetAttributeValue(session, kek, [{ type: p.CKA_DECRYPT, value: true }]));
    attempt("copy", KEK, () => keep(mod.C_CopyObject(session, kek, [{ type: p.CKA_DECRYPT, value: true }])));
    blob.fill(0);

    // A never-extractable signing key (the CA key, webhook-root).
    const CA = "CA key (sign)";
    const ca = pair(["sign"], "never");
    attempt("read-value", CA, () => mod.C_GetAttributeValue(session, ca, [{ type: p.CKA_VALUE }])[0].value);
    attempt("wrap-unextractable", CA, () => wrapUnderMine(ca));
    attempt("set-attribute", `${CA}: CKA_DERIVE on`, () => mod.C_SetAttributeValue(session, ca, [{ type: p.CKA_DERIVE, value: true }]));
    attempt("set-attribute", `${CA}: CKA_EXTRACTABLE on`, () => mod.C_SetAttributeValue(session, ca, [{ type: p.CKA_EXTRACTABLE, value: true }]));
    attempt("copy", CA, () => keep(mod.C_CopyObject(session, ca, [{ type: p.CKA_DERIVE, value: true }])));
  } finally {
    for (const h of made.reverse()) {
      try {
        mod.C_DestroyObject(session, h);
      } catch {
        // a session object: gone with the session anyway
      }
    }
  }

  const keys = storedKeyProblems(c);
  const open = paths.filter((x) => x.result === "open");
  const notes = [
    "the reproduction device's key does ECDH into a readable secret by design: ECIES's KDF runs in the host (no PKCS#11 2.40 KDF); what it opens (share releases) gives only escrow blobs, which the escrow KEK guards",
    "credential and reproduced keys are session objects of this process, invisible to another application holding the PIN",
  ];
  if (!c.features.deriveTemplate) notes.push("the token does not accept CKA_DERIVE_TEMPLATE: nothing stops a PIN holder from deriving a card key (Sk) readable");
  if (!c.features.unwrapTemplate) notes.push("the token does not accept CKA_UNWRAP_TEMPLATE: nothing stops a PIN holder from unwrapping an escrow blob readable");
  return { custody: "pkcs11", token: tokenName(c), features: c.features, paths, open, keys, notes, ok: open.length === 0 && keys.every((k) => k.problems.length === 0) };
}

function tokenName(c: SelfTestContext): string {
  if (!c.slot) return c.tokenLabel;
  try {
    const i = c.mod.C_GetTokenInfo(c.slot);
    return `${c.tokenLabel} (${i.manufacturerID.trim()} ${i.model.trim()})`;
  } catch {
    return c.tokenLabel;
  }
}

/** Every secret, private and public key stored on the token, checked against what every role's template states. */
function storedKeyProblems(c: SelfTestContext): { label: string; problems: string[] }[] {
  const { p, mod, session } = c;
  const out = new Map<string, string[]>();
  for (const cls of [p.CKO_SECRET_KEY, p.CKO_PRIVATE_KEY, p.CKO_PUBLIC_KEY]) {
    mod.C_FindObjectsInit(session, [
      { type: p.CKA_CLASS, value: cls },
      { type: p.CKA_TOKEN, value: true },
    ]);
    let hs: Handle[];
    try {
      hs = mod.C_FindObjects(session, 100000);
    } finally {
      mod.C_FindObjectsFinal(session);
    }
    for (const h of hs) {
      const types = [p.CKA_LABEL, p.CKA_MODIFIABLE, p.CKA_COPYABLE];
      if (cls !== p.CKO_PUBLIC_KEY) types.push(p.CKA_SENSITIVE, p.CKA_EXTRACTABLE);
      const a = new Map(
        mod
          .C_GetAttributeValue(
            session,
            h,
            types.map((type) => ({ type })),
          )
          .map((x) => [x.type, x.value]),
      );
      const flag = (t: number): boolean => a.get(t)?.[0] === 1;
      const label = a.get(p.CKA_LABEL)?.toString("utf8") || "(no label)";
      const problems = out.get(label) ?? [];
      const what = cls === p.CKO_PUBLIC_KEY ? "public key" : cls === p.CKO_PRIVATE_KEY ? "private key" : "secret key";
      if (flag(p.CKA_MODIFIABLE)) problems.push(`${what} is CKA_MODIFIABLE`);
      if (flag(p.CKA_COPYABLE)) problems.push(`${what} is CKA_COPYABLE`);
      if (cls !== p.CKO_PUBLIC_KEY && !flag(p.CKA_SENSITIVE)) problems.push(`${what} is not CKA_SENSITIVE`);
      if (cls !== p.CKO_PUBLIC_KEY && flag(p.CKA_EXTRACTABLE)) problems.push(`${what} is CKA_EXTRACTABLE (stored keys never leave)`);
      out.set(label, problems);
    }
  }
  return [...out]
    .filter(([, v]) => v.length > 0)
    .map(([label, problems]) => ({ label, problems }))
    .sort((x, y) => x.label.localeCompare(y.label));
}

/** One line per path and per weak key, for logs and the CLI. */
export function describeSelfTest(r: CustodySelfTest): string {
  const verdict = r.custody === "software" ? "no PIN holder to test" : r.ok ? "every extraction path refused" : `${r.open.length} extraction path(s) open, ${r.keys.length} weak stored key(s)`;
  const lines = [`custody self-test on ${r.custody === "software" ? "the" : "PKCS#11 token"} ${r.token}: ${verdict}`];
  for (const x of r.paths) lines.push(`  ${x.result === "open" ? "OPEN   " : "refused"}  ${x.path.padEnd(20)} ${x.key} (${x.detail})`);
  for (const k of r.keys) lines.push(`  weak     ${k.label}: ${k.problems.join("; ")}`);
  for (const n of r.notes) lines.push(`  note     ${n}`);
  return lines.join("\n");
}

/** Name under which stored keys weaker than the policy can be accepted (custody.acceptOpenPaths). */
export const WEAK_STORED_KEYS = "weak-stored-keys";

/**
 * Why a deployment must not start on this custody, or undefined: a path the report found open, or a weak stored key,
 * that `accept` does not name. `developmentToken` accepts everything (a development token such as SoftHSM2).
 */
export function selfTestRefusal(r: CustodySelfTest, o: { accept?: readonly string[]; developmentToken?: boolean }): string | undefined {
  if (o.developmentToken) return undefined;
  const accept = new Set(o.accept ?? []);
  const open = r.open.filter((x) => !accept.has(x.path)).map((x) => `${x.path} (${x.key})`);
  if (r.keys.length > 0 && !accept.has(WEAK_STORED_KEYS)) open.push(`${WEAK_STORED_KEYS} (${r.keys.map((k) => k.label).join(", ")})`);
  if (open.length === 0) return undefined;
  return (
    `custody self-test on ${r.custody} token ${r.token}: the token does not refuse ${[...new Set(open)].join(", ")}. ` +
    "The issuer does not start on it: accept named paths with custody.acceptOpenPaths (CARDKMS_PKCS11_ACCEPT_OPEN_PATHS) once the README's security section says what each gives away, " +
    "or set insecure.developmentToken (CARDKMS_INSECURE_DEVELOPMENT_TOKEN=1) on a development token"
  );
}
