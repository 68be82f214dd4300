#!/usr/bin/env bash
# Everything `make demo` and `make test` need on a fresh Debian 12 machine, as root.
# Idempotent: a second run only checks.  Usage: scripts/setup-debian.sh [VENV_DIR]
set -euo pipefail

venv=${1:-.venv}
here=$(cd "$(dirname "$0")/.." && pwd)

packages=(
    # the real peers the demo and the tests run against
    postgresql zabbix-server-pgsql zabbix-frontend-php php-pgsql php-cli php8.2-cgi
    zabbix-agent            # ships the C zabbix_sender the benchmarks compare against
    debootstrap             # Zabbix 7.0 runs in a Debian trixie chroot
    qemu-user-static binfmt-support  # the Pi install test on arm64, the armhf refusal (test_pi_install_arm64.py)
    gpsd gpsd-clients       # gpsfake replays NMEA through a real gpsd
    mosquitto mosquitto-clients prometheus
    chromium                # headless: the README's screenshots of the demo's frontend
    podman runc             # the container image test (crun refuses hybrid cgroups: devtools/container.py)
    python3 python3-venv python3-dev gcc util-linux
    locales                 # the Zabbix frontend's en_US locale (below)
)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # --no-install-recommends keeps apache and friends out (php -S serves the frontend).
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# The 6.0 frontend (run on this host) shows a red "Locale for language en_US is not
# found" box on every page and widget unless the locale is generated.
if ! locale -a | grep -qix 'en_US.utf8'; then
    echo "setup: generating the en_US.UTF-8 locale"
    sed -i 's/^# *\(en_US.UTF-8 UTF-8\)/\1/' /etc/locale.gen
    locale-gen >/dev/null
fi
# Debian starts some of these as services; the tests and the demo run their own.
for unit in zabbix-agent mosquitto gpsd gpsd.socket prometheus postgresql; do
    systemctl disable --now "$unit" >/dev/null 2>&1 || true
done

if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating $venv"
    python3 -m venv "$venv"
fi
stamp="$venv/.installed"
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ]; then
    echo "setup: installing trapline and its test tools into $venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q -e "$here[dev,demo]"
    touch "$stamp"
fi

# Zabbix schema dumps and the Zabbix 7.0 chroot, cached under /var/cache/trapline.
(cd "$here" && "$venv/bin/python" -m devtools.localzabbix)
echo "setup: done in ${SECONDS}s"
