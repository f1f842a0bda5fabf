// Validity, notifications and webhooks from the command line (seed 000 FIG. 5, para 0062): run the expiry scan,
// read the events it emits, register the webhooks that receive them, and list and retry the deliveries given up on
// (the dead-letter record). Everything goes through the HTTP API.

import type { Command } from "commander";
import { apiFrom, print, serverOptions, type ServerOpts } from "./issuer.ts";
import { UsageError } from "./image-key.ts";
import type { DeadLetterJson, DeadLetterPageJson, EventPageJson, RegisteredWebhookJson, RetriedJson, ValidityScanJson, WebhookListJson } from "../issuer/wire-events.ts";

export function registerEventCommands(program: Command): void {
  const validity = program.command("validity").description("validity of cards, card keys and certificates (FIG. 5)");
  serverOptions(validity.command("scan").description("scan now for cards, card key sets and certificates near or past expiry; emits events, proposes rotations")).action(async (o: ServerOpts) => {
    const r = await apiFrom(o).request<ValidityScanJson>("POST", "/v1/validity/scan", {});
    const line = (n: string, c: { expiring: number; expired: number }) => `  ${n}: ${c.expiring} expiring, ${c.expired} expired`;
    print(
      o,
      [
        `validity scan: ${r.eventsEmitted} new event(s), ${r.rotationsProposed} rotation(s) proposed for approval`,
        line("cards", r.cards),
        line("card key sets", r.keySets),
        line("certificates", r.certificates),
      ].join("\n"),
      r,
    );
  });

  const events = program.command("events").description("notifications the issuer emitted");
  serverOptions(
    events
      .command("list")
      .description("list events, oldest first")
      .option("--after <id>", "only events after this id")
      .option("--type <type>", "only this event type, e.g. keyset.expiring")
      .option("--limit <n>", "at most this many", "100"),
  ).action(async (o: ServerOpts & { after?: string; type?: string; limit: string }) => {
    for (const [k, v] of [
      ["after", o.after],
      ["limit", o.limit],
    ] as const)
      if (v !== undefined && !/^\d+$/.test(v)) throw new UsageError(`--${k} takes a whole number`);
    const q = new URLSearchParams({ limit: o.limit, ...(o.after ? { after: o.after } : {}), ...(o.type ? { type: o.type } : {}) });
    const r = await apiFrom(o).request<EventPageJson>("GET", `/v1/events?${q}`);
    print(o, r.events.map((e) => `${e.id}  ${new Date(e.createdAt).toISOString()}  ${e.type}  ${e.subject}`).join("\n") || "no events", r);
  });

  const webhook = program.command("webhook").description("webhooks that receive the events (signed as Standard Webhooks: webhook-id, webhook-timestamp, webhook-signature)");
  serverOptions(
    webhook
      .command("add")
      .description("register a webhook; its signing secret is printed once")
      .requiredOption("--url <url>", "http(s) URL that receives POSTed events")
      .requiredOption("--event-type <types...>", "event types to deliver, e.g. keyset.expiring certificate.expired rotation.proposed"),
  ).action(async (o: ServerOpts & { url: string; eventType: string[] }) => {
    const r = await apiFrom(o).request<RegisteredWebhookJson>("POST", "/v1/webhooks", { url: o.url, eventTypes: o.eventType });
    print(o, `webhook ${r.id} -> ${r.url} (${r.eventTypes.join(", ")})\nsigning secret (shown once): ${r.secret}`, r);
  });
  serverOptions(webhook.command("list").description("list registered webhooks (never their secrets)")).action(async (o: ServerOpts) => {
    const r = await apiFrom(o).request<WebhookListJson>("GET", "/v1/webhooks");
    print(o, r.webhooks.map((w) => `${w.id}  ${w.url}  ${w.eventTypes.join(", ")}`).join("\n") || "no webhooks", r);
  });
  serverOptions(webhook.command("remove").description("disable a webhook").argument("<id>", "webhook id")).action(async (id: string, o: ServerOpts) => {
    await apiFrom(o).request("DELETE", `/v1/webhooks/${encodeURIComponent(id)}`);
    print(o, `webhook ${id} disabled`, { id, disabled: true });
  });
  serverOptions(
    webhook
      .command("dead-letters")
      .description("deliveries given up after their last attempt (the dead-letter record), with the last error")
      .option("--webhook <id>", "only this webhook's")
      .option("--after <delivery id>", "only those after this delivery id (paging)")
      .option("--limit <n>", "at most this many", "100"),
  ).action(async (o: ServerOpts & { webhook?: string; after?: string; limit: string }) => {
    if (!/^\d+$/.test(o.limit)) throw new UsageError("--limit takes a whole number");
    const q = new URLSearchParams({ limit: o.limit, ...(o.webhook ? { webhookId: o.webhook } : {}), ...(o.after ? { after: o.after } : {}) });
    const r = await apiFrom(o).request<DeadLetterPageJson>("GET", `/v1/webhooks/dead-letters?${q}`);
    const line = (d: DeadLetterJson) => `${d.deliveryId}  ${d.eventType ?? "?"}  ${d.attempts} attempt(s)  ${d.deadAt === null ? "" : new Date(d.deadAt).toISOString()}  ${d.lastError ?? ""}`;
    print(o, r.deadLetters.map(line).join("\n") || "no dead letters", r);
  });
  serverOptions(
    webhook
      .command("retry")
      .description("queue dead letters again (due now, attempts counted afresh): a webhook's, or the deliveries named")
      .option("--webhook <id>", "every dead letter of this webhook")
      .option("--delivery <ids...>", "these deliveries (msg_<event id>_<webhook id>, as `webhook dead-letters` lists them)"),
  ).action(async (o: ServerOpts & { webhook?: string; delivery?: string[] }) => {
    if (!o.webhook && !o.delivery?.length) throw new UsageError("name --webhook <id> or --delivery <id...>");
    const body = { ...(o.webhook ? { webhookId: o.webhook } : {}), ...(o.delivery?.length ? { deliveryIds: o.delivery } : {}) };
    const r = await apiFrom(o).request<RetriedJson>("POST", "/v1/webhooks/dead-letters/retry", body);
    print(o, r.retried.length ? `queued again: ${r.retried.join(", ")}` : "no dead letter to retry", r);
  });
}
