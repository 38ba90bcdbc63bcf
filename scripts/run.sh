#!/usr/bin/env bash
# The bridge's main job, in one command: start RabbitMQ if needed (installing it from
# Debian's packages), build, and run the bridge on the embedded defaults.
#
# Without Jelou credentials (JELOU_BRIDGE__JELOU__API_KEY, or a config naming one) it runs in
# sandbox mode against an in-process stand-in for Jelou, publishes a sample ticket, shows it
# become a conversation, an agent's reply go out and the customer's answer come back, the
# conversation closed, and keeps running until Ctrl-C.
#   --once   stop after the sample ticket (used by the test suite as a smoke test)
set -euo pipefail
cd "$(dirname "$0")/.."

once=0
for arg in "$@"; do
  case "$arg" in
    --once) once=1 ;;
    *) echo "usage: $0 [--once]" >&2; exit 2 ;;
  esac
done

scripts/ensure-services.sh
profile="${JB_BUILD_PROFILE:-release}"
cargo build --locked --profile "$profile" --bin jelou-bridge
dir=release; [ "$profile" = dev ] && dir=debug
bin="target/$dir/jelou-bridge"

if [ -n "${JELOU_BRIDGE__JELOU__API_KEY:-}${JELOU_BRIDGE__JELOU__CLIENT_SECRET:-}" ] && [ "$once" = 0 ]; then
  exec "$bin" run
fi

echo "== no Jelou credentials given: running in sandbox mode (a local stand-in for Jelou) =="
export JELOU_BRIDGE__LOG__FORMAT="${JELOU_BRIDGE__LOG__FORMAT:-pretty}"
"$bin" run --sandbox &
bridge=$!
trap 'kill -TERM $bridge 2>/dev/null; wait $bridge' INT TERM
listen="${JELOU_BRIDGE__HTTP__LISTEN:-127.0.0.1:8080}"
# GET /readyz with bash alone (a fresh machine may have no curl).
ready() {
  local status
  exec 3<>"/dev/tcp/${listen%:*}/${listen##*:}" || return 1
  printf 'GET /readyz HTTP/1.0\r\nHost: %s\r\n\r\n' "$listen" >&3
  read -r _ status _ <&3 || true
  exec 3<&-
  [ "$status" = 200 ]
}
for _ in $(seq 1 150); do
  ready 2>/dev/null && break
  kill -0 $bridge 2>/dev/null || { wait $bridge; exit $?; }
  sleep 0.2
done
ticket="DEMO-$(date +%s)"
echo "== publishing ticket.opened for $ticket =="
"$bin" publish opened --ticket "$ticket" --user demo-user --text "Hola, necesito ayuda"
echo "== publishing ticket.reply for $ticket: an agent's message goes out to the customer, whose answer comes back =="
"$bin" publish reply --ticket "$ticket" --text "Hola, ya lo estamos revisando" --wait-customer 10s
echo "== publishing ticket.resolved for $ticket =="
"$bin" publish resolved --ticket "$ticket" --text "Tu ticket fue resuelto"
echo "== what the store knows of $ticket =="
"$bin" tickets show "$ticket"
if [ "$once" = 1 ]; then
  kill -TERM $bridge
  wait $bridge
  echo "== sandbox run OK =="
  exit 0
fi
echo "== the bridge keeps running (health: http://$listen/healthz, metrics: http://$listen/metrics); Ctrl-C stops it =="
wait $bridge
