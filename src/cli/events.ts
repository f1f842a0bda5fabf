// Validity, notifications and webhooks from the command line (seed 000 FIG. 5, para 0062): run the expiry scan,
// read the events it emits, and register the webhooks that receive them. Everything goes through the HTTP API.

import type { Command } from "commander";
import { apiFrom, print, serverOptions, type ServerOpts } from "./issuer.ts";
import { UsageError } from "./image-key.ts";

interface ScanResult {
  cards: { expiring: number; expired: number };
  keySets: { expiring: number; expired: number };
  certificates: { expiring: number; expired: number };
  eventsEmitted: number;
  rotationsProposed: number;
}

interface EventJson {
  id: number;
  type: string;
  subject: string;
  createdAt: number;
  payload: unknown;
}

export function registerEventCommands(program: Command): void {
  const validity = program.command("validity").description("validity of cards, card keys and certificates (FIG. 5)");
  serverOptions(validity.command("scan").description("scan now for cards, card key sets and certificates near or past expiry; emits events, proposes rotations")).action(
    async (o: ServerOpts) => {
      const r = await apiFrom(o).request<ScanResult>("POST", "/v1/validity/scan", {});
      const line = (n: string, c: { expiring: number; expired: number }) => `  ${n}: ${c.expiring} expiring, ${c.expired} expired`;
      print(o, [`validity scan: ${r.eventsEmitted} new event(s), ${r.rotationsProposed} rotation(s) proposed for approval`, line("cards", r.cards), line("card key sets", r.keySets), line("certificates", r.certificates)].join("\n"), r);
    },
  );

  const events = program.command("events").description("notifications the issuer emitted");
  serverOptions(
    events
      .command("list")
      .description("list events, oldest first")
      .option("--after <id>", "only events after this id")
      .option("--type <type>", "only this event type, e.g. keyset.expiring")
      .option("--limit <n>", "at most this many", "100"),
  ).action(async (o: ServerOpts & { after?: string; type?: string; limit: string }) => {
    for (const [k, v] of [["after", o.after], ["limit", o.limit]] as const) if (v !== undefined && !/^\d+$/.test(v)) throw new UsageError(`--${k} takes a whole number`);
    const q = new URLSearchParams({ limit: o.limit, ...(o.after ? { after: o.after } : {}), ...(o.type ? { type: o.type } : {}) });
    const r = await apiFrom(o).request<{ events: EventJson[]; next?: number }>("GET", `/v1/events?${q}`);
    print(o, r.events.map((e) => `${e.id}  ${new Date(e.createdAt).toISOString()}  ${e.type}  ${e.subject}`).join("\n") || "no events", r);
  });

  const webhook = program.command("webhook").description("webhooks that receive the events (HMAC-SHA256 signed)");
  serverOptions(
    webhook
      .command("add")
      .description("register a webhook; its signing secret is printed once")
      .requiredOption("--url <url>", "http(s) URL that receives POSTed events")
      .requiredOption("--event-type <types...>", "event types to deliver, e.g. keyset.expiring certificate.expired rotation.proposed"),
  ).action(async (o: ServerOpts & { url: string; eventType: string[] }) => {
    const r = await apiFrom(o).request<{ id: string; secret: string; url: string; eventTypes: string[] }>("POST", "/v1/webhooks", { url: o.url, eventTypes: o.eventType });
    print(o, `webhook ${r.id} -> ${r.url} (${r.eventTypes.join(", ")})\nsigning secret (shown once): ${r.secret}`, r);
  });
  serverOptions(webhook.command("list").description("list registered webhooks (never their secrets)")).action(async (o: ServerOpts) => {
    const r = await apiFrom(o).request<{ webhooks: { id: string; url: string; eventTypes: string[] }[] }>("GET", "/v1/webhooks");
    print(o, r.webhooks.map((w) => `${w.id}  ${w.url}  ${w.eventTypes.join(", ")}`).join("\n") || "no webhooks", r);
  });
  serverOptions(webhook.command("remove").description("disable a webhook").argument("<id>", "webhook id")).action(async (id: string, o: ServerOpts) => {
    await apiFrom(o).request("DELETE", `/v1/webhooks/${encodeURIComponent(id)}`);
    print(o, `webhook ${id} disabled`, { id, disabled: true });
  });
}
