#!/usr/bin/env bash
# Sets up a project-local SoftHSM2 token for the PKCS#11 custody tests and the demo, idempotently:
#   scripts/softhsm-up.sh [DIR]     DIR defaults to .cardkms/softhsm under the repository
# Writes DIR/softhsm2.conf (token directory DIR/tokens), initialises the token $CARDKMS_PKCS11_TOKEN (default
# cardkms-test) when it does not exist yet, and prints the environment to use, as shell `export` lines:
#   eval "$(scripts/softhsm-up.sh)"
# The PINs are test values (override with CARDKMS_PKCS11_SO_PIN / CARDKMS_PKCS11_PIN); a production token is
# initialised by its security officer, not by this script. SoftHSM2 itself comes from scripts/system-deps.sh.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$root/.cardkms/softhsm}
label=${CARDKMS_PKCS11_TOKEN:-cardkms-test}
so_pin=${CARDKMS_PKCS11_SO_PIN:-12345678}
pin=${CARDKMS_PKCS11_PIN:-1234}

if ! command -v softhsm2-util >/dev/null 2>&1; then
  echo "softhsm-up: softhsm2-util not found: run scripts/system-deps.sh (installs the softhsm2 package)" >&2
  exit 1
fi

module=${CARDKMS_PKCS11_MODULE:-}
if [[ -z "$module" ]]; then
  for m in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so \
    /usr/local/lib/softhsm/libsofthsm2.so /opt/homebrew/lib/softhsm/libsofthsm2.so; do
    if [[ -f "$m" ]]; then module=$m; break; fi
  done
fi
if [[ -z "$module" || ! -f "$module" ]]; then
  echo "softhsm-up: libsofthsm2.so not found (set CARDKMS_PKCS11_MODULE): run scripts/system-deps.sh" >&2
  exit 1
fi

mkdir -p "$dir/tokens"
chmod 700 "$dir" "$dir/tokens"
dir=$(cd "$dir" && pwd)
conf=$dir/softhsm2.conf
export SOFTHSM2_CONF=$conf

# Test files may run this concurrently: one initialiser at a time.
exec 9>"$dir/.lock"
if command -v flock >/dev/null 2>&1; then flock 9; fi

if [[ ! -f "$conf" ]]; then
  cat >"$conf.tmp" <<EOF
# SoftHSM2 configuration written by scripts/softhsm-up.sh
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
EOF
  mv "$conf.tmp" "$conf"
fi

if ! softhsm2-util --show-slots 2>/dev/null | grep -Eq "^[[:space:]]*Label:[[:space:]]*${label}[[:space:]]*$"; then
  softhsm2-util --init-token --free --label "$label" --so-pin "$so_pin" --pin "$pin" >/dev/null
  if ! softhsm2-util --show-slots 2>/dev/null | grep -Eq "^[[:space:]]*Label:[[:space:]]*${label}[[:space:]]*$"; then
    echo "softhsm-up: token $label was not created in $dir/tokens" >&2
    exit 1
  fi
fi

printf 'export SOFTHSM2_CONF=%q\n' "$conf"
printf 'export CARDKMS_PKCS11_MODULE=%q\n' "$module"
printf 'export CARDKMS_PKCS11_TOKEN=%q\n' "$label"
printf 'export CARDKMS_PKCS11_PIN=%q\n' "$pin"
