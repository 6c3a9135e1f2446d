#!/usr/bin/env bash
# The sitting of this directory: connect rate of `idle` (10000 connections, 100 channels) on
# the distributed deployment (one gateway, Redis, publisher API), HS256 tokens (A) against
# RS256 tokens (B), A B A B A B on fresh servers (bench/run.sh flood, whose "flood arguments"
# are here the token options). The gateway accepts both: bench/herald.toml's jwt_secret and
# the RSA public key below. Every connection carries its own fresh token, so no RS256 token is
# found in the verification cache. Run from the repository root, holding /tmp/bench.lock.
set -euo pipefail
export HERALD_BENCH_DIR=${HERALD_BENCH_DIR:-/tmp/herald-bench-tokalg}
mkdir -p "$HERALD_BENCH_DIR"
key=$HERALD_BENCH_DIR/rs256.pem
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$key" 2>/dev/null
openssl pkey -in "$key" -pubout -out "$HERALD_BENCH_DIR/rs256.pub.pem"
export HERALD_AUTH__PUBLIC_KEYS="[{file=\"$HERALD_BENCH_DIR/rs256.pub.pem\", kid=\"k1\"}]"
bash bench/run.sh build
bash bench/run.sh flood 3 tokalg herald "--token-key $key --token-alg RS256 --token-kid k1" \
    idle -n 10000 --channels 100 --duration 5s
