#!/usr/bin/env bash
# Installs the Debian packages the tests and benchmarks need, when they are missing:
#   pcscd + vsmartcard-vpcd  PC/SC daemon and the virtual reader our cards attach to
#   opensc, pcsc-tools        PC/SC clients (opensc-tool, pkcs11-tool, OpenSC PKCS#11 module)
#   openssl, softhsm2         crypto tooling and a software HSM
#   util-linux                flock (cross-process lock on the vpcd port)
#   iproute2                  ip (quick-ACK loopback route, see pcsc-up.sh)
# Fast and silent when everything is present (one dpkg-query). Needs root, or sudo when not root.
set -euo pipefail

PACKAGES=(pcscd vsmartcard-vpcd opensc pcsc-tools openssl softhsm2 util-linux iproute2)

missing=()
for p in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "installed" ]] || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: missing packages (${missing[*]}) and no apt-get: install them by hand" >&2
  exit 1
fi

if [[ $(id -u) -eq 0 ]]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo -n)
  if ! sudo -n true 2>/dev/null; then
    # interactive terminal: let sudo ask for a password
    if [[ -t 0 ]]; then SUDO=(sudo); else
      echo "system-deps: missing packages (${missing[*]}); sudo needs a password and there is no terminal." >&2
      echo "  run: sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
      exit 1
    fi
  fi
else
  echo "system-deps: missing packages (${missing[*]}); not root and no sudo." >&2
  echo "  as root run: apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 1
fi

echo "system-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"

for p in "${missing[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  if [[ "$status" != "installed" ]]; then
    echo "system-deps: $p is still not installed" >&2
    exit 1
  fi
done
