#!/usr/bin/env bash
# Runs the @modelcontextprotocol/conformance server scenarios against the conformance
# fixture twice: directly, and through a Portcullis gateway in front of it. Then
# compare.mjs checks that every scenario passing directly also passes through the
# gateway, prints the table, writes out/results.md and exits 1 on any regression.
#
# Env: FIXTURE_BIN     (default <repo>/target/debug/portcullis-conformance-fixture)
#      PORTCULLIS_BIN  (default <repo>/target/debug/portcullis)
#      CONFORMANCE_OUT (default tests/conformance/out: per-run checks.json and logs)
#      SUITES          (default "legacy 2025-11-25 2026-07-28"; see README.md)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
FIXTURE_BIN=${FIXTURE_BIN:-$ROOT/target/debug/portcullis-conformance-fixture}
PORTCULLIS_BIN=${PORTCULLIS_BIN:-$ROOT/target/debug/portcullis}
OUT=${CONFORMANCE_OUT:-$HERE/out}
SUITES=${SUITES:-legacy 2025-11-25 2026-07-28}
START_DEADLINE=${START_DEADLINE:-20} # seconds each process gets to come up

die() {
  echo "run.sh: $*" >&2
  exit 2
}

for bin in "$FIXTURE_BIN" "$PORTCULLIS_BIN"; do
  [[ -x $bin ]] || die "$bin not found or not executable (build it with cargo build first)"
done
command -v node >/dev/null || die "node not found (Node >= 20.6 is needed)"
command -v curl >/dev/null || die "curl not found"

cd "$HERE"
# Install the pinned suites when node_modules is missing or older than the lockfile.
if [[ ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
  npm ci --no-audit --no-fund --loglevel=error
fi

rm -rf "$OUT/direct" "$OUT/gateway" "$OUT/logs"
mkdir -p "$OUT/logs"

PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_for DESCRIPTION PID COMMAND...: polls COMMAND until it succeeds, PID dies, or the
# deadline passes.
wait_for() {
  local what=$1 pid=$2
  shift 2
  local deadline=$((SECONDS + START_DEADLINE))
  until "$@"; do
    kill -0 "$pid" 2>/dev/null || die "$what exited during startup (logs in $OUT/logs)"
    ((SECONDS < deadline)) || die "$what not ready after ${START_DEADLINE}s (logs in $OUT/logs)"
    sleep 0.1
  done
}

# --- the fixture
"$FIXTURE_BIN" --listen 127.0.0.1:0 >"$OUT/logs/fixture.out" 2>"$OUT/logs/fixture.err" &
FIXTURE_PID=$!
PIDS+=("$FIXTURE_PID")
wait_for "the fixture" "$FIXTURE_PID" grep -qs '^listening http://' "$OUT/logs/fixture.out"
FIXTURE_URL=$(sed -n 's/^listening \(http:.*\)$/\1/p' "$OUT/logs/fixture.out" | head -n 1)
FIXTURE_PORT=$(sed -n 's#^http://127\.0\.0\.1:\([0-9]*\)/mcp$#\1#p' <<<"$FIXTURE_URL")
[[ -n $FIXTURE_PORT ]] || die "cannot parse the fixture URL from: $FIXTURE_URL"

# --- the gateway in front of it
CONFIG=$OUT/portcullis.yaml
cat >"$CONFIG" <<EOF
listeners:
  public: 127.0.0.1:0
  admin: 127.0.0.1:0
server:
  threads: 2
  grace_period: 0s
access_log:
  enabled: false
http:
  allowed_hosts: [localhost, 127.0.0.1]
  # dns-rebinding-protection also sends a *valid* loopback Origin and expects 2xx.
  allowed_origins: ["http://localhost:*", "http://127.0.0.1:*"]
routes:
  - path: /mcp
    upstream: fixture
upstreams:
  fixture:
    url: http://127.0.0.1:$FIXTURE_PORT/mcp
EOF
"$PORTCULLIS_BIN" --log-format json run --config "$CONFIG" >"$OUT/logs/gateway.out" 2>"$OUT/logs/gateway.err" &
GATEWAY_PID=$!
PIDS+=("$GATEWAY_PID")
wait_for "the gateway" "$GATEWAY_PID" grep -qs '"portcullis listening"' "$OUT/logs/gateway.err"
read -r PUBLIC ADMIN < <(node -e '
  const lines = require("fs").readFileSync(process.argv[1], "utf8").split("\n");
  for (const line of lines) {
    let rec;
    try { rec = JSON.parse(line); } catch { continue; }
    if (rec?.fields?.message === "portcullis listening") {
      console.log(rec.fields.public, rec.fields.admin);
      process.exit(0);
    }
  }
  process.exit(1);
' "$OUT/logs/gateway.err") || die "no \"portcullis listening\" line in $OUT/logs/gateway.err"
wait_for "the gateway's /healthz" "$GATEWAY_PID" curl -fsS -o /dev/null --max-time 1 "http://$ADMIN/healthz"

# The suite only runs dns-rebinding-protection against a localhost URL.
DIRECT_URL="http://localhost:$FIXTURE_PORT/mcp"
GATEWAY_URL="http://localhost:${PUBLIC##*:}/mcp"
echo "fixture  $DIRECT_URL (pid $FIXTURE_PID)"
echo "gateway  $GATEWAY_URL, admin http://$ADMIN (pid $GATEWAY_PID)"

# --- the suites
LEGACY=(node node_modules/@modelcontextprotocol/conformance/dist/index.js)
NEXT=(node --import ./shim/register.mjs node_modules/conformance-next/dist/index.js)

# run_suite SUITE TARGET URL: results in $OUT/TARGET/SUITE/server-<scenario>-<ts>/checks.json.
# The suite's own exit code only says whether some check failed; compare.mjs decides.
run_suite() {
  local suite=$1 target=$2 url=$3 dir=$OUT/$2/$1 log=$OUT/logs/$2-$1.log
  local cmd
  case $suite in
    legacy) cmd=("${LEGACY[@]}" server --url "$url" --suite all) ;;
    2025-11-25 | 2026-07-28) cmd=("${NEXT[@]}" server --url "$url" --requirements "$suite") ;;
    *) die "unknown suite $suite (known: legacy 2025-11-25 2026-07-28)" ;;
  esac
  mkdir -p "$dir"
  local t0=$SECONDS
  "${cmd[@]}" -o "$dir" >"$log" 2>&1 || true
  printf '%-8s %-11s %3ss  %s\n' "$target" "$suite" $((SECONDS - t0)) \
    "$(grep -E '^Total: ' "$log" | tail -n 1 || echo "no summary, see $log")"
}

for suite in $SUITES; do
  run_suite "$suite" direct "$DIRECT_URL"
  run_suite "$suite" gateway "$GATEWAY_URL"
done

# shellcheck disable=SC2086 # SUITES is a word list
node compare.mjs --out "$OUT" --markdown "$OUT/results.md" $SUITES
