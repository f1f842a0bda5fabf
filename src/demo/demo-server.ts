// What the demos that run through the API share: a fresh demo directory, the issuer server started in this process
// on SQLite and the software keystore there (listening on a loopback port, logs in issuer.log), its keystore and
// card-image keys in files beside it (0600), an operator's API client, and the card manufacturer: its master key
// (KMC) in factory-kmc.key for the factory that makes the blank cards, and in the issuer's custody through a key
// ceremony from two components, so each blank card has its own transport keys.

import { randomBytes } from "node:crypto";
import { createWriteStream, existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { DEFAULT_CONFIG, type IssuerConfig } from "../server/config.ts";
import { createOperatorToken, startIssuerServer, type IssuerServer } from "../server/main.ts";
import { IssuerApiClient } from "../terminal/api-client.ts";
import { importKmc, splitKmc } from "../issuer/transport-keys.ts";

export interface DemoServer {
  server: IssuerServer;
  config: IssuerConfig;
  /** An operator (roles operator and auditor) of the server. */
  api: IssuerApiClient;
  /** The card images' at-rest key, and the file it is in (for `cardkms card show`). */
  imageKey: Uint8Array;
  imageKeyPath: string;
  /** The card manufacturer's master key, as the factory has it (createCard's `kmc`), the file it is in, and its KCV. */
  kmc: Uint8Array;
  kmcPath: string;
  kmcKcv: string;
  /** One line for the demo's log about the key ceremony. */
  ceremony: string;
  logPath: string;
  /** Stops the server (custody and DB closed) and flushes its log. */
  close(): Promise<void>;
}

/** Replaces `dir` only when it is empty or a previous demo's (it holds a keystore): never an unrelated directory. */
export function freshDemoDir(dir: string): void {
  if (existsSync(dir) && readdirSync(dir).length > 0 && !existsSync(join(dir, "keystore.json"))) throw new Error(`${dir} is not empty and holds no demo keystore: choose an empty or new directory`);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true, mode: 0o700 });
}

/**
 * The card manufacturer of the demo: a fresh KMC, written for the factory (0600), and split into two components with
 * their key check values that the issuer's key custodians import (the `cardkms custody import-kmc` ceremony).
 */
async function cardManufacturer(dir: string, server: IssuerServer): Promise<Pick<DemoServer, "kmc" | "kmcPath" | "kmcKcv" | "ceremony">> {
  const kmc = new Uint8Array(randomBytes(16));
  const kmcPath = join(dir, "factory-kmc.key");
  writeFileSync(kmcPath, Buffer.from(kmc).toString("hex") + "\n", { mode: 0o600 });
  const components = splitKmc(kmc, 2);
  const { kcv: kmcKcv } = await importKmc(server.custody, components);
  for (const c of components) c.value.fill(0);
  return { kmc, kmcPath, kmcKcv, ceremony: `key ceremony: the card manufacturer's KMC (KCV ${kmcKcv}) imported into custody from 2 components; the factory makes blank cards from it (${kmcPath})` };
}

export async function startDemoServer(dir: string, o: { database: string; caSubject: string }): Promise<DemoServer> {
  freshDemoDir(dir);
  const keystoreKey = randomBytes(32).toString("hex");
  writeFileSync(join(dir, "keystore.key"), keystoreKey + "\n", { mode: 0o600 });
  const imageKey = randomBytes(32);
  const imageKeyPath = join(dir, "card-image.key");
  writeFileSync(imageKeyPath, imageKey.toString("hex") + "\n", { mode: 0o600 });
  const config: IssuerConfig = {
    ...DEFAULT_CONFIG,
    listen: { host: "127.0.0.1", port: 0 },
    database: join(dir, o.database),
    custody: { kind: "software", keystore: join(dir, "keystore.json") },
    ca: { mode: "local", subject: o.caSubject },
    logLevel: "info",
  };
  const logPath = join(dir, "issuer.log");
  const logStream = createWriteStream(logPath);
  const server = await startIssuerServer(config, { env: { ...process.env, CARDKMS_KEYSTORE_KEY: keystoreKey }, handleSignals: false, logStream });
  try {
    const { token } = await createOperatorToken(server.store, "demo-operator", ["operator", "auditor"]);
    const manufacturer = await cardManufacturer(dir, server);
    return {
      ...manufacturer,
      server,
      config,
      api: new IssuerApiClient({ server: server.url, token }),
      imageKey,
      imageKeyPath,
      logPath,
      async close() {
        await server.close();
        await new Promise<void>((r) => logStream.end(r));
      },
    };
  } catch (e) {
    await server.close();
    logStream.end();
    throw e;
  }
}
