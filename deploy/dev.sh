#!/usr/bin/env bash
# A complete local sandgate cluster on this machine, in one command:
#   deploy/dev.sh          set up what is missing, start PostgreSQL, Redis, a node agent and the
#                          gateway, print the API URL and a fresh API key, write .sandgate/dev.env,
#                          then wait; Ctrl-C stops everything it started.
#   deploy/dev.sh down     stop a cluster left running (e.g. started with SANDGATE_DETACH=1).
#
# State lives under .sandgate/ (data, configs, logs, templates) and is reused by the next run.
# The node agent runs in its own network namespace (sgdev) joined to this host by a veth pair,
# so its bridge, addresses and nftables rules never touch the host's own network; `down` removes
# the namespace, the sandboxes and their mounts. SANDGATE_WARM_POOL=N (default 8): containers the
# node keeps started ahead, so that many creates at once skip runc.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
S=$ROOT/.sandgate
PORT=${SANDGATE_PORT:-3000}
PGPORT=${SANDGATE_PG_PORT:-55432}
REDISPORT=${SANDGATE_REDIS_PORT:-56379}
NS=sgdev HOSTIP=10.250.0.1 NODEIP=10.250.0.2

log() { printf '\033[1m[sandgate]\033[0m %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

pidalive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

down() {
  set +e
  if pidalive "$S/run/node.pid"; then
    # Sandboxes die with the cluster: delete each through the node API, then stop the agent.
    tok=$(grep '^SANDGATE_NODE_TOKEN=' "$S/secrets.env" | cut -d= -f2)
    for id in $(curl -s -H "X-Sandgate-Node-Token: $tok" "http://$NODEIP:7070/v1/sandboxes" |
                python3 -c 'import json,sys; [print(s["sandboxID"]) for s in json.load(sys.stdin)["sandboxes"]]' 2>/dev/null); do
      curl -s -o /dev/null -X DELETE -H "X-Sandgate-Node-Token: $tok" "http://$NODEIP:7070/v1/sandboxes/$id"
    done
  fi
  for p in gateway node redis; do
    if pidalive "$S/run/$p.pid"; then kill -TERM "$(cat "$S/run/$p.pid")"; fi
  done
  # postmaster.pid's first line is the server's pid (runuser's own pid is not).
  [[ -f $S/pg/postmaster.pid ]] && head -n1 "$S/pg/postmaster.pid" >"$S/run/postgres.pid"
  if pidalive "$S/run/postgres.pid"; then kill -INT "$(cat "$S/run/postgres.pid")"; fi
  for i in $(seq 50); do
    alive=0
    for p in gateway node redis postgres; do pidalive "$S/run/$p.pid" && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for p in gateway node redis postgres; do pidalive "$S/run/$p.pid" && kill -KILL "$(cat "$S/run/$p.pid")"; rm -f "$S/run/$p.pid"; done
  # Leftovers of a killed agent: containers, mounts, the namespace and its veth.
  if [[ -d $S/node/runc ]]; then
    for c in $(runc --root "$S/node/runc" list -q 2>/dev/null); do runc --root "$S/node/runc" delete -f "$c" >/dev/null 2>&1; done
  fi
  awk -v p="$S/node/" 'index($5, p) == 1 {print $5}' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null
  for d in /sys/fs/cgroup/*/sandgate/dev-node-1; do
    [[ -d $d ]] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  ip netns del $NS 2>/dev/null
  ip link del sgdev0 2>/dev/null
  log "stopped"
}

if [[ ${1:-up} == down ]]; then down; exit 0; fi
[[ $(id -u) -eq 0 ]] || die "run as root (sandboxes need namespaces, cgroups and runc)"
if pidalive "$S/run/gateway.pid"; then die "already running (deploy/dev.sh down to stop it)"; fi

log "packages"; deploy/install-deps.sh
log "build"; cmake --preset ci >/dev/null && cmake --build build -j2 >/dev/null || die "build failed (run: cmake --build build)"
mkdir -p "$S"/{run,log,templates,node}
log "template base (built once, then cached)"; deploy/build-template.sh "$S/templates"

# Secrets: made once, kept in .sandgate/secrets.env (mode 0600).
if [[ ! -f $S/secrets.env ]]; then
  umask 077
  { echo "SANDGATE_NODE_TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    echo "SANDGATE_TOKEN_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    echo "SANDGATE_ADMIN_TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"; } >"$S/secrets.env"
  umask 022
fi
set -a; . "$S/secrets.env"; set +a

trap 'trap - EXIT; down; exit 130' INT TERM
trap 'rc=$?; ((rc)) && { log "failed; logs in $S/log"; down; }' EXIT

# Network namespace for the node, linked to the host by a veth pair.
ip netns add $NS 2>/dev/null || true
ip link show sgdev0 >/dev/null 2>&1 || ip link add sgdev0 type veth peer name eth0 netns $NS
ip addr replace $HOSTIP/30 dev sgdev0 && ip link set sgdev0 up
ip -n $NS addr replace $NODEIP/30 dev eth0 && ip -n $NS link set eth0 up && ip -n $NS link set lo up
ip -n $NS route replace default via $HOSTIP

# PostgreSQL (refuses to run as root: runs as the postgres user).
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
if [[ ! -f $S/pg/PG_VERSION ]]; then
  log "postgres: initdb"
  install -d -o postgres -g postgres "$S/pg"
  runuser -u postgres -- "$PGBIN/initdb" -D "$S/pg" -U sandgate -A trust -E UTF8 >"$S/log/initdb.log"
fi
chown postgres:postgres "$S/run" "$S/log"
runuser -u postgres -- "$PGBIN/postgres" -D "$S/pg" -p "$PGPORT" -k "$S/run" -c listen_addresses=127.0.0.1 \
  >>"$S/log/postgres.log" 2>&1 &
for i in $(seq 100); do "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PGPORT" -U sandgate && break; sleep 0.1; done
"$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PGPORT" -U sandgate || die "postgres did not start ($S/log/postgres.log)"
"$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U sandgate -d postgres -Atqc "SELECT 1 FROM pg_database WHERE datname='sandgate'" | grep -q 1 ||
  "$PGBIN/createdb" -h 127.0.0.1 -p "$PGPORT" -U sandgate sandgate

log "redis"
redis-server --port "$REDISPORT" --bind "127.0.0.1 $HOSTIP" --dir "$S/run" --save '' --appendonly no \
  --protected-mode no >>"$S/log/redis.log" 2>&1 &
echo $! >"$S/run/redis.pid"

cat >"$S/gateway.yaml" <<YAML
# written by deploy/dev.sh
listeners:
  - address: 127.0.0.1
    port: $PORT
domain: sandgate.localhost
postgres:
  dsn: "host=127.0.0.1 port=$PGPORT user=sandgate dbname=sandgate"
redis:
  address: 127.0.0.1:$REDISPORT
node_token: \${SANDGATE_NODE_TOKEN}
admin_token: \${SANDGATE_ADMIN_TOKEN}
token_secret: \${SANDGATE_TOKEN_SECRET}
state_dir: $S
YAML
cat >"$S/node.yaml" <<YAML
# written by deploy/dev.sh
id: dev-node-1
api_listen: $NODEIP:7070
proxy_listen: $NODEIP:7071
node_token: \${SANDGATE_NODE_TOKEN}
redis:
  address: $HOSTIP:$REDISPORT
capacity:
  vcpu: 128             # overcommitted on purpose: a dev machine runs mostly idle sandboxes
  max_sandboxes: 100
  reserve_memory_mb: 256
templates_dir: $S/templates
state_dir: $S/node
envd_path: $ROOT/build/envd-bundle
network_cidr: 10.12.0.0/16
bridge: sgbr0
warm_pool: ${SANDGATE_WARM_POOL:-8}    # containers started ahead: creates skip runc
protected_addresses:
  - $HOSTIP/32
YAML

SG=build/sandgate
$SG --config "$S/gateway.yaml" migrate >/dev/null
$SG --config "$S/gateway.yaml" team list | cut -f2 | grep -qx dev || $SG --config "$S/gateway.yaml" team create dev >/dev/null
KEY=$($SG --config "$S/gateway.yaml" key create --team dev --name "dev.sh $(date -u +%FT%TZ)" 2>/dev/null)

log "node agent (namespace $NS)"
nsenter --net=/var/run/netns/$NS build/sandgate-node -c "$S/node.yaml" >>"$S/log/node.log" 2>&1 &
echo $! >"$S/run/node.pid"
log "gateway"
$SG --config "$S/gateway.yaml" serve >>"$S/log/gateway.log" 2>&1 &
echo $! >"$S/run/gateway.pid"

for i in $(seq 200); do
  curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null &&
    curl -sf -H "X-Admin-Token: $SANDGATE_ADMIN_TOKEN" "http://127.0.0.1:$PORT/admin/nodes" | grep -q dev-node-1 && break
  sleep 0.1
done
curl -sf -H "X-Admin-Token: $SANDGATE_ADMIN_TOKEN" "http://127.0.0.1:$PORT/admin/nodes" | grep -q dev-node-1 ||
  die "the cluster did not become ready (logs in $S/log)"

cat >"$S/dev.env" <<ENV
# written by deploy/dev.sh: source it to point the E2B SDK and CLI at this cluster
export E2B_API_KEY=$KEY
export E2B_API_URL=http://127.0.0.1:$PORT
export E2B_SANDBOX_URL=http://127.0.0.1:$PORT
export E2B_DOMAIN=sandgate.localhost
ENV
cat <<MSG

  sandgate is running.
    API URL:  http://127.0.0.1:$PORT
    API key:  $KEY   (shown once; also in .sandgate/dev.env)
    logs:     $S/log/

  source .sandgate/dev.env, then use the E2B SDK or CLI as usual. Ctrl-C stops the cluster.

MSG
if [[ -n ${SANDGATE_DETACH:-} ]]; then trap - EXIT INT TERM; exit 0; fi
wait -n "$(cat "$S/run/gateway.pid")" "$(cat "$S/run/node.pid")" || true
log "a component exited; stopping (logs in $S/log)"
down
