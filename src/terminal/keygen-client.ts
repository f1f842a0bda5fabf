// The key generation device's routes (src/server/keygen-routes.ts; seed 001 embodiments 1-2, with an escrow S3)
// from the card issuing machine: an operator asks the server's device to issue a key pair into the card inserted
// here, and this machine relays the device's APDUs to the card (live-relay-client.ts). The key is generated,
// certified, escrowed and destroyed in the server's custody; the card receives it wrapped under its SCP03 keys.
//
// What comes back is checked before it is returned: the certificate parses and carries the public key whose hash
// the server reports, for the card and slot asked.

import { createHash, X509Certificate } from "node:crypto";
import type { PivSlot } from "../keygen/device.ts";
import type { KeygenIssueRequest, KeygenResultJson } from "../keygen/wire.ts";
import { ApiError, type IssuerApiClient } from "./api-client.ts";
import { liveStepOf, runLiveRelay } from "./live-relay-client.ts";

export type { KeygenIssueRequest, KeygenResultJson } from "../keygen/wire.ts";

/** The result of an issue (keygen/wire.ts KeygenResultJson), with the certificate also as DER. */
export interface KeygenIssued extends KeygenResultJson {
  certificateDer: Uint8Array;
}

const seg = (s: string) => encodeURIComponent(s);

export class KeygenApiClient {
  constructor(readonly api: IssuerApiClient) {}

  /**
   * Steps 410-435 for the card `cardId` reachable through `transmit`: starts the issue and relays the device's
   * APDUs until the server reports the result. A refusal comes back as the server's ApiError (its problem names
   * the check and whether the device or the center refused).
   */
  async issue(cardId: string, req: KeygenIssueRequest, transmit: (apdu: Uint8Array) => Promise<Uint8Array> | Uint8Array, o: { maxRounds?: number } = {}): Promise<KeygenIssued> {
    const r = await runLiveRelay<KeygenResultJson>(this.api, async () => liveStepOf(await this.api.request<object>("POST", `/v1/cards/${seg(cardId)}/keygen`, req)), "/v1/keygen/sessions", transmit, {
      maxRounds: o.maxRounds,
      what: "key generation",
    });
    return checked(r, cardId, req.slot);
  }
}

function checked(r: KeygenResultJson, cardId: string, slot: PivSlot): KeygenIssued {
  const bad = (detail: string) => new ApiError(0, "client:bad-response", "Malformed server response", detail);
  if (r.cardId !== cardId || r.slot !== slot) throw bad(`the result is for card ${r.cardId} slot ${r.slot}, not ${cardId} slot ${slot}`);
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(r.certificate);
  } catch {
    throw bad("the certificate does not parse");
  }
  const spki = cert.publicKey.export({ format: "der", type: "spki" });
  if (createHash("sha256").update(spki).digest("hex") !== r.publicKeySha256) throw bad("the certificate's public key is not the one the server reports");
  return { ...r, certificateDer: new Uint8Array(cert.raw) };
}
