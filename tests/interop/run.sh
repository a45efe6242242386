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

# A private CA minted for this run (openssl, on every Debian machine) and a gateway
# certificate for 127.0.0.1 and localhost: the https tests. Node reads
# NODE_EXTRA_CA_CERTS only at start, so it is set here, before node runs.
TLS_DIR="$(mktemp -d "${TMPDIR:-/tmp}/portcullis-interop-tls-XXXXXX")"
trap 'rm -rf "$TLS_DIR"' EXIT
(
  cd "$TLS_DIR"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=portcullis interop test CA" -keyout ca.key -out ca.crt \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
    -keyout gw.key -out gw.csr 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > gw.ext
  openssl x509 -req -in gw.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
    -extfile gw.ext -out gw.crt 2>/dev/null
)
export NODE_EXTRA_CA_CERTS="$TLS_DIR/ca.crt" INTEROP_TLS_DIR="$TLS_DIR"

# The spec reporter ends with "ℹ tests N / ℹ pass N / ℹ fail N ..." summary lines.
# node exits non-zero if any test (or hook) failed; set -e propagates it.
node --test --test-reporter=spec gateway.test.mjs
