// HTTP routes of flow 5.f (seed 000, FIG. 5, para 0062): the events endpoint, webhook registration, "scan now",
// and the operator's approval of the rotations the validity scan proposes. Thin: the domain lives in
// src/issuer/validity.ts and src/issuer/webhooks.ts; this file validates and authorises (the domain's errors, such
// as WebhookError, 400 invalid-webhook, reach problem.ts, the one mapper).
//
// Every route declares its schemas (unknown body and query fields are 400s) and its roles; errors are
// problem+json (problem.ts). Register after `installAuth` and `buildServer`'s problem handlers:
//   await app.register(eventRoutes, { store, secrets, validity: { windowDays: 30 } });

import type { FastifyPluginAsyncTypebox } from "@fastify/type-provider-typebox";
import type { FastifyRequest } from "fastify";
import { Type } from "typebox";
import type { RotationStatus, RotationStrategy } from "../store/db.ts";
import type { Store, StoredEvent, Webhook } from "../store/store.ts";
import { scanValidity, type ValidityScanResult, type ValidityScheduler } from "../issuer/validity.ts";
import type { WebhookAddressPolicy } from "../issuer/webhook-addresses.ts";
import { approveRotation } from "../issuer/rotation-approvals.ts";
import {
  DELIVERY_ID_PATTERN,
  deliveryId,
  disableWebhook,
  EVENT_TYPE_PATTERN,
  MAX_EVENT_TYPES,
  MAX_WEBHOOK_URL,
  parseDeliveryId,
  registerWebhook,
  retryDeadLetters,
  type WebhookSecrets,
} from "../issuer/webhooks.ts";
import type { WebhookDelivery } from "../store/store.ts";
import { ApiProblem, notFound } from "./problem.ts";
import { digits, params } from "./issuer-routes.ts";
import { rotationOut } from "./schemas.ts";
import { Closed, Enum } from "../util/wire.ts";
import { Id } from "../issuer/wire.ts";
import { RotationJson } from "../issuer/wire-rotation.ts";
import {
  DeadLetterPageJson,
  EventPageJson,
  RegisteredWebhookJson,
  RetriedJson,
  RotationListJson,
  ValidityScanJson,
  WebhookListJson,
  type DeadLetterJson,
  type EventJson,
  type WebhookJson,
} from "../issuer/wire-events.ts";

export interface EventRoutesOptions {
  store: Store;
  secrets: WebhookSecrets;
  /** Where webhooks may point (default: no loopback, private, link-local or metadata address; webhook-addresses.ts). */
  addresses?: WebhookAddressPolicy;
  /** Approvals a rotation needs from distinct operators other than its proposer (config rotations.approvals; default 1). */
  rotationApprovals?: number;
  validity: {
    windowDays: number;
    strategy?: RotationStrategy;
    /** When given, "scan now" runs through it, so it never overlaps a scheduled scan. */
    scheduler?: ValidityScheduler;
  };
}

const ROTATION_STATUSES: RotationStatus[] = ["proposed", "approved", "running", "completed", "failed", "cancelled"];
const ID = Id;
const problems = { "4xx": { $ref: "Problem#" }, "5xx": { $ref: "Problem#" } } as const;
const opt = Type.Optional;
/** A body of no members (a body-less POST counts as {}: emptyBodyIsObject). */
const NO_MEMBERS = Closed({});

/** Body-less POSTs (`scan`, `approve`) may come without a body; it then counts as {} so the schema still refuses
 *  any field that is sent. */
const emptyBodyIsObject = async (req: FastifyRequest) => {
  if (req.body === undefined || req.body === null) req.body = {};
};

export const eventRoutes: FastifyPluginAsyncTypebox<EventRoutesOptions> = async (app, o) => {
  const { store, secrets } = o;

  app.get(
    "/events",
    {
      config: { roles: ["operator", "auditor"] },
      schema: {
        summary: "Notifications (validity, rotations ...) in id order; page with ?after=<last id>",
        querystring: Closed({ after: opt(digits(15)), type: opt(Type.String({ pattern: EVENT_TYPE_PATTERN })), limit: opt(digits(4)) }),
        response: { 200: EventPageJson, ...problems },
      },
    },
    async (req) => {
      const limit = req.query.limit === undefined ? 100 : Number(req.query.limit);
      if (limit < 1 || limit > 1000) throw new ApiProblem(400, "validation", "Request does not match the schema", "limit: expected 1..1000");
      const type = req.query.type === "*" ? undefined : req.query.type;
      const events = await store.listEvents({ afterId: Number(req.query.after ?? 0), limit, type });
      return { events: events.map(eventOut), next: events.length === limit ? events[events.length - 1].id : null };
    },
  );

  app.post(
    "/webhooks",
    {
      config: { roles: ["operator"] },
      schema: {
        summary:
          "Register a webhook; the response carries its signing secret, shown only this once. A URL whose host is (or resolves to) a loopback, private, link-local or metadata address is refused (400) unless the server's webhooks.allowAddresses permits it",
        body: Closed({
          url: Type.String({ minLength: 8, maxLength: MAX_WEBHOOK_URL, pattern: "^https?://" }),
          eventTypes: Type.Array(Type.String({ pattern: EVENT_TYPE_PATTERN }), { minItems: 1, maxItems: MAX_EVENT_TYPES, uniqueItems: true }),
        }),
        response: { 201: RegisteredWebhookJson, ...problems },
      },
    },
    async (req, reply) => {
      const { webhook, secret } = await registerWebhook(store, secrets, req.body, o.addresses, actorOf(req));
      return reply.code(201).send({ ...webhookOut(webhook), secret });
    },
  );

  app.get(
    "/webhooks",
    {
      config: { roles: ["operator", "auditor"] },
      schema: {
        summary: "Registered (enabled) webhooks",
        response: { 200: WebhookListJson, ...problems },
      },
    },
    async () => ({ webhooks: (await store.listWebhooks()).map(webhookOut) }),
  );

  app.delete(
    "/webhooks/:id",
    {
      config: { roles: ["operator"] },
      schema: {
        summary: "Disable a webhook (no further deliveries); audited",
        params: params({ id: ID }),
        response: { 204: Type.Unsafe<undefined>({ type: "null" }), ...problems },
      },
    },
    async (req, reply) => {
      if (!(await disableWebhook(store, req.params.id, actorOf(req)))) throw notFound("webhook", req.params.id);
      return reply.code(204).send();
    },
  );

  app.get(
    "/webhooks/dead-letters",
    {
      config: { roles: ["operator", "auditor"] },
      schema: {
        summary:
          "The dead-letter record: deliveries given up after their last attempt, with the last error (never the URL). Page with ?after=<last deliveryId>; retry with POST /webhooks/dead-letters/retry",
        querystring: Closed({ webhookId: opt(ID), after: opt(Type.String({ pattern: DELIVERY_ID_PATTERN })), limit: opt(digits(4)) }),
        response: { 200: DeadLetterPageJson, ...problems },
      },
    },
    async (req) => {
      const limit = req.query.limit === undefined ? 100 : Number(req.query.limit);
      if (limit < 1 || limit > 1000) throw new ApiProblem(400, "validation", "Request does not match the schema", "limit: expected 1..1000");
      const after = req.query.after === undefined ? undefined : parseDeliveryId(req.query.after);
      const rows = await store.listWebhookDeliveries({ status: "dead", webhookId: req.query.webhookId, after, limit });
      const types = new Map((await store.getEvents([...new Set(rows.map((r) => r.eventId))])).map((e) => [e.id, e.type]));
      const last = rows[rows.length - 1];
      return { deadLetters: rows.map((r) => deadLetterOut(r, types.get(r.eventId))), next: rows.length === limit ? deliveryId(last.eventId, last.webhookId) : null };
    },
  );

  app.post(
    "/webhooks/dead-letters/retry",
    {
      config: { roles: ["operator"] },
      schema: {
        summary:
          "Queue dead letters again, due now, their attempts counted afresh: all of a webhook's (webhookId) or those named (deliveryIds). Audited. Dead letters of a disabled webhook are not retried",
        body: Closed({ webhookId: opt(ID), deliveryIds: opt(Type.Array(Type.String({ pattern: DELIVERY_ID_PATTERN }), { minItems: 1, maxItems: 100, uniqueItems: true })) }, { minProperties: 1 }),
        response: { 200: RetriedJson, ...problems },
      },
    },
    async (req) => {
      const retried = await retryDeadLetters(store, req.body, actorOf(req));
      return { retried: retried.map((d) => deliveryId(d.eventId, d.webhookId)) };
    },
  );

  app.post(
    "/validity/scan",
    {
      config: { roles: ["operator"] },
      preValidation: emptyBodyIsObject,
      schema: {
        summary: "Run the validity scan (FIG. 5) now; returns what it found and queued",
        body: NO_MEMBERS,
        response: { 200: ValidityScanJson, ...problems },
      },
    },
    async (): Promise<ValidityScanResult> => {
      const v = o.validity;
      return v.scheduler ? v.scheduler.runNow() : scanValidity({ store, windowDays: v.windowDays, strategy: v.strategy });
    },
  );

  app.get(
    "/rotations",
    {
      config: { roles: ["operator", "auditor"] },
      schema: {
        summary: "Card-key rotations, e.g. ?status=proposed for those awaiting an operator's approval",
        querystring: Closed({ status: opt(Enum(ROTATION_STATUSES)), cardId: opt(ID) }),
        response: { 200: RotationListJson, ...problems },
      },
    },
    async (req) => ({ rotations: (await store.listRotations({ status: req.query.status, cardId: req.query.cardId })).map(rotationOut) }),
  );

  app.post(
    "/rotations/:id/approve",
    {
      config: { roles: ["operator"] },
      preValidation: emptyBodyIsObject,
      schema: {
        summary: "Approve a proposed rotation (para 0062; four eyes: not its proposer, distinct operators, bound to what it will do); it runs only once approved",
        params: params({ id: ID }),
        body: NO_MEMBERS,
        response: { 200: RotationJson, ...problems },
      },
    },
    async (req) => {
      const operator = req.principal?.name;
      if (!operator) throw new ApiProblem(401, "unauthenticated", "Authentication required", "approval needs an authenticated operator");
      // four eyes, audit and the rotation.approved event: src/issuer/rotation-approvals.ts
      return rotationOut(await approveRotation(store, req.params.id, operator, { required: o.rotationApprovals }));
    },
  );
};

function eventOut(e: StoredEvent): EventJson {
  return { id: e.id, type: e.type, subject: e.subject, payload: e.payload, createdAt: e.createdAt, deliveredAt: e.deliveredAt, attempts: e.attempts, lastError: e.lastError };
}

/** Who acts: the authenticated principal (installAuth sets it on every role-checked route). */
function actorOf(req: FastifyRequest): string {
  const name = req.principal?.name;
  if (!name) throw new ApiProblem(401, "unauthenticated", "Authentication required", "send Authorization: Bearer <API token>");
  return name;
}

function deadLetterOut(d: WebhookDelivery, eventType: string | undefined): DeadLetterJson {
  return { deliveryId: deliveryId(d.eventId, d.webhookId), eventId: d.eventId, webhookId: d.webhookId, eventType: eventType ?? null, attempts: d.attempts, lastError: d.lastError, deadAt: d.deadAt };
}

function webhookOut(w: Webhook): WebhookJson {
  return { id: w.id, url: w.url, eventTypes: w.eventTypes, createdAt: w.createdAt };
}
