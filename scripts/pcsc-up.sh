#!/usr/bin/env bash
# Makes sure pcscd runs with vsmartcard's vpcd reader driver, so cards attached with src/transport/vpcd.ts show
# up in PC/SC as "Virtual PCD 00 00". Idempotent: a pcscd that already lists the reader (started by an earlier
# run, by systemd socket activation, or by hand) is reused. Otherwise pcscd is started in the foreground mode
# (-f, no auto-exit) in its own session, detached, logging to $CARDKMS_PCSC_DIR/pcscd.log; its pid goes to
# $CARDKMS_PCSC_DIR/pcscd.pid so scripts/pcsc-down.sh stops only a pcscd this script started.
# Logs are at info level: never -a/-d, which would log APDUs (PINs, keys).
#
# Loopback latency: Debian's vpcd (vsmartcard 3.3) writes each message's 2-byte length and its payload with two
# send() calls on a socket without TCP_NODELAY, so Nagle holds the payload until our side ACKs the length —
# and Linux delays that ACK by 40 ms: every APDU costs ~44 ms. Node cannot set TCP_QUICKACK, so this script adds
# a host route for a dedicated loopback address, `local 127.77.0.1/32 dev lo quickack 1` (nothing else on the
# machine uses it), and writes that address to $CARDKMS_PCSC_DIR/vpcd-host, which the connector then connects
# to: ~0.2 ms per APDU. Without the route (no `ip`, no CAP_NET_ADMIN, CARDKMS_PCSC_QUICKACK=0) everything
# still works, just slowly. scripts/pcsc-down.sh removes the route.
#
# Env: CARDKMS_PCSC_DIR (default /tmp/cardkms-pcsc), CARDKMS_PCSC_TIMEOUT seconds to wait (default 20),
#      CARDKMS_SKIP_SYSTEM_DEPS=1 to skip the package check, CARDKMS_PCSC_QUICKACK=0 to leave routes alone,
#      CARDKMS_VPCD_FAST_HOST (default 127.77.0.1).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUN_DIR=${CARDKMS_PCSC_DIR:-/tmp/cardkms-pcsc}
TIMEOUT=${CARDKMS_PCSC_TIMEOUT:-20}
READER="Virtual PCD 00 00"
CONF=/etc/reader.conf.d/vpcd
SYS_PIDFILE=/run/pcscd/pcscd.pid
LOG=$RUN_DIR/pcscd.log
PIDFILE=$RUN_DIR/pcscd.pid
FAST_HOST=${CARDKMS_VPCD_FAST_HOST:-127.77.0.1}
HOSTFILE=$RUN_DIR/vpcd-host

say() { echo "pcsc-up: $*" >&2; }
die() { say "$*"; exit 1; }

[[ "${CARDKMS_SKIP_SYSTEM_DEPS:-}" == 1 ]] || bash "$HERE/system-deps.sh"

mkdir -p "$RUN_DIR"
# One pcsc-up at a time (parallel test files all call it).
exec 9>"$RUN_DIR/up.lock"
flock -w 120 9 || die "timed out waiting for $RUN_DIR/up.lock"

reader_listed() { opensc-tool -l 2>/dev/null | grep -qF "$READER"; }

# True when pid is a live (not zombie) pcscd.
is_pcscd() {
  local pid=$1 stat
  [[ -n "$pid" ]] || return 1
  stat=$(cat /proc/"$pid"/stat 2>/dev/null) || return 1
  [[ "$stat" == *"(pcscd) "[!Z]* ]]
}

# pid of the running pcscd, if any (from its own pid file, else by exact process name).
running_pcscd() {
  local pid
  pid=$(tr -cd "0-9" 2>/dev/null <"$SYS_PIDFILE" || true)
  if is_pcscd "$pid"; then echo "$pid"; return 0; fi
  for pid in $(pgrep -x pcscd || true); do
    if is_pcscd "$pid"; then echo "$pid"; return 0; fi
  done
  return 1
}

ours() { [[ -f "$PIDFILE" && "$(cat "$PIDFILE")" == "$1" ]]; }

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
  else die "need root to run: $*"; fi
}

wait_reader() {
  local deadline=$((SECONDS + $1)) pid=${2:-}
  while ((SECONDS < deadline)); do
    reader_listed && return 0
    if [[ -n "$pid" ]] && ! is_pcscd "$pid"; then return 2; fi
    sleep 0.2
  done
  return 1
}

stop_pid() {
  local pid=$1
  as_root kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do is_pcscd "$pid" || return 0; sleep 0.1; done
  die "pcscd (pid $pid) did not stop"
}

# Quick-ACK route for the connector's loopback address (see the header); failures only cost speed.
ensure_quickack() {
  [[ "${CARDKMS_PCSC_QUICKACK:-1}" != 0 ]] || { rm -f "$HOSTFILE"; return 0; }
  [[ "$FAST_HOST" =~ ^127\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || { say "CARDKMS_VPCD_FAST_HOST must be a 127/8 address"; return 0; }
  if ip route show table local "$FAST_HOST/32" 2>/dev/null | grep -q quickack; then
    [[ -f "$HOSTFILE" ]] || echo "$FAST_HOST" >"$HOSTFILE"
    return 0
  fi
  if command -v ip >/dev/null 2>&1 &&
    as_root ip route replace local "$FAST_HOST/32" dev lo table local scope host quickack 1 2>/dev/null; then
    echo "$FAST_HOST" >"$HOSTFILE"
    say "added quick-ACK loopback route for $FAST_HOST (vpcd round trips ~0.2 ms instead of ~44 ms)"
  else
    rm -f "$HOSTFILE"
    say "warning: could not add the quick-ACK route for $FAST_HOST; vpcd APDUs will take ~44 ms each"
  fi
}

[[ -f "$CONF" ]] || die "$CONF missing: is vsmartcard-vpcd installed? (scripts/system-deps.sh)"

# Fast path: the reader is already there (any pcscd, including a socket-activated one).
if reader_listed; then ensure_quickack; exit 0; fi

if pid=$(running_pcscd); then
  # Running but without our reader: give a freshly started one a moment, then decide.
  if wait_reader 3 "$pid"; then ensure_quickack; exit 0; fi
  etimes=$(ps -o etimes= -p "$pid" | tr -cd '0-9')
  started=$(( $(date +%s) - ${etimes:-0} ))
  if ours "$pid" || (( $(stat -c %Y "$CONF") >= started )); then
    # Ours, or started before the vpcd driver was installed (fresh machine): restart it with the driver.
    say "restarting pcscd (pid $pid): it does not list \"$READER\""
    stop_pid "$pid"
  else
    die "pcscd (pid $pid) is running without the \"$READER\" reader; not touching a pcscd we did not start. Stop it, then rerun."
  fi
fi

# Stale pid file/socket from a killed pcscd would make the new one refuse to start.
if [[ -f "$SYS_PIDFILE" ]] && ! running_pcscd >/dev/null; then as_root rm -f "$SYS_PIDFILE"; fi

say "starting pcscd (log: $LOG)"
echo "---- $(date -Is) pcsc-up: starting pcscd" >>"$LOG"
if [[ $(id -u) -eq 0 ]]; then
  # 9>&-: the daemon must not inherit (and so hold forever) the up.lock descriptor.
  setsid pcscd -f -i >>"$LOG" 2>&1 </dev/null 9>&- &
  echo $! >"$PIDFILE"
else
  command -v sudo >/dev/null 2>&1 || die "pcscd is not running and starting it needs root (no sudo)"
  sudo -n sh -c 'setsid pcscd -f -i >>"$1" 2>&1 </dev/null 9>&- & echo $! >"$2"' sh "$LOG" "$PIDFILE" \
    || die "could not start pcscd via sudo"
fi
pid=$(cat "$PIDFILE")

if wait_reader "$TIMEOUT" "$pid"; then
  say "pcscd (pid $pid) ready with \"$READER\""
  ensure_quickack
  exit 0
fi
say "pcscd did not list \"$READER\" within ${TIMEOUT}s; last log lines:"
tail -n 20 "$LOG" >&2 || true
exit 1
