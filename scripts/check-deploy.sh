#!/usr/bin/env bash
# Checks the deployment files under deploy/ with what this machine has (docs/deployment.md says
# which check covers which file). Run by scripts/test.sh after the integration tests; needs
# the built binary (it builds it) and, for the RabbitMQ part, the local broker.
#
#   systemd     systemd-analyze verify, and systemd-analyze security under a threshold
#   docker      no Docker engine here: the Dockerfile and compose file are parsed and linted
#               for what they must contain, `docker compose config` runs when the plugin
#               exists, and the image's HEALTHCHECK command is run against a live bridge
#   kubernetes  kubectl kustomize renders the kustomization; the objects are linted
#   monitoring  promtool check rules on the alert rules (Debian's prometheus package, installed
#               when missing), promtool test rules on their unit tests, and the dashboard is JSON
#   rabbitmq    generate.py reproduces the committed files; each definitions file is imported
#               into a scratch vhost and the bridge must get ready on it, first only checking
#               the topology, then declaring its own on top (same arguments, or the broker
#               refuses); a ticket goes through the sharded one
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[check-deploy] %s\n' "$*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

# Every check runs: a tool that is missing is installed (Debian's packages, PyPI) or the run
# fails saying which; nothing is skipped quietly. The one exception is `docker compose config`:
# the compose plugin is not in Debian's packages (its file is linted below either way).
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }
apt_updated=0
need_apt() { # command package
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ "$apt_updated" = 0 ]; then as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq || true; apt_updated=1; fi
  say "installing $2 from Debian's packages (for $1)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null \
    || fail "$1 is needed and $2 could not be installed"
  command -v "$1" >/dev/null 2>&1 || fail "$1 still missing after installing $2"
}
need_apt systemd-analyze systemd
python3 -c 'import yaml' 2>/dev/null || {
  say "installing PyYAML from PyPI"
  python3 -m pip install --quiet pyyaml || fail "PyYAML is needed and could not be installed"
}
command -v kubectl >/dev/null 2>&1 \
  || fail "kubectl is needed to render deploy/kubernetes (it is not in Debian's packages: install it from your distribution of Kubernetes)"
command -v rabbitmqctl >/dev/null 2>&1 \
  || fail "rabbitmqctl is needed to import the definitions (scripts/ensure-services.sh installs rabbitmq-server)"

cargo build --locked --quiet --bin jelou-bridge
bin="$PWD/target/debug/jelou-bridge"
scratch=$(mktemp -d)
pids=()
vhost=""
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "$vhost" ]; then rabbitmqctl -q delete_vhost "$vhost" >/dev/null 2>&1 || true; fi
  rm -rf "$scratch"
}
trap cleanup EXIT

# ---------------------------------------------------------------- systemd
unit=deploy/systemd/jelou-bridge.service
if command -v systemd-analyze >/dev/null 2>&1; then
  # verify wants ExecStart's binary to exist: check a copy that points at the built one.
  sed "s#^ExecStart=/usr/local/bin/jelou-bridge #ExecStart=$bin #" "$unit" > "$scratch/jelou-bridge.service"
  grep -q "^ExecStart=$bin run --config /etc/jelou-bridge/config.toml$" "$scratch/jelou-bridge.service" \
    || fail "$unit: unexpected ExecStart"
  systemd-analyze verify "$scratch/jelou-bridge.service" || fail "systemd-analyze verify $unit"
  systemd-analyze security --offline=yes --threshold=20 "$scratch/jelou-bridge.service" >/dev/null \
    || fail "systemd-analyze security: $unit exposure above 2.0 (--threshold counts tenths)"
  exposure=$(systemd-analyze security --offline=yes "$scratch/jelou-bridge.service" 2>/dev/null \
    | sed -n 's/.*exposure level for [^:]*: \([0-9.]*\).*/\1/p')
  say "systemd: $unit verifies; security exposure $exposure (at most 2.0 allowed)"
else
  fail "systemd-analyze missing"
fi
for key in User=jelou-bridge ProtectSystem=strict StateDirectory=jelou-bridge Restart=on-failure \
           EnvironmentFile=-/etc/jelou-bridge/env NoNewPrivileges=yes PrivateTmp=yes ProtectHome=yes \
           KillSignal=SIGTERM Environment=JELOU_BRIDGE__ADMIN__LISTEN=127.0.0.1:9090 \
           Environment=JELOU_BRIDGE__STORE__URL=sqlite:///var/lib/jelou-bridge/jelou-bridge.db; do
  grep -qx "$key" "$unit" || fail "$unit lacks $key"
done

# ---------------------------------------------------------------- monitoring
# promtool comes with Debian's prometheus package; never skipped: installed when missing.
if ! command -v promtool >/dev/null 2>&1; then
  say "monitoring: promtool missing; installing Debian's prometheus package"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; } >&2 \
    || fail "could not install promtool (apt-get install prometheus)"
fi
promtool check rules deploy/monitoring/alerts.yml >&2 || fail "promtool check rules deploy/monitoring/alerts.yml"
(cd deploy/monitoring && promtool test rules alerts.test.yml) >&2 || fail "promtool test rules deploy/monitoring/alerts.test.yml"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["panels"], "no panels"' \
  deploy/monitoring/grafana-dashboard.json || fail "deploy/monitoring/grafana-dashboard.json"
say "monitoring: alert rules pass promtool check and their tests; the dashboard parses"

# ---------------------------------------------------------------- static lint (python)
SCRATCH="$scratch" python3 - <<'PY' || fail "deployment files lint"
import json, os, re, shutil, subprocess, sys, tomllib
try:
    import yaml
except ImportError:
    yaml = None

def check(cond, msg):
    if not cond:
        sys.exit(f"lint: {msg}")

def seconds(text):
    n, unit = re.fullmatch(r"(\d+)(ms|s|m)", text).groups()
    return int(n) * {"ms": 0.001, "s": 1, "m": 60}[unit]

production = tomllib.load(open("config/production.toml", "rb"))
grace = seconds(production["shutdown"]["grace"])
# The split: the webhook on http.listen (8080), health/readiness/metrics on admin.listen (9090).
check(production["http"]["listen"].endswith(":8080"), "production.toml: http.listen on 8080")
check(production.get("admin", {}).get("listen", "").endswith(":9090"), "production.toml: admin.listen on 9090 (health and metrics apart from the webhook)")

# systemd: the stop timeout outlasts the shutdown grace.
unit = open("deploy/systemd/jelou-bridge.service").read()
stop = seconds(re.search(r"^TimeoutStopSec=(\S+)$", unit, re.M).group(1))
check(stop > grace, f"TimeoutStopSec {stop}s must exceed shutdown.grace {grace}s")

# Dockerfile: multi-stage, non-root, a health check on /healthz that needs no extra tool.
docker = open("deploy/docker/Dockerfile").read()
lines = [l for l in re.sub(r"\\\n", " ", docker).splitlines() if l.strip() and not l.startswith("#")]
froms = [l for l in lines if l.startswith("FROM ")]
check(len(froms) >= 2 and " AS build" in froms[0], "Dockerfile: a build stage, then a runtime stage")
check("slim" in froms[-1], "Dockerfile: a slim runtime image")
users = [l.split()[1] for l in lines if l.startswith("USER ")]
check(users and users[-1].split(":")[0] not in ("0", "root"), "Dockerfile: runs as a non-root user")
health = [l for l in lines if l.startswith("HEALTHCHECK ")]
check(len(health) == 1, "Dockerfile: one HEALTHCHECK")
cmd = json.loads(health[0].split(" CMD ", 1)[1])
check(cmd[0] == "bash" and "/healthz" in cmd[-1], "HEALTHCHECK: bash probing /healthz")
check("/dev/tcp/127.0.0.1/9090" in cmd[-1], "HEALTHCHECK: on the admin port (9090)")
exposed = [p for l in lines if l.startswith("EXPOSE ") for p in l.split()[1:]]
check(exposed == ["8080"], f"Dockerfile: EXPOSE only the webhook port 8080, not {exposed}")
with open(os.path.join(os.environ["SCRATCH"], "healthcheck.sh"), "w") as f:
    f.write(cmd[-1])
check(any(l.startswith('ENTRYPOINT ["/usr/local/bin/jelou-bridge"]') for l in lines), "Dockerfile: ENTRYPOINT")
check("STOPSIGNAL SIGTERM" in lines, "Dockerfile: STOPSIGNAL SIGTERM")

if yaml is None:
    print("lint: FAILED: PyYAML missing", file=sys.stderr)
    sys.exit(1)

# docker-compose.yml: RabbitMQ with management, PostgreSQL, the bridge on PostgreSQL, the
# stand-in in the bridge's network namespace (loopback: the only plain-http Jelou allowed).
compose = yaml.safe_load(open("deploy/docker-compose.yml"))
services = compose["services"]
check({"rabbitmq", "postgres", "bridge", "jelou-mock"} <= set(services), "compose: the four services")
check("management" in services["rabbitmq"]["image"], "compose: RabbitMQ with management")
check(services["postgres"]["image"].startswith("postgres:"), "compose: PostgreSQL")
bridge = services["bridge"]
env = bridge["environment"]
check(env["JELOU_BRIDGE__STORE__URL"].startswith("postgres://"), "compose: the bridge's store is PostgreSQL")
check(env["JELOU_BRIDGE__AMQP__URL"].startswith("amqp://") and "@rabbitmq:" in env["JELOU_BRIDGE__AMQP__URL"], "compose: broker URL")
check("127.0.0.1:8090" in env["JELOU_BRIDGE__JELOU__BASE_URL"], "compose: Jelou is the stand-in on loopback")
check(bridge["build"]["dockerfile"] == "deploy/docker/Dockerfile", "compose: builds deploy/docker/Dockerfile")
mock = services["jelou-mock"]
check(mock["command"][:3] == ["mock-jelou", "--listen", "127.0.0.1:8090"], "compose: mock-jelou on 127.0.0.1:8090")
check(mock["network_mode"] == "service:bridge", "compose: stand-in shares the bridge's network")
for name in ("rabbitmq", "postgres"):
    check("condition" in str(bridge["depends_on"][name]), f"compose: bridge waits for {name}")
check(int(bridge["stop_grace_period"].rstrip("s")) > grace, "compose: stop_grace_period > shutdown.grace")
check([str(p).rsplit(":", 1)[-1] for p in bridge["ports"]] == ["8080"], f"compose: only the webhook port is published, not {bridge['ports']}")
check("rabbitmq_consistent_hash_exchange" in open("deploy/rabbitmq/enabled_plugins").read(), "enabled_plugins")

# Kubernetes: the secret template, and what kustomize renders.
secret = yaml.safe_load(open("deploy/kubernetes/secret.example.yaml"))
check(secret["metadata"]["name"] == "jelou-bridge-secrets", "kubernetes: secret template name")
for key in ("JELOU_BRIDGE__JELOU__API_KEY", "JELOU_BRIDGE__WEBHOOK__SIGNING_SECRET"):
    check(key in secret["stringData"], f"kubernetes: secret template has {key}")
if not shutil.which("kubectl"):
    print("lint: FAILED: kubectl missing", file=sys.stderr)
    sys.exit(1)
out = subprocess.run(["kubectl", "kustomize", "--load-restrictor", "LoadRestrictionsNone", "deploy/kubernetes"],
                     check=True, capture_output=True, text=True).stdout
docs = [d for d in yaml.safe_load_all(out) if d]
kinds = {d["kind"]: d for d in docs}
check({"StatefulSet", "ConfigMap", "Service", "PodDisruptionBudget", "Namespace", "CronJob"} <= set(kinds), f"kubernetes: kinds {sorted(kinds)}")
cron = kinds["CronJob"]["spec"]
check(cron["concurrencyPolicy"] == "Forbid", "kubernetes: one reconcile at a time")
check(cron["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"][0] == "reconcile", "kubernetes: the CronJob runs reconcile")
cm = kinds["ConfigMap"]["data"]
check(cm["default.toml"] == open("config/default.toml").read(), "kubernetes: ConfigMap carries config/default.toml")
check(cm["production.toml"] == open("config/production.toml").read(), "kubernetes: ConfigMap carries config/production.toml")
sharded = tomllib.loads(cm["sharded.toml"])
sts = kinds["StatefulSet"]
spec = sts["spec"]["template"]["spec"]
c = spec["containers"][0]
check(c["livenessProbe"]["httpGet"]["path"] == "/healthz", "kubernetes: liveness on /healthz")
check(c["readinessProbe"]["httpGet"]["path"] == "/readyz", "kubernetes: readiness on /readyz")

def split_ports(what, pod, container):
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    check(ports == {"http": 8080, "admin": 9090}, f"{what}: container ports http 8080 and admin 9090, not {ports}")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        check(container[probe]["httpGet"]["port"] == "admin", f"{what}: {probe} on the admin port")
    check(pod["metadata"]["annotations"]["prometheus.io/port"] == "9090", f"{what}: metrics scraped on the admin port")

def only_webhook(what, services):
    for svc in services:
        targets = [p.get("targetPort") for p in svc["spec"]["ports"]]
        check(targets == ["http"], f"{what}: Service {svc['metadata']['name']} exposes only the webhook port, not {targets}")
split_ports("kubernetes", sts["spec"]["template"], c)
only_webhook("kubernetes", [d for d in docs if d["kind"] == "Service"])
check(c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"], "kubernetes: resource requests")
check(spec["securityContext"]["runAsNonRoot"] is True, "kubernetes: non-root")
check(spec["terminationGracePeriodSeconds"] > grace, "kubernetes: terminationGracePeriodSeconds > shutdown.grace")
check(sts["spec"]["replicas"] == sharded["amqp"]["replica_count"], "kubernetes: replicas == amqp.replica_count")
check(any(e["name"] == "JELOU_BRIDGE__AMQP__REPLICA_INDEX" for e in c["env"]), "kubernetes: replica index from the pod")
check(c["envFrom"][0]["secretRef"]["name"] == "jelou-bridge-secrets", "kubernetes: secrets from jelou-bridge-secrets")
pdb = kinds["PodDisruptionBudget"]["spec"]
check(pdb["selector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"], "kubernetes: PDB selects the pods")
# The single-queue variant: a Deployment of interchangeable replicas.
out = subprocess.run(["kubectl", "kustomize", "--load-restrictor", "LoadRestrictionsNone", "deploy/kubernetes/single-queue"],
                     check=True, capture_output=True, text=True).stdout
kinds = {d["kind"]: d for d in yaml.safe_load_all(out) if d}
check({"Deployment", "ConfigMap", "Service", "PodDisruptionBudget"} <= set(kinds), f"kubernetes/single-queue: kinds {sorted(kinds)}")
dep = kinds["Deployment"]
c = dep["spec"]["template"]["spec"]["containers"][0]
check(c["livenessProbe"]["httpGet"]["path"] == "/healthz", "single-queue: liveness on /healthz")
check(c["readinessProbe"]["httpGet"]["path"] == "/readyz", "single-queue: readiness on /readyz")
split_ports("single-queue", dep["spec"]["template"], c)
only_webhook("single-queue", [d for d in yaml.safe_load_all(out) if d and d["kind"] == "Service"])
check(dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace, "single-queue: grace")
check(kinds["ConfigMap"]["data"]["default.toml"] == open("config/default.toml").read(), "single-queue: ConfigMap carries config/default.toml")
check(kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"], "single-queue: PDB selects the pods")
print("lint: Dockerfile, docker-compose.yml, kubernetes/, systemd timeouts OK", file=sys.stderr)
PY
say "docker, kubernetes: linted (no Docker engine or cluster here; see docs/deployment.md)"
if docker compose version >/dev/null 2>&1; then
  docker compose -f deploy/docker-compose.yml config -q || fail "docker compose config"
  say "docker compose config: OK"
else
  say "docker compose plugin not in Debian's packages and not installed: the compose file was checked by the lint above only"
fi

# ---------------------------------------------------------------- rabbitmq definitions
python3 deploy/rabbitmq/generate.py --out "$scratch/gen" >/dev/null
for f in definitions.json definitions-sharded.json bridge-sharded.toml; do
  diff -u "deploy/rabbitmq/$f" "$scratch/gen/$f" >/dev/null \
    || fail "deploy/rabbitmq/$f differs from what deploy/rabbitmq/generate.py writes"
done
say "rabbitmq: committed files are generate.py's output"

command -v rabbitmqctl >/dev/null 2>&1 || fail "rabbitmqctl missing"

# Where a bridge started on port 0 listens, read back from its start line: the bridge binds
# its own port; none is reserved here and released for another process to take first.
bound_addr() { # pid log what
  local i addr
  for i in $(seq 1 150); do
    addr="$(grep -m1 '"jelou-bridge starting"' "$2" 2>/dev/null \
      | python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["http"])' 2>/dev/null)" \
      && [ -n "$addr" ] && { echo "$addr"; return 0; }
    kill -0 "$1" 2>/dev/null || { cat "$2" >&2; fail "$3: the bridge exited"; }
    sleep 0.2
  done
  tail -n 20 "$2" >&2
  fail "$3: the bridge did not say where it listens"
}

get() { # host:port path -> status line code
  local status
  exec 3<>"/dev/tcp/${1%:*}/${1##*:}" || return 1
  printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$2" "$1" >&3
  read -r _ status _ <&3 || true
  exec 3<&-
  echo "$status"
}

# Starts the bridge (sandbox Jelou) on the scratch vhost; its pid in $pid.
start_bridge() { # listen config declare_topology log
  JELOU_BRIDGE__AMQP__URL="amqp://guest:guest@127.0.0.1:5672/$vhost" \
  JELOU_BRIDGE__AMQP__DECLARE_TOPOLOGY="$3" \
  JELOU_BRIDGE__AMQP__REPLICA_COUNT=1 \
  JELOU_BRIDGE__HTTP__LISTEN="$1" \
  JELOU_BRIDGE__STORE__URL="sqlite://$scratch/store-$RANDOM.db" \
  JELOU_BRIDGE__LOG__FORMAT=json \
    "$bin" run --sandbox --config "$2" >"$4" 2>&1 &
  pid=$!
  pids+=("$pid")
}

wait_ready() { # listen pid log what
  local i
  for i in $(seq 1 150); do
    [ "$(get "$1" /readyz 2>/dev/null)" = 200 ] && return 0
    kill -0 "$2" 2>/dev/null || { cat "$3" >&2; fail "$4: the bridge exited"; }
    sleep 0.2
  done
  tail -n 20 "$3" >&2
  fail "$4: the bridge did not get ready"
}

stop_bridge() {
  kill -TERM "$pid"
  wait "$pid" || fail "the bridge did not stop cleanly"
  pids=()
}

for defs in definitions.json definitions-sharded.json; do
  vhost="jb-deploy-check-$RANDOM$RANDOM"
  rabbitmqctl -q add_vhost "$vhost" >/dev/null
  rabbitmqctl -q set_permissions -p "$vhost" guest '.*' '.*' '.*' >/dev/null
  python3 - "deploy/rabbitmq/$defs" "$vhost" >"$scratch/defs.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
d["vhosts"] = [{"name": sys.argv[2]}]
for section in ("policies", "exchanges", "queues", "bindings"):
    for item in d[section]:
        item["vhost"] = sys.argv[2]
print(json.dumps(d))
PY
  chmod 0644 "$scratch/defs.json"; chmod 0755 "$scratch"
  rabbitmqctl -q import_definitions "$scratch/defs.json" >/dev/null || fail "import $defs"
  config="$scratch/none.toml"; : > "$config"
  [ "$defs" = definitions-sharded.json ] && config=deploy/rabbitmq/bridge-sharded.toml
  for declare in false true; do
    log="$scratch/bridge-$declare.log"
    start_bridge 127.0.0.1:0 "$config" "$declare" "$log"
    listen="$(bound_addr "$pid" "$log" "$defs (declare_topology=$declare)")"
    wait_ready "$listen" "$pid" "$log" "$defs (declare_topology=$declare)"
    if [ "$defs" = definitions-sharded.json ] && [ "$declare" = true ]; then
      # The image's health check, as Docker would run it, on this bridge's port.
      sed -i "s#/dev/tcp/127.0.0.1/9090#/dev/tcp/${listen%:*}/${listen##*:}#" "$scratch/healthcheck.sh"
      bash "$scratch/healthcheck.sh" || fail "the Dockerfile's HEALTHCHECK command fails on a healthy bridge"
      JELOU_BRIDGE__AMQP__URL="amqp://guest:guest@127.0.0.1:5672/$vhost" \
        "$bin" publish opened --ticket "DEPLOY-CHECK-1" --user U-1 --config "$config" --timeout 30s \
        >"$scratch/publish.log" 2>&1 || { cat "$scratch/publish.log" >&2; fail "a ticket through $defs"; }
      grep -q "conversation.started" "$scratch/publish.log" || { cat "$scratch/publish.log" >&2; fail "no conversation.started"; }
    fi
    stop_bridge
  done
  say "rabbitmq: $defs imports, and the bridge gets ready on it checking and declaring"
  rabbitmqctl -q delete_vhost "$vhost" >/dev/null
  vhost=""
done
say "all deployment checks passed"
