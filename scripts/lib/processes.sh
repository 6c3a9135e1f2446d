# shellcheck shell=bash
# Sourced by the end-to-end scripts: the herald binary of this worktree, free ports, waiting for
# an HTTP status with a bound, and processes that are stopped (TERM, then KILL) when the script
# exits, however it exits. Call `trap stop_started EXIT` after sourcing.

# pids of every process start_bg started, in start order.
started_pids=()

# herald_bin: sets $herald to the herald binary: $HERALD_BIN when set, else target/debug/herald
# built from this worktree (a no-op when it is up to date, e.g. after `cargo test`).
herald_bin() {
  if [[ -n ${HERALD_BIN:-} ]]; then
    herald=$HERALD_BIN
  else
    cargo build -q --locked -p herald
    herald=$PWD/target/debug/herald
  fi
  [[ -x $herald ]] || { echo "no herald binary at $herald" >&2; return 1; }
}

# A free port on 127.0.0.1: the kernel picks one for a socket bound to port 0.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_bg LOG COMMAND...: runs COMMAND in the background with its output in LOG.
start_bg() {
  local log=$1
  shift
  "$@" >"$log" 2>&1 &
  started_pids+=("$!")
  # shellcheck disable=SC2034 # read by the scripts that source this
  last_pid=$!
}

# wait_http URL STATUS SECONDS: polls URL until it answers STATUS, for at most SECONDS.
wait_http() {
  local url=$1 want=$2 deadline=$((SECONDS + $3)) got
  while ((SECONDS < deadline)); do
    got=$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$url" || true)
    [[ $got == "$want" ]] && return 0
    sleep 0.1
  done
  echo "$url did not answer $want within $3 s (last: ${got:-nothing})" >&2
  return 1
}

# wait_exit PID SECONDS: waits until PID is gone, for at most SECONDS.
wait_exit() {
  local deadline=$((SECONDS + $2))
  while kill -0 "$1" 2>/dev/null; do
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

# Stops every started process still running: TERM to all, then up to 5 s each before KILL.
stop_started() {
  local pid
  ((${#started_pids[@]})) || return 0
  # Last started first: clients and proxies before the servers they use.
  local reversed=()
  for pid in "${started_pids[@]}"; do
    reversed=("$pid" "${reversed[@]}")
  done
  for pid in "${reversed[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${reversed[@]}"; do
    wait_exit "$pid" 5 || kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  started_pids=()
}

# stop_pid PID [SECONDS]: TERM, up to SECONDS (default 5), then KILL; reaps it.
stop_pid() {
  kill -TERM "$1" 2>/dev/null || true
  wait_exit "$1" "${2:-5}" || kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# Fails unless node has a WebSocket client (Node 20.10 or later, behind --experimental-websocket;
# built in from Node 22), which the WebSocket scripts in scripts/lib use.
require_node_websocket() {
  if ! node --experimental-websocket -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)' 2>/dev/null; then
    echo "node with a WebSocket client is needed (Node 20.10 or later): $(node --version 2>&1 || true)" >&2
    return 1
  fi
}
