// Where webhooks may point (issue 9 §7). A webhook URL chosen by an operator must not turn the issuer into a way
// into the networks only it can reach: by default no delivery goes to a loopback, private (RFC 1918, fc00::/7),
// link-local (169.254/16, fe80::/10), shared (CGNAT 100.64/10), unspecified, multicast or reserved address, nor to a
// cloud metadata service. `allow` (config webhooks.allowAddresses) lists the ranges a deployment permits anyway,
// e.g. ["127.0.0.1/32"] for a receiver on the same host.
//
// The check is on addresses, not names: at registration the URL's literal address, or what its name resolves to then
// (a clear 4xx); and at every send, on the addresses the name resolves to at that moment, which are the only ones the
// connection may use (WebhookDispatcher connects through `lookup`) — a name that resolved to a public address at
// registration and to 10.0.0.1 now (DNS rebinding) is refused and recorded as a failed delivery. IPv4 inside IPv6
// (::ffff:a.b.c.d, NAT64 64:ff9b::/96, 6to4 2002::/16) is judged by the IPv4 address it carries.

import { lookup as dnsLookup } from "node:dns/promises";
import { BlockList, isIP } from "node:net";
import { DomainError } from "../util/errors.ts";

/** A resolved address, as dns.lookup({all: true}) gives it. */
export interface ResolvedAddress {
  address: string;
  family: 4 | 6;
}

/** Resolves a host name to its addresses (default: the system resolver, dns.lookup). Tests inject their own. */
export type Resolve = (hostname: string) => Promise<ResolvedAddress[]>;

/** A webhook's address is not allowed: a 4xx at registration, a failed delivery at send time. */
export class WebhookAddressRefused extends DomainError {
  constructor(message: string) {
    super("refused", "webhook_address", message);
    this.name = "WebhookAddressRefused";
  }
}

/** The refused ranges and what each is; the first that matches names the refusal. */
const REFUSED: [cidr: string, kind: string][] = [
  ["169.254.169.254/32", "cloud metadata"],
  ["169.254.170.2/32", "cloud metadata"],
  ["100.100.100.200/32", "cloud metadata"],
  ["192.0.0.192/32", "cloud metadata"],
  ["fd00:ec2::254/128", "cloud metadata"],
  ["0.0.0.0/8", "unspecified"],
  ["127.0.0.0/8", "loopback"],
  ["10.0.0.0/8", "private"],
  ["172.16.0.0/12", "private"],
  ["192.168.0.0/16", "private"],
  ["100.64.0.0/10", "shared (CGNAT)"],
  ["169.254.0.0/16", "link-local"],
  ["192.0.0.0/24", "reserved"],
  ["198.18.0.0/15", "reserved"],
  ["224.0.0.0/4", "multicast"],
  ["240.0.0.0/4", "reserved"],
  ["::/128", "unspecified"],
  ["::1/128", "loopback"],
  ["::/96", "reserved"],
  ["fc00::/7", "private"],
  ["fe80::/10", "link-local"],
  ["fec0::/10", "private"],
  ["ff00::/8", "multicast"],
  ["64:ff9b:1::/48", "private"],
  ["100::/64", "reserved"],
  ["2001::/32", "reserved"],
  ["2001:db8::/32", "reserved"],
];

/** Parses "a.b.c.d/n", "x::y/n" or a bare address (a /32 or /128); undefined when it is neither. */
export function parseCidr(s: string): { address: string; prefix: number; family: "ipv4" | "ipv6" } | undefined {
  const m = /^([^/]+)(?:\/(\d{1,3}))?$/.exec(s.trim());
  const v = m ? isIP(m[1]) : 0;
  if (!m || v === 0) return undefined;
  const max = v === 4 ? 32 : 128;
  const prefix = m[2] === undefined ? max : Number(m[2]);
  return prefix <= max ? { address: m[1], prefix, family: v === 4 ? "ipv4" : "ipv6" } : undefined;
}

function blockOf(cidr: string): BlockList {
  const c = parseCidr(cidr);
  if (!c) throw new RangeError(`not an address range: ${JSON.stringify(cidr)}`);
  const b = new BlockList();
  b.addSubnet(c.address, c.prefix, c.family);
  return b;
}

const RULES = REFUSED.map(([cidr, kind]) => ({ cidr, kind, block: blockOf(cidr) }));

/** The 16 bytes of an IPv6 address (no zone). */
function ipv6Bytes(a: string): number[] {
  let s = a;
  const tail: number[] = [];
  const dotted = /^(.*:)(\d+\.\d+\.\d+\.\d+)$/.exec(s);
  if (dotted) {
    s = dotted[1] + "0:0";
    tail.push(...dotted[2].split(".").map(Number));
  }
  const [head, rest] = s.includes("::") ? s.split("::") : [s, undefined];
  const words = (x: string) => (x ? x.split(":").map((w) => parseInt(w, 16)) : []);
  const h = words(head);
  const r = rest === undefined ? [] : words(rest);
  const all = [...h, ...Array(8 - h.length - r.length).fill(0), ...r];
  const bytes = all.flatMap((w) => [w >> 8, w & 0xff]);
  if (tail.length) bytes.splice(12, 4, ...tail);
  return bytes;
}

/** The IPv4 address an IPv6 one carries for NAT64 (64:ff9b::/96) or 6to4 (2002::/16); mapped ones BlockList handles. */
function embeddedIpv4(address: string): string | undefined {
  const b = ipv6Bytes(address);
  const nat64 = b[0] === 0x00 && b[1] === 0x64 && b[2] === 0xff && b[3] === 0x9b && b.slice(4, 12).every((x) => x === 0);
  if (nat64) return b.slice(12).join(".");
  if (b[0] === 0x20 && b[1] === 0x02) return b.slice(2, 6).join(".");
  return undefined;
}

/** Host names that are loopback by definition (RFC 6761), whatever a resolver says. */
const isLocalhostName = (h: string) => h === "localhost" || h.endsWith(".localhost");

export interface WebhookAddressPolicyOptions {
  /** Ranges permitted anyway ("127.0.0.1/32", "10.1.0.0/16", "fd12::/16", or bare addresses). */
  allow?: string[];
  resolve?: Resolve;
  /** How long a resolution may take (default 5 s). */
  resolveTimeoutMs?: number;
}

export class WebhookAddressPolicy {
  readonly #allow = new BlockList();
  readonly #resolve: Resolve;
  readonly #timeoutMs: number;

  constructor(o: WebhookAddressPolicyOptions = {}) {
    for (const a of o.allow ?? []) {
      const c = parseCidr(a);
      if (!c) throw new RangeError(`webhook allowAddresses: ${JSON.stringify(a)} is not an address or CIDR range`);
      this.#allow.addSubnet(c.address, c.prefix, c.family);
    }
    this.#resolve = o.resolve ?? (async (h) => (await dnsLookup(h, { all: true, verbatim: true })) as ResolvedAddress[]);
    this.#timeoutMs = o.resolveTimeoutMs ?? 5000;
  }

  /** Why `address` may not receive webhooks ("a loopback address (127.0.0.0/8)"), or undefined when it may. */
  refusal(address: string): string | undefined {
    const a = address.replace(/%.*$/, "");
    const v = isIP(a);
    if (v === 0) return "not an IP address";
    const type = v === 4 ? "ipv4" : "ipv6";
    const inner = v === 6 ? embeddedIpv4(a) : undefined;
    if (this.#allow.check(a, type) || (inner !== undefined && this.#allow.check(inner, "ipv4"))) return undefined;
    for (const r of RULES) if (r.block.check(a, type) || (inner !== undefined && r.block.check(inner, "ipv4"))) return `a ${r.kind} address (${r.cidr})`;
    return undefined;
  }

  /**
   * The addresses a delivery to `hostname` may connect to: an address literal, or what the name resolves to now, every
   * one allowed. Throws WebhookAddressRefused naming the range (never the URL), or the resolver's error.
   */
  async addressesFor(hostname: string): Promise<ResolvedAddress[]> {
    const host = hostname.replace(/^\[|\]$/g, "");
    const literal = isIP(host);
    const list: ResolvedAddress[] = literal
      ? [{ address: host, family: literal as 4 | 6 }]
      : isLocalhostName(host.toLowerCase())
        ? [{ address: "127.0.0.1", family: 4 }]
        : await this.#resolveInTime(host);
    if (list.length === 0) throw Object.assign(new Error(`${host} has no address`), { code: "ENOTFOUND" });
    for (const a of list) {
      const why = this.refusal(a.address);
      if (why)
        throw new WebhookAddressRefused(
          `webhook address refused: the host ${literal ? "is" : "resolves to"} ${why}; webhooks may not reach loopback, private, link-local, metadata or reserved addresses unless config webhooks.allowAddresses permits them`,
        );
    }
    return list;
  }

  /**
   * The check at registration: throws WebhookAddressRefused when the URL's host is, or now resolves to, a refused
   * address. A name that does not resolve now is accepted: every send checks again.
   */
  async checkUrl(url: URL): Promise<void> {
    try {
      await this.addressesFor(url.hostname);
    } catch (e) {
      if (e instanceof WebhookAddressRefused) throw e;
    }
  }

  async #resolveInTime(host: string): Promise<ResolvedAddress[]> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(Object.assign(new Error(`resolving ${host} timed out`), { code: "EAI_AGAIN" })), this.#timeoutMs);
      timer.unref();
    });
    try {
      return await Promise.race([this.#resolve(host), timeout]);
    } finally {
      clearTimeout(timer);
    }
  }
}
