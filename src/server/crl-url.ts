// The CRL distribution point (issue 9 §8): one setting, `crlUrl`, is both what the local CA writes into every
// certificate and where this server serves the CRL — at that URL's path, besides /v1/crl and /v1/ca/crl — so a
// relying party that follows a certificate's distribution point finds the CRL. Checked at start-up: a URL whose path
// the server cannot serve as a route of its own (a query, a fragment, credentials, another API path) is refused, and
// one that plainly points at another port of this machine is warned about.
//
// The default `http://127.0.0.1:8443/crl` keeps the path certificates issued before carry, so they resolve too.

import { isLoopbackHost } from "./config.ts";

/** Where the API serves the CRL anyway (issuer-routes.ts, ca-routes.ts). */
export const API_CRL_PATHS: readonly string[] = ["/v1/crl", "/v1/ca/crl"];

export class CrlUrlError extends Error {}

/**
 * The path this server serves the CRL at for a `crlUrl`, or CrlUrlError saying why it cannot: an http(s) URL
 * without credentials, query or fragment, whose path is plain (letters, digits, `.`, `_`, `~`, `-`, `/`) and not
 * the root; under /v1/ only the API's own CRL paths.
 */
export function crlPathOf(crlUrl: string): string {
  let u: URL;
  try {
    u = new URL(crlUrl);
  } catch {
    throw new CrlUrlError(`crlUrl ${JSON.stringify(crlUrl)} is not a URL`);
  }
  const where = `crlUrl ${JSON.stringify(crlUrl)}`;
  if (u.protocol !== "http:" && u.protocol !== "https:") throw new CrlUrlError(`${where}: relying parties fetch the CRL over http (RFC 5280 §4.2.1.13), not ${u.protocol}`);
  if (u.username || u.password) throw new CrlUrlError(`${where}: no credentials in a distribution point`);
  if (u.search || u.hash || /[?#]/.test(crlUrl)) throw new CrlUrlError(`${where}: no query or fragment; the server serves the CRL at the URL's path`);
  const path = u.pathname;
  if (path === "/" || !/^(\/[A-Za-z0-9._~-]+)+\/?$/.test(path)) throw new CrlUrlError(`${where}: the path must be a plain one such as /crl or /v1/crl (letters, digits . _ ~ - and /)`);
  if (path.startsWith("/v1/") && !API_CRL_PATHS.includes(path))
    throw new CrlUrlError(`${where}: paths under /v1/ belong to the API; use ${API_CRL_PATHS.join(" or ")}, or a path of its own such as /crl`);
  return path;
}

/**
 * Why certificates carrying `crlUrl` would send relying parties somewhere this server is not, as far as this machine
 * can tell (a loopback URL on another port, https to a plain-http listener, a loopback URL while the server listens
 * for others), or undefined. A public name is not judged: a proxy in front may serve it.
 */
export function crlUrlWarning(crlUrl: string, listenHost: string, listening: string): string | undefined {
  const u = new URL(crlUrl);
  if (!isLoopbackHost(u.hostname.replace(/^\[|\]$/g, ""))) return undefined;
  const everywhere = listenHost === "0.0.0.0" || listenHost === "::";
  if (!isLoopbackHost(listenHost) && !everywhere)
    return `certificates name the loopback CRL distribution point ${crlUrl}, which relying parties on other machines cannot reach; set crlUrl (CARDKMS_CRL_URL) to this server's public URL`;
  const bound = new URL(listening);
  const port = u.port || (u.protocol === "https:" ? "443" : "80");
  if (u.protocol !== bound.protocol || port !== bound.port)
    return `certificates name the CRL distribution point ${crlUrl}, but this server listens on ${listening}; set crlUrl (CARDKMS_CRL_URL) to where relying parties reach it`;
  return undefined;
}
