#!/usr/bin/env bash
# The 2026-12-07 history sitting: (1) the codebase pass, before (39bfc35) and after (main, inbox
# off so personal channels behave as before), (2) history on and off, (3) a reconnect storm.
set -uo pipefail
ROOT=/work/main
OUT=${OUT:-/tmp/sitting}
mkdir -p "$OUT"
AFTER=$OUT/after/herald
BEFORE=$OUT/before/herald
pass() {
    for r in 1 2 3; do
        for side in before after; do
            # Each build with the bench script and configuration of its own revision (the old
            # binary refuses the history keys of today's bench/herald.toml).
            local root=$ROOT
            if [ "$side" = before ]; then root=/work/wt/before; fi
            if [ "$side" = after ]; then export HERALD_INBOX__HISTORY_SIZE=0 HERALD_INBOX__HISTORY_TTL=0s; fi
            HERALD_BENCH_DIR=$OUT/$side CLIENT_BIN=$AFTER bash "$root/bench/run.sh" rounds 1 "idle-r$r" herald idle -n 10000 --channels 100 --duration 20s
            HERALD_BENCH_DIR=$OUT/$side CLIENT_BIN=$AFTER bash "$root/bench/run.sh" rounds 1 "fanout100-r$r" herald fanout -n 5000 --rate 100 --duration 20s
            HERALD_BENCH_DIR=$OUT/$side CLIENT_BIN=$AFTER bash "$root/bench/run.sh" rounds 1 "personal-r$r" herald personal -n 10000 --rate 2000 --duration 15s
            unset HERALD_INBOX__HISTORY_SIZE HERALD_INBOX__HISTORY_TTL
        done
    done
}
history() {
    for r in 1 2 3; do
        for ns in news hist; do
            HERALD_BENCH_DIR=$OUT/after bash "$ROOT/bench/run.sh" rounds 1 "fanout100-$ns-r$r" herald fanout -n 5000 --rate 100 --duration 20s --namespace "$ns"
            HERALD_BENCH_DIR=$OUT/after bash "$ROOT/bench/run.sh" rounds 1 "publish-$ns-r$r" herald fanout -n 10 --rate 20000 --duration 10s --in-flight 64 --namespace "$ns"
        done
    done
}
storm() {
    HERALD_BENCH_DIR=$OUT/after bash "$ROOT/bench/run.sh" storm storm10k fanout -n 10000 --rate 100 --duration 20s --namespace hist --drain-timeout 30s
    HERALD_BENCH_DIR=$OUT/after bash "$ROOT/bench/run.sh" storm storm-personal10k personal -n 10000 --rate 1000 --duration 20s --drain-timeout 30s
}
"$@"
