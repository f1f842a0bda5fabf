import { test } from "node:test";
import assert from "node:assert/strict";
import { ArbitratorRegistry } from "./registry.ts";
import { type Decision, type ReproductionPolicy, evaluatePolicy, policyDigest, validatePolicy } from "./policy.ts";
import { PolicyValidationError } from "./errors.ts";
import { FIG9_ARBITRATORS, fig9Policy } from "../../test/support/recovery-testing.ts";

const dir = { isRegistered: (id: string) => (FIG9_ARBITRATORS as readonly string[]).includes(id) || id === "outsider" };

function issues(doc: unknown): { path: string; message: string }[] {
  try {
    validatePolicy(doc, dir);
  } catch (e) {
    assert.ok(e instanceof PolicyValidationError);
    assert.equal(e.check, "policy_invalid");
    return [...e.issues];
  }
  assert.fail("expected the policy to be refused");
}
const paths = (doc: unknown) => issues(doc).map((i) => i.path);
const with_ = (patch: Partial<Record<keyof ReproductionPolicy, unknown>>) => ({ ...fig9Policy(), ...patch });

test("FIG. 9 policy validates and round-trips through JSON with a stable digest", () => {
  const p = validatePolicy(JSON.parse(JSON.stringify(fig9Policy())), dir);
  assert.deepEqual(p, fig9Policy());
  assert.equal(policyDigest(p), policyDigest(fig9Policy()));
  assert.notEqual(policyDigest(p), policyDigest({ ...p, author: "mgr-b" }));
});

test("validation errors point at the offending member", () => {
  assert.deepEqual(paths(null), [""]);
  assert.deepEqual(paths(with_({ version: 2 })), ["/version"]);
  assert.deepEqual(paths(with_({ author: "nobody" })), ["/author"]);
  assert.deepEqual(paths({ ...fig9Policy(), extra: 1 }), ["/extra"]);
  assert.deepEqual(paths(with_({ indispensable: ["user", "credit-co", "ghost"] })), ["/indispensable/2"]);
  assert.deepEqual(paths(with_({ indispensable: ["user", "credit-co", "user"] })), ["/indispensable/2"]);
  const g = fig9Policy().groups;
  assert.deepEqual(paths(with_({ groups: [g[0], { ...g[1], threshold: 6 }] })), ["/groups/1/threshold"]);
  assert.deepEqual(paths(with_({ groups: [g[0], { ...g[1], threshold: 0 }] })), ["/groups/1/threshold"]);
  assert.deepEqual(paths(with_({ groups: [g[0], { ...g[1], threshold: 1.5 }] })), ["/groups/1/threshold"]);
  assert.deepEqual(paths(with_({ groups: [{ ...g[0], members: [] }, g[1]] })), ["/groups/0/members"]);
  assert.deepEqual(paths(with_({ groups: [g[0], { ...g[0] }] })), ["/groups/1/name"]);
  assert.deepEqual(paths(with_({ groups: [g[0], { ...g[1], colour: "red" }] })), ["/groups/1/colour"]);
  assert.deepEqual(paths(with_({ indispensable: [], groups: [] })).sort(), ["", "/order/0/after", "/order/0/before"]);
});

test("a member listed twice is refused: it would inflate n and make k = n unreachable", () => {
  const bad = with_({ groups: [{ name: "pair", members: ["sp-a", "sp-a"], threshold: 2 }] });
  const found = issues(bad);
  assert.deepEqual(
    found.map((i) => i.path),
    ["/groups/0/members/1", "/groups/0/threshold"],
  );
  assert.match(found[0].message, /listed twice/);
});

test("order conditions must name parties of the policy and be acyclic", () => {
  assert.deepEqual(paths(with_({ order: [{ before: "outsider", after: "user" }] })), ["/order/0/before"]);
  assert.deepEqual(paths(with_({ order: [{ before: "user", after: "user" }] })), ["/order/0"]);
  assert.deepEqual(
    paths(
      with_({
        order: [
          { before: "user", after: "credit-co" },
          { before: "user", after: "credit-co" },
        ],
      }),
    ),
    ["/order/1"],
  );
  const cyc = issues(
    with_({
      order: [
        { before: "user", after: "credit-co" },
        { before: "credit-co", after: "sp-a" },
        { before: "sp-a", after: "user" },
      ],
    }),
  );
  assert.equal(cyc.length, 1);
  assert.equal(cyc[0].path, "/order");
  assert.match(cyc[0].message, /cycle \(user -> credit-co -> sp-a -> user\)/);
});

test("validation is against the registry: an unregistered author or party is refused", () => {
  const reg = new ArbitratorRegistry();
  assert.throws(
    () => validatePolicy(fig9Policy(), reg),
    (e: PolicyValidationError) => e.issues.some((i) => i.path === "/author" && /not registered/.test(i.message)),
  );
});

const A = (arbitrator: string): Decision => ({ arbitrator, decision: "approve" });
const R = (arbitrator: string, reason = "black-listed"): Decision => ({ arbitrator, decision: "refuse", reason });

test("evaluator on FIG. 9: pending lists what is needed, then satisfied", () => {
  const p = fig9Policy();
  const e0 = evaluatePolicy(p, []);
  assert.equal(e0.status, "pending");
  if (e0.status !== "pending") return;
  assert.deepEqual(e0.needs.indispensable, ["user", "credit-co"]);
  assert.deepEqual(
    e0.needs.groups.map((g) => [g.name, g.more]),
    [
      ["service-providers", 1],
      ["issuing-apparatus-managers", 2],
    ],
  );
  assert.deepEqual(e0.needs.waiting, [{ before: "user", after: "credit-co" }]);
  const done = evaluatePolicy(p, [A("user"), A("mgr-b"), R("sp-a"), A("credit-co"), A("sp-c"), A("mgr-e")]);
  assert.equal(done.status, "satisfied");
  assert.deepEqual(done.approvers, ["user", "mgr-b", "credit-co", "sp-c", "mgr-e"]);
});

test("evaluator names the condition that can no longer be met", () => {
  const p = fig9Policy();
  const fail = (ds: Decision[]) => {
    const e = evaluatePolicy(p, ds);
    assert.equal(e.status, "failed");
    return e.status === "failed" ? e.condition : undefined;
  };
  assert.deepEqual(fail([R("user")]), { kind: "indispensable_refused", party: "user" });
  assert.deepEqual(fail([A("credit-co")]), { kind: "order_violated", before: "user", after: "credit-co" });
  assert.deepEqual(fail([R("sp-a"), R("sp-b"), R("sp-c")]), { kind: "threshold_unreachable", group: "service-providers", threshold: 1, approved: 0, stillPossible: 0 });
  assert.deepEqual(fail([A("mgr-a"), R("mgr-b"), R("mgr-c"), R("mgr-d"), R("mgr-e")]), {
    kind: "threshold_unreachable",
    group: "issuing-apparatus-managers",
    threshold: 2,
    approved: 1,
    stillPossible: 0,
  });
  assert.deepEqual(fail([A("user"), A("user")]), { kind: "duplicate_decision", party: "user" });
  assert.deepEqual(fail([A("outsider")]), { kind: "not_a_party", party: "outsider" });
  // Three of five managers refused: two remain, so the group is still reachable.
  assert.equal(evaluatePolicy(p, [R("mgr-a"), R("mgr-b"), R("mgr-c")]).status, "pending");
});

test("a refusal blocks those ordered after the refuser", () => {
  const p: ReproductionPolicy = {
    ...fig9Policy(),
    indispensable: ["user"],
    groups: [{ name: "g", members: ["credit-co", "sp-a"], threshold: 1 }],
    order: [
      { before: "user", after: "credit-co" },
      { before: "sp-b", after: "sp-a" },
    ],
  };
  p.groups.push({ name: "h", members: ["sp-b", "sp-c"], threshold: 1 });
  // sp-b refused: sp-a is blocked, but credit-co can still satisfy g.
  assert.equal(evaluatePolicy(p, [R("sp-b")]).status, "pending");
  const e = evaluatePolicy(p, [R("sp-b"), R("credit-co")]);
  assert.equal(e.status, "failed");
  if (e.status === "failed") assert.deepEqual(e.condition, { kind: "threshold_unreachable", group: "g", threshold: 1, approved: 0, stillPossible: 0 });
  const q: ReproductionPolicy = { ...fig9Policy(), indispensable: ["user", "credit-co"], groups: [{ name: "g", members: ["sp-a", "sp-b"], threshold: 1 }], order: [{ before: "sp-a", after: "user" }] };
  const b = evaluatePolicy(q, [R("sp-a")]);
  assert.equal(b.status, "failed");
  if (b.status === "failed") assert.deepEqual(b.condition, { kind: "indispensable_blocked", party: "user", blockedBy: "sp-a" });
});
