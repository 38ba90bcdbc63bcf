#!/usr/bin/env bash
# The benchmark behind docs/performance.md, in one command: start RabbitMQ and PostgreSQL if
# needed, build the bridge and the load generator in release mode, and run every case of the
# matrix (Jelou latency 0/50/200 ms, prefetch 32/128/1,024, backlog 1,000/100,000, SQLite/PostgreSQL),
# each held against the broker's own limit. Prints one summary line per case and a Markdown
# table; writes every figure to target/loadtest.json.
#
# Arguments, when given, go to the load generator instead, e.g.
#   scripts/bench.sh --tickets 20000 --jelou-latency-ms 0
#   scripts/bench.sh --matrix --scale 0.1        (a quick look: every backlog ÷ 10)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-services.sh --postgres
cargo build --release --locked --bin jelou-bridge --example loadtest
if [ "$#" -eq 0 ]; then
  set -- --matrix --json target/loadtest.json
fi
exec target/release/examples/loadtest --no-build "$@"
