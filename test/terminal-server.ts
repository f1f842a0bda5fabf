// The real issuer server for the terminal and CLI tests: SQLite in a temp file, the software keystore (holding the
// test KMC, test/kmc.ts), the local CA, listening on 127.0.0.1 on a free port, with one operator (operator + auditor)
// token; the factory's copy of the KMC in a file for the CLI (CARDKMS_KMC_FILE).
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { DEFAULT_CONFIG, type IssuerConfig } from "../src/server/config.ts";
import { createOperatorToken, startIssuerServer, type IssuerServer } from "../src/server/main.ts";
import { importTestKmc, testKmcFile } from "./kmc.ts";

export interface TestServer {
  url: string;
  operatorToken: string;
  config: IssuerConfig;
  /** The environment the server's keystore key is in (for a CLI that opens the same DB). */
  env: Record<string, string>;
  /** The card manufacturer's KMC for the CLI's factory (--kmc-file, CARDKMS_KMC_FILE). */
  kmcFile: string;
  server: IssuerServer;
  close(): Promise<void>;
}

/** `config`: settings over the test defaults (e.g. config.metrics for a loopback metrics listener). */
export async function startTestServer(dir: string, o: { config?: Partial<IssuerConfig> } = {}): Promise<TestServer> {
  const env = { CARDKMS_KEYSTORE_KEY: randomBytes(32).toString("hex") };
  const config: IssuerConfig = {
    ...structuredClone(DEFAULT_CONFIG),
    listen: { host: "127.0.0.1", port: 0 },
    database: join(dir, "issuer.db"),
    custody: { kind: "software", keystore: join(dir, "keystore.json") },
    ca: { mode: "local", subject: "CN=cardkms test CA" },
    logLevel: "silent",
    // The tests' webhook receivers listen on loopback, which the default address policy refuses (issue 9 §7).
    webhooks: { allowAddresses: ["127.0.0.1/32"] },
    ...o.config,
  };
  const server = await startIssuerServer(config, { env, handleSignals: false });
  const { token } = await createOperatorToken(server.store, "olga", ["operator", "auditor"]);
  await importTestKmc(server.custody);
  return { url: server.url, operatorToken: token, config, env, kmcFile: testKmcFile(dir), server, close: () => server.close() };
}
