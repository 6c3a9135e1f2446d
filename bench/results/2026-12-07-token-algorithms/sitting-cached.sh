#!/usr/bin/env bash
# The second sitting of this directory: the same A/B as sitting.sh (idle, 10000 connections,
# 100 channels, one gateway + Redis + publisher API; HS256 tokens (A) against RS256 tokens (B),
# A B A B A B on fresh servers), with `--reconnect-rounds 2`: every connection is set up, all
# are closed, and all are set up again with the URL and token they had. Round 2 is the
# reconnect with the tokens clients hold, whose RS256 verifications the gateway has cached.
# Run from the repository root, holding /tmp/bench.lock.
set -euo pipefail
export HERALD_BENCH_DIR=${HERALD_BENCH_DIR:-/tmp/herald-bench-tokcache}
mkdir -p "$HERALD_BENCH_DIR"
key=$HERALD_BENCH_DIR/rs256.pem
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$key" 2>/dev/null
openssl pkey -in "$key" -pubout -out "$HERALD_BENCH_DIR/rs256.pub.pem"
export HERALD_AUTH__PUBLIC_KEYS="[{file=\"$HERALD_BENCH_DIR/rs256.pub.pem\", kid=\"k1\"}]"
bash bench/run.sh build
bash bench/run.sh flood 3 tokcache herald "--token-key $key --token-alg RS256 --token-kid k1" \
    idle -n 10000 --channels 100 --duration 5s --reconnect-rounds 2
