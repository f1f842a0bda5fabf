// The JSON shapes of flow 5.f's events and webhooks (seed 000 FIG. 5, para 0062) that the events routes
// (src/server/event-routes.ts) serve and the CLI (src/cli/events.ts) reads: an event, a webhook, a delivery given up
// on (dead letter), the pages and lists of them, a webhook's registration and what the validity scan found. One
// TypeBox schema each — the routes serialise and publish them — and its static type. Open
// objects, as the routes always declared them.
//
// Never here: a SQL driver, fastify, a webhook's secret (answered once, at registration, beside these).

import { Type, type Static } from "typebox";
import { Int, NullableInt, NullableStr, Str, Written } from "../util/wire.ts";
import { RotationJson } from "./wire-rotation.ts";

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

/** GET /events: events in id order; `next` is the last id of a full page, else null. */
export const EventPageJson = Type.Object({ events: Type.Array(EventJson), next: NullableInt() });
export type EventPageJson = Static<typeof EventPageJson>;

/** POST /webhooks: the webhook and its signing secret, shown only this once. */
export const RegisteredWebhookJson = Written({ ...WebhookJson.properties, secret: Str }, { required: ["id", "secret", "url", "eventTypes"] });
export type RegisteredWebhookJson = Static<typeof RegisteredWebhookJson>;

/** GET /webhooks: the enabled webhooks. */
export const WebhookListJson = Type.Object({ webhooks: Type.Array(WebhookJson) });
export type WebhookListJson = Static<typeof WebhookListJson>;

/** GET /webhooks/dead-letters: `next` is the last deliveryId of a full page, else null. */
export const DeadLetterPageJson = Type.Object({ deadLetters: Type.Array(DeadLetterJson), next: NullableStr() });
export type DeadLetterPageJson = Static<typeof DeadLetterPageJson>;

/** POST /webhooks/dead-letters/retry: the deliveryIds queued again. */
export const RetriedJson = Type.Object({ retried: Type.Array(Str) });
export type RetriedJson = Static<typeof RetriedJson>;

/** GET /rotations (RotationJson: wire-rotation.ts). */
export const RotationListJson = Type.Object({ rotations: Type.Array(RotationJson) });
export type RotationListJson = Static<typeof RotationListJson>;

/** Expiring and expired, of one kind. */
const ValidityCountsJson = Written({ expiring: Int, expired: Int });

/** POST /validity/scan: what the validity scan (FIG. 5; src/issuer/validity.ts) found and queued. */
export const ValidityScanJson = Written({
  now: Int,
  until: Int,
  cards: ValidityCountsJson,
  keySets: ValidityCountsJson,
  certificates: ValidityCountsJson,
  eventsEmitted: Int,
  rotationsProposed: Int,
});
export type ValidityScanJson = Static<typeof ValidityScanJson>;
