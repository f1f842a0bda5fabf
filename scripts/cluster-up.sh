#!/usr/bin/env bash
# A local cluster of the issuer (issue 16; docs/scaling.md): three `cardkms issuer serve` processes on one PostgreSQL
# database behind HAProxy, round-robin, no stickiness. For trying the cluster and for measuring it — not a deployment
# (one machine, the postgres superuser over loopback trust, a software keystore file).
#
#   1. HAProxy: Debian's `haproxy` installed when missing (apt-get as root, or sudo -n; like scripts/system-deps.sh).
#   2. PostgreSQL answering on 127.0.0.1:5432 (scripts/postgres-up.sh), and a database of the cluster's own
#      ($CARDKMS_CLUSTER_DB, created when missing; kept across runs; scripts/cluster-down.sh --drop drops it).
#   3. The state directory (owner-only, 0700; files 0600): the shared configuration issuer.json, the keystore and its
#      key file (made on the first run), an operator token (admin, operator, auditor; made on the first run and
#      written to operator.token — never printed), each process's pid file and log.
#   4. The servers on ports $CARDKMS_CLUSTER_PORTS, each `node bin/cardkms.js issuer serve --config issuer.json` with
#      only its port different (CARDKMS_LISTEN_PORT). The first starts alone (on a fresh state it makes the CA key,
#      the master keys and the webhook root in the keystore), then the others together; each must answer /healthz.
#   5. HAProxy on $CARDKMS_CLUSTER_LB_PORT with docs/haproxy.cfg.sample (ports rewritten when not the default ones),
#      in the foreground of its own session (haproxy -db), logging to haproxy.log; statistics on the next port.
#
# Idempotent: a cluster whose processes are all alive is left as it is. Stop: scripts/cluster-down.sh.
# Env: CARDKMS_CLUSTER_DIR (default .cardkms/cluster), CARDKMS_CLUSTER_PORTS (default "8441 8442 8443"),
#      CARDKMS_CLUSTER_LB_PORT (8440; statistics on LB_PORT+4 when the default ports are kept, else LB_PORT+100),
#      CARDKMS_CLUSTER_DB (cardkms_cluster), CARDKMS_PG_HOST (127.0.0.1), CARDKMS_PG_PORT (5432),
#      CARDKMS_CLUSTER_TIMEOUT seconds to wait for each process (120).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
STATE=${CARDKMS_CLUSTER_DIR:-.cardkms/cluster}
read -r -a PORTS <<<"${CARDKMS_CLUSTER_PORTS:-8441 8442 8443}"
LB_PORT=${CARDKMS_CLUSTER_LB_PORT:-8440}
DB=${CARDKMS_CLUSTER_DB:-cardkms_cluster}
PG_HOST=${CARDKMS_PG_HOST:-127.0.0.1}
PG_PORT=${CARDKMS_PG_PORT:-5432}
TIMEOUT=${CARDKMS_CLUSTER_TIMEOUT:-120}
SAMPLE=docs/haproxy.cfg.sample

say() { echo "cluster-up: $*" >&2; }
die() { say "$*"; exit 1; }

[[ "$DB" =~ ^[a-z_][a-z0-9_]{0,62}$ ]] || die "CARDKMS_CLUSTER_DB=$DB: lowercase letters, digits and _ only"
[[ ${#PORTS[@]} -ge 1 ]] || die "CARDKMS_CLUSTER_PORTS is empty"
for p in "${PORTS[@]}" "$LB_PORT"; do [[ "$p" =~ ^[0-9]+$ && "$p" -ge 1 && "$p" -le 65535 ]] || die "not a port: $p"; done
DEFAULT_PORTS=0
[[ "${PORTS[*]}" == "8441 8442 8443" && "$LB_PORT" == 8440 ]] && DEFAULT_PORTS=1
STATS_PORT=$((DEFAULT_PORTS ? 8444 : LB_PORT + 100))

# True when the pid in $1 is alive and runs $2 (a word of its command line).
alive() {
  local pid
  pid=$(tr -cd '0-9' 2>/dev/null <"$1" || true)
  [[ -n "$pid" ]] || return 1
  local stat
  stat=$(cat /proc/"$pid"/stat 2>/dev/null) || return 1
  [[ "$stat" != *") Z "* ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2"
}

all_alive() {
  local i
  for i in "${!PORTS[@]}"; do alive "$STATE/server-$((i + 1)).pid" "issuer serve" || return 1; done
  alive "$STATE/haproxy.pid" haproxy
}

summary() {
  cat <<EOF
cluster-up: ${#PORTS[@]} issuer servers on postgres://$PG_HOST:$PG_PORT/$DB behind HAProxy
  API (through HAProxy)   http://127.0.0.1:$LB_PORT          e.g. curl -si http://127.0.0.1:$LB_PORT/healthz
  servers                 $(for p in "${PORTS[@]}"; do printf 'http://127.0.0.1:%s ' "$p"; done)
  HAProxy statistics      http://127.0.0.1:$STATS_PORT/
  operator token          $STATE/operator.token (admin, operator, auditor)
  state, logs, pids       $STATE/
  try it                  export CARDKMS_SERVER=http://127.0.0.1:$LB_PORT CARDKMS_TOKEN=\$(cat $STATE/operator.token)
                          node bin/cardkms.js user register --name "Taro Suzuki" --email taro@example.test
                          node bin/cardkms.js audit verify
  stop                    bash scripts/cluster-down.sh          (--drop also drops the database and the state)
EOF
}

if [[ -d "$STATE" ]] && all_alive; then
  say "already running"
  summary
  exit 0
fi

# ---- 1. HAProxy ---------------------------------------------------------------------------------------------------
if ! command -v haproxy >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || die "haproxy is not installed and there is no apt-get: install HAProxy (2.6 or later) by hand"
  if [[ $(id -u) -eq 0 ]]; then SUDO=()
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO=(sudo -n)
  else die "haproxy is missing; as root run: apt-get update && apt-get install -y --no-install-recommends haproxy"; fi
  say "installing haproxy"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy >/dev/null || die "apt-get install haproxy failed"
  command -v haproxy >/dev/null 2>&1 || die "haproxy is still not installed"
fi

# ---- 2. PostgreSQL and the cluster's database ---------------------------------------------------------------------
CARDKMS_PG_HOST=$PG_HOST CARDKMS_PG_PORT=$PG_PORT bash scripts/postgres-up.sh
pg() { PGCONNECT_TIMEOUT=5 psql -w -v ON_ERROR_STOP=1 -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -tAq "$@"; }
if [[ -z "$(pg -c "select 1 from pg_database where datname = '$DB'")" ]]; then
  say "creating database $DB"
  pg -c "create database $DB" || die "create database $DB failed"
fi
DATABASE_URL="postgres://postgres@$PG_HOST:$PG_PORT/$DB"

# ---- 3. the state directory ---------------------------------------------------------------------------------------
umask 077
mkdir -p "$STATE"
chmod 700 "$STATE"
[[ -f dist/cli/main.js ]] || { say "building the CLI (npm run build)"; npm run --silent build; }
if [[ ! -s "$STATE/keystore.key" ]]; then
  od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$STATE/keystore.key"
fi
STATE_ABS=$(cd "$STATE" && pwd)
cat >"$STATE/issuer.json" <<EOF
{
  "listen": { "host": "127.0.0.1", "port": ${PORTS[0]} },
  "database": "$DATABASE_URL",
  "custody": { "kind": "software", "keystore": "$STATE_ABS/keystore.json" },
  "ca": { "mode": "local", "subject": "CN=cardkms cluster CA" },
  "crlUrl": "http://127.0.0.1:$LB_PORT/crl"
}
EOF
SERVER_ENV=(env CARDKMS_CONFIG= CARDKMS_DATABASE= CARDKMS_KEYSTORE_KEY= CARDKMS_KEYSTORE_KEY_FILE="$STATE_ABS/keystore.key")

# Leftovers of a cluster partly down: stop what is still running so every process starts from this configuration.
if compgen -G "$STATE/*.pid" >/dev/null; then
  say "stopping what is left of an earlier cluster"
  CARDKMS_CLUSTER_DIR=$STATE bash scripts/cluster-down.sh
fi

healthy() { curl -fsS -m 2 "http://127.0.0.1:$1/healthz" >/dev/null 2>&1; }
wait_healthy() {
  local port=$1 pidfile=$2 log=$3 deadline=$((SECONDS + TIMEOUT))
  until healthy "$port"; do
    alive "$pidfile" "issuer serve" || die "the server on port $port exited; its log, $log:
$(tail -n 20 "$log")"
    ((SECONDS < deadline)) || die "the server on port $port does not answer /healthz after ${TIMEOUT}s; see $log"
    sleep 0.5
  done
}
start_server() {
  local i=$1 port=${PORTS[$1]} n=$(($1 + 1))
  healthy "$port" && die "something already answers on port $port: not starting server $n there"
  setsid "${SERVER_ENV[@]}" CARDKMS_LISTEN_PORT="$port" node bin/cardkms.js issuer serve --config "$STATE/issuer.json" --json \
    </dev/null >"$STATE/server-$n.log" 2>&1 &
  echo $! >"$STATE/server-$n.pid"
}

# ---- 4. the servers: the first alone (it makes the keys on a fresh state), then the others together --------------
start_server 0
wait_healthy "${PORTS[0]}" "$STATE/server-1.pid" "$STATE/server-1.log"
if [[ ! -s "$STATE/operator.token" ]]; then
  "${SERVER_ENV[@]}" node bin/cardkms.js issuer token create --name cluster-admin --role admin operator auditor --config "$STATE/issuer.json" --json \
    | sed -n 's/.*"token":"\([^"]*\)".*/\1/p' >"$STATE/operator.token"
  [[ -s "$STATE/operator.token" ]] || die "issuer token create failed"
fi
for i in "${!PORTS[@]}"; do ((i == 0)) || start_server "$i"; done
for i in "${!PORTS[@]}"; do ((i == 0)) || wait_healthy "${PORTS[$i]}" "$STATE/server-$((i + 1)).pid" "$STATE/server-$((i + 1)).log"; done

# ---- 5. HAProxy ---------------------------------------------------------------------------------------------------
cfg=$STATE/haproxy.cfg
if ((DEFAULT_PORTS)); then
  cp "$SAMPLE" "$cfg"
else
  servers=$(for i in "${!PORTS[@]}"; do printf '    server issuer%d 127.0.0.1:%s check\\n' $((i + 1)) "${PORTS[$i]}"; done)
  sed -e "s/^    bind 127.0.0.1:8440$/    bind 127.0.0.1:$LB_PORT/" -e "s/^    bind 127.0.0.1:8444$/    bind 127.0.0.1:$STATS_PORT/" \
    -e '/^    server issuer[0-9] /d' -e "/^    default-server /a\\
$servers" "$SAMPLE" >"$cfg"
fi
haproxy -c -q -f "$cfg" || die "haproxy rejects $cfg"
setsid haproxy -db -f "$cfg" </dev/null >"$STATE/haproxy.log" 2>&1 &
echo $! >"$STATE/haproxy.pid"
deadline=$((SECONDS + TIMEOUT))
until healthy "$LB_PORT"; do
  alive "$STATE/haproxy.pid" haproxy || die "haproxy exited; its log: $(tail -n 20 "$STATE/haproxy.log")"
  ((SECONDS < deadline)) || die "HAProxy does not answer on $LB_PORT after ${TIMEOUT}s; see $STATE/haproxy.log"
  sleep 0.5
done
summary
