#!/usr/bin/env bash
# Herald and nginx + nchan side by side on this machine, driven by `herald bench`.
# Every server is a private process on its own port; nothing system-wide is touched.
#
#   bench/run.sh build                 release build, copied to $WORK so a sitting uses one binary
#   bench/run.sh start-herald [N]      redis-server, N gateways (default 1), one publisher API
#   bench/run.sh start-herald-cluster [N]
#                                      the same on a Redis Cluster of three primaries (no
#                                      replicas; redis-server --cluster-enabled yes, joined by
#                                      redis-cli --cluster create), redis.cluster_nodes set
#   bench/run.sh start-standalone      `herald standalone`: every role in one process, in-memory
#   bench/run.sh start-nchan [W]       nginx + nchan with W worker processes (default 2)
#   bench/run.sh start-nchan-redis [W] the same on nchan's Redis engine, with its own redis-server
#   bench/run.sh stop                  stops everything this script started
#   bench/run.sh bench NAME SERVER <herald bench args...>
#                                      one run against the running SERVER (herald,
#                                      herald-no-personal, herald-standalone, nchan or nchan-redis);
#                                      the JSON result goes to $WORK/results/NAME.json
#                                      (PUBLISH_URL=http://127.0.0.1:18082 with --publish grpc)
#   bench/run.sh rounds R NAME SERVERS <herald bench args...>
#                                      R rounds of one run per server (SERVERS: comma-separated,
#                                      such as herald,nchan), each on fresh servers, alternating so
#                                      drifts of the machine hit every server alike; results
#                                      NAME-<server>-r<round>.json. Server herald-no-personal is
#                                      Herald with gateway.personal_channel = false (its
#                                      clients subscribe their own personal channel);
#                                      herald-standalone is `herald standalone`, every role in
#                                      one process on the in-memory engine, no Redis
#   bench/run.sh flood R NAME SERVER "FLOOD ARGS" <herald bench args...>
#                                      R rounds of two runs on fresh SERVER processes, without
#                                      and with the flood arguments (such as "--flood 4"),
#                                      alternating (A B A B ...); results NAME-quiet-r<round>.json
#                                      and NAME-flood-r<round>.json
#   bench/run.sh storm NAME <herald bench args...>
#                                      a reconnect storm on fresh servers (Redis, two gateways, a
#                                      publisher): every client connects to gateway 0 with
#                                      --resume, gateway 0 is killed (SIGKILL) KILL_AFTER (5s)
#                                      into the publish phase, and the clients reconnect to
#                                      gateway 1 with `since`. Then prints Redis's memory per
#                                      stored message (use a namespace with history, `hist`)
#   bench/run.sh shards NAME           one Redis against three shards (issue 26): for each run,
#                                      fresh servers (2 gateways, one publisher API) on one
#                                      redis-server, then on the three-primary cluster; every
#                                      Redis process's CPU over 10 s idle, INFO cpu, stats,
#                                      commandstats and memory of each before and after the
#                                      run, in $WORK/results/NAME-<run>-<topology>-*
#   bench/run.sh shard-run NAME single|cluster <herald bench args...>
#                                      one such run
#   bench/run.sh table                 medians and ranges of $WORK/results, grouped over rounds
#                                      (needs jq)
#   bench/run.sh suite                 the scenarios of docs/benchmarks.md, all servers
#
# CLIENT_BIN=path runs `herald bench` from another binary than the servers, so that two server
# builds can be compared with one client.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${HERALD_BENCH_DIR:-/tmp/herald-bench}
BIN=$WORK/herald
REDIS_PORT=16379
# The cluster's primaries (`start-herald-cluster`); their buses listen on these + 10000.
CLUSTER_PORTS=(16391 16392 16393)
GATEWAY_PORT=18100   # gateway i listens on GATEWAY_PORT + i
HTTP_PORT=18081
GRPC_PORT=18082
PRESENCE_HTTP_PORT=18083   # herald-standalone only
PRESENCE_GRPC_PORT=18084
NCHAN_PORT=18090
SECRET=bench-secret-bench-secret-bench-secret-0123
API_KEY=bench-api-key-0123456789

mkdir -p "$WORK/pids" "$WORK/results" "$WORK/logs"
ulimit -n 20000 2>/dev/null || true

pids_of() { # the pids of the processes named NAME*, space-separated; none is no error
    local f
    for f in "$WORK"/pids/"$1"*.pid; do
        if [ -e "$f" ]; then printf '%s ' "$(cat "$f")"; fi
    done
}

# Whether a server name of `rounds` is one of Herald's configurations.
is_herald() { case $1 in herald | herald-no-personal | herald-standalone) return 0 ;; *) return 1 ;; esac; }

wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    return 1
}

# Waits until the gateway on PORT answers /readyz with 200: its broker subscriptions are live
# and its canary came back (through every primary, on a cluster), so no client is refused.
wait_ready() {
    wait_port "$1"
    for _ in $(seq 1 150); do
        curl -sf -o /dev/null "http://127.0.0.1:$1/readyz" && return 0
        sleep 0.1
    done
    echo "the gateway on port $1 is not ready" >&2
    return 1
}

# Refuses to start servers while one of the bench's ports is taken: a server left over from
# an interrupted run would answer in place of the new one, which could not bind, and the run
# would measure the wrong process.
ports_free() {
    local port
    for port in "$REDIS_PORT" "${CLUSTER_PORTS[@]}" $(seq "$GATEWAY_PORT" $((GATEWAY_PORT + 15))) "$HTTP_PORT" "$GRPC_PORT" \
        "$PRESENCE_HTTP_PORT" "$PRESENCE_GRPC_PORT" "$NCHAN_PORT"; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "port $port is taken, by a server of an earlier run? ($0 stop, or end it)" >&2
            return 1
        fi
    done
}

# Fails unless every server this script started is still running (one that could not start,
# a port taken after all, has exited by the time its port answered).
all_running() {
    local f
    for f in "$WORK"/pids/*.pid; do
        [ -e "$f" ] || continue
        if ! kill -0 "$(cat "$f")" 2>/dev/null; then
            echo "$(basename "$f" .pid) is not running; its log:" >&2
            tail -5 "$WORK/logs/$(basename "$f" .pid).log" >&2
            return 1
        fi
    done
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

start_redis() {
    start_bg redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --maxclients 1000 --loglevel warning
    wait_port "$REDIS_PORT"
}

# Three redis-server processes with --cluster-enabled, joined by `redis-cli --cluster create`
# into three primaries without replicas (a benchmark of Pub/Sub and history load, not of
# failover), then waited for until every node says the cluster is ok.
start_cluster() {
    local dir=$WORK/cluster i port
    rm -rf "$dir"
    mkdir -p "$dir"
    for i in "${!CLUSTER_PORTS[@]}"; do
        port=${CLUSTER_PORTS[i]}
        start_bg "redis-$i" redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
            --maxclients 1000 --loglevel warning --cluster-enabled yes --cluster-node-timeout 5000 \
            --cluster-config-file "$dir/nodes-$port.conf" --dir "$dir"
    done
    for port in "${CLUSTER_PORTS[@]}"; do wait_port "$port"; done
    redis-cli --cluster create "${CLUSTER_PORTS[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes \
        >"$WORK/logs/cluster-create.log" 2>&1
    for port in "${CLUSTER_PORTS[@]}"; do
        for _ in $(seq 1 100); do
            redis-cli -p "$port" cluster info | grep -q '^cluster_state:ok' && continue 2
            sleep 0.1
        done
        echo "the cluster node on port $port is not ok" >&2
        return 1
    done
}

start_herald() {
    local gateways=${1:-1}
    ports_free
    start_redis
    # A cluster run before this one in the same shell must not leave its nodes configured.
    unset HERALD_REDIS__CLUSTER_NODES
    export HERALD_REDIS__URL=redis://127.0.0.1:$REDIS_PORT
    start_roles "$gateways"
}

start_herald_cluster() {
    local gateways=${1:-1}
    ports_free
    start_cluster
    unset HERALD_REDIS__URL
    HERALD_REDIS__CLUSTER_NODES=$(IFS=,; echo "${CLUSTER_PORTS[*]/#/127.0.0.1:}")
    export HERALD_REDIS__CLUSTER_NODES
    start_roles "$gateways"
}

# N gateways and one publisher API on the Redis the HERALD_REDIS__* variables name.
start_roles() {
    local gateways=$1
    local config=(--config "$ROOT/bench/herald.toml")
    for i in $(seq 0 $((gateways - 1))); do
        HERALD_GATEWAY__LISTEN=127.0.0.1:$((GATEWAY_PORT + i)) start_bg "herald-gateway-$i" "$BIN" gateway "${config[@]}"
    done
    HERALD_PUBLISHER__HTTP_LISTEN=127.0.0.1:$HTTP_PORT HERALD_PUBLISHER__GRPC_LISTEN=127.0.0.1:$GRPC_PORT \
        HERALD_RUNTIME__WORKER_THREADS=1 start_bg herald-publisher "$BIN" publisher-api "${config[@]}"
    for i in $(seq 0 $((gateways - 1))); do wait_ready $((GATEWAY_PORT + i)); done
    wait_port "$HTTP_PORT"
    all_running
}

# `herald standalone`: gateway, publisher API and presence in one process on the in-memory
# engine, as a single node runs without Redis. Its pid file is the gateway's, so `bench`
# finds its WebSocket URL and samples it.
start_standalone() {
    ports_free
    HERALD_GATEWAY__LISTEN=127.0.0.1:$GATEWAY_PORT \
        HERALD_PUBLISHER__HTTP_LISTEN=127.0.0.1:$HTTP_PORT HERALD_PUBLISHER__GRPC_LISTEN=127.0.0.1:$GRPC_PORT \
        HERALD_PRESENCE__HTTP_LISTEN=127.0.0.1:$PRESENCE_HTTP_PORT HERALD_PRESENCE__GRPC_LISTEN=127.0.0.1:$PRESENCE_GRPC_PORT \
        start_bg herald-gateway-0 "$BIN" standalone --config "$ROOT/bench/herald.toml"
    wait_port "$GATEWAY_PORT"
    wait_port "$HTTP_PORT"
    all_running
}

start_nchan() {
    local workers=${1:-2}
    ports_free
    mkdir -p "$WORK/nchan/logs"
    start_bg nchan nginx -p "$WORK/nchan" -c "$ROOT/bench/nchan.conf" -g "worker_processes $workers;"
    wait_port "$NCHAN_PORT"
    all_running
}

# nchan on its Redis engine, as nchan runs when several nginx nodes share channels: the same
# configuration with every location passed to a private redis-server.
start_nchan_redis() {
    local workers=${1:-2}
    ports_free
    start_redis
    mkdir -p "$WORK/nchan/logs"
    # shellcheck disable=SC2016 # the `$1` is nginx's, in the configuration, not the shell's
    sed -e "s|^    nchan_shared_memory_size .*;|&\n    upstream bench_redis {\n        nchan_redis_server redis://127.0.0.1:$REDIS_PORT;\n    }|" \
        -e 's|^\( *\)nchan_channel_id \$1;|&\n\1nchan_redis_pass bench_redis;|' \
        "$ROOT/bench/nchan.conf" >"$WORK/nchan/nchan-redis.conf"
    grep -q nchan_redis_pass "$WORK/nchan/nchan-redis.conf"
    start_bg nchan nginx -p "$WORK/nchan" -c "$WORK/nchan/nchan-redis.conf" -g "worker_processes $workers;"
    wait_port "$NCHAN_PORT"
    all_running
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
    local urls=() publish pids extra=()
    # Gateways without personal channels: clients of `personal` subscribe their own.
    if [ "$target" = herald-no-personal ]; then extra=(--subscribe-personal); fi
    if is_herald "$target"; then
        for f in "$WORK"/pids/herald-gateway-*.pid; do
            local i=${f##*-}; i=${i%.pid}
            urls+=(--url "ws://127.0.0.1:$((GATEWAY_PORT + i))/ws")
        done
        publish=${PUBLISH_URL:-http://127.0.0.1:$HTTP_PORT}
        pids=$(pids_of herald-gateway)$(pids_of redis)$(pids_of herald-publisher)
        target=herald
    else
        urls=(--url "ws://127.0.0.1:$NCHAN_PORT/sub")
        publish=http://127.0.0.1:$NCHAN_PORT/pub
        pids=$(pids_of nchan)
        if [ "$target" = nchan-redis ]; then pids=$pids$(pids_of redis); fi
        target=nchan
    fi
    local pid_args=()
    for p in $pids; do pid_args+=(--pid "$p"); done
    echo "== $name: herald bench $* --target $target ($(cut -d' ' -f1-3 /proc/loadavg) load)" \
        | tee -a "$WORK/results/summary.txt"
    "${CLIENT_BIN:-$BIN}" bench "$@" "${extra[@]}" --target "$target" "${urls[@]}" --publish-url "$publish" \
        --jwt-secret "$SECRET" --api-key "$API_KEY" "${pid_args[@]}" --json "$WORK/results/$name.json" \
        | grep -v '^{' | tee -a "$WORK/results/summary.txt"
    echo "   (load after: $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$WORK/results/summary.txt"
}

start_server() { # server, gateways or workers
    case $1 in
        herald) start_herald "$2" ;;
        herald-no-personal) HERALD_GATEWAY__PERSONAL_CHANNEL=false start_herald "$2" ;;
        herald-standalone) start_standalone ;;
        nchan) start_nchan "$2" ;;
        nchan-redis) start_nchan_redis "$2" ;;
        *) echo "unknown server $1" >&2; return 2 ;;
    esac
}

# R rounds; in each, every server in turn on fresh processes. Single runs of one build vary by
# about ±20 % on this kind of machine, so the figures that decide a target are medians.
rounds() { # rounds, name, servers, args...
    local rounds=$1 name=$2 servers=$3; shift 3
    local size=${PROCESSES:-}
    # A failed run must not leave its servers behind for the next command.
    trap stop EXIT
    for r in $(seq 1 "$rounds"); do
        for server in ${servers//,/ }; do
            start_server "$server" "${size:-$(is_herald "$server" && echo 1 || echo 2)}"
            bench "$name-$server-r$r" "$server" "$@"
            stop
        done
    done
}

# R rounds of the same run on fresh servers, without the flood (A) and with it (B), A B A B ...,
# so that the machine's drift during the sitting hits both alike.
flood() { # rounds, name, server, flood args (one word), args...
    local rounds=$1 name=$2 server=$3 flood_args=$4; shift 4
    local size=${PROCESSES:-1}
    trap stop EXIT
    for r in $(seq 1 "$rounds"); do
        start_server "$server" "$size"
        bench "$name-quiet-r$r" "$server" "$@"
        stop
        start_server "$server" "$size"
        # shellcheck disable=SC2086 # the flood arguments are several words on purpose
        bench "$name-flood-r$r" "$server" "$@" $flood_args
        stop
    done
}

# A reconnect storm: see the usage at the top.
storm() { # name, args...
    local name=$1; shift
    trap stop EXIT
    start_herald 2
    local redis=(redis-cli -p "$REDIS_PORT")
    local used_before
    used_before=$("${redis[@]}" info memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p')
    local pids pid_args=()
    pids=$(pids_of herald-gateway)$(pids_of redis)$(pids_of herald-publisher)
    for p in $pids; do pid_args+=(--pid "$p"); done
    echo "== $name: herald bench $* (storm; $(cut -d' ' -f1-3 /proc/loadavg) load)" | tee -a "$WORK/results/summary.txt"
    "${CLIENT_BIN:-$BIN}" bench "$@" --target herald --resume \
        --url "ws://127.0.0.1:$GATEWAY_PORT/ws" --reconnect-url "ws://127.0.0.1:$((GATEWAY_PORT + 1))/ws" \
        --kill-pid "$(cat "$WORK/pids/herald-gateway-0.pid")" --kill-after "${KILL_AFTER:-5s}" \
        --publish-url "http://127.0.0.1:$HTTP_PORT" --jwt-secret "$SECRET" --api-key "$API_KEY" \
        "${pid_args[@]}" --json "$WORK/results/$name.json" | grep -v '^{' | tee -a "$WORK/results/summary.txt"
    # What the histories hold now, and what they cost Redis.
    local stored=0 key used_after
    for key in $("${redis[@]}" --scan --pattern '*.stream'); do
        stored=$((stored + $("${redis[@]}" xlen "$key")))
    done
    used_after=$("${redis[@]}" info memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p')
    echo "redis: $stored messages stored, used_memory $used_before -> $used_after bytes," \
        "$(( (used_after - used_before) / (stored > 0 ? stored : 1) )) bytes per stored message" \
        | tee -a "$WORK/results/summary.txt"
    rm -f "$WORK/pids/herald-gateway-0.pid"
    stop
}

# The ports of the running Redis processes: the single one, or the cluster's primaries.
redis_ports() {
    if [ -e "$WORK/pids/redis.pid" ]; then echo "$REDIS_PORT"; else echo "${CLUSTER_PORTS[@]}"; fi
}

# What each Redis says about itself (INFO cpu, stats, commandstats, memory) into
# $WORK/results/NAME-redis-<port>-LABEL.txt.
redis_info() { # name, label
    local port
    for port in $(redis_ports); do
        redis-cli -p "$port" info everything | grep -E '^(used_cpu|total_commands|total_net|instantaneous|cmdstat_|used_memory:|pubsub|pubsubshard|keyspace|db0)' \
            >"$WORK/results/$1-redis-$port-$2.txt"
    done
}

# CPU seconds (user + system, from /proc) each Redis process spends over SECONDS with nothing
# published: the cluster bus and the canaries, the floor under every per-message figure.
redis_idle_cpu() { # name, seconds
    local f pid before=() i=0 out=$WORK/results/$1-redis-idle.txt
    local files=("$WORK"/pids/redis*.pid)
    for f in "${files[@]}"; do before+=("$(redis_ticks "$(cat "$f")")"); done
    sleep "$2"
    : >"$out"
    for f in "${files[@]}"; do
        pid=$(cat "$f")
        echo "$(basename "$f" .pid) pid $pid: $(( $(redis_ticks "$pid") - before[i] )) ticks (1/100 s) in $2 s idle" >>"$out"
        i=$((i + 1))
    done
    cat "$out"
}

redis_ticks() { # pid: utime + stime, in clock ticks
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

# One run of `shards` on fresh servers: TOPOLOGY is single or cluster.
shard_run() { # name, topology, args...
    local name=$1 topology=$2; shift 2
    case $topology in
        single) start_herald 2 ;;
        cluster) start_herald_cluster 2 ;;
    esac
    local f
    for f in "$WORK"/pids/*.pid; do echo "$(basename "$f" .pid) $(cat "$f")"; done >"$WORK/results/$name-pids.txt"
    if [ "$topology" = cluster ]; then
        redis-cli -p "${CLUSTER_PORTS[0]}" cluster nodes >"$WORK/results/$name-cluster-nodes.txt"
    fi
    redis_idle_cpu "$name" 10
    redis_info "$name" before
    bench "$name" herald "$@"
    redis_info "$name" after
    stop
}

# Issue 26: the same load on one Redis and on three shards, run by run alternating (single,
# cluster), so the machine's drift hits both alike. Each run's JSON has every process's CPU
# over the publish phase (`servers[].cpu_s_publish`); Redis's per-message cost is that over
# the messages published.
shards() { # name
    local name=$1
    trap stop EXIT
    local rooms=(rooms -n 10000 --room-size 10 --batch 50 --drain-timeout 30s --no-progress)
    local topology
    for topology in single cluster; do
        shard_run "$name-rate-$topology" "$topology" "${rooms[@]}" --rate 5000 --duration 30s
    done
    for topology in single cluster; do
        shard_run "$name-hist-$topology" "$topology" "${rooms[@]}" --rate 5000 --duration 30s --namespace hist
    done
    # As fast as it goes: no per-key rate limit, more offered than the machine can deliver.
    for topology in single cluster; do
        HERALD_PUBLISHER__RATE_LIMIT=0 shard_run "$name-max-$topology" "$topology" \
            rooms -n 2000 --room-size 2 --batch 100 --rate 50000 -m 500000 --drain-timeout 60s --no-progress
    done
}

# One line per scenario and server: the median over its rounds, with the range in brackets.
table() {
    jq -rn '
        def median: sort | if length % 2 == 1 then .[length / 2 | floor]
                           else (.[length / 2 - 1] + .[length / 2]) / 2 end;
        def cell(f; digits): [.[] | f] as $v | ($v | median) as $m
            | def r: . * pow(10; digits) | round / pow(10; digits);
              if ($v | length) == 1 then "\($m | r)" else "\($m | r) [\($v | min | r)–\($v | max | r)]" end;
        [inputs | {run: (input_filename | split("/") | last | sub("\\.json$"; "")), r: .}]
        | group_by(.run | sub("-r[0-9]+$"; "")) | .[]
        | (.[0].run | sub("-r[0-9]+$"; "")) as $group | [.[].r] as $runs
        | "\($group) (\($runs | length) runs): connect \($runs | cell(.connections.connect_rate; 0))/s,"
          + " KiB/conn \($runs | cell(.server_total.kib_per_connection; 2))"
          + if $runs[0].deliveries.expected == 0 then "" else
              ", lost \($runs | cell(.deliveries.lost; 0)),"
              + " p50 \($runs | cell(.latency.p50_ms; 2)), p99 \($runs | cell(.latency.p99_ms; 2)),"
              + " p99.9 \($runs | cell(.latency.p999_ms; 2)) ms,"
              + " CPU/M \($runs | cell(.server_total.cpu_s_per_million_deliveries; 1))" end
          + if $runs[0].flood == null then "" else
              "; flood \($runs | cell(.flood.frames_per_second; 0)) frames/s,"
              + " rate_limited \($runs | cell(.flood.replies["error rate_limited"] // 0; 0)),"
              + " 4029 closes \($runs | cell(.flood.closes["close 4029"] // 0; 0))" end
    ' "$WORK"/results/*.json
}

suite() {
    local idle=(idle -n 10000 --channels 100 --duration 20s)
    rounds 5 idle herald,herald-no-personal,herald-standalone,nchan,nchan-redis "${idle[@]}"
    rounds 1 idle-frame herald "${idle[@]}" --subscribe-with frame
    rounds 3 idle-c1000 herald,herald-no-personal,herald-standalone,nchan "${idle[@]}" --connect-concurrency 1000
    rounds 3 fanout100 herald,herald-standalone,nchan fanout -n 5000 --rate 100 --duration 20s
    rounds 3 fanout20 herald,herald-standalone,nchan,nchan-redis fanout -n 5000 --rate 20 --duration 30s
    rounds 5 personal herald,herald-standalone,nchan,nchan-redis personal -n 10000 --rate 2000 --duration 15s
    PROCESSES=7 rounds 1 broadcast100k herald,nchan broadcast -n 100000 --rate 0.5 -m 10 \
        --drain-timeout 60s --connect-timeout 240s --connect-concurrency 50
    table | tee "$WORK/results/table.txt"
}

case ${1:-} in
    build) build ;;
    start-herald) start_herald "${2:-1}" ;;
    start-herald-cluster) start_herald_cluster "${2:-1}" ;;
    start-standalone) start_standalone ;;
    start-nchan) start_nchan "${2:-2}" ;;
    start-nchan-redis) start_nchan_redis "${2:-2}" ;;
    stop) stop ;;
    bench) shift; bench "$@" ;;
    rounds) shift; rounds "$@" ;;
    flood) shift; flood "$@" ;;
    storm) shift; storm "$@" ;;
    shards) shift; shards "$@" ;;
    shard-run) shift; trap stop EXIT; shard_run "$@" ;;
    table) table ;;
    suite) suite ;;
    *) sed -n '2,54p' "$0"; exit 2 ;;
esac
