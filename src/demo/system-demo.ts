// The newcomer's demo of the whole system (npm run demo): nothing but SQLite and the software keystore.
//   1. an issuer server starts (HTTP on 127.0.0.1, its CA key and the card master key in the keystore);
//   2. a user is registered and a blank virtual card is issued and personalised through the relay: the card
//      issuing machine only forwards SCP03 APDUs, the card key Sk1 never leaves custody;
//   3. a P-256 key pair is generated in custody, certified, wrapped as Sk1[PRk] and sealed into a package;
//   4. the user terminal authenticates the card to the server, fetches the package and relays it into the card;
//      the card signs and the signature verifies against the certificate;
//   5. the card key is rotated Sk1 -> Sk2 (seed 000 embodiment 3): an operator approves, a new card is issued
//      with Sk2, the system DB re-wraps every Sk1[PRk] to Sk2[PRk], the packages are redistributed, and the NEW
//      card signs with the same key pair — no private key ever in clear outside custody or the card.

import { createPublicKey, verify, X509Certificate } from "node:crypto";
import { join, resolve } from "node:path";
import { createCard } from "../card/card.ts";
import type { CardRuntime } from "../card/runtime.ts";
import { CardRotation } from "../issuer/rotation.ts";
import { PivClient } from "../protocol/piv/client.ts";
import { relaySession, UserTerminal } from "../terminal/terminal.ts";
import { InProcessTransport } from "../transport/transport.ts";
import { verifyAuditLog } from "../store/audit.ts";
import { startDemoServer } from "./demo-server.ts";

export interface SystemDemoResult {
  server: string;
  oldCard: { id: string; path: string };
  newCard: { id: string; path: string; card: CardRuntime };
  imageKeyPath: string;
  certificatePem: string;
  caCertPem: string;
  signatures: { card: string; verified: boolean }[];
  audit: { ok: boolean; entries: number };
}

export async function runSystemDemo(o: { dir: string; log?: (line: string) => void }): Promise<SystemDemoResult> {
  const log = o.log ?? (() => {});
  const dir = resolve(o.dir);
  const demo = await startDemoServer(dir, { database: "issuer.db", caSubject: "CN=cardkms demo CA" });
  const { server, config, api, imageKey, imageKeyPath, kmc } = demo;
  try {
    log(`1. issuer server on ${server.url} (SQLite ${config.database}, software keystore; logs in ${demo.logPath})`);
    log(`   ${demo.ceremony}`);

    // ST11-ST15
    const user = await api.registerUser({ commonName: "Hanako Yamada", email: "hanako@example.test", organization: "Example Bank" });
    const { card } = await api.createCard({ userId: user.id });
    const oldPath = join(dir, `card-${card.id}.img`);
    const oldCard = createCard(oldPath, imageKey, { kmc, cardId: Buffer.from(card.id, "hex"), durability: "fsync" });
    const oldTransport = new InProcessTransport(oldCard);
    await relaySession(api, (a) => oldTransport.transmit(a), await api.startPersonalisation(card.id));
    log(`2. user ${user.id} registered; card ${card.id} issued and personalised through the relay over its own transport keys (card key Sk1, KVN 01, kept in custody)`);

    // ST16-ST22
    const cred = await api.requestCredential(card.id, { slot: "9a", alg: "P256" });
    log(`3. P-256 key pair generated in custody, certified (serial ${cred.serial}), wrapped as Sk1[PRk], sealed as package ${cred.packageSeq}`);

    // ST22-ST25 on the user's side
    const terminal = await UserTerminal.open({ api, transport: oldTransport, stateFile: join(dir, "terminal-old.json") });
    await terminal.authenticate();
    const sync = await terminal.sync();
    log(`4. user terminal: card proved itself (SCP03 cryptogram), ${sync.packages.filter((p) => p.status === "loaded").length} package(s) relayed into the card`);
    const cert = new X509Certificate(cred.certificate);
    const signsOk = async (c: CardRuntime) => {
      const piv = new PivClient((a) => c.transmit(a));
      await piv.select();
      await piv.verifyPin("123456");
      const msg = Buffer.from(`cardkms demo ${new Date().toISOString()}`);
      const { signature } = await piv.sign(0x9a, "P256", msg);
      return verify("sha256", msg, { key: createPublicKey(cert.publicKey.export({ format: "pem", type: "spki" })), dsaEncoding: "der" }, signature);
    };
    const signatures = [{ card: card.id, verified: await signsOk(oldCard) }];
    log(`   card ${card.id} signs; the signature ${signatures[0].verified ? "VERIFIES" : "DOES NOT VERIFY"} against ${cert.subject.replace(/\n/g, ", ")}`);

    // Embodiment 3: Sk1 -> Sk2 on a new card, every Sk1[PRk] re-wrapped in the DB and redistributed.
    const rotation = new CardRotation(server.issuer);
    const proposal = await rotation.propose({ cardId: card.id, strategy: "embodiment3" }, "demo-operator");
    await rotation.approve(proposal.id, "demo-supervisor");
    const issued = await rotation.issueNewCard(proposal.id, "demo-operator");
    const newPath = join(dir, `card-${issued.card.id}.img`);
    const newCard = createCard(newPath, imageKey, { kmc, cardId: Buffer.from(issued.card.id, "hex"), durability: "fsync" });
    await rotation.personaliseNewCard(proposal.id, (a) => newCard.transmit(a), "demo-operator");
    const rewrapped = await rotation.rewrap(proposal.id);
    await rotation.distribute(proposal.id, "demo-operator");
    log(`5. rotation Sk1 -> Sk2 approved; new card ${issued.card.id} issued with Sk2 (KVN 02); ${rewrapped.done} Sk1[PRk] re-wrapped to Sk2[PRk] in the DB; packages redistributed`);
    const newTerminal = await UserTerminal.open({ api, transport: new InProcessTransport(newCard), stateFile: join(dir, "terminal-new.json") });
    await newTerminal.authenticate();
    const sync2 = await newTerminal.sync();
    const ok2 = await signsOk(newCard);
    signatures.push({ card: issued.card.id, verified: ok2 });
    log(
      `   new card: ${sync2.packages.filter((p) => p.status === "loaded").length} package(s) loaded; it signs with the same key pair, verified against the same certificate: ${ok2 ? "VERIFIES" : "DOES NOT VERIFY"}`,
    );

    const audit = await verifyAuditLog(server.store.db);
    log(`6. audit log: ${audit.ok ? "intact" : "BROKEN"}, ${audit.entries} hash-chained entries`);
    oldCard.close();
    const caCerts = await server.issuer.ca.caCertificates();
    const caCertPem = new X509Certificate(caCerts[caCerts.length - 1]).toString();
    return {
      server: server.url,
      oldCard: { id: card.id, path: oldPath },
      newCard: { id: issued.card.id, path: newPath, card: newCard },
      imageKeyPath,
      certificatePem: cred.certificate,
      caCertPem,
      signatures,
      audit: { ok: audit.ok, entries: audit.entries },
    };
  } finally {
    await demo.close();
  }
}
