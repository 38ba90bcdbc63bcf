#!/usr/bin/env bash
# The whole test suite, in one command: start RabbitMQ and PostgreSQL if needed (installing
# them from Debian's packages), then unit and integration tests against the real broker,
# the fault tests (which restart the broker, so they run alone and last), and a smoke run
# of the main job.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-services.sh --postgres --test-tools
export JB_TEST_AMQP_URL="${JB_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
export JB_TEST_PG_URL="${JB_TEST_PG_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"

# Queues left by earlier interrupted runs (test names start with jbt-) wear the broker down:
# delete them when the broker is local.
if command -v rabbitmqctl >/dev/null 2>&1; then
  rabbitmqctl list_queues -q name 2>/dev/null | cargo run --locked --quiet --example clean_test_queues \
    || echo "(could not clean old test queues; continuing)"
fi

# The upgrade fault tests (tests/faults/upgrade.rs) run the previous release's binary, built
# from its git tag into a cache of its own (a few minutes once per machine and tag); built here,
# not under a test's deadline. Without it those tests fail, they do not skip.
if [ -d tests/faults ] && [ -z "${JB_PREVIOUS_BIN:-}" ]; then
  JB_PREVIOUS_BIN="$(scripts/build-previous.sh)" || {
    echo "FAILED: could not build the previous release (scripts/build-previous.sh); the upgrade fault tests need it" >&2
    exit 1
  }
  export JB_PREVIOUS_BIN
fi

# Build first (not timed), then run each group under a deadline, so a hung test fails the
# run with a clear message instead of eating CI's time.
# Every group is required: a missing one is an error, not a smaller run.
for required in tests/api tests/faults scripts/check-deploy.sh scripts/cluster.sh; do
  [ -e "$required" ] || { echo "FAILED: $required is missing" >&2; exit 1; }
done
scripts/check-contract.sh  # docs/asyncapi.yaml valid and describing every schemas/ file (installs its validator)
cargo test --locked --workspace --no-run --lib --bins --test api --test metrics --test faults
echo "== unit and integration tests (parallel) =="
timeout --kill-after=10 900 cargo test --locked --workspace --lib --bins --test api --test metrics
# The cluster fault tests stop nodes of a private 3-node cluster, apart from the broker on
# 5672. They would start it themselves; starting it here keeps its first start (a minute on a
# fresh machine) out of the tests' deadline and says plainly when it cannot start.
scripts/cluster.sh start || {
  echo "FAILED: the private 3-node RabbitMQ cluster (scripts/cluster.sh start) did not start; the cluster fault tests need it" >&2
  exit 1
}
scripts/cluster.sh ctl 1 list_queues -q name 2>/dev/null \
  | JB_TEST_AMQP_URL="$(scripts/cluster.sh urls | cut -d, -f1)" cargo run --locked --quiet --example clean_test_queues \
  || echo "(could not clean old test queues on the cluster; continuing)"
echo "== fault tests (kill -9, broker restarts, cluster node losses; one at a time) =="
timeout --kill-after=10 1200 cargo test --locked --test faults -- --test-threads=1
echo "== documentation: links and rustdoc =="
python3 scripts/check-links.py
RUSTDOCFLAGS="-D warnings" cargo doc --locked --workspace --no-deps --quiet
echo "== deployment files =="
scripts/check-deploy.sh
echo "== smoke: the main job in sandbox mode =="
JB_BUILD_PROFILE=dev JELOU_BRIDGE__HTTP__LISTEN="127.0.0.1:$((20000 + RANDOM % 20000))" \
  JELOU_BRIDGE__STORE__URL="sqlite://$(mktemp -d)/demo.db" scripts/run.sh --once
