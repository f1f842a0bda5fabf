// Issue 17 items 4 and 5 over HTTP: the CA certifies a key once, in its one encoding, only if it is a key somebody
// can hold, and only for a requester who proved it holds it.
//   - A CA site (buildServer + bearer auth + caRoutes over the CA's LocalCaClient, as ca-routes.test.ts builds it):
//     bare SPKIs from the issuing service's credential (role "issuer"), requests from everybody.
//   - The issuer server as main.ts wires it (issuerApiEnv): /v1/ca/certify, requests through the certification
//     center, tokens from the operators table.
//   - The key generation device's registry, keyed on the canonical encoding too.
// Every refusal is a 4xx problem+json naming its check, never a 500. Keys are pre-generated (test/support/ca-testing.ts caches
// one per algorithm and label): one RSA-2048 key generation for the whole file.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { join } from "node:path";
import fc from "fast-check";
import type { FastifyInstance } from "fastify";
import type { CertificationAuthority } from "../src/ca/authority.ts";
import { CaRefusal } from "../src/ca/checks.ts";
import { LocalCaClient, type CaClient } from "../src/ca/client.ts";
import * as der from "../src/ca/der.ts";
import type { SubjectName } from "../src/ca/name.ts";
import { toPem } from "../src/ca/pem.ts";
import { csrWith, ecPoint, ecSpki, hierarchy, intContent, keyPair, rsaParts, rsaSpki, spkiOf } from "./support/ca-testing.ts";
import type { KeyCustody, KeySetRef } from "../src/custody/custody.ts";
import { SoftwareCustody } from "../src/custody/software.ts";
import { KeyGenerationDevice } from "../src/keygen/device.ts";
import { KeyGenerationRefusal } from "../src/keygen/errors.ts";
import { MemoryIssuedKeyRegistry } from "../src/keygen/registry.ts";
import { buildServer } from "../src/server/app.ts";
import { hashToken, installAuth, type Principal } from "../src/server/auth.ts";
import { caRoutes } from "../src/server/ca-routes.ts";
import { createOperatorToken } from "../src/server/main.ts";
import { testEngines } from "./support/store-testing.ts";
import { api, issuerApiEnv, registeredData, type ApiEnv } from "./api-env.ts";
import { tempDir } from "./helpers.ts";

const ISSUER = "ckms_issuer-service-token-0000000";
const OPERATOR = "ckms_operator-token-of-a-person-00";

const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
const b64 = (b: Uint8Array) => Buffer.from(b).toString("base64");
const big = (b: Uint8Array) => BigInt("0x" + Buffer.from(b).toString("hex"));
const mag = (v: bigint): Uint8Array => {
  const h = v.toString(16);
  return new Uint8Array(Buffer.from((h.length % 2 ? "0" : "") + h, "hex"));
};

const rsaKey = keyPair("RSA2048", "subject");
const ecKey = keyPair("P256", "subject");
const { n, e } = rsaParts(rsaKey.publicKey);

interface Answer {
  status: number;
  check?: string;
  body: Record<string, unknown>;
}

/** A refusal as the wire carries it: 4xx problem+json with a check; returns the check. */
function refusal(a: Answer, what = ""): string {
  assert.ok(a.status >= 400 && a.status < 500, `${what}: expected a 4xx refusal, got ${a.status} ${JSON.stringify(a.body).slice(0, 300)}`);
  assert.equal(typeof a.check, "string", `${what}: the problem names the check`);
  return a.check!;
}

// ---- a CA site ---------------------------------------------------------------------------------------------------

interface CaSite {
  app: FastifyInstance;
  issuing: CertificationAuthority;
  certify(body: object, token: string): Promise<Answer>;
}

async function caSite(): Promise<CaSite> {
  const { issuing } = await hierarchy();
  const { app } = await buildServer();
  const principals = new Map<string, Principal>([
    [hashToken(ISSUER), { name: "issuer", roles: ["issuer"] }],
    [hashToken(OPERATOR), { name: "olga", roles: ["operator"] }],
  ]);
  installAuth(app, async (h) => principals.get(h));
  await app.register(caRoutes, { client: new LocalCaClient(issuing) });
  await app.ready();
  return {
    app,
    issuing,
    async certify(body, token) {
      const r = await app.inject({ method: "POST", url: "/ca/certify", headers: { authorization: `Bearer ${token}` }, payload: body });
      const json = r.json() as Record<string, unknown>;
      if (r.statusCode >= 400) assert.match(String(r.headers["content-type"]), /^application\/problem\+json/);
      return { status: r.statusCode, check: json.check as string | undefined, body: json };
    },
  };
}

const bare = (spki: Uint8Array, commonName = "Hanako Yamada") => ({ profile: "signature", subject: { commonName }, publicKey: b64(spki) });
const byCsr = (csr: Uint8Array, applicantId?: string) => ({ profile: "signature", csr: toPem(csr, "CERTIFICATE REQUEST"), ...(applicantId ? { applicantId } : {}) });

// ---- re-encodings of a key (fast-check) ----------------------------------------------------------------------------

/** How one element is written: extra length octets (long form where DER wants short or fewer), indefinite length. */
interface Knob {
  extra: number;
  indefinite: boolean;
}
const knob: fc.Arbitrary<Knob> = fc.record({ extra: fc.constantFrom(0, 0, 0, 1, 2), indefinite: fc.constantFrom(false, false, false, true) });
const plain: Knob = { extra: 0, indefinite: false };
const berOnly = (k: Knob, constructed: boolean) => k.extra > 0 || (constructed && k.indefinite);

function lengthOctets(len: number, extra: number): number[] {
  const b: number[] = [];
  for (let v = len; v > 0; v = Math.floor(v / 256)) b.unshift(v & 0xff);
  if (b.length === 0) b.push(0);
  if (extra === 0) return len < 0x80 ? [len] : [0x80 | b.length, ...b];
  const all = [...new Array<number>(len < 0x80 ? extra - 1 : extra).fill(0), ...b];
  return [0x80 | all.length, ...all];
}

function tlvAs(tag: number, content: Uint8Array, k: Knob): Uint8Array {
  if (tag & 0x20 && k.indefinite) return der.concat([Uint8Array.of(tag, 0x80), content, Uint8Array.of(0, 0)]);
  return der.concat([Uint8Array.of(tag, ...lengthOctets(content.length, k.extra)), content]);
}

/** An OID with a redundant 0x80 before its last (single-octet) subidentifier: the same OID in BER. */
const oidContent = (dotted: string, nonMinimal: boolean) => {
  const c = der.oid(dotted).subarray(2);
  return nonMinimal ? der.concat([c.subarray(0, -1), Uint8Array.of(0x80), c.subarray(-1)]) : c;
};

interface Reencoding {
  spki: Uint8Array;
  /** Written with a BER-only form somewhere (not DER). */
  ber: boolean;
  /** The point written compressed or hybrid (same key, a form the CA does not take). */
  otherPointForm: boolean;
}

const bitStringAs = (content: Uint8Array, k: Knob, constructed: boolean) => (constructed ? tlvAs(0x23, tlvAs(der.TAG.BIT_STRING, content, plain), k) : tlvAs(der.TAG.BIT_STRING, content, k));

/** Every way of writing the test RSA key this generator knows: padded INTEGERs, long and indefinite lengths, … */
const rsaReencoding: fc.Arbitrary<Reencoding> = fc
  .record({
    padN: fc.constantFrom(0, 0, 1, 2, 3),
    padE: fc.constantFrom(0, 0, 1, 2),
    kN: knob,
    kE: knob,
    kRsa: knob,
    kBits: knob,
    bitsConstructed: fc.constantFrom(false, false, false, true),
    kOid: knob,
    oidNonMinimal: fc.constantFrom(false, false, false, true),
    nullAbsent: fc.constantFrom(false, false, false, true),
    kAlg: knob,
    kSpki: knob,
  })
  .map((r) => {
    const rsaPublicKey = tlvAs(0x30, der.concat([tlvAs(der.TAG.INTEGER, intContent(n, r.padN), r.kN), tlvAs(der.TAG.INTEGER, intContent(e, r.padE), r.kE)]), r.kRsa);
    const bits = bitStringAs(der.concat([Uint8Array.of(0), rsaPublicKey]), r.kBits, r.bitsConstructed);
    const alg = tlvAs(0x30, der.concat([tlvAs(der.TAG.OID, oidContent("1.2.840.113549.1.1.1", r.oidNonMinimal), r.kOid), r.nullAbsent ? new Uint8Array(0) : Uint8Array.of(5, 0)]), r.kAlg);
    const ber =
      r.padN > 0 ||
      r.padE > 0 ||
      r.bitsConstructed ||
      r.oidNonMinimal ||
      r.nullAbsent ||
      [r.kN, r.kE, r.kBits].some((k) => berOnly(k, false)) ||
      [r.kRsa, r.kAlg, r.kSpki].some((k) => berOnly(k, true)) ||
      r.kOid.extra > 0;
    return { spki: tlvAs(0x30, der.concat([alg, bits]), r.kSpki), ber, otherPointForm: false };
  });

/** The same for the test P-256 key, with the point also written compressed or hybrid. */
const ecReencoding: fc.Arbitrary<Reencoding> = fc
  .record({
    form: fc.constantFrom("uncompressed", "uncompressed", "compressed", "hybrid"),
    kBits: knob,
    bitsConstructed: fc.constantFrom(false, false, false, true),
    kAlgOid: knob,
    kCurve: knob,
    algOidNonMinimal: fc.constantFrom(false, false, false, true),
    curveNonMinimal: fc.constantFrom(false, false, false, true),
    kAlg: knob,
    kSpki: knob,
  })
  .map((r) => {
    const pt = ecPoint(ecKey.publicKey);
    const odd = pt[64] & 1;
    const point = r.form === "compressed" ? der.concat([Uint8Array.of(2 + odd), pt.subarray(1, 33)]) : r.form === "hybrid" ? der.concat([Uint8Array.of(6 + odd), pt.subarray(1)]) : pt;
    const bits = bitStringAs(der.concat([Uint8Array.of(0), point]), r.kBits, r.bitsConstructed);
    const alg = tlvAs(
      0x30,
      der.concat([tlvAs(der.TAG.OID, oidContent("1.2.840.10045.2.1", r.algOidNonMinimal), r.kAlgOid), tlvAs(der.TAG.OID, oidContent("1.2.840.10045.3.1.7", r.curveNonMinimal), r.kCurve)]),
      r.kAlg,
    );
    const ber = r.bitsConstructed || r.algOidNonMinimal || r.curveNonMinimal || [r.kBits, r.kAlgOid, r.kCurve].some((k) => berOnly(k, false)) || [r.kAlg, r.kSpki].some((k) => berOnly(k, true));
    return { spki: tlvAs(0x30, der.concat([alg, bits]), r.kSpki), ber, otherPointForm: r.form !== "uncompressed" };
  });

/**
 * The check a re-encoding must be refused with: the one DER encoding is the certified key itself (a duplicate);
 * BER somewhere is an encoding refusal — in a request, "csr-format" when the CA's walk over the whole request meets
 * it first; a compressed or hybrid point in DER is a form the CA does not certify.
 */
function expectedChecks(v: Reencoding, canonical: Uint8Array, inCsr: boolean): string[] {
  if (der.equalBytes(v.spki, canonical)) return ["duplicate-public-key"];
  if (v.ber) return inCsr ? ["public-key-encoding", "csr-format"] : ["public-key-encoding"];
  assert.ok(v.otherPointForm, "any other writing is BER or another point form");
  return ["public-key"];
}

describe("a CA site: the same key is certified once, in its one encoding", () => {
  let site: CaSite;
  before(async () => {
    site = await caSite();
    // the issuing service certifies both keys from its custody, as DER
    for (const k of [rsaKey, ecKey]) assert.equal((await site.certify(bare(spkiOf(k.publicKey)), ISSUER)).status, 200);
  });
  after(() => site?.app.close());

  test("the issue's RSA re-encodings (modulus 00 00‖n, exponent 00 01 00 01, long lengths) are refused as bare SPKIs and in requests", async () => {
    const canonical = spkiOf(rsaKey.publicKey);
    const variants: [string, Uint8Array][] = [
      ["modulus 00 00‖n", rsaSpki(intContent(n, 1), intContent(e))],
      ["exponent 00 01 00 01", rsaSpki(intContent(n), intContent(e, 1))],
      ["long-form length of the SPKI", der.concat([Uint8Array.of(0x30, 0x83, 0, canonical[2], canonical[3]), canonical.subarray(4)])],
    ];
    for (const [what, spki] of variants) {
      assert.equal(refusal(await site.certify(bare(spki, "Second Certificate"), ISSUER), what), "public-key-encoding", what);
      // the holder signs a request for its own key written this way: the signature verifies, the encoding does not pass
      const check = refusal(await site.certify(byCsr(csrWith(spki, { commonName: "Second Certificate" }, rsaKey.privateKey)), OPERATOR), `${what} (CSR)`);
      assert.ok(["public-key-encoding", "csr-format"].includes(check), `${what} (CSR): ${check}`);
    }
    assert.equal(refusal(await site.certify(bare(canonical, "Second Certificate"), ISSUER)), "duplicate-public-key");
    assert.equal(refusal(await site.certify(byCsr(csrWith(canonical, { commonName: "Second Certificate" }, rsaKey.privateKey)), OPERATOR)), "duplicate-public-key");
  });

  for (const [name, arb, k] of [
    ["RSA-2048", rsaReencoding, rsaKey],
    ["P-256", ecReencoding, ecKey],
  ] as const) {
    test(`property: every re-encoding of a certified ${name} key is refused — as not DER, another form, or a duplicate — never certified again`, async () => {
      const canonical = spkiOf(k.publicKey);
      const seen = { bare: new Map<string, number>(), csr: new Map<string, number>() };
      await fc.assert(
        fc.asyncProperty(arb, fc.boolean(), async (v, asCsr) => {
          const body = asCsr ? byCsr(csrWith(v.spki, { commonName: "Mallory" }, k.privateKey)) : bare(v.spki, "Mallory");
          const a = await site.certify(body, asCsr ? OPERATOR : ISSUER);
          const check = refusal(a, Buffer.from(v.spki).toString("hex"));
          assert.ok(expectedChecks(v, canonical, asCsr).includes(check), `${check} for ${Buffer.from(v.spki).toString("hex")}`);
          const m = asCsr ? seen.csr : seen.bare;
          m.set(check, (m.get(check) ?? 0) + 1);
        }),
        { numRuns: 150 },
      );
      // the generator reached the interesting cases on both paths
      assert.ok((seen.bare.get("public-key-encoding") ?? 0) > 0 && (seen.csr.get("public-key-encoding") ?? 0) + (seen.csr.get("csr-format") ?? 0) > 0, JSON.stringify([...seen.bare, ...seen.csr]));
    });
  }
});

describe("a CA site: keys nobody holds are not certified (bare SPKIs from the issuing service's credential)", () => {
  let site: CaSite;
  before(async () => {
    site = await caSite();
  });
  after(() => site?.app.close());

  test("RSA by value: e < 2^16+1, e even, e > 2^256−1, an even modulus, a small prime factor, a perfect power, a wrong size", async () => {
    const nv = big(n);
    const withE = (ev: bigint) => rsaSpki(intContent(n), intContent(mag(ev)));
    const withN = (mv: bigint) => rsaSpki(intContent(mag(mv)), intContent(e));
    let by3 = nv - (nv % 3n);
    if (!(by3 & 1n)) by3 -= 3n;
    const p = big(new Uint8Array(Buffer.from(rsaKey.privateKey.export({ format: "jwk" }).p!, "base64url")));
    const cases: [string, Uint8Array, RegExp][] = [
      ["e = 3", withE(3n), /exponent/],
      ["e = 65535", withE(65535n), /exponent/],
      ["e = 65538 (even)", withE(65538n), /exponent/],
      ["e = 2^256 + 1", withE(2n ** 256n + 1n), /exponent/],
      ["even modulus", withN(nv - 1n), /even/],
      ["modulus divisible by 3", withN(by3), /small prime factor 3\b/],
      ["modulus p² (a perfect power)", withN(p * p), /perfect power/],
      ["modulus of 2047 bits", withN(nv >> 1n), /2047 bits/],
    ];
    for (const [what, spki, detail] of cases) {
      const a = await site.certify(bare(spki, what), ISSUER);
      assert.equal(refusal(a, what), "public-key", what);
      assert.equal(a.status, 422, what);
      assert.match(String(a.body.detail), detail, what);
    }
  });

  test("EC by value: a point off the curve, the all-zero point, a coordinate written as x + p", async () => {
    const pt = ecPoint(ecKey.publicKey);
    const off = pt.slice();
    off[64] ^= 1;
    const cases: [string, Uint8Array, RegExp][] = [
      ["P-256 point off the curve", ecSpki("P256", off), /not on the curve/],
      ["P-256 all-zero point", ecSpki("P256", der.concat([Uint8Array.of(4), new Uint8Array(64)])), /\(0,0\)/],
      ["P-384 all-zero point", ecSpki("P384", der.concat([Uint8Array.of(4), new Uint8Array(96)])), /\(0,0\)/],
      ["P-256 x = p + 1", ecSpki("P256", der.concat([Uint8Array.of(4), mag(2n ** 256n - 2n ** 224n + 2n ** 192n + 2n ** 96n), pt.subarray(33)])), /not below/],
    ];
    for (const [what, spki, detail] of cases) {
      const a = await site.certify(bare(spki, what), ISSUER);
      assert.equal(refusal(a, what), "public-key", what);
      assert.match(String(a.body.detail), detail, what);
    }
  });

  test("a request carrying a point off the curve is refused for its key, not merely for its signature", async () => {
    const off = ecPoint(ecKey.publicKey);
    off[64] ^= 1;
    const csr = csrWith(ecSpki("P256", off), { commonName: "Mallory" }, ecKey.privateKey);
    assert.equal(refusal(await site.certify(byCsr(csr), OPERATOR)), "public-key");
  });

  test("deep ASN.1 in a request is refused fast, as csr-format", async () => {
    const depth = 2000; // what fits the schema's 16 KiB of PEM
    let body: Uint8Array = Uint8Array.of(5, 0);
    for (let i = 0; i < depth; i++) body = der.sequence(body);
    assert.equal(refusal(await site.certify(byCsr(body), OPERATOR)), "csr-format");
  });
});

// ---- the issuer server as main.ts builds it ------------------------------------------------------------------------

/** PKCS#1 v1.5 encoding of SHA-256(data) for a 2048-bit modulus (RFC 8017 §9.2): with e = 1 it is its own signature. */
function emsaPkcs1Sha256(data: Uint8Array): Uint8Array {
  const digestInfo = der.concat([new Uint8Array(Buffer.from("3031300d060960864801650304020105000420", "hex")), createHash("sha256").update(data).digest()]);
  const em = new Uint8Array(256).fill(0xff);
  em[0] = 0;
  em[1] = 1;
  em[256 - digestInfo.length - 1] = 0;
  em.set(digestInfo, 256 - digestInfo.length);
  return em;
}

describe("the issuer server: /v1/ca/certify through the certification center", () => {
  let env: ApiEnv;
  let post: ReturnType<typeof api>["post"];
  let hanako: string, mallory: string;
  const certify = async (body: object, token: string): Promise<Answer> => {
    const r = await post("/v1/ca/certify", token, body);
    const json = r.json() as Record<string, unknown>;
    if (r.statusCode >= 400) assert.match(String(r.headers["content-type"]), /^application\/problem\+json/);
    return { status: r.statusCode, check: json.check as string | undefined, body: json };
  };
  const registered = (name: string): SubjectName => registeredData(name);

  before(async () => {
    env = await issuerApiEnv(testEngines()[0], { logLevel: "silent" });
    ({ post } = api(env));
    hanako = (await post("/v1/users", env.tokens.operator, { personalData: registeredData("Hanako Yamada") })).json().id as string;
    mallory = (await post("/v1/users", env.tokens.operator, { personalData: registeredData("Mallory Mole") })).json().id as string;
    // Hanako's own RSA key, certified from her signed request
    const own = await certify(byCsr(csrWith(spkiOf(rsaKey.publicKey), registered("Hanako Yamada"), rsaKey.privateKey), hanako), env.tokens.operator);
    assert.equal(own.status, 200, JSON.stringify(own.body));
  });
  after(() => env?.close());

  test("a request with e = 1 written 00 01 for Hanako's modulus under Mallory's name: refused (it verified and was certified before)", async () => {
    const forged = csrWith(rsaSpki(intContent(n), Uint8Array.of(0, 1)), registered("Mallory Mole"), { family: "rsa", sign: emsaPkcs1Sha256 });
    const check = refusal(await certify(byCsr(forged, mallory), env.tokens.operator));
    assert.equal(check, "public-key-encoding");
    // and e = 1 written as DER is refused by its value
    const forgedDer = csrWith(rsaSpki(intContent(n), Uint8Array.of(1)), registered("Mallory Mole"), { family: "rsa", sign: emsaPkcs1Sha256 });
    const a = await certify(byCsr(forgedDer, mallory), env.tokens.operator);
    assert.equal(refusal(a), "public-key");
    assert.match(String(a.body.detail), /exponent/);
  });

  test("Hanako's key written another way, signed by her, is not certified a second time", async () => {
    for (const spki of [rsaSpki(intContent(n, 1), intContent(e)), rsaSpki(intContent(n), intContent(e, 1))]) {
      assert.equal(refusal(await certify(byCsr(csrWith(spki, registered("Hanako Yamada"), rsaKey.privateKey), hanako), env.tokens.operator)), "public-key-encoding");
    }
    assert.equal(refusal(await certify(byCsr(csrWith(spkiOf(rsaKey.publicKey), registered("Hanako Yamada"), rsaKey.privateKey), hanako), env.tokens.operator)), "duplicate-public-key");
  });

  test("proof of possession: an operator's or an admin's bare SPKI is refused; the issuing service's credential (role issuer) is served", async () => {
    const victim = spkiOf(keyPair("P384", "victim").publicKey);
    for (const token of [env.tokens.operator, env.tokens.admin]) {
      const a = await certify(bare(victim, "Mallory Mole"), token);
      assert.equal(refusal(a), "proof-of-possession");
      assert.equal(a.status, 422);
    }
    const { token: issuerToken } = await createOperatorToken(env.server.store, "issuer-site-b", ["issuer"]);
    assert.equal((await certify(bare(victim, "Victim"), issuerToken)).status, 200);
    // its keys pass the same checks: another writing of the same key is refused, the key itself is a duplicate
    assert.equal(refusal(await certify(bare(der.concat([Uint8Array.of(0x30, 0x81), victim.subarray(1)]), "Victim"), issuerToken)), "public-key-encoding");
    assert.equal(refusal(await certify(bare(victim, "Victim"), issuerToken)), "duplicate-public-key");
    // an auditor may not certify at all
    assert.equal((await post("/v1/ca/certify", env.tokens.auditor, bare(spkiOf(keyPair("P256", "other").publicKey)))).statusCode, 403);
  });
});

// ---- the key generation device's registry ---------------------------------------------------------------------------

/** Custody whose key source hands out `repeat` — an earlier key, written another way — for every key it generates. */
function repeatingCustody(inner: KeyCustody, repeat: Uint8Array): KeyCustody {
  return new Proxy(inner, {
    get(target, prop, receiver) {
      if (prop === "publicKey") return async () => repeat;
      const v = Reflect.get(target, prop, receiver) as unknown;
      return typeof v === "function" ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}

test("the key generation device: a key generated before, written another way, is caught at step 414 as duplicate-public-key", async () => {
  const custody = await SoftwareCustody.open({ path: join(tempDir(), "keystore.json"), key: randomBytes(32).toString("hex") });
  const { root } = await hierarchy();
  const center: CaClient = {
    certify: async () => {
      throw new CaRefusal("not-reached", "the center must not be asked");
    },
    revoke: async () => {},
    crl: async () => new Uint8Array(0),
    caCertificates: async () => [root.certificate],
  };
  try {
    const spki = spkiOf(rsaKey.publicKey);
    const rewritten: [string, Uint8Array][] = [
      ["modulus 00 00‖n", rsaSpki(intContent(n, 1), intContent(e))],
      ["exponent 00 01 00 01", rsaSpki(intContent(n), intContent(e, 1))],
    ];
    for (const [what, repeat] of rewritten) {
      const registry = new MemoryIssuedKeyRegistry();
      assert.ok(await registry.register({ publicKeySha256: sha256(spki), applicantId: "user-1", alg: "RSA2048", generatedAt: new Date() }));
      const device = await KeyGenerationDevice.create({ custody: repeatingCustody(custody, repeat), ca: center, registry, trustAnchors: [root.certificate], maxGenerationAttempts: 2 });
      await assert.rejects(
        device.issue({
          applicantId: "user-1",
          personalData: { commonName: "Hanako Yamada" },
          alg: "P256",
          profile: "signature",
          slot: "9c",
          card: { transmit: async () => new Uint8Array([0x6a, 0x82]), keySet: {} as KeySetRef },
        }),
        (err: unknown) => err instanceof KeyGenerationRefusal && err.check === "duplicate-public-key" && err.by === "device",
        what,
      );
      assert.equal(await registry.find(sha256(repeat)), undefined, `${what}: nothing registered under the hash of the rewritten bytes`);
      assert.deepEqual(
        (await custody.listKeys()).filter((k) => k.label.startsWith("keygen.")),
        [],
        "every drawn key destroyed",
      );
    }
  } finally {
    await custody.close();
  }
});
