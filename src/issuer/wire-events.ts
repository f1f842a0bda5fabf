// The JSON shapes of flow 5.f's events and webhooks (seed 000 FIG. 5, para 0062) that the events routes
// (src/server/event-routes.ts) serve and the CLI (src/cli/events.ts) reads: an event, a webhook, a delivery given up
// on (dead letter). One TypeBox schema each — the routes serialise and publish them — and its static type. Open
// objects, as the routes always declared them.
//
// Never here: a SQL driver, fastify, a webhook's secret (answered once, at registration, beside these).

import { Type, type Static } from "typebox";
import { Int, NullableInt, NullableStr, Str } from "../util/wire.ts";

/** An event the validity scan or the issuing flows emitted, and its delivery so far. */
export const EventJson = Type.Object({
  id: Int,
  type: Str,
  subject: Str,
  payload: Type.Unknown(),
  createdAt: Int,
  deliveredAt: NullableInt(),
  attempts: Int,
  lastError: Type.Optional(NullableStr()),
});
export type EventJson = Static<typeof EventJson>;

/** A registered webhook (without its secret). */
export const WebhookJson = Type.Object({ id: Str, url: Str, eventTypes: Type.Array(Str), createdAt: Int });
export type WebhookJson = Static<typeof WebhookJson>;

/** A delivery given up on. */
export const DeadLetterJson = Type.Object({
  deliveryId: Type.String({ description: "the webhook-id the receiver was sent: msg_<event id>_<webhook id>" }),
  eventId: Int,
  webhookId: Str,
  eventType: Type.Optional(NullableStr()),
  attempts: Int,
  lastError: NullableStr(),
  deadAt: NullableInt(),
});
export type DeadLetterJson = Static<typeof DeadLetterJson>;
