#!/usr/bin/env bash
# Fan-out, 5000 subscribers on one channel, 100 msg/s for 20 s: exact channel (A) against a
# pattern subscription matching it (B), on fresh servers each run, A B A B A B.
set -euo pipefail
cd "$(dirname "$0")/../../.."
export HERALD_BENCH_DIR=${HERALD_BENCH_DIR:-/tmp/herald-bench-patterns}
bench/run.sh build
trap 'bench/run.sh stop' EXIT
for r in 1 2 3; do
  bench/run.sh start-herald 1
  bench/run.sh bench fanout100-exact-r$r herald fanout -n 5000 --rate 100 --duration 20s
  bench/run.sh stop
  bench/run.sh start-herald 1
  bench/run.sh bench fanout100-pattern-r$r herald fanout -n 5000 --rate 100 --duration 20s --pattern
  bench/run.sh stop
done
