// HTTP routes of flow 5.e, card-key rotation Sk1 -> Sk2 onto a new card (seed 000 embodiments 3, 4, 5, FIG. 15).
// Thin: the domain is src/issuer/rotation.ts (CardRotation), rotation-approvals.ts and rewrap.ts; this file validates
// (closed schemas), authorises (roles in route config), maps domain errors to problem+json and queues the bulk
// re-wrap as a job (job-runner.ts runs it, on any server). The listing and the operators' approvals live in event-routes.ts (GET /rotations,
// POST /rotations/{id}/approve: four eyes, rotation-approvals.ts).
//
//   POST /cards/{id}/rotations  {strategy, newCardId?, add?, drop?} -> 201 the proposal: what its approvals cover
//        (the new card's ID — a fresh one unless given —, the credentials added, the old card's slots left behind);
//        the proposer is recorded and may not approve it                                        [operator]
//   POST /rotations/{id}/cancel                           -> 200 a proposed or approved rotation withdrawn [operator]
//   POST /rotations/{id}/new-card      {cardId?}          -> 201 {card, personalisation: {sessionId, apdus}}:
//        the approved new card with Sk2 (and Sk1 for embodiments 4, 5); the card issuing machine relays the SCP03
//        scripts through POST /relay/{sessionId}, and the card is active once they ran. 200 with personalisation
//        null when the new card is already personalised (the call is idempotent). Another cardId: 409.  [operator]
//   POST /rotations/{id}/rewrap                           -> 202 while the bulk re-wrap runs (queued now or
//        earlier: one live job per rotation, the call is idempotent), 200 once nothing is left. The job is a row of
//        the job table (issue 16 §2): whichever server's job runner claims it runs it, under a lease, resuming from
//        the rotation's cursor — also after the server that ran it died.                      [operator]
//   GET  /rotations/{id}                                  -> status with done/total/cursor and the re-wrap job as
//        the job table has it (the same on every server), the
//        approvals (needed, given, by whom) and the distribution: every slot owed to the new card and its state
//        (pending, packaged, delivered, acknowledged, dropped), and what is still owed         [operator, auditor]
//   POST /rotations/{id}/distribute    {add?}             -> the packages per FIG. 15 (claimed once per rotation;
//        a second call gets the same result, or 409 while the first is still at it); `add`, when sent, must be
//        the approved additions. The rotation completes once the new card's terminal fetched every package.
//        A new card not yet personalised: 409, nothing distributed, the old card as it was.      [operator]
//
// Audit: the domain appends rotation.proposed / approval / approved / cancelled / started / redistributed /
// distributed / completed and card.issued / personalised, and around the background re-wrap (CardRotation.rewrapJob)
// rotation.rewrap-started and rotation.rewrapped; this file appends nothing.
//
// Never in a response: a key value, a custody reference, Sk[PRk] or a package body (the terminal fetches those
// through its own, card-bound routes).

import type { FastifyPluginAsyncTypebox } from "@fastify/type-provider-typebox";
import type { FastifyRequest } from "fastify";
import { packageHeader } from "../protocol/package.ts";
import { IssuerError } from "../issuer/issuer.ts";
import { requireCardState } from "../issuer/card-lifecycle.ts";
import { FIG15, type CardRotation, type DistributionStatus } from "../issuer/rotation.ts";
import type { RotationItem } from "../issuer/rotation-records.ts";
import type { Job, JobStore } from "../issuer/jobs.ts";
import { REWRAP_JOB, rewrapJobProgress, rewrapLeft } from "../issuer/rewrap-job.ts";
import type { Card, Rotation } from "../store/store.ts";
import { CARD_ID, EMPTY_BODY, ID, params, principalOf, problems, toHex } from "./issuer-routes.ts";
import { conflict } from "./problem.ts";
import type { RelaySessions } from "./relay-sessions.ts";
import { rotationOut } from "./schemas.ts";
import { DistributeRequest, DistributedJson, NewCardDoneJson, NewCardOpenedJson, NewCardRequest, ProposeRotationRequest, RotationJson, RotationStatusJson } from "../issuer/wire-rotation.ts";

export interface RotationRoutesOptions {
  rotations: CardRotation;
  relays: RelaySessions;
  /** The job table the re-wrap jobs are queued in (issue 16 §2); a job runner (job-runner.ts) runs them. */
  jobs: JobStore;
  /** Asks this server's job runner to claim now (a job was queued). */
  kickJobs?: () => void;
}

const itemOut = (i: RotationItem) => ({ slot: i.slot, kind: i.kind, path: i.path, keyPairId: i.keyPairId, state: i.state, packageSeq: i.packageSeq, updatedAt: i.updatedAt });
const distributionOut = (d: DistributionStatus) => ({ state: d.state, items: d.items.map(itemOut), owed: d.owed });

const cardOut = (c: Card) => ({ id: c.id, userId: c.userId, status: c.status, validFrom: c.validFrom, validUntil: c.validUntil, currentKeySetId: c.currentKeySetId, createdAt: c.createdAt });

/** Absent body counts as {} so the closed schema still refuses any field that is sent. */
const emptyBodyIsObject = async (req: FastifyRequest) => {
  if (req.body === undefined || req.body === null) req.body = {};
};

/** A rotation's re-wrap job as the status shows it (RewrapJson). */
interface RewrapJobView {
  state: "running" | "done" | "failed";
  keysPerSecond: number;
  error?: string;
  job: { id: string; state: Job["state"]; leaseOwner: string | null; leaseUntil: number | null; attempts: number };
}

/** The job table's row as the status reports it: queued counts as running (it runs as soon as a runner claims it). */
const jobView = (j: Job): RewrapJobView => ({
  state: j.state === "queued" || j.state === "running" ? "running" : j.state === "done" ? "done" : "failed",
  keysPerSecond: rewrapJobProgress(j.progress).keysPerSecond,
  ...(j.error ? { error: j.error } : j.state === "stopped" ? { error: "stopped" } : {}),
  job: { id: j.id, state: j.state, leaseOwner: j.leaseOwner, leaseUntil: j.leaseUntil, attempts: j.attempts },
});

export const rotationRoutes: FastifyPluginAsyncTypebox<RotationRoutesOptions> = async (app, o) => {
  const { rotations, relays, jobs } = o;
  const store = rotations.store;

  const rotationOr404 = async (id: string): Promise<Rotation> => (await store.getRotation(id)) ?? rotationsNotFound(id);

  /** The rotation's re-wrap job as the job table has it now (the same answer on every server): read BEFORE the
   *  rotation, so that a job that ends between the reads is not reported done beside counters read while it ran. */
  const jobNow = async (id: string): Promise<RewrapJobView | undefined> => {
    const j = await jobs.latest(REWRAP_JOB, id);
    return j && jobView(j);
  };

  const status = (r: Rotation, j: RewrapJobView | undefined) => {
    const needed = FIG15[r.strategy].systemDb === "all";
    const byCounters = r.status === "completed" || (r.status === "running" && r.total > 0 && r.done >= r.total) ? ("done" as const) : ("idle" as const);
    const rewrap = !needed
      ? { state: "not-needed" as const }
      : j
        ? // A job that failed or stopped while the counters say done (another runner or the CLI finished): done.
          { ...j, state: j.state === "failed" && byCounters === "done" ? ("done" as const) : j.state, keysPerSecond: Math.round(j.keysPerSecond) }
        : // No job (none run yet, or run by the CLI before jobs): judged by the counters.
          { state: byCounters };
    return { rotation: rotationOut(r), rewrap, left: needed ? Math.max(0, r.total - r.done) : 0 };
  };

  app.post(
    "/cards/:id/rotations",
    {
      config: { roles: ["operator"] },
      schema: {
        summary: "Propose rotating the card's key set Sk1 -> Sk2 onto a new card (FIG. 15 strategy), bound to its new card, additions and drops; it runs once other operators approved it",
        params: params({ id: CARD_ID }),
        body: ProposeRotationRequest,
        response: { 201: RotationJson, ...problems },
      },
    },
    async (req, reply) => {
      const { strategy, newCardId, add, drop } = req.body;
      if (add && new Set(add.map((a) => a.slot)).size !== add.length) throw domainInvalid("add: one credential per slot");
      return reply.code(201).send(rotationOut(await rotations.propose({ cardId: req.params.id, strategy, newCardId, add, drop }, principalOf(req).name)));
    },
  );

  app.post(
    "/rotations/:id/cancel",
    {
      config: { roles: ["operator"] },
      preValidation: emptyBodyIsObject,
      schema: {
        summary: "Withdraw a rotation that has not started (proposed or approved); propose anew to change what it is bound to",
        params: params({ id: ID }),
        body: EMPTY_BODY,
        response: { 200: RotationJson, ...problems },
      },
    },
    async (req) => rotationOut(await rotations.cancel(req.params.id, principalOf(req).name)),
  );

  app.get(
    "/rotations/:id",
    {
      config: { roles: ["operator", "auditor"] },
      schema: {
        summary: "A rotation's status: its bulk re-wrap (done/total/cursor, its job as the job table has it), its approvals and what its distribution still owes the new card",
        params: params({ id: ID }),
        response: { 200: RotationStatusJson, ...problems },
      },
    },
    async (req) => {
      const job = await jobNow(req.params.id);
      const s = await rotations.status(req.params.id);
      const approvals = {
        required: s.approvals.required,
        proposedBy: s.approvals.proposedBy,
        binding: s.approvals.binding,
        given: s.approvals.given.map((a) => ({ operator: a.operator, approvedAt: a.approvedAt })),
      };
      return { ...status(s.rotation, job), approvals, distribution: distributionOut(s.distribution) };
    },
  );

  // The new card's personalisation (relay-sessions.ts, issue 16 §1): several card scripts through ONE relay session
  // (Sk2, then Sk1 added beside it under a session on Sk2), each its own SCP03 session and checked when it ran;
  // rebuilt from the rotation's records by whichever server takes the round.
  relays.register("rotation-new-card", async (r) => {
    const cardId = String(r.cardId);
    return {
      scripts: await rotations.newCardScripts(String(r.rotationId)),
      gate: () => requireCardState(store, cardId, "personalisation"),
      finish: async (_results, owner) => void (await rotations.issuer.markPersonalised(cardId, owner)),
    };
  });

  app.post(
    "/rotations/:id/new-card",
    {
      config: { roles: ["operator"] },
      preValidation: emptyBodyIsObject,
      schema: {
        summary: "Issue the rotation's new card (ST11-ST12) and open its personalisation relay (ST13-ST14) for the card issuing machine",
        params: params({ id: ID }),
        body: NewCardRequest,
        response: { 200: NewCardDoneJson, 201: NewCardOpenedJson, ...problems },
      },
    },
    async (req, reply) => {
      const actor = principalOf(req).name;
      const { rotation, card } = await rotations.issueNewCard(req.params.id, actor, { cardId: req.body.cardId });
      if (card.status !== "issued") return reply.code(200).send({ rotation: rotationOut(rotation), card: cardOut(card), personalisation: null });
      const opened = await relays.open(actor, { kind: "rotation-new-card", rotationId: rotation.id, cardId: card.id });
      return reply.code(201).send({ rotation: rotationOut(rotation), card: cardOut(card), personalisation: { sessionId: opened.sessionId, apdus: opened.apdus.map(toHex) } });
    },
  );

  app.post(
    "/rotations/:id/rewrap",
    {
      config: { roles: ["operator"] },
      preValidation: emptyBodyIsObject,
      schema: {
        summary: "Queue or resume the bulk re-wrap Sk1[PRk] -> Sk2[PRk] as a background job any server runs; 202 with progress while it runs",
        params: params({ id: ID }),
        body: EMPTY_BODY,
        response: { 200: RotationStatusJson, 202: RotationStatusJson, ...problems },
      },
    },
    async (req, reply) => {
      const actor = principalOf(req).name;
      const before = await jobNow(req.params.id);
      const r = await rotationOr404(req.params.id);
      if (r.status !== "running" || !r.toKeySetId) {
        if (r.status === "completed") return reply.code(200).send(status(r, before));
        throw conflict(`rotation ${r.id} is ${r.status}: the re-wrap runs once the new card is issued (POST /rotations/${r.id}/new-card)`);
      }
      if (before?.state === "running") return reply.code(202).send(status(r, before));
      if (FIG15[r.strategy].systemDb !== "all") return reply.code(200).send(status(r, before));
      // Nothing left under Sk1 past the cursor: done already (by a server's job or the CLI).
      const left = await rewrapLeft(store, r);
      if (left === 0) return reply.code(200).send({ ...status(r, before), left });
      // One live job per rotation (the job table's unique index): a concurrent call gets the same job.
      const { job } = await jobs.enqueue({ kind: REWRAP_JOB, subject: r.id, actor });
      o.kickJobs?.();
      return reply.code(202).send({ ...status(r, jobView(job)), left });
    },
  );

  app.post(
    "/rotations/:id/distribute",
    {
      config: { roles: ["operator"] },
      preValidation: emptyBodyIsObject,
      schema: {
        summary: "Redistribute per FIG. 15 (embodiment 3: every pair under Sk2; 4, 5: only the approved added pairs), once per rotation; it completes when the new card fetched them",
        params: params({ id: ID }),
        body: DistributeRequest,
        response: { 200: DistributedJson, ...problems },
      },
    },
    async (req) => {
      const add = req.body.add;
      if (add && new Set(add.map((a) => a.slot)).size !== add.length) throw domainInvalid("add: one credential per slot");
      const res = await rotations.distribute(req.params.id, principalOf(req).name, { add });
      return {
        rotation: rotationOut(res.rotation),
        distribution: distributionOut(res.distribution),
        packages: res.packages.map((p) => {
          const h = packageHeader(p.body);
          return { seq: p.seq, slot: h.keyRef, kvn: h.kvn, cardId: p.cardId, bytes: p.body.length };
        }),
        added: res.added.map((c) => ({ keyPairId: c.keyPair.id, slot: c.keyPair.slot, serial: c.certificate.serial, packageSeq: c.package.seq })),
      };
    },
  );
};

const rotationsNotFound = (id: string): never => {
  throw new IssuerError("not_found", `no rotation ${id}`);
};
const domainInvalid = (m: string) => new IssuerError("invalid", m);
