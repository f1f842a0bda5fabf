// The card manufacturer's master key (KMC) on the command line (issue 17 §3):
//   cardkms card manufacturer-kmc   the manufacturer's side (the emulator's factory, development): a new KMC for
//                                the factory and its components with their KCVs
//   cardkms custody import-kmc   the issuer's key ceremony: the KMC into the issuer's custody from 2 or 3
//                                components, each with its key check value; prints only the combined key's KCV
//   --kmc-file / CARDKMS_KMC_FILE   the factory's copy, for the commands that make blank cards (card create,
//                                card issue, rotation new-card): their transport keys are diversified from it
//   --insecure-public-transport-keys / CARDKMS_INSECURE_PUBLIC_TRANSPORT_KEYS=1   development only: blank cards
//                                with the GlobalPlatform public test keys instead
// Key values are read from files only (never from arguments, where ps and shell history would keep them), and
// are never printed or logged.
//   cardkms custody self-test    what the custody's credentials could take out (src/custody/pkcs11-selftest.ts)
//   cardkms custody keystore-to-store   a keystore file's entries, still sealed, into the issuer's database (issue 16 §3)

import { Command, Option } from "commander";
import { readFileSync } from "node:fs";
import { TRANSPORT_KEY_SET } from "../card/card.ts";
import { keyCheckValue } from "../protocol/scp03/host.ts";
import type { ScpKeySet } from "../card/state.ts";
import { INSECURE_PUBLIC_TRANSPORT_KEYS_ENV, KMC_LABEL, type KmcComponent } from "../issuer/transport-keys.ts";
import { UsageError } from "./image-key.ts";

/** An AES-128 or AES-256 key in hex from `file` (whitespace ignored); the message names the file, not its content. */
function readKeyFile(file: string, what: string): Uint8Array {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    throw new UsageError(`${what} ${file}: ${(e as NodeJS.ErrnoException).code ?? "cannot be read"}`);
  }
  const h = text.replace(/\s/g, "");
  if (!/^([0-9a-fA-F]{32}|[0-9a-fA-F]{64})$/.test(h)) throw new UsageError(`${what} ${file}: expected an AES-128 or AES-256 key as 32 or 64 hex digits`);
  return new Uint8Array(Buffer.from(h, "hex"));
}

export interface FactoryOpts {
  kmcFile?: string;
  insecurePublicTransportKeys?: boolean;
}

/** --kmc-file and --insecure-public-transport-keys on a command that makes blank cards. */
export function factoryOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option("--kmc-file <file>", "the card manufacturer's master key (KMC, hex): the blank card's transport keys are diversified from it").env("CARDKMS_KMC_FILE"))
    .option(
      "--insecure-public-transport-keys",
      `DEVELOPMENT ONLY (or ${INSECURE_PUBLIC_TRANSPORT_KEYS_ENV}=1): the blank card gets the GlobalPlatform public test keys; a recording of its personalisation gives its keys`,
    );
}

/** The development mode from the environment: 1 / true on; unset, empty, 0 / false off; anything else refused. */
function insecureFromEnv(env: NodeJS.ProcessEnv): boolean {
  const v = env[INSECURE_PUBLIC_TRANSPORT_KEYS_ENV];
  if (v === "1" || v === "true") return true;
  if (v === undefined || v === "" || v === "0" || v === "false") return false;
  throw new UsageError(`${INSECURE_PUBLIC_TRANSPORT_KEYS_ENV}=${v}: expected 1 or true, 0 or false`);
}

/**
 * What createCard needs for a blank card's transport keys: the KMC (`kmc`, with its KCV for the output), or the
 * public test keys when asked for by name. Neither: a usage error.
 */
export function factoryTransport(o: FactoryOpts, env: NodeJS.ProcessEnv = process.env): { card: { kmc: Uint8Array } | { keySet: ScpKeySet }; transport: string } {
  if (o.kmcFile) {
    const kmc = readKeyFile(o.kmcFile, "KMC file");
    return { card: { kmc }, transport: `diversified from the KMC (KCV ${Buffer.from(keyCheckValue(kmc)).toString("hex").toUpperCase()})` };
  }
  if (o.insecurePublicTransportKeys || insecureFromEnv(env)) return { card: { keySet: { ...TRANSPORT_KEY_SET } }, transport: "INSECURE: the GlobalPlatform public test keys (development only)" };
  throw new UsageError(
    "no card manufacturer master key for the blank card's transport keys: pass --kmc-file <file> or set CARDKMS_KMC_FILE " +
      `(for development only: --insecure-public-transport-keys or ${INSECURE_PUBLIC_TRANSPORT_KEYS_ENV}=1, the public test keys)`,
  );
}

const collect = (v: string, prev: string[] = []): string[] => [...prev, v];

/**
 * `card manufacturer-kmc`: what a card manufacturer hands out, for the card emulator's factory and development: a new
 * KMC written as the factory's copy (kmc.key) and as 2 or 3 components (component-<i>.hex), each file 0600 in a new
 * directory, for the issuer's key custodians to bring to `custody import-kmc`. Prints the check values only.
 */
export function registerManufacturerKmc(card: Command): void {
  card
    .command("manufacturer-kmc")
    .description(
      "as the card manufacturer: a new KMC (AES-128) written to <dir>/kmc.key for the factory (--kmc-file) and as 2 or 3 components " +
        "<dir>/component-<i>.hex for the issuer's key ceremony (custody import-kmc); prints the key check values, never a key",
    )
    .argument("<dir>", "a directory to create (files 0600)")
    .addOption(new Option("--components <n>", "how many components").choices(["2", "3"]).default("2"))
    .option("--json", "JSON output")
    .action(async (dir: string, o: { components: "2" | "3"; json?: boolean }) => {
      const { mkdirSync, existsSync } = await import("node:fs");
      const { writeFileAtomic } = await import("../util/files.ts");
      const { join } = await import("node:path");
      const { randomBytes } = await import("node:crypto");
      const { splitKmc } = await import("../issuer/transport-keys.ts");
      if (existsSync(dir)) throw new UsageError(`${dir} exists: give a new directory (a KMC is never overwritten)`);
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      const kmc = new Uint8Array(randomBytes(16));
      const components = splitKmc(kmc, Number(o.components) as 2 | 3);
      try {
        // 0600, never over an existing name or through a symlink, only into a directory no one else may write (issue 15 §6)
        writeFileAtomic(join(dir, "kmc.key"), Buffer.from(kmc).toString("hex") + "\n", 0o600, { noClobber: true });
        components.forEach((c, i) => writeFileAtomic(join(dir, `component-${i + 1}.hex`), Buffer.from(c.value).toString("hex") + "\n", 0o600, { noClobber: true }));
        const kcv = Buffer.from(keyCheckValue(kmc)).toString("hex").toUpperCase();
        const files = components.map((c, i) => ({ file: join(dir, `component-${i + 1}.hex`), kcv: c.kcv }));
        const human = [`KMC for the factory: ${join(dir, "kmc.key")} (KCV ${kcv})`, ...files.map((f) => `component ${f.file}  KCV ${f.kcv}`)].join("\n");
        process.stdout.write((o.json ? JSON.stringify({ kmc: { file: join(dir, "kmc.key"), kcv }, components: files }) : human) + "\n");
      } finally {
        kmc.fill(0);
        for (const c of components) c.value.fill(0);
      }
    });
}

export function registerCustodyCommands(program: Command): void {
  const custody = program.command("custody").description("the issuer's key custody: key ceremonies and the self-test");
  custody
    .command("import-kmc")
    .description(
      "key ceremony: import the card manufacturer's master key (KMC) into the issuer's custody from 2 or 3 components (XORed), " +
        "each checked against its key check value; prints the KCV of the combined key, never a key",
    )
    .addOption(new Option("--component <file>", "a component (hex) in a file; give 2 or 3, each with its --kcv in the same order").argParser(collect).makeOptionMandatory())
    .addOption(new Option("--kcv <hex>", "the component's key check value (6 hex digits: AES(component, 16 x 01))").argParser(collect).makeOptionMandatory())
    .option("--label <label>", "custody label of the KMC", KMC_LABEL)
    .option("--config <file>", "issuer configuration file (for its custody; also CARDKMS_* variables)")
    .option("--json", "JSON output")
    .action(async (o: { component: string[]; kcv: string[]; label: string; config?: string; json?: boolean }) => {
      if (o.component.length < 2 || o.component.length > 3) throw new UsageError("a KMC comes in 2 or 3 components: pass --component <file> 2 or 3 times");
      if (o.kcv.length !== o.component.length) throw new UsageError(`${o.component.length} components need ${o.component.length} --kcv values (one for each, in the same order), not ${o.kcv.length}`);
      const components: KmcComponent[] = o.component.map((f, i) => ({ value: readKeyFile(f, `component ${i + 1}`), kcv: o.kcv[i] }));
      const { importKmc } = await import("../issuer/transport-keys.ts");
      const custodyOpened = await openConfiguredCustody(o.config);
      try {
        const r = await importKmc(custodyOpened, components, o.label);
        const out = o.json ? JSON.stringify({ label: r.label, bits: r.bits, kcv: r.kcv }) : `KMC imported into custody as ${r.label} (AES-${r.bits}), KCV ${r.kcv}: compare it with the manufacturer's`;
        process.stdout.write(out + "\n");
      } finally {
        for (const x of components) x.value.fill(0);
        await custodyOpened.close();
      }
    });

  custody
    .command("keystore-to-store")
    .description(
      "issue 16 §3: copy the software keystore file's entries into the issuer's database (custody.keystoreBackend \"store\"), sealed as they are " +
        "(no key is opened; the keystore key is not needed), and record the store as where this database's card keys live. Stop every server " +
        "first; afterwards start them with CARDKMS_KEYSTORE_BACKEND=store (a server with the file is then refused). Running it again copies what is missing",
    )
    .option("--config <file>", "issuer configuration file (custody.keystore, database; also CARDKMS_* variables)")
    .option("--keystore <path>", "the keystore file (default: the configuration's custody.keystore)")
    .option("--json", "JSON output")
    .action(async (o: { config?: string; keystore?: string; json?: boolean }) => {
      const { loadConfig } = await import("../server/config.ts");
      const { FileKeystoreBackend } = await import("../custody/keystore-file-backend.ts");
      const { Store } = await import("../store/store.ts");
      const { copyKeystoreToStore } = await import("../store/custody-keystore.ts");
      const cfg = loadConfig({ file: o.config });
      const path = o.keystore ?? (cfg.custody.kind === "software" ? cfg.custody.keystore : undefined);
      if (!path) throw new UsageError("the configured custody is an HSM: give the keystore file with --keystore <path>");
      const store = await Store.open(cfg.database);
      try {
        const r = await copyKeystoreToStore(new FileKeystoreBackend(path), store.db);
        const text = `keystore ${r.keystoreId}: copied ${r.copied.length} keys into the store (${r.present.length} were there already); start the servers with CARDKMS_KEYSTORE_BACKEND=store`;
        process.stdout.write((o.json ? JSON.stringify(r) : text) + "\n");
      } finally {
        await store.close();
      }
    });

  custody
    .command("self-test")
    .description(
      "try, with the credentials the issuer's custody runs with (the HSM user PIN), the paths by which their holder could take a key out " +
        "(derive or unwrap into a readable key, derive or unwrap then wrap under a key of the caller's, change or copy a key, read or wrap a " +
        "never-extractable one), against probe keys made with the project's templates; read back every stored key; print what the token " +
        "refused and what it did not (README, security). Exit status 0 when everything was refused, 3 otherwise",
    )
    .option("--config <file>", "issuer configuration file (for its custody; also CARDKMS_* variables)")
    .option("--json", "JSON output")
    .action(async (o: { config?: string; json?: boolean }) => {
      const { describeSelfTest } = await import("../custody/pkcs11-selftest.ts");
      const opened = await openConfiguredCustody(o.config);
      try {
        const r = await opened.selfTest();
        process.stdout.write((o.json ? JSON.stringify(r) : describeSelfTest(r)) + "\n");
        if (!r.ok) process.exitCode = 3;
      } finally {
        await opened.close();
      }
    });
}

/** The custody the issuer's configuration names (--config, CARDKMS_* variables); a keystore in the store opens the DB. */
async function openConfiguredCustody(file: string | undefined) {
  const { loadConfig } = await import("../server/config.ts");
  const { openCustody } = await import("../custody/index.ts");
  const cfg = loadConfig({ file });
  const c = cfg.custody;
  if (c.kind === "software" && c.keystoreBackend === "store") {
    const { Store } = await import("../store/store.ts");
    const { StoreKeystoreBackend } = await import("../store/custody-keystore.ts");
    const store = await Store.open(cfg.database);
    try {
      const opened = await openCustody({ kind: "software", backend: new StoreKeystoreBackend(store.db), env: process.env });
      const close = opened.close.bind(opened);
      opened.close = async () => {
        await close();
        await store.close();
      };
      return opened;
    } catch (e) {
      await store.close();
      throw e;
    }
  }
  return openCustody(c.kind === "software" ? { kind: "software", path: c.keystore, env: process.env } : { kind: "pkcs11", module: c.module, tokenLabel: c.tokenLabel, env: process.env });
}
