#!/usr/bin/env node
// The cardkms command: the CLI compiled to dist/ by `npm run build` (which `npm ci` runs, as the prepare script).
import { existsSync } from "node:fs";

const main = new URL("../dist/cli/main.js", import.meta.url);
if (!existsSync(main)) {
  process.stderr.write("cardkms: the CLI is not built (no dist/cli/main.js): run `npm run build`\n");
  process.exit(1);
}
await import(main.href);
