#!/usr/bin/env bash
# Runs the TypeScript-SDK interop tests against a built gateway binary.
#   PORTCULLIS_BIN=/path/to/portcullis bash tests/interop/run.sh
# (default binary: <repo>/target/debug/portcullis). Needs Node >= 20.6 and npm.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

# Install the pinned packages only when needed: no node_modules yet, or the lockfile
# changed since the last install (npm writes node_modules/.package-lock.json).
if [[ ! -d node_modules || ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
  echo "interop: npm ci" >&2
  npm ci --no-audit --no-fund
fi

# The spec reporter ends with "ℹ tests N / ℹ pass N / ℹ fail N ..." summary lines.
# node exits non-zero if any test (or hook) failed; set -e propagates it.
exec node --test --test-reporter=spec gateway.test.mjs
