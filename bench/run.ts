// npm run bench [name ...] — prints one JSON object per line: name, value, unit (and baseline, ratio where asked).
// Benches: card (PIV signing ratio, persisted PIN verifies), pcsc (round trips through pcscd + vpcd), ca, fuzz,
// rewrap (bulk re-wrap of a rotation, 1,000,000 keys: REWRAP_KEYS), recovery (key reproduction), issuance (HTTP
// issuance against the server in its own process, SQLite), issuance_pg (the same on PostgreSQL), issuance_pg3 (three
// servers on one PostgreSQL database, requests round-robin), issuance_scaleout (SQLite 1, PostgreSQL 1 and 3 servers
// in one run: issue 16's figures), issuance_rsa and
// cli_startup (`cardkms --help`, compiled, against `node -e 0`).

type Result = { name: string; value: number; unit: string };

const benches: Record<string, () => Promise<Result[]>> = {
  card: async () => (await import("./card.ts")).benchCard(),
  pcsc: async () => [await (await import("./pcsc.ts")).benchPcsc()],
  ca: async () => (await import("./ca.ts")).benchCa(),
  fuzz: async () => [await (await import("./fuzz.ts")).benchFuzz(Number(process.env.FUZZ_COUNT ?? 200_000))],
  rewrap: async () => (await import("./rewrap.ts")).benchRewrap({ keys: Number(process.env.REWRAP_KEYS ?? 1_000_000) }),
  recovery: async () => (await import("./recovery.ts")).benchRecovery(),
  issuance: async () => (await import("./issuance.ts")).benchIssuanceHttp({ engine: "sqlite" }),
  issuance_pg: async () => (await import("./issuance.ts")).benchIssuanceHttp({ engine: "postgres" }),
  issuance_pg3: async () => (await import("./issuance.ts")).benchIssuanceHttp({ engine: "postgres", servers: 3 }),
  // issue 16: in one run, SQLite with one server, PostgreSQL with one and with three servers on one database
  issuance_scaleout: async () => {
    const { benchIssuanceHttp } = await import("./issuance.ts");
    return [...(await benchIssuanceHttp({ engine: "sqlite" })), ...(await benchIssuanceHttp({ engine: "postgres" })), ...(await benchIssuanceHttp({ engine: "postgres", servers: 3 }))];
  },
  issuance_rsa: async () => (await import("./issuance.ts")).benchIssuanceRsa(),
  issuance_inprocess: async () => (await import("./issuance.ts")).benchIssuanceInProcess(),
  cli_startup: async () => [(await import("./startup.ts")).benchStartup()],
};

const wanted = process.argv.slice(2);
for (const w of wanted) if (!benches[w]) throw new Error(`unknown bench ${w}; known: ${Object.keys(benches).join(", ")}`);
for (const name of wanted.length ? wanted : Object.keys(benches)) {
  try {
    for (const r of await benches[name]()) console.log(JSON.stringify({ ...r, date: new Date().toISOString() }));
  } catch (e) {
    console.log(JSON.stringify({ name, error: e instanceof Error ? e.message : String(e) }));
    process.exitCode = 1;
  }
}
