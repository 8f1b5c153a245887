#!/usr/bin/env bash
# HTTP overhead of rate limiting: POST /orders bare vs behind hardened's RateLimitMiddleware vs
# behind slowapi, both on the same Redis, limits so large that nothing is refused.
#
# Run: bash bench/http_overhead.sh    (about 2 min; needs wrk and Redis at BENCH_REDIS_URL,
# default redis://127.0.0.1:6379/14). The last line printed is one JSON line.
#
# Method (the one every HTTP bench here uses): one uvicorn worker (uvloop, httptools, --no-access-log),
# a fresh server per run, a 2 s wrk warm-up, then `wrk -t1 -c32 -d10s` with a small JSON body;
# the scenarios alternate (order rotated) over 3 rounds and each reports its median round.
# Ratios are to bare in the same run (absolute numbers drift 10-30 % between runs):
# `*_ratio` divides medians, `*_ratio_paired` is the median of per-round ratios.
# Each server is checked before it is measured: a 200 for the POST, hardened's RateLimit
# headers present, slowapi's Redis keys exist afterwards; non-2xx and socket errors are counted.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v wrk >/dev/null 2>&1; then
  echo "wrk is missing; install it with: apt-get install -y wrk" >&2
  exit 1
fi

ROUNDS="${ROUNDS:-3}"
# Extra diagnostic scenario: SCENARIOS="bare hardened slowapi hardened_memory" (the middleware
# on MemoryStore, i.e. without the Redis round trip); bare, hardened and slowapi are required.
read -r -a scenarios <<<"${SCENARIOS:-bare hardened slowapi}"
DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
export BENCH_REDIS_URL="${BENCH_REDIS_URL:-redis://127.0.0.1:6379/14}"
RUN="$(date +%s)-$$"
export BENCH_PREFIX="bench:http:${RUN}:"
REDIS_DB="${BENCH_REDIS_URL##*/}"

PY="$(uv run python -c 'import sys; print(sys.executable)')"
PORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
URL="http://127.0.0.1:${PORT}/orders"
BODY='{"sku":"SKU-12345","quantity":3,"note":"leave at the door"}'

TMP="$(mktemp -d)"
SERVER_PID=""
cleanup() {
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  redis-cli -n "$REDIS_DB" --scan --pattern "*${RUN}*" | xargs -r redis-cli -n "$REDIS_DB" del >/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT

# wrk needs Lua for a POST; done() prints the run as one JSON line (latencies in microseconds).
cat >"$TMP/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '${BODY}'
wrk.headers["Content-Type"] = "application/json"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests": %d, "duration_us": %d, "non2xx": %d, "socket_errors": %d, '
    .. '"p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
LUA

start_server() {
  "$PY" -m uvicorn --factory "bench.http_apps:make_$1" --app-dir . --host 127.0.0.1 \
    --port "$PORT" --workers 1 --loop uvloop --http httptools --no-access-log \
    --log-level warning &
  SERVER_PID=$!
  for _ in $(seq 1 100); do
    if curl -s -o /dev/null "http://127.0.0.1:${PORT}/docs"; then return 0; fi
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "server $1 died" >&2; exit 1; }
    sleep 0.1
  done
  echo "server $1 did not come up" >&2
  exit 1
}

stop_server() {
  kill "$SERVER_PID"
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}

check_server() {
  local headers status
  headers="$(curl -s -D - -o /dev/null -H 'Content-Type: application/json' -d "$BODY" "$URL")"
  status="$(head -n1 <<<"$headers" | awk '{print $2}')"
  if [[ "$status" != "200" ]]; then
    echo "$1: POST returned ${status:-nothing}" >&2
    exit 1
  fi
  if [[ "$1" == hardened* ]] && ! grep -qi '^ratelimit-policy:' <<<"$headers"; then
    echo "hardened: no RateLimit-Policy header, the middleware did not run" >&2
    exit 1
  fi
}

# hardened's GCRA keys live ~60 us at this limit, so its proof is the RateLimit header above
# (fail_mode="closed": a store failure would be a 503); slowapi's window keys stay 60 s.
check_keys() {
  [[ "$1" != "slowapi" ]] && return 0
  if [[ -z "$(redis-cli -n "$REDIS_DB" --scan --pattern "*${RUN}:${1}*" | head -n1)" ]]; then
    echo "$1: no Redis key under ${BENCH_PREFIX}${1}, the limiter did not reach Redis" >&2
    exit 1
  fi
}

results="$TMP/results"
# Other work on the machine skews every scenario: the load averages at start and end are reported.
echo "meta load1_at_start $(cut -d' ' -f1 /proc/loadavg)" >>"$results"
for ((round = 0; round < ROUNDS; round++)); do
  for ((i = 0; i < ${#scenarios[@]}; i++)); do
    name="${scenarios[$(((i + round) % ${#scenarios[@]}))]}"
    start_server "$name"
    check_server "$name"
    wrk -t1 -c32 -d"$WARMUP" -s "$TMP/post.lua" "$URL" >/dev/null
    line="$(wrk -t1 -c32 -d"$DURATION" -s "$TMP/post.lua" "$URL" | grep '^WRK ')"
    check_keys "$name"
    stop_server
    echo "$name $round ${line#WRK }" >>"$results"
    echo "round $round $name: ${line#WRK }" >&2
  done
done

echo "meta load1_at_end $(cut -d' ' -f1 /proc/loadavg)" >>"$results"
echo "meta wrk \"-t1 -c32 -d${DURATION}\"" >>"$results"
"$PY" bench/http_apps.py summary "$results"
