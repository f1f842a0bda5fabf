// A logged-in session on the token, and the plumbing every PKCS#11 custody operation goes through: calls that
// refuse once the custody is closed and name the PKCS#11 function when they fail (errors.ts), finding objects by
// label and class, reading attributes, destroying session objects, and the label, ID and template of a stored key.
//
// pkcs11js calls are synchronous: each custody operation runs to completion without yielding, so the one session
// of an instance is never shared by two operations at once.

import { createHash } from "node:crypto";
import type * as Pkcs11Types from "pkcs11js";
import { CustodyError, type Extractability, type SecretKeyUsage } from "../custody.ts";
import { mapError } from "./errors.ts";
import type { Handle, P11 } from "./types.ts";
import { aesKeyTemplate, secretUsageFlags, type Template, type TokenFeatures } from "./templates.ts";

const labelId = (label: string): Buffer => createHash("sha256").update(label).digest().subarray(0, 16);

export class Pkcs11Token {
  /** Set by Pkcs11Custody.close(): every call refuses from then on. */
  closed = false;

  constructor(
    readonly p: P11,
    readonly mod: Pkcs11Types.PKCS11,
    readonly modulePath: string,
    readonly session: Handle,
    readonly slot: Handle,
    readonly tokenLabel: string,
    /** What the token accepts beyond PKCS#11 2.20 (CKA_UNWRAP_TEMPLATE, CKA_DERIVE_TEMPLATE). */
    readonly features: TokenFeatures,
  ) {}

  call<T>(fn: string, what: string, f: () => T): T {
    if (this.closed) throw new CustodyError("UNAVAILABLE", "custody is closed");
    try {
      return f();
    } catch (e) {
      throw mapError(e, fn, what);
    }
  }

  find(template: Template, max = 1000): Handle[] {
    return this.call("C_FindObjects", "find keys", () => {
      this.mod.C_FindObjectsInit(this.session, template);
      try {
        return this.mod.C_FindObjects(this.session, max);
      } finally {
        this.mod.C_FindObjectsFinal(this.session);
      }
    });
  }

  object(label: string, cls: number): Handle | undefined {
    const found = this.find(
      [
        { type: this.p.CKA_LABEL, value: label },
        { type: this.p.CKA_CLASS, value: cls },
      ],
      2,
    );
    if (found.length > 1) throw new CustodyError("CORRUPT", `more than one object labelled ${label} on token ${this.tokenLabel}`);
    return found[0];
  }

  secretHandle(label: string, usage?: SecretKeyUsage): Handle {
    const h = this.object(label, this.p.CKO_SECRET_KEY);
    if (!h) {
      if (this.object(label, this.p.CKO_PRIVATE_KEY)) throw new CustodyError("INVALID_ARGUMENT", `${label} is not a secret key`);
      throw new CustodyError("NOT_FOUND", `no key labelled ${label}`);
    }
    if (usage) {
      const attrs = [...secretUsageFlags(this.p, [usage])];
      const got = this.attrs(h, attrs, label);
      if (!attrs.every((a) => got.get(a)?.[0] === 1)) throw new CustodyError("NOT_PERMITTED", `key ${label} is not allowed to ${usage}`);
    }
    return h;
  }

  privateHandle(label: string): Handle {
    const h = this.object(label, this.p.CKO_PRIVATE_KEY);
    if (!h) {
      if (this.object(label, this.p.CKO_SECRET_KEY)) throw new CustodyError("INVALID_ARGUMENT", `${label} is not a key pair`);
      throw new CustodyError("NOT_FOUND", `no key labelled ${label}`);
    }
    return h;
  }

  attrs(h: Handle, types: number[], what: string): Map<number, Buffer> {
    const res = this.call("C_GetAttributeValue", what, () =>
      this.mod.C_GetAttributeValue(
        this.session,
        h,
        types.map((type) => ({ type })),
      ),
    );
    return new Map(res.map((a) => [a.type, a.value]));
  }

  destroy(...hs: (Handle | undefined)[]): void {
    for (const h of hs) {
      if (!h) continue;
      try {
        this.mod.C_DestroyObject(this.session, h);
      } catch {
        // session objects vanish with the session anyway
      }
    }
  }

  exists(label: string): boolean {
    return this.find([{ type: this.p.CKA_LABEL, value: label }], 1).length > 0;
  }

  /** Label and ID of a stored object (class and everything else come from its role's template). */
  named(label: string): Template {
    return [
      { type: this.p.CKA_LABEL, value: label },
      { type: this.p.CKA_ID, value: labelId(label) },
    ];
  }

  /** A stored AES key (a master, a KEK, a key of an imported key set): templates.ts aesKeyTemplate. */
  secretTemplate(label: string, usage: SecretKeyUsage[], extractable: Extractability, bytes?: number): Template {
    return [...this.named(label), ...aesKeyTemplate(this.p, { token: true, on: secretUsageFlags(this.p, usage), extractable: extractable === "wrapped", features: this.features, bytes })];
  }
}
