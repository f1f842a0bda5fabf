// The issuer server as its process wires it (src/server/main.ts startIssuerServer), not listening, on a fresh
// DB of the given engine and a software keystore (or a SoftHSM2 token) in a temp dir, with an admin, an operator and an auditor token.
// For the API tests: requests go through app.inject.
import assert from "node:assert/strict";
import type { TestContext } from "node:test";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { Writable } from "node:stream";
import { createCard } from "../src/card/card.ts";
import type { CardRuntime } from "../src/card/runtime.ts";
import { transmitFollowing } from "../src/protocol/apdu-client.ts";
import { DEFAULT_CONFIG, type IssuerConfig } from "../src/server/config.ts";
import { createOperatorToken, startIssuerServer, type IssuerServer, type StartOptions } from "../src/server/main.ts";
import type { TestEngine } from "./support/store-testing.ts";
import { tempDir } from "./helpers.ts";
import { importTestKmc, TEST_KMC } from "./kmc.ts";
import { SOFTHSM2_OPEN_PATHS, softhsmToken } from "./custody-env.ts";

export interface ApiEnv {
  server: IssuerServer;
  /** The server's DB URL: another connection to it acts as another server on the same database would. */
  database: string;
  tokens: { admin: string; operator: string; auditor: string };
  /** Every log line the server wrote. */
  logs: string[];
  /** Another server on the same database and custody (closed with the env): `config` and `start` change its own. */
  startAnother(o?: { config?: Partial<IssuerConfig>; start?: Partial<StartOptions> }): Promise<IssuerServer>;
  close(): Promise<void>;
}

export interface ApiEnvOptions {
  logLevel?: IssuerConfig["logLevel"];
  webhookSecret?: boolean;
  validity?: IssuerConfig["validity"];
  wrapCustody?: StartOptions["wrapCustody"];
  /** Key custody of the server: a software keystore (default) or a fresh SoftHSM2 token over PKCS#11. */
  custody?: "software" | "softhsm";
  /** Development-only settings (config.ts `insecure`), e.g. the public transport keys. */
  insecure?: Partial<IssuerConfig["insecure"]>;
  /** The server's limits (config.ts `limits`), e.g. a rate limit a test runs into on purpose. */
  limits?: Partial<IssuerConfig["limits"]>;
  /** Where webhooks may point (config.ts `webhooks`); the default refuses loopback receivers. */
  webhooks?: IssuerConfig["webhooks"];
  /** The server's job runner (config.ts `jobs`: instance id, poll and lease in ms). */
  jobs?: IssuerConfig["jobs"];
  /** Rotations (config.ts `rotations`), e.g. a small re-wrap page. */
  rotations?: IssuerConfig["rotations"];
}

/** The custody kinds API tests run on: both, always (SoftHSM2 comes from scripts/system-deps.sh; tests fail without it). */
export const API_CUSTODIES = ["software", "softhsm"] as const;

export async function issuerApiEnv(engine: TestEngine, o: ApiEnvOptions = {}): Promise<ApiEnv> {
  const dir = tempDir("cardkms-api-");
  const tdb = await engine.create();
  const env: NodeJS.ProcessEnv = {};
  let custody: IssuerConfig["custody"];
  if (o.custody === "softhsm") {
    const hsm = softhsmToken(join(dir, "hsm"));
    custody = { kind: "pkcs11", module: hsm.CARDKMS_PKCS11_MODULE, tokenLabel: hsm.CARDKMS_PKCS11_TOKEN, acceptOpenPaths: [...SOFTHSM2_OPEN_PATHS] };
    env.CARDKMS_PKCS11_PIN = hsm.CARDKMS_PKCS11_PIN;
  } else {
    custody = { kind: "software", keystore: join(dir, "keystore.json") };
    env.CARDKMS_KEYSTORE_KEY = randomBytes(32).toString("hex");
  }
  const config: IssuerConfig = {
    ...DEFAULT_CONFIG,
    database: tdb.url,
    custody,
    ca: { mode: "local", subject: "CN=cardkms test CA, O=cardkms, C=JP" },
    crlUrl: "http://127.0.0.1:8443/v1/crl",
    logLevel: o.logLevel ?? "info",
    ...(o.validity ? { validity: o.validity } : {}),
    ...(o.insecure ? { insecure: { ...DEFAULT_CONFIG.insecure, ...o.insecure } } : {}),
    ...(o.limits ? { limits: { ...DEFAULT_CONFIG.limits, ...o.limits } } : {}),
    ...(o.webhooks ? { webhooks: o.webhooks } : {}),
    ...(o.jobs ? { jobs: o.jobs } : {}),
    ...(o.rotations ? { rotations: o.rotations } : {}),
  };
  if (o.webhookSecret !== false) env.CARDKMS_WEBHOOK_SECRET = randomBytes(32).toString("hex");
  const logs: string[] = [];
  const logStream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      logs.push(chunk.toString("utf8"));
      cb();
    },
  });
  let server: IssuerServer;
  try {
    server = await startIssuerServer(config, { env, listen: false, logStream, wrapCustody: o.wrapCustody });
    await server.app.ready();
    await importTestKmc(server.custody);
  } catch (e) {
    await tdb.drop();
    throw e;
  }
  const tokens = {
    admin: (await createOperatorToken(server.store, "ada", ["admin"])).token,
    operator: (await createOperatorToken(server.store, "olga", ["operator"])).token,
    auditor: (await createOperatorToken(server.store, "arno", ["auditor"])).token,
  };
  const others: IssuerServer[] = [];
  return {
    server,
    database: tdb.url,
    tokens,
    logs,
    async startAnother(a = {}) {
      const other = await startIssuerServer({ ...config, ...a.config }, { env, listen: false, logStream, wrapCustody: o.wrapCustody, ...a.start });
      others.push(other);
      await other.app.ready();
      return other;
    },
    async close() {
      for (const x of others) await x.close();
      await server.close();
      await tdb.drop();
    },
  };
}

// ---- a terminal and a card issuing machine over app.inject ----------------------------------------------------

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
const unhex = (s: string) => new Uint8Array(Buffer.from(s, "hex"));
const swOf = (r: Uint8Array) => (r[r.length - 2] << 8) | r[r.length - 1];

type Res = Awaited<ReturnType<ApiEnv["server"]["app"]["inject"]>>;

export function api(env: ApiEnv) {
  const call = (method: "GET" | "POST" | "PUT", url: string, token?: string, body?: unknown) =>
    env.server.app.inject({ method, url, headers: token ? { authorization: `Bearer ${token}` } : {}, ...(body !== undefined ? { payload: body as object } : {}) });
  return {
    get: (url: string, token?: string) => call("GET", url, token),
    post: (url: string, token?: string, body: unknown = {}) => call("POST", url, token, body),
    put: (url: string, token: string, body: unknown) => call("PUT", url, token, body),
  };
}

/** issuerApiEnv for one test: it and the cards pushed to `cards` are closed when the test ends. */
export async function apiEnvFor(t: TestContext, engine: TestEngine, o: ApiEnvOptions = {}): Promise<{ env: ApiEnv; cards: CardRuntime[] }> {
  const env = await issuerApiEnv(engine, o);
  const cards: CardRuntime[] = [];
  t.after(async () => {
    for (const c of cards) c.close();
    await env.close();
  });
  return { env, cards };
}

export function expect(r: Res, status: number): Record<string, unknown> {
  assert.equal(r.statusCode, status, `${r.statusCode}: ${r.body}`);
  if (status >= 400) {
    assert.match(String(r.headers["content-type"]), /^application\/problem\+json/);
    assert.equal(r.json().status, status);
  }
  return r.body ? (r.json() as Record<string, unknown>) : {};
}

/** The terminal's part: forward each round to the card until the server reports the results (or refuses). */
export async function relay(post: ReturnType<typeof api>["post"], token: string, start: { sessionId: string; apdus: string[] }, card: CardRuntime): Promise<Res> {
  let apdus = start.apdus;
  for (;;) {
    const responses: string[] = [];
    for (const a of apdus) responses.push(hex(await transmitFollowing((x) => card.transmit(x), unhex(a))));
    const r = await post(`/v1/relay/${start.sessionId}`, token, { responses });
    if (r.statusCode !== 200 || r.json().done) return r;
    apdus = r.json().apdus;
  }
}

/**
 * Card authentication through the terminal: a card-bound token, after the EXTERNAL AUTHENTICATE reached the card.
 * The card answers SELECT, INITIALIZE UPDATE and the state counter report (GET DATA DF23). `tamper`: true changes
 * a byte of the card cryptogram; a function changes the card's responses as it likes.
 */
export async function authenticate(post: ReturnType<typeof api>["post"], cardId: string, card: CardRuntime, tamper: boolean | ((responses: Uint8Array[]) => void) = false): Promise<Res> {
  const start = expect(await post(`/v1/cards/${cardId}/auth`), 201) as { sessionId: string; apdus: string[] };
  assert.equal(start.apdus.length, 3);
  const responses = [];
  for (const a of start.apdus) responses.push(await transmitFollowing((x) => card.transmit(x), unhex(a)));
  if (tamper === true)
    responses[1][25] ^= 0x01; // a byte of the card cryptogram
  else if (tamper) tamper(responses);
  const r = await post(`/v1/cards/${cardId}/auth/${start.sessionId}`, undefined, { responses: responses.map(hex) });
  if (r.statusCode === 200)
    for (const a of r.json().apdus as string[]) assert.equal(swOf(await transmitFollowing((x) => card.transmit(x), unhex(a))), 0x9000, "the card accepts EXTERNAL AUTHENTICATE");
  return r;
}

export async function issueAndPersonalise(env: ApiEnv, name: string) {
  const { post, get } = api(env);
  const op = env.tokens.operator;
  const user = expect(await post("/v1/users", op, { personalData: registeredData(name) }), 201);
  const issued = expect(await post("/v1/cards", op, { userId: user.id }), 201) as { card: { id: string; status: string }; keySet: { kvn: number } };
  assert.equal(issued.card.status, "issued");
  assert.equal(issued.keySet.kvn, 1);
  const cardId = issued.card.id;
  /** The card image's key: a copy of the image opens with it (tests of a card that went back to a copy). */
  const imageKey = randomBytes(32);
  const card = createCard(join(tempDir("cardkms-api-card-"), `${cardId}.card`), imageKey, { kmc: TEST_KMC, cardId: Buffer.from(cardId, "hex") });
  const start = expect(await post(`/v1/cards/${cardId}/personalisation`, op), 201) as { sessionId: string; apdus: string[] };
  expect(await relay(post, op, start, card), 200);
  assert.equal(expect(await get(`/v1/cards/${cardId}`, env.tokens.auditor), 200).status, "active");
  return { user, cardId, card, imageKey };
}

/**
 * The terminal's part of a live relay (keygen, reproduction): one APDU per round to `sessionsPath/<id>` until the
 * server answers with the result or a problem; the last response.
 */
export async function liveRelay(post: ReturnType<typeof api>["post"], token: string, start: Res, sessionsPath: string, card: CardRuntime): Promise<Res> {
  if (start.statusCode !== 201) return start;
  const sessionId = start.json().sessionId as string;
  let r = start;
  for (let step = r.json() as { apdus?: string[] }; step.apdus; step = r.json()) {
    const responses: string[] = [];
    for (const a of step.apdus) responses.push(hex(await transmitFollowing((x) => card.transmit(x), unhex(a))));
    r = await post(`${sessionsPath}/${sessionId}`, token, { responses });
    if (r.statusCode !== 200) return r;
  }
  return r;
}

/** The personal data issueAndPersonalise registers for `name` (what a key generation device must enter). */
export const registeredData = (name: string) => ({ commonName: name, email: `${name.toLowerCase().replace(/ /g, ".")}@example.test`, organization: "Example Bank", country: "JP" });

/** The key generation device over the API (POST /cards/{id}/keygen), relayed to `card`; the result, or fails the test. */
export async function keygenOverApi(env: ApiEnv, cardId: string, card: CardRuntime, body: { slot: string; alg: string; personalData: object; escrow?: boolean; profile?: string }) {
  const { post } = api(env);
  const op = env.tokens.operator;
  const r = await liveRelay(post, op, await post(`/v1/cards/${cardId}/keygen`, op, body), "/v1/keygen/sessions", card);
  const res = (expect(r, 200) as { result: { cardId: string; slot: string; alg: string; serial: string; certificate: string; publicKeySha256: string; escrowId?: string } }).result;
  return { ...res, certificateDer: new Uint8Array(Buffer.from(res.certificate.replace(/-----[^-]+-----|\s/g, ""), "base64")) };
}
