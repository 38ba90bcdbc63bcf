#!/usr/bin/env bash
# A private 3-node RabbitMQ cluster on this machine, for trying `amqp.failover_urls` and for
# the fault tests that stop nodes under load. It stays apart from the main broker on 5672:
# its own node names (jbc5681@localhost …, named by port), AMQP ports (5681-5683 by default),
# distribution ports, data and log directories, Erlang cookie and configuration; no management
# plugin; the consistent-hash exchange plugin on every node (the sharded topology).
#
#   scripts/cluster.sh [start]   start the cluster (installing rabbitmq-server from Debian's
#                                packages if missing); what already runs is left alone
#   scripts/cluster.sh status    one line per node: running or not
#   scripts/cluster.sh urls      the nodes' AMQP URLs, comma-separated (amqp.url + failover_urls)
#   scripts/cluster.sh ctl N …   rabbitmqctl against node N (1-3), e.g. `ctl 2 stop_app`
#   scripts/cluster.sh diag N …  rabbitmq-diagnostics against node N, e.g.
#                                `diag 2 check_if_node_is_quorum_critical` before stopping it
#   scripts/cluster.sh stop      stop every node, keep the data
#   scripts/cluster.sh clean     stop every node and delete the data
#
# Environment: JB_CLUSTER_DIR (default /tmp/jb-cluster), JB_CLUSTER_PORT (default 5680: node N
# listens on 5680+N, its distribution port is 25680+N).
set -euo pipefail

base="${JB_CLUSTER_DIR:-/tmp/jb-cluster}"
port0="${JB_CLUSTER_PORT:-5680}"
nodes=(1 2 3)
bin=/usr/lib/rabbitmq/bin

say() { printf '[cluster] %s\n' "$*" >&2; }
die() { say "FAILED: $*"; exit 1; }
# Any other failed command ends the script too: say which, so a failed start is never silent.
trap 'say "FAILED (line $LINENO): $BASH_COMMAND"' ERR

# Named by port, so that clusters on other JB_CLUSTER_PORTs (and dirs) are other nodes.
node_name() { echo "jbc$(node_port "$1")@localhost"; }
node_port() { echo $((port0 + $1)); }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root (or sudo) to run: $*"
  fi
}

ensure_installed() {
  [ -x "$bin/rabbitmq-server" ] && return
  say "installing rabbitmq-server from Debian's packages"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    rabbitmq-server >/dev/null
  [ -x "$bin/rabbitmq-server" ] || die "rabbitmq-server is not installed at $bin"
}

# Everything a node's scripts read, so nothing of the main broker's /etc/rabbitmq applies
# (its rabbitmq-env.conf names the main node). HOME holds the cluster's own Erlang cookie,
# read by the servers and by rabbitmqctl alike.
node_env() {
  local n=$1 dir="$base/n$1"
  export HOME="$base"
  export RABBITMQ_NODENAME
  RABBITMQ_NODENAME=$(node_name "$n")
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_PORT
  RABBITMQ_NODE_PORT=$(node_port "$n")
  export RABBITMQ_DIST_PORT=$((port0 + 20000 + n))
  export RABBITMQ_CONF_ENV_FILE="$base/rabbitmq-env.conf"
  export RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
  export RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$base/enabled_plugins"
  export RABBITMQ_MNESIA_BASE="$dir/mnesia"
  export RABBITMQ_LOG_BASE="$dir/log"
  export RABBITMQ_PLUGINS_EXPAND_DIR="$dir/plugins-expand"
  export RABBITMQ_PID_FILE="$dir/pid"
  export ERL_EPMD_ADDRESS=127.0.0.1
  # A crashing node or CLI writes its dump here, not into the caller's working directory.
  export ERL_CRASH_DUMP="$dir/erl_crash.dump"
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
  export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

ctl() { # node args…
  local n=$1; shift
  (node_env "$n"; "$bin/rabbitmqctl" -n "$(node_name "$n")" "$@")
}

diag() { # node args…
  local n=$1; shift
  (node_env "$n"; "$bin/rabbitmq-diagnostics" -n "$(node_name "$n")" "$@")
}

# The node's Erlang VM answers (its RabbitMQ application may be stopped).
alive() { ctl "$1" -q ping >/dev/null 2>&1; }
running() { alive "$1" && ctl "$1" -q await_startup --timeout 2 >/dev/null 2>&1; }

prepare() {
  mkdir -p "$base"
  if [ ! -s "$base/.erlang.cookie" ]; then
    local cookie
    # tr ends on SIGPIPE once head has its 32 characters: not a failure.
    cookie=$(LC_ALL=C tr -dc 'A-Z' </dev/urandom | head -c 32 || true)
    (umask 077; printf '%s' "$cookie" >"$base/.erlang.cookie")
  fi
  chmod 400 "$base/.erlang.cookie"
  : >"$base/rabbitmq-env.conf"
  echo '[rabbitmq_consistent_hash_exchange].' >"$base/enabled_plugins"
  local n
  for n in "${nodes[@]}"; do
    mkdir -p "$base/n$n/log" "$base/n$n/mnesia"
    cat >"$base/n$n/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$(node_port "$n")
loopback_users.guest = true
EOF
  done
}

start_node() {
  local n=$1
  if alive "$n"; then
    # Left stopped by `ctl N stop_app` (a test that died half-way, say): start it again.
    running "$n" || { say "starting the application on $(node_name "$n")"; ctl "$n" -q start_app >/dev/null || true; }
    return
  fi
  port_open "$(node_port "$n")" && die "port $(node_port "$n") is taken by something else"
  say "starting $(node_name "$n") on 127.0.0.1:$(node_port "$n")"
  # Every quorum queue holds file handles; the default limit of 1024 runs out early.
  ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
  # From the cluster's own directory: a node keeps its working directory for life, and one
  # started from a clone that is deleted afterwards (a CI run's) can no longer stop its
  # application (rabbit_plugins fails with enoent), which fails every later node-loss test.
  (node_env "$n"; cd "$base"; setsid "$bin/rabbitmq-server" >"$base/n$n/log/console.log" 2>&1 </dev/null &)
}

await_node() {
  local n=$1 deadline=$((SECONDS + 120)) why
  # Until a new node's Erlang VM is up and registered, rabbitmqctl cannot reach it and gives
  # up at once (seen on a fresh machine: the first start failed while the node came up
  # seconds later); so ask again until the deadline.
  until why=$(ctl "$n" -q await_startup --timeout 30 2>&1); do
    [ "$SECONDS" -lt "$deadline" ] \
      || die "$(node_name "$n") did not start within 120s ($(printf '%s' "$why" | tail -1)); see $base/n$n/log/"
    sleep 1
  done
}

in_cluster() { # node: is it a running member of node 1's cluster?
  ctl 1 -q cluster_status --formatter json 2>/dev/null | grep -q "\"$(node_name "$1")\""
}

all_running() {
  local n members
  for n in "${nodes[@]}"; do port_open "$(node_port "$n")" || return 1; done
  members=$(ctl 1 -q cluster_status --formatter json 2>/dev/null | grep -o '"running_nodes":\[[^]]*\]') || return 1
  for n in "${nodes[@]}"; do grep -q "$(node_name "$n")" <<<"$members" || return 1; done
}

# A node whose working directory was deleted under it (started by an older version of this
# script from a clone since removed) cannot stop its application any more: end it, so that
# `start` brings it back from the cluster's directory. Its queues' replicas are on disk.
restart_orphaned() {
  local n pid
  for n in "${nodes[@]}"; do
    pid=$(cat "$base/n$n/pid" 2>/dev/null) || continue
    case "$(readlink "/proc/$pid/cwd" 2>/dev/null)" in
      *"(deleted)")
        say "$(node_name "$n") runs in a deleted directory: restarting it"
        kill -9 "$pid" 2>/dev/null || true
        local i
        for i in $(seq 1 50); do port_open "$(node_port "$n")" || break; sleep 0.2; done
        ;;
    esac
  done
}

start() {
  ensure_installed
  restart_orphaned
  if [ -s "$base/.erlang.cookie" ] && all_running; then
    say "3-node cluster up: $(urls)"
    return
  fi
  prepare
  local n
  # All at once: a node that was clustered waits for its peers when it boots.
  for n in "${nodes[@]}"; do start_node "$n"; done
  for n in "${nodes[@]}"; do await_node "$n"; done
  for n in 2 3; do
    if ! in_cluster "$n"; then
      say "joining $(node_name "$n") to $(node_name 1)"
      # The CLI is chatty while a node joins; its output goes to the node's log directory.
      {
        ctl "$n" -q stop_app && ctl "$n" -q reset \
          && ctl "$n" -q join_cluster "$(node_name 1)" && ctl "$n" -q start_app
      } >>"$base/n$n/log/join.log" 2>&1 \
        || die "$(node_name "$n") could not join: see $base/n$n/log/join.log"
      await_node "$n"
    fi
  done
  all_running || die "the three nodes do not all run in one cluster: $(ctl 1 -q cluster_status 2>&1 | tr '\n' ' ')"
  say "3-node cluster up: $(urls)"
}

stop() {
  local n
  for n in "${nodes[@]}"; do
    if alive "$n"; then
      say "stopping $(node_name "$n")"
      ctl "$n" -q shutdown >/dev/null 2>&1 || ctl "$n" -q stop >/dev/null 2>&1 || true
    fi
  done
}

urls() {
  local n out=()
  for n in "${nodes[@]}"; do out+=("amqp://guest:guest@127.0.0.1:$(node_port "$n")/%2f"); done
  (IFS=,; echo "${out[*]}")
}

status() {
  local n
  for n in "${nodes[@]}"; do
    if running "$n"; then echo "$(node_name "$n") running on 127.0.0.1:$(node_port "$n")"
    else echo "$(node_name "$n") not running"
    fi
  done
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  clean) stop; say "deleting $base"; rm -rf "$base" ;;
  status) status ;;
  urls) urls ;;
  ctl) shift; [ $# -ge 2 ] || die "usage: $0 ctl N command…"; ctl "$@" ;;
  diag) shift; [ $# -ge 2 ] || die "usage: $0 diag N command…"; diag "$@" ;;
  *) echo "usage: $0 [start|stop|clean|status|urls|ctl N …|diag N …]" >&2; exit 2 ;;
esac
