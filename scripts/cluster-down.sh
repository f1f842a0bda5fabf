#!/usr/bin/env bash
# Stops the local cluster scripts/cluster-up.sh started: HAProxy first (no new requests), then each issuer server
# (SIGTERM: it finishes the requests in flight and closes; SIGKILL after $CARDKMS_CLUSTER_TIMEOUT seconds). Only the
# processes named in its pid files, and only while they still run what cluster-up started there: nothing else is
# touched. --drop also drops the cluster's database and removes the state directory (keystore, token, logs).
# Env: as cluster-up.sh (CARDKMS_CLUSTER_DIR, CARDKMS_CLUSTER_DB, CARDKMS_PG_HOST, CARDKMS_PG_PORT, CARDKMS_CLUSTER_TIMEOUT).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
STATE=${CARDKMS_CLUSTER_DIR:-.cardkms/cluster}
DB=${CARDKMS_CLUSTER_DB:-cardkms_cluster}
PG_HOST=${CARDKMS_PG_HOST:-127.0.0.1}
PG_PORT=${CARDKMS_PG_PORT:-5432}
TIMEOUT=${CARDKMS_CLUSTER_TIMEOUT:-120}
DROP=0
for a in "$@"; do
  case "$a" in
    --drop) DROP=1 ;;
    *) echo "usage: cluster-down.sh [--drop]" >&2; exit 2 ;;
  esac
done

say() { echo "cluster-down: $*" >&2; }

# The pid in file $1 when it is alive and its command line holds $2, else nothing.
live_pid() {
  local pid stat
  pid=$(tr -cd '0-9' 2>/dev/null <"$1" || true)
  [[ -n "$pid" ]] || return 1
  stat=$(cat /proc/"$pid"/stat 2>/dev/null) || return 1
  [[ "$stat" != *") Z "* ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2" || return 1
  echo "$pid"
}

stop() {
  local file=$1 what=$2 pid
  if ! pid=$(live_pid "$file" "$what"); then
    rm -f "$file"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + TIMEOUT))
  while live_pid "$file" "$what" >/dev/null; do
    if ((SECONDS >= deadline)); then
      say "$(basename "$file" .pid) (pid $pid) still running ${TIMEOUT}s after SIGTERM: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  rm -f "$file"
  say "stopped $(basename "$file" .pid) (pid $pid)"
}

if [[ -d "$STATE" ]]; then
  stop "$STATE/haproxy.pid" haproxy
  for f in "$STATE"/server-*.pid; do
    [[ -e "$f" ]] && stop "$f" "issuer serve" &
  done
  wait
else
  say "no cluster state at $STATE"
fi

if ((DROP)); then
  [[ "$DB" =~ ^[a-z_][a-z0-9_]{0,62}$ ]] || { say "CARDKMS_CLUSTER_DB=$DB: lowercase letters, digits and _ only"; exit 1; }
  PGCONNECT_TIMEOUT=5 psql -w -v ON_ERROR_STOP=1 -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -tAq -c "drop database if exists $DB with (force)"
  rm -rf "$STATE"
  say "dropped database $DB and removed $STATE"
fi
