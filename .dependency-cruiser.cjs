// The layering of docs/architecture.md, enforced in `npm run lint` (issue 10). Each layer imports only from below:
//   protocol/ (and tlog/, util/, x509.ts: leaves)
//   card/, transport/, custody/            on protocol/
//   ca/, issuer/, keygen/, recovery/       domain roles
//   store/                                 implements the domain's storage on Kysely
//   terminal/                              the user's side: protocol and the domain's pure formats, never store/server
//   server/, cli/, demo/                   wiring
// Type-only imports count (tsPreCompilationDeps). What the code did before the rules and still does is listed in
// .dependency-cruiser-known-violations.json (regenerate with `npm run lint:deps:baseline` only when you remove
// some): lint fails on any violation not in that list.
/* global module */
const layer = (name, comment, from, forbidden) => ({
  name,
  comment,
  severity: "error",
  from: { path: from, pathNot: "\\.test\\.ts$" },
  to: { path: forbidden },
});
/** @type {import('dependency-cruiser').IConfiguration} */
module.exports = {
  forbidden: [
    {
      name: "no-circular",
      comment: "No import cycles, type-only ones included.",
      severity: "error",
      from: {},
      to: { circular: true },
    },
    layer("protocol-is-the-bottom", "protocol/ (host-side card protocols and wire formats) imports nothing of the project above it", "^src/(protocol|tlog|util)/", "^src/(card|transport|custody|ca|issuer|keygen|recovery|backup|store|terminal|server|cli|demo)/"),
    layer("card-on-protocol", "the virtual card imports only protocol/ (and util/)", "^src/card/", "^src/(transport|custody|ca|issuer|keygen|recovery|backup|store|terminal|server|cli|demo)/"),
    layer("transport-on-protocol", "transport/ sits beside the card on protocol/", "^src/transport/", "^src/(custody|ca|issuer|keygen|recovery|backup|store|terminal|server|cli|demo)/"),
    layer("custody-on-protocol", "custody/ sits beside the card on protocol/", "^src/custody/", "^src/(card|transport|ca|issuer|keygen|recovery|backup|store|terminal|server|cli|demo)/"),
    layer("domain-below-store", "domain roles declare storage ports; no Kysely, SQL, HTTP or CLI inside", "^src/(ca|issuer|keygen|recovery|backup)/", "^src/(store|terminal|server|cli|demo)/"),
    layer("store-below-wiring", "store/ implements the domain's ports; it never reaches the terminal or the wiring", "^src/store/", "^src/(terminal|server|cli|demo)/"),
    layer("terminal-client-side", "the user's side never imports store/ or server/ (nor the wiring)", "^src/terminal/", "^src/(store|server|cli|demo)/"),
    {
      name: "no-sql-or-http-in-domain",
      comment: "domain roles hold no Kysely, SQL driver, Fastify or commander",
      severity: "error",
      from: { path: "^src/(protocol|card|transport|custody|ca|issuer|keygen|recovery|backup|terminal)/", pathNot: "\\.test\\.ts$" },
      to: { path: "node_modules/(kysely|better-sqlite3|pg|fastify|@fastify|commander)/" },
    },
    {
      name: "no-test-kits-in-production",
      comment: "production code never imports a test, a test kit or test/",
      severity: "error",
      from: { path: "^src/", pathNot: "(\\.test\\.ts$|/testing\\.ts$|^src/custody/contract\\.ts$|^src/store/bench\\.ts$)" },
      to: { path: "(\\.test\\.ts$|/testing\\.ts$|^src/custody/contract\\.ts$|^test/|^bench/)" },
    },
  ],
  options: {
    doNotFollow: { path: "node_modules" },
    includeOnly: "^src/|^node_modules/(kysely|better-sqlite3|pg|fastify|@fastify|commander)/",
    tsPreCompilationDeps: true,
    tsConfig: { fileName: "tsconfig.json" },
    enhancedResolveOptions: { exportsFields: ["exports"], conditionNames: ["import", "require", "node", "default"], extensions: [".ts", ".js"] },
  },
};
