#!/usr/bin/env bash
# Herald and nginx + nchan side by side on this machine, driven by `herald bench`.
# Every server is a private process on its own port; nothing system-wide is touched.
#
#   bench/run.sh build                 release build, copied to $WORK so a sitting uses one binary
#   bench/run.sh start-herald [N]      redis-server, N gateways (default 1), one publisher API
#   bench/run.sh start-nchan [W]       nginx + nchan with W worker processes (default 2)
#   bench/run.sh stop                  stops everything this script started
#   bench/run.sh bench NAME herald|nchan <herald bench args...>
#                                      one run; the JSON result goes to $WORK/results/NAME.json
#                                      (PUBLISH_URL=http://127.0.0.1:18082 with --publish grpc)
#   bench/run.sh suite                 the scenarios of docs/benchmarks.md, both servers
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${HERALD_BENCH_DIR:-/tmp/herald-bench}
BIN=$WORK/herald
REDIS_PORT=16379
GATEWAY_PORT=18100   # gateway i listens on GATEWAY_PORT + i
HTTP_PORT=18081
GRPC_PORT=18082
NCHAN_PORT=18090
SECRET=bench-secret-bench-secret-bench-secret-0123
API_KEY=bench-api-key-0123456789

mkdir -p "$WORK/pids" "$WORK/results" "$WORK/logs"
ulimit -n 20000 2>/dev/null || true

pids_of() { cat "$WORK"/pids/"$1"*.pid 2>/dev/null | tr '\n' ' '; }

wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    return 1
}

start_bg() { # name, command...
    local name=$1; shift
    "$@" >"$WORK/logs/$name.log" 2>&1 &
    echo $! >"$WORK/pids/$name.pid"
}

build() {
    (cd "$ROOT" && cargo build --release -p herald)
    cp "$ROOT/target/release/herald" "$BIN"
    (cd "$ROOT" && git rev-parse --short HEAD; git status --short | wc -l) >"$WORK/build.txt"
}

start_herald() {
    local gateways=${1:-1}
    start_bg redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --maxclients 1000 --loglevel warning
    wait_port "$REDIS_PORT"
    export HERALD_REDIS__URL=redis://127.0.0.1:$REDIS_PORT
    local config=(--config "$ROOT/bench/herald.toml")
    for i in $(seq 0 $((gateways - 1))); do
        HERALD_GATEWAY__LISTEN=127.0.0.1:$((GATEWAY_PORT + i)) start_bg "herald-gateway-$i" "$BIN" gateway "${config[@]}"
    done
    HERALD_PUBLISHER__HTTP_LISTEN=127.0.0.1:$HTTP_PORT HERALD_PUBLISHER__GRPC_LISTEN=127.0.0.1:$GRPC_PORT \
        HERALD_RUNTIME__WORKER_THREADS=1 start_bg herald-publisher "$BIN" publisher-api "${config[@]}"
    for i in $(seq 0 $((gateways - 1))); do wait_port $((GATEWAY_PORT + i)); done
    wait_port "$HTTP_PORT"
}

start_nchan() {
    local workers=${1:-2}
    mkdir -p "$WORK/nchan/logs"
    start_bg nchan nginx -p "$WORK/nchan" -c "$ROOT/bench/nchan.conf" -g "worker_processes $workers;"
    wait_port "$NCHAN_PORT"
}

stop() {
    for f in "$WORK"/pids/*.pid; do
        [ -e "$f" ] || continue
        kill "$(cat "$f")" 2>/dev/null || true
        rm -f "$f"
    done
    sleep 1
}

bench() { # name, target, args...
    local name=$1 target=$2; shift 2
    local urls=() publish pids
    if [ "$target" = herald ]; then
        for f in "$WORK"/pids/herald-gateway-*.pid; do
            local i=${f##*-}; i=${i%.pid}
            urls+=(--url "ws://127.0.0.1:$((GATEWAY_PORT + i))/ws")
        done
        publish=${PUBLISH_URL:-http://127.0.0.1:$HTTP_PORT}
        pids=$(pids_of herald-gateway)$(pids_of redis)$(pids_of herald-publisher)
    else
        urls=(--url "ws://127.0.0.1:$NCHAN_PORT/sub")
        publish=http://127.0.0.1:$NCHAN_PORT/pub
        pids=$(pids_of nchan)
    fi
    local pid_args=()
    for p in $pids; do pid_args+=(--pid "$p"); done
    echo "== $name: herald bench $* --target $target ($(cut -d' ' -f1-3 /proc/loadavg) load)" \
        | tee -a "$WORK/results/summary.txt"
    "$BIN" bench "$@" --target "$target" "${urls[@]}" --publish-url "$publish" \
        --jwt-secret "$SECRET" --api-key "$API_KEY" "${pid_args[@]}" --json "$WORK/results/$name.json" \
        | grep -v '^{' | tee -a "$WORK/results/summary.txt"
}

# Each scenario on a fresh server, Herald first, then nchan, in one sitting.
both() { # name, args...
    local name=$1; shift
    start_herald 1; bench "$name-herald" herald "$@"; stop
    start_nchan 2; bench "$name-nchan" nchan "$@"; stop
}

suite() {
    both idle idle -n 10000 --channels 100 --duration 20s
    start_herald 1; bench idle-frame-herald herald idle -n 10000 --channels 100 --duration 20s \
        --subscribe-with frame; stop
    both idle-c1000 idle -n 10000 --channels 100 --duration 20s --connect-concurrency 1000
    both fanout100 fanout -n 5000 --rate 100 --duration 20s
    both fanout20 fanout -n 5000 --rate 20 --duration 30s
    both personal personal -n 10000 --rate 2000 --duration 15s
    local big=(broadcast -n 100000 --rate 0.5 -m 10 --drain-timeout 60s --connect-timeout 240s
        --connect-concurrency 50)
    start_herald 7; bench broadcast100k-herald herald "${big[@]}"; stop
    start_nchan 7; bench broadcast100k-nchan nchan "${big[@]}"; stop
}

case ${1:-} in
    build) build ;;
    start-herald) start_herald "${2:-1}" ;;
    start-nchan) start_nchan "${2:-2}" ;;
    stop) stop ;;
    bench) shift; bench "$@" ;;
    suite) suite ;;
    *) sed -n '2,14p' "$0"; exit 2 ;;
esac
