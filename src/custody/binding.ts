// Which keystore a database's card keys live in (issue 16 §3), and the refusal of a server that opened another one.
// The first server to start on a database records the custody it opened; every later server compares its own:
//   file keystore, other id                 refused: its keys are not the database's (another keystore, or none)
//   file keystore, same id, other host      refused: a copy of the file on another machine diverges at the first key
//   file keystore, same id, same host       allowed: processes on one machine share the file safely (file lock)
//   keystore in the store                   shared by every server on the database (one id); refused only when the
//                                           record names another keystore (a file whose keys were not copied in)
//   file keystore, the record says store    refused: its keys were copied into the store (same id), the file is stale
//   PKCS#11 token                           the HSM is shared by design: recorded (token label), not refused here
// The message names what is recorded, what was opened, and the fix. The port (CustodyBindings) is implemented on the
// database by src/store/custody-keystore.ts; the wiring (src/server/main.ts) calls checkCustodyBinding at start.
//
// Holds no secret: ids, kinds, host names, paths and token labels only.

import { hostname } from "node:os";
import { resolve } from "node:path";
import { CustodyError, type KeyCustody } from "./custody.ts";

export interface CustodyBinding {
  /** The keystore id (software), or the token label (PKCS#11). */
  keystoreId: string;
  kind: "file" | "store" | "pkcs11";
  /** The PKCS#11 token's label. */
  token?: string;
  /** The host the file keystore is on. */
  host?: string;
  /** The file keystore's path on that host. */
  path?: string;
}

export interface CustodyBindings {
  /** What is recorded, if anything. */
  get(): Promise<CustodyBinding | undefined>;
  /** Records `b` unless something is recorded already; returns what is recorded now (another server's, if first). */
  recordFirst(b: CustodyBinding): Promise<CustodyBinding>;
  /** Replaces what is recorded (the keys moved, e.g. `cardkms custody keystore-to-store`). */
  replace(b: CustodyBinding): Promise<void>;
}

const FIX = 'keep the keys in the store (custody.keystoreBackend "store", CARDKMS_KEYSTORE_BACKEND=store) or in an HSM (custody.kind "pkcs11"), which every server shares';

/** How a binding reads in a message. */
export function describeBinding(b: CustodyBinding): string {
  if (b.kind === "pkcs11") return `the PKCS#11 token ${JSON.stringify(b.token ?? b.keystoreId)}`;
  if (b.kind === "store") return `the keystore in the store (id ${b.keystoreId})`;
  return `the keystore file ${b.path ?? "?"} on host ${b.host ?? "?"} (id ${b.keystoreId})`;
}

/** Why a server that opened `opened` must not start on a database whose record is `recorded`; undefined: it may. */
export function bindingRefusal(recorded: CustodyBinding, opened: CustodyBinding): string | undefined {
  if (opened.kind === "pkcs11") return undefined;
  const head = `this database's card keys live in ${describeBinding(recorded)}, but this server opened ${describeBinding(opened)}`;
  if (opened.kind === "file" && recorded.kind === "store")
    return `${head}: the keys were moved into the store (cardkms custody keystore-to-store), and the file would diverge from it. Set custody.keystoreBackend "store" (CARDKMS_KEYSTORE_BACKEND=store).`;
  if (opened.keystoreId !== recorded.keystoreId)
    return `${head}: a different keystore, which does not hold those keys. Open the recorded keystore, or ${FIX}. Never start a server on a keystore that is not the one recorded.`;
  if (opened.kind === "file" && recorded.kind === "file" && opened.host !== recorded.host)
    return `${head}: a copy of that file on another host, which would diverge from it at the first key either server makes. Servers on several hosts must ${FIX}.`;
  return undefined;
}

/** Records the opened custody when the database has none yet, and refuses (throws, with the message) a mismatch. */
export async function checkCustodyBinding(bindings: CustodyBindings, opened: CustodyBinding): Promise<CustodyBinding> {
  const recorded = await bindings.recordFirst(opened);
  const refusal = bindingRefusal(recorded, opened);
  if (refusal) throw new Error(`custody refused: ${refusal}`);
  return recorded;
}

/** What an opened custody is, as the binding records it (a file keystore: this host and the file's absolute path). */
export function bindingOf(custody: KeyCustody, host: string = hostname()): CustodyBinding {
  const c = custody as KeyCustody & { keystore?: { id: string; kind: "file" | "store"; where: string }; tokenLabel?: string };
  if (c.kind === "pkcs11" && c.tokenLabel) return { keystoreId: `pkcs11:${c.tokenLabel}`, kind: "pkcs11", token: c.tokenLabel };
  if (c.kind === "software" && c.keystore) {
    if (c.keystore.kind === "store") return { keystoreId: c.keystore.id, kind: "store" };
    return { keystoreId: c.keystore.id, kind: "file", host, path: resolve(c.keystore.where) };
  }
  throw new CustodyError("INVALID_ARGUMENT", `custody ${c.kind} has no identity to record`);
}
