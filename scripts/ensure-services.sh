#!/usr/bin/env bash
# Makes sure the services jelou-bridge needs are running on this machine, installing them
# from Debian's packages when they are missing:
#   RabbitMQ on 127.0.0.1:5672 (always), PostgreSQL on 127.0.0.1:5432 (with --postgres).
# Safe to run again: what already runs is left alone.
set -euo pipefail

want_pg=0
want_tools=0
for arg in "$@"; do
  case "$arg" in
    --postgres) want_pg=1 ;;
    --test-tools) want_tools=1 ;;
    *) echo "usage: $0 [--postgres] [--test-tools]" >&2; exit 2 ;;
  esac
done

say() { printf '[ensure-services] %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else say "need root (or sudo) to run: $*"; exit 1
  fi
}

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    say "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  say "installing $* from Debian's packages"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

wait_port() { # port seconds what
  local i
  for ((i = 0; i < $2 * 2; i++)); do
    port_open "$1" && return 0
    sleep 0.5
  done
  say "$3 did not open port $1 within $2 s"; return 1
}

have_systemd() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

ensure_rabbitmq() {
  if ! port_open 5672; then
    command -v rabbitmq-server >/dev/null 2>&1 || apt_install rabbitmq-server
    say "starting RabbitMQ"
    # Every quorum queue holds file handles and the default limit of 1024 runs out early.
    # Debian's wrapper switches user and resets ulimits, so the limit goes where the server
    # reads it: rabbitmq-env.conf, sourced by the server's start script.
    # Where the hard limit is lower and cannot be raised (a container), take the hard limit:
    # a failed ulimit would stop the start script.
    if [ -d /etc/rabbitmq ] && ! grep -qs '^ulimit -n' /etc/rabbitmq/rabbitmq-env.conf; then
      echo 'ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"' \
        | as_root tee -a /etc/rabbitmq/rabbitmq-env.conf >/dev/null
    fi
    if have_systemd; then
      as_root systemctl start rabbitmq-server
    else
      as_root rabbitmq-server -detached
    fi
    wait_port 5672 120 RabbitMQ
    as_root rabbitmqctl await_startup >/dev/null 2>&1 || true
  fi
  # The sharded topology (deploy/rabbitmq) routes with the consistent-hash exchange.
  if command -v rabbitmq-plugins >/dev/null 2>&1 \
     && ! grep -qs rabbitmq_consistent_hash_exchange /etc/rabbitmq/enabled_plugins; then
    say "enabling rabbitmq_consistent_hash_exchange"
    as_root rabbitmq-plugins enable rabbitmq_consistent_hash_exchange >/dev/null
  fi
  say "RabbitMQ is up on 127.0.0.1:5672"
}

ensure_postgres() {
  if port_open 5432; then
    say "PostgreSQL is up on 127.0.0.1:5432"
    return
  fi
  local installed_here=0
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    apt_install postgresql
    installed_here=1
  fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  say "starting PostgreSQL $version"
  if have_systemd; then
    as_root systemctl start "postgresql@${version}-main" || as_root pg_ctlcluster "$version" main start
  else
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
  fi
  wait_port 5432 60 PostgreSQL
  if [ "$installed_here" = 1 ]; then
    # A fresh Debian cluster asks TCP clients for a password: give the tests' one.
    as_root su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
  fi
  say "PostgreSQL is up on 127.0.0.1:5432"
}

# What the fault tests run besides the services: faketime gives one bridge process a clock 30 s
# ahead (tests/faults/skewed_clock.rs).
ensure_test_tools() {
  command -v faketime >/dev/null 2>&1 || apt_install faketime
  command -v faketime >/dev/null 2>&1 || { say "faketime could not be installed"; exit 1; }
}

ensure_rabbitmq
if [ "$want_pg" = 1 ]; then ensure_postgres; fi
if [ "$want_tools" = 1 ]; then ensure_test_tools; fi
