// npm run bench [name ...] — prints one JSON object per line: name, value, unit (and baseline, ratio where asked).
// Benches: card (PIV signing ratio, persisted PIN verifies), pcsc (round trips through pcscd + vpcd), fuzz.

type Result = { name: string; value: number; unit: string };

const benches: Record<string, () => Promise<Result[]>> = {
  card: async () => (await import("./card.ts")).benchCard(),
  pcsc: async () => [await (await import("./pcsc.ts")).benchPcsc()],
  ca: async () => (await import("./ca.ts")).benchCa(),
  fuzz: async () => [await (await import("./fuzz.ts")).benchFuzz(Number(process.env.FUZZ_COUNT ?? 200_000))],
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
