// The JSON shapes of the issuer's and the user terminal's routes (src/server/issuer-routes.ts, terminal-routes.ts)
// that the terminal's client (src/terminal/api-client.ts) shares: the first round of a relay session, an issued
// credential, a card authentication's answer, a card's delivery packages. One TypeBox schema each — the routes
// serialise and publish them — and its static type. These objects are open (no additionalProperties: false), as
// the routes always declared them: the serialiser writes the members named here and nothing else.
//
// Never here: a SQL driver, fastify, a key value or a custody reference — src/terminal/ imports this file.

import { Type, type Static } from "typebox";
import { Int, Str } from "../util/wire.ts";

/** A relay session the server drives (personalisation, online delivery, card authentication): its first APDUs, hex. */
export const RelayRoundJson = Type.Object({ sessionId: Str, apdus: Type.Array(Str) });
export type RelayRoundJson = Static<typeof RelayRoundJson>;

/** A new key pair and certificate (ST16-ST22): the certificate as PEM, the package that delivers it. */
export const IssuedCredentialJson = Type.Object({ keyPairId: Str, serial: Str, certificate: Str, packageSeq: Int });
export type IssuedCredentialJson = Static<typeof IssuedCredentialJson>;

/** A card authentication's answer: the card-bound token, and the EXTERNAL AUTHENTICATE (hex) to forward to the card. */
export const CardAuthenticationJson = Type.Object({ token: Str, expiresAt: Type.String({ format: "date-time" }), apdus: Type.Array(Str) });
export type CardAuthenticationJson = Static<typeof CardAuthenticationJson>;

/** A card's delivery packages (ST22), oldest first; `body` base64. */
export const PackagesJson = Type.Object({ packages: Type.Array(Type.Object({ seq: Int, status: Type.Optional(Str), createdAt: Type.Optional(Int), body: Str })) });
export type PackagesJson = Static<typeof PackagesJson>;
