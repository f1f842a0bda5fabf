#!/usr/bin/env bash
# Stops the pcscd that scripts/pcsc-up.sh started (pid in $CARDKMS_PCSC_DIR/pcscd.pid). A pcscd started by
# anything else (systemd, by hand) is left alone.
set -euo pipefail

RUN_DIR=${CARDKMS_PCSC_DIR:-/tmp/cardkms-pcsc}
PIDFILE=$RUN_DIR/pcscd.pid
HOSTFILE=$RUN_DIR/vpcd-host

# The quick-ACK loopback route pcsc-up.sh added (its address is in vpcd-host).
if [[ -f "$HOSTFILE" ]]; then
  host=$(tr -cd '0-9.' <"$HOSTFILE")
  if [[ "$host" =~ ^127\. ]] && ip route show table local "$host/32" 2>/dev/null | grep -q quickack; then
    if [[ $(id -u) -eq 0 ]]; then ip route del local "$host/32" table local || true
    else sudo -n ip route del local "$host/32" table local || true; fi
  fi
  rm -f "$HOSTFILE"
fi

[[ -f "$PIDFILE" ]] || { echo "pcsc-down: no pcscd started by pcsc-up ($PIDFILE absent)" >&2; exit 0; }
pid=$(tr -cd '0-9' <"$PIDFILE")
is_pcscd() { local st; st=$(cat /proc/"$1"/stat 2>/dev/null) || return 1; [[ "$st" == *"(pcscd) "[!Z]* ]]; }
if ! is_pcscd "$pid"; then
  echo "pcsc-down: pid $pid is not running pcscd any more" >&2
  rm -f "$PIDFILE"
  exit 0
fi
if [[ $(id -u) -eq 0 ]]; then kill -TERM "$pid"; else sudo -n kill -TERM "$pid"; fi
for _ in $(seq 50); do
  is_pcscd "$pid" || { rm -f "$PIDFILE"; echo "pcsc-down: stopped pcscd (pid $pid)" >&2; exit 0; }
  sleep 0.1
done
echo "pcsc-down: pcscd (pid $pid) did not exit after SIGTERM" >&2
exit 1
