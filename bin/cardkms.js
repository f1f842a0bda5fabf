#!/usr/bin/env node
// Runs the TypeScript CLI through tsx (a dependency), so `npx cardkms` works from a clone.
import { register } from "tsx/esm/api";
register();
await import("../src/cli/main.ts");
