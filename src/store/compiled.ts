// Hot-path statements compiled once (issue 10, Benchmarks). Kysely builds an immutable query tree and compiles it to
// SQL on every call: in the HTTP issuance profile that was a fifth of the server's CPU per credential, about as much
// as SQLite's own execution of the same ~20 statements. A `compiled` query is built once per dialect with named
// placeholders where its values go, compiled, and kept; each call binds the values to the kept SQL and runs it through
// the DB or transaction it is given (the same executor, connection and statement cache as a built query).
//
// Never: a value in the SQL text (values are always bound parameters, as with a built query), or a query whose shape
// depends on its values (a list, an optional filter: one `compiled` per shape, or a built query). An instance with
// plugins (withSchema, ...) compiles every call as Kysely would.

import type { Compilable, CompiledQuery, Kysely, QueryId, QueryResult, RootOperationNode } from "kysely";

/** Where the value named `name` goes. */
class Placeholder {
  constructor(readonly name: string) {}
}

/** One compiled form: the SQL, and for each parameter either a placeholder's name or a constant the builder put there. */
interface Template {
  sql: string;
  query: RootOperationNode;
  queryId: QueryId;
  params: ({ name: string } | { value: unknown })[];
}

export interface CompiledStatement<DB, P extends object, R> {
  /** Runs the statement on `db` (a Kysely instance or a transaction of it) with `values` bound. */
  execute(db: Kysely<DB>, values: P): Promise<QueryResult<R>>;
}

/**
 * A statement built by `build` once per dialect. `build` gets the DB and an object whose every property is a
 * placeholder (typed as the value it stands for); it must use the placeholders only where Kysely binds a value
 * (`where(col, op, p.x)`, `values({ col: p.x })`, `set({ col: p.x })`), so that each becomes a parameter.
 */
export function compiled<DB, P extends object, R>(build: (db: Kysely<DB>, p: P) => Compilable<R>): CompiledStatement<DB, P, R> {
  const templates = new WeakMap<object, Template>();
  const placeholders = new Map<string, Placeholder>();
  const p = new Proxy({} as P, {
    get: (_t, k) => {
      const name = String(k);
      let ph = placeholders.get(name);
      if (!ph) placeholders.set(name, (ph = new Placeholder(name)));
      return ph;
    },
  });
  const template = (db: Kysely<DB>): Template => {
    const c = build(db, p).compile();
    const params = c.parameters.map((v) => (v instanceof Placeholder ? { name: v.name } : { value: v }));
    for (const name of placeholders.keys()) {
      if (!params.some((x) => "name" in x && x.name === name)) throw new Error(`compiled query: placeholder ${name} is not a bound parameter of ${c.sql}`);
    }
    return { sql: c.sql, query: c.query, queryId: c.queryId, params };
  };
  return {
    execute(db, values) {
      const executor = db.getExecutor();
      let t: Template | undefined;
      if (executor.plugins.length > 0) t = template(db);
      else {
        t = templates.get(executor.adapter);
        if (!t) templates.set(executor.adapter, (t = template(db)));
      }
      const parameters = t.params.map((x) => ("name" in x ? (values as Record<string, unknown>)[x.name] : x.value));
      for (let i = 0; i < parameters.length; i++) if (parameters[i] === undefined) throw new Error(`compiled query: no value for ${(t.params[i] as { name: string }).name}`);
      const q: CompiledQuery<R> = { sql: t.sql, parameters, query: t.query, queryId: t.queryId };
      return db.executeQuery(q);
    },
  };
}
