// The CA over HTTP (seed 000 ST19-ST21: the issuing system and the certification authority are at different
// sites). A Fastify plugin serving any CaClient — in practice the LocalCaClient of src/ca/service.ts — with the
// wire shapes and JSON schemas of src/ca/client.ts; src/ca/http-client.ts is the other end.
//
//   POST /ca/certify       roles + bareKeyRoles      CertifyRequest → 200 CertifyResponseJson | 422 CaProblem
//   POST /ca/revoke        roles + bareKeyRoles      RevokeRequestJson → 204 | 404 / 422 CaProblem
//   GET  /ca/crl           public                    application/pkix-crl, DER (RFC 5280 §5, RFC 2585 §4.2)
//   GET  /ca/certificates  public                    { certificates: PEM[] }, issuing CA first, root last (or, for
//                                                    Accept: application/pem-certificate-chain, the PEM text)
//
// Register it with a prefix (`app.register(caRoutes, { prefix: "/v1", client })`): HttpCaClient's baseUrl is then
// "<origin>/v1/ca".
//
// Proof of possession. A PKCS#10 request is signed by the key it carries: its self-signature is the requester's proof
// that it holds the key (src/ca/csr.ts), and anyone admitted to certify may send one. A bare {subject, publicKey}
// proves nothing — it could be anybody's key, copied from their certificate — so it is certified only for a
// credential that holds one of `bareKeyRoles` (default "issuer") explicitly, admin included: the issuing service's
// own token (CARDKMS_CA_TOKEN of an issuer in "remote" CA mode, src/issuer/issuer.ts), which asks only for keys it
// generated in its own key custody, where custody is the proof. Everybody else — operators, admins, a
// credential of another service — is refused with check "proof-of-possession" and told to send a CSR. The issuer
// in "local" CA mode calls the CA in-process, not through these routes. Every key, on either path, then passes
// the CA's key checks (src/ca/spki.ts: strict DER, values, one identity per key).
//
// A CaRefusal is a DomainError answered as the CaProblem of client.ts (type urn:cardkms:ca:refused, `check`; 404
// for an unknown serial) by the server's one error mapper (problem.ts), so refusals are logged and counted like
// every other 4xx. This file holds no CA logic and maps no error.

import type { TypeBoxTypeProvider } from "@fastify/type-provider-typebox";
import type { FastifyInstance } from "fastify";
import { Type } from "typebox";
import { CaRefusal } from "../ca/checks.ts";
import { encodeCertifyResponse, type CaClient } from "../ca/client.ts";
import { CaCertificatesJson, CertifyRequest, CertifyResponseJson, RevokeRequestJson } from "../ca/wire.ts";
import { toPem } from "../ca/pem.ts";
import type { Role } from "./auth.ts";

export interface CaRoutesOptions {
  client: CaClient;
  /** Roles admitted to certify PKCS#10 requests and to revoke (admin always is). Default ["operator"]. */
  roles?: Role[];
  /**
   * Roles whose credential may also certify a bare public key (and revoke): the issuing service's, whose keys are
   * in its custody. Must be held explicitly — admin does not imply it. Default ["issuer"].
   */
  bareKeyRoles?: Role[];
}

/** RFC 9457 body of a refusal (client.ts CaProblem) plus the instance problem.ts adds. */
const CA_PROBLEM_SCHEMA = {
  type: "object",
  required: ["type", "title", "status", "check"],
  properties: {
    type: { type: "string" },
    title: { type: "string" },
    status: { type: "integer" },
    check: { type: "string", description: "the CA check that refused the request, e.g. csr-signature, personal-data, duplicate-public-key" },
    detail: { type: "string" },
    instance: { type: "string" },
  },
} as const;

const PROBLEMS = { "4xx": { $ref: "Problem#" }, "5xx": { $ref: "Problem#" } } as const;

export async function caRoutes(fastify: FastifyInstance, opts: CaRoutesOptions): Promise<void> {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>();
  const { client } = opts;
  const bareKeyRoles: Role[] = opts.bareKeyRoles ?? ["issuer"];
  const roles: Role[] = [...new Set([...(opts.roles ?? ["operator"]), ...bareKeyRoles])];
  if (roles.length === 0) throw new Error("caRoutes: certify and revoke need at least one role");

  app.post(
    "/ca/certify",
    {
      config: { roles },
      schema: {
        summary: "Certify a PKCS#10 request, or (the issuing service's credential only) a public key from its custody (ST19-ST20)",
        description:
          "A `csr` is signed by the key it carries, which proves possession. A bare `subject` + `publicKey` is certified only for a credential " +
          `holding one of the roles ${bareKeyRoles.join(", ")} (not implied by admin); anyone else is refused with check "proof-of-possession".`,
        tags: ["ca"],
        body: CertifyRequest,
        response: { 200: CertifyResponseJson, 422: CA_PROBLEM_SCHEMA, ...PROBLEMS },
      },
    },
    async (req) => {
      const body = req.body;
      if (body.publicKey !== undefined && !req.principal?.roles.some((r) => bareKeyRoles.includes(r))) {
        throw new CaRefusal(
          "proof-of-possession",
          `a bare public key proves nobody holds it: it is certified only for the issuing service's credential (role ${bareKeyRoles.join(" or ")}), ` +
            "for keys in its own custody; send a PKCS#10 request (csr) signed by the key instead",
        );
      }
      return encodeCertifyResponse(await client.certify(body));
    },
  );

  app.post(
    "/ca/revoke",
    {
      config: { roles },
      schema: {
        summary: "Revoke a certificate this CA issued (RFC 5280 reason)",
        tags: ["ca"],
        body: RevokeRequestJson,
        response: { 204: Type.Unsafe<undefined>({ type: "null", description: "revoked (again: the first revocation stands)" }), 404: CA_PROBLEM_SCHEMA, 422: CA_PROBLEM_SCHEMA, ...PROBLEMS },
      },
    },
    async (req, reply) => {
      const b = req.body;
      await client.revoke(b.serial, b.reason);
      return reply.code(204).send();
    },
  );

  app.get(
    "/ca/crl",
    {
      schema: {
        summary: "The CA's current CRL (the CRL distribution point of its certificates)",
        tags: ["ca"],
        response: { 200: { description: "DER CertificateList", content: { "application/pkix-crl": { schema: { type: "string", format: "binary" } } } }, ...PROBLEMS },
      },
    },
    async (_req, reply) => {
      const crl = await client.crl();
      return reply.type("application/pkix-crl").send(Buffer.from(crl.buffer, crl.byteOffset, crl.byteLength));
    },
  );

  app.get(
    "/ca/certificates",
    {
      schema: {
        summary: "The CA chain as PEM: issuing CA first, root last",
        description: "JSON { certificates: PEM[] } by default; with Accept: application/pem-certificate-chain (RFC 8555 §9.1) the PEM blocks concatenated.",
        tags: ["ca"],
        response: {
          200: {
            content: {
              "application/json": { schema: CaCertificatesJson },
              "application/pem-certificate-chain": { schema: { type: "string" } },
            },
          },
          ...PROBLEMS,
        },
      },
    },
    async (req, reply) => {
      const certificates = (await client.caCertificates()).map((d) => toPem(d, "CERTIFICATE"));
      if (/\bapplication\/pem-certificate-chain\b/i.test(req.headers.accept ?? "")) return reply.type("application/pem-certificate-chain").send(certificates.join(""));
      return reply.type("application/json").send({ certificates });
    },
  );
}
