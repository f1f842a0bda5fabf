#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers on 127.0.0.1:5432 and lets the postgres user in over TCP without a
# password (trust, loopback only), for the storage test suite (test/support/store-testing.ts) and the PostgreSQL benchmarks.
# Idempotent:
#   1. a server that already answers on 127.0.0.1:5432 is used as it is (never restarted or reconfigured);
#   2. else Debian's `postgresql` package is installed when missing (apt-get as root, or sudo -n);
#   3. the newest cluster is started with pg_ctlcluster (created with pg_createcluster if there is none);
#   4. its pg_hba.conf gets `host all postgres 127.0.0.1/32 trust` when the postgres user cannot log in over TCP,
#      and the server is reloaded.
# Env: CARDKMS_PG_HOST (127.0.0.1), CARDKMS_PG_PORT (5432), CARDKMS_PG_TIMEOUT seconds to wait (30).
set -euo pipefail

HOST=${CARDKMS_PG_HOST:-127.0.0.1}
PORT=${CARDKMS_PG_PORT:-5432}
TIMEOUT=${CARDKMS_PG_TIMEOUT:-30}
LOCK=${TMPDIR:-/tmp}/cardkms-postgres-up.lock

say() { echo "postgres-up: $*" >&2; }
die() { say "$*"; exit 1; }

# One postgres-up at a time (parallel test files may all call it).
exec 9>"$LOCK"
flock -w 300 9 || die "timed out waiting for $LOCK"

answers() { command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h "$HOST" -p "$PORT" -t 3; }
# True when the postgres user gets in over TCP without a password.
logs_in() { PGCONNECT_TIMEOUT=5 psql -w -h "$HOST" -p "$PORT" -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1; }

if answers && logs_in; then exit 0; fi

if [[ $(id -u) -eq 0 ]]; then
  SUDO=()
  AS_PG=(runuser -u postgres --)
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
  AS_PG=(sudo -n -u postgres)
else
  SUDO=()
  AS_PG=()
fi
need_root() {
  [[ $(id -u) -eq 0 || ${#SUDO[@]} -gt 0 ]] && return 0
  die "$1 needs root: run as root, or configure passwordless sudo (sudo -n), or point CARDKMS_TEST_PG at a reachable server"
}

# 2. The server package.
if ! command -v pg_ctlcluster >/dev/null 2>&1 || [[ -z "$(ls /usr/lib/postgresql 2>/dev/null)" ]]; then
  command -v apt-get >/dev/null 2>&1 || die "PostgreSQL is not installed and there is no apt-get: install PostgreSQL by hand"
  need_root "installing the postgresql package"
  say "installing postgresql"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql postgresql-client \
    || die "apt-get install postgresql failed"
fi

# 3. A cluster on $PORT, started.
VERSION=$(ls /usr/lib/postgresql | sort -V | tail -1)
[[ -n "$VERSION" ]] || die "no PostgreSQL version under /usr/lib/postgresql"
CLUSTER=$(pg_lsclusters -h 2>/dev/null | awk -v p="$PORT" '$3 == p { print $1 " " $2; exit }')
if [[ -z "$CLUSTER" ]]; then
  if answers; then
    die "something answers on $HOST:$PORT but it is not a local Debian cluster, and the postgres user cannot log in without a password; set CARDKMS_TEST_PG to a URL that works"
  fi
  need_root "creating a PostgreSQL cluster"
  say "creating cluster $VERSION/main on port $PORT"
  "${SUDO[@]}" pg_createcluster --port "$PORT" "$VERSION" main >/dev/null || die "pg_createcluster $VERSION main failed"
  CLUSTER="$VERSION main"
fi
read -r CVER CNAME <<<"$CLUSTER"
CONF_DIR=/etc/postgresql/$CVER/$CNAME

if ! answers; then
  need_root "starting PostgreSQL"
  say "starting cluster $CVER/$CNAME"
  # A missing socket directory (tmpfs /run) stops the server from starting.
  "${SUDO[@]}" install -d -o postgres -g postgres -m 2775 /var/run/postgresql
  "${SUDO[@]}" pg_ctlcluster --skip-systemctl-redirect "$CVER" "$CNAME" start \
    || die "pg_ctlcluster $CVER $CNAME start failed; see /var/log/postgresql/postgresql-$CVER-$CNAME.log"
  for ((i = 0; i < TIMEOUT; i++)); do answers && break; sleep 1; done
  answers || die "cluster $CVER/$CNAME started but $HOST:$PORT does not answer after ${TIMEOUT}s (listen_addresses? port?)"
fi

# 4. TCP login for postgres without a password (loopback only).
if ! logs_in; then
  need_root "allowing the postgres user over TCP"
  HBA=$CONF_DIR/pg_hba.conf
  [[ -f "$HBA" ]] || die "no $HBA"
  RULE="host all postgres $HOST/32 trust"
  if ! "${SUDO[@]}" grep -qxF "$RULE" "$HBA"; then
    say "adding '$RULE' to $HBA"
    # Rules match first to last: ours goes first so an earlier scram/md5 line does not shadow it.
    "${SUDO[@]}" sed -i "1i $RULE  # added by cardkms scripts/postgres-up.sh" "$HBA"
  fi
  "${AS_PG[@]}" psql -qAtc 'select pg_reload_conf()' >/dev/null 2>&1 \
    || "${SUDO[@]}" pg_ctlcluster --skip-systemctl-redirect "$CVER" "$CNAME" reload \
    || die "reloading $CVER/$CNAME failed"
  for ((i = 0; i < 10; i++)); do logs_in && break; sleep 1; done
  logs_in || die "postgres still cannot log in over TCP at $HOST:$PORT; check $HBA"
fi
say "PostgreSQL $CVER/$CNAME ready on $HOST:$PORT"
