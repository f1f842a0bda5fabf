// Regenerates the picture in docs/architecture.md from the code's imports (dependency-cruiser, folders collapsed):
//   npm run docs:architecture
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { URL } from "node:url";

const doc = new URL("../docs/architecture.md", import.meta.url);
const mermaid = execFileSync(
  "npx",
  ["depcruise", "src", "--config", ".dependency-cruiser.cjs", "--include-only", "^src/", "--collapse", "^src/[^/]+/", "--exclude", "\\.test\\.ts$", "--output-type", "mermaid"],
  { encoding: "utf8", cwd: new URL("..", import.meta.url) },
);
const begin = "<!-- picture: begin (npm run docs:architecture) -->";
const end = "<!-- picture: end -->";
const text = readFileSync(doc, "utf8");
const [head, rest] = text.split(begin);
const tail = rest.split(end)[1];
writeFileSync(doc, `${head}${begin}\n\`\`\`mermaid\n${mermaid.trim()}\n\`\`\`\n${end}${tail}`);
