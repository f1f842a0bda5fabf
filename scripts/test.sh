#!/usr/bin/env bash
# The README's test command (npm test): installs and starts what the tests need from the system, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-deps.sh
bash scripts/pcsc-up.sh
bash scripts/postgres-up.sh
[ -d node_modules ] || npm ci --no-audit --no-fund
# The tests run the compiled CLI and server (dist/): build from the sources as they are now, quietly unless it fails.
if ! build_log=$(npm run --silent build 2>&1); then
  printf '%s\n' "$build_log" >&2
  echo "npm run build failed" >&2
  exit 1
fi
shopt -s globstar nullglob
files=(src/**/*.test.ts test/**/*.test.ts)
tap=$(mktemp)
set +e
node --import tsx --test --test-concurrency=2 \
  --test-reporter=spec --test-reporter-destination=stdout \
  --test-reporter=tap --test-reporter-destination="$tap" "${files[@]}"
rc=$?
set -e
pass=$(grep -E '^# pass ' "$tap" | tail -1 | awk '{print $3}')
fail=$(grep -E '^# fail ' "$tap" | tail -1 | awk '{print $3}')
skip=$(grep -E '^# skipped ' "$tap" | tail -1 | awk '{print $3}')
cancelled=$(grep -E '^# cancelled ' "$tap" | tail -1 | awk '{print $3}')
# A cancelled test (e.g. a suite whose database never came up) is a failure.
fail=$(( ${fail:-0} + ${cancelled:-0} ))
rm -f "$tap"
echo "${pass:-0} passed, ${fail:-0} failed, ${skip:-0} skipped"
exit $rc
