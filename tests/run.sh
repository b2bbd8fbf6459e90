#!/usr/bin/env bash
# The test command (README.md): installs what the tests need on a fresh Debian 12 machine,
# then runs lint, types and the test suite.  .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(softflowd tshark pmacct iproute2 procps gobgpd bird2 golang-github-osrg-gobgp-dev snmpd snmp dnsmasq-base nmap hping3 chromium curl debootstrap systemd-container openssl)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "tests/run.sh: missing Debian packages ${missing[*]}; run as root or install them" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v -e '^WARNING: Location' -e 'Running pip as' || true

# The stubs are committed; they are generated again only where a checkout lacks them.
echo "== GoBGP API stubs"
[ -f appliance/flowenricher/bgp/_api/gobgp_pb2_grpc.py ] || python3 tools/gen_gobgp_stubs.py
echo "== ruff"; python3 -m ruff check .
echo "== mypy"; python3 -m mypy
echo "== pytest"; python3 -m pytest -q -p no:cacheprovider --durations=25 "$@"
