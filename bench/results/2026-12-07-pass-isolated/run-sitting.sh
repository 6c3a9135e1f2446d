#!/usr/bin/env bash
# The codebase pass alone: 39bfc35 (just before it) against 7fe4f27 (its last commit, before
# the features that followed), the same three rounds as the history sitting's first question.
set -uo pipefail
OUT=/tmp/sitting-pass
mkdir -p "$OUT/before" "$OUT/after"
cd /work/main
[ -d /work/wt/pass-before ] || git worktree add --detach /work/wt/pass-before 39bfc35
[ -d /work/wt/pass-after ] || git worktree add --detach /work/wt/pass-after 7fe4f27
export CARGO_INCREMENTAL=0
(cd /work/wt/pass-before && nice -n 10 cargo build --release -p herald) || exit 1
[ -d /work/wt/pass-after/target ] || cp -r /work/wt/pass-before/target /work/wt/pass-after/
(cd /work/wt/pass-after && nice -n 10 cargo build --release -p herald) || exit 1
cp /work/wt/pass-before/target/release/herald "$OUT/before/herald"
cp /work/wt/pass-after/target/release/herald "$OUT/after/herald"
AFTER=$OUT/after/herald
exec 9>/tmp/bench.lock
flock 9
echo "lock taken $(date -u)"
for r in 1 2 3; do
    for side in before after; do
        root=/work/wt/pass-$side
        echo "== round $r $side $(date -u) load $(cut -d' ' -f1-3 /proc/loadavg)"
        HERALD_BENCH_DIR=$OUT/$side CLIENT_BIN=$AFTER bash "$root/bench/run.sh" rounds 1 "idle-r$r" herald idle -n 10000 --channels 100 --duration 20s
        HERALD_BENCH_DIR=$OUT/$side CLIENT_BIN=$AFTER bash "$root/bench/run.sh" rounds 1 "fanout100-r$r" herald fanout -n 5000 --rate 100 --duration 20s
        HERALD_BENCH_DIR=$OUT/$side CLIENT_BIN=$AFTER bash "$root/bench/run.sh" rounds 1 "personal-r$r" herald personal -n 10000 --rate 2000 --duration 15s
    done
done
echo "sitting done $(date -u)"
