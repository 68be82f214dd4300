#!/usr/bin/env bash
# Install trapline on a vehicle computer, as root: Raspberry Pi OS (64-bit) or Debian, arm64 or
# amd64, bookworm (12) or trixie (13).
#
#   deploy/raspberrypi/install.sh --server zabbix.example.net --vehicle van-17 [options]
#   deploy/raspberrypi/install.sh --direct --server zabbix.example.net --psk-file fleet.psk  (trixie)
#
# Idempotent: a second run with the same options changes nothing and says so. The options of
# the last run are kept in /etc/trapline/install.env, so a re-run needs only what changes.
# Every option also comes from the environment variable named beside it; a flag wins over the
# environment, the environment over install.env. See README.md beside this script.
set -euo pipefail
# The braces make bash read the whole script before running it: a `git pull` during a run
# cannot change the rest of the run.
{

usage() {
    cat <<'EOF'
usage: install.sh [options]
  --server ADDR           Zabbix server, host[:port]; ";" separates HA nodes  (TRAPLINE_SERVER)
                          required on the first run
  --vehicle NAME          Zabbix host of the vehicle (default: this machine's host name)
                                                                            (TRAPLINE_VEHICLE)
  --uplink proxy|direct   proxy (default): a Zabbix proxy on this machine buffers the data and
                          talks PSK to the server; direct (trixie, Python 3.13): trapline talks
                          PSK to the server itself and the van registers by autoregistration
                                                                            (TRAPLINE_UPLINK)
  --direct                same as --uplink direct
  --proxy-name NAME       the proxy's name in Zabbix (default: <vehicle>-proxy)
                                                                            (TRAPLINE_PROXY_NAME)
  --psk-identity ID       PSK identity (default: the proxy name; direct: trapline-fleet, the
                          default of trapline provision --autoregistration) (TRAPLINE_PSK_IDENTITY)
  --psk-file FILE         direct: the fleet's PSK (hex), as trapline provision --autoregistration
                          --new-psk printed it; copied to the agent, never shown; required on
                          the first direct run                              (TRAPLINE_PSK_FILE)
  --offline-buffer-hours N  how long the proxy keeps data while offline, 1-720 (default 72)
                                                                 (TRAPLINE_OFFLINE_BUFFER_HOURS)
  --elm327-mac MAC        a Bluetooth ELM327 bound to /dev/rfcomm0 (default: a USB ELM327,
                          /dev/elm327); "usb" switches back                (TRAPLINE_ELM327_MAC)
  --gps-device PATH       the GPS receiver for gpsd (default /dev/ttyACM0) (TRAPLINE_GPS_DEVICE)
  --source PATH           a trapline checkout or wheel (default: the checkout holding this
                          script)                                           (TRAPLINE_SOURCE)
  -h, --help
EOF
}

here=$(cd "$(dirname "$0")" && pwd)
prefix=/opt/trapline
etc=/etc/trapline
saved=$etc/install.env
psk_file=/etc/zabbix/trapline-proxy.psk
fleet_psk_file=$etc/secrets/fleet.psk
fleet_identity_default=trapline-fleet  # trapline provision --autoregistration's default
proxy_conf=/etc/zabbix/trapline_proxy.conf
units=/etc/systemd/system
# shellcheck source=deploy/install-lib.sh
source "$here/../install-lib.sh"

# ---------------------------------------------------------------- options
# 64-bit only: PyPI has no 32-bit ARM (armv7l) wheels of msgspec and lz4, and a Pi has no
# compiler to build them. README.md beside this script, "Pi models and OS variants".
machine_arch=$(dpkg --print-architecture)
[[ $machine_arch == arm64 || $machine_arch == amd64 ]] ||
    die "$machine_arch is not supported (64-bit only): install Raspberry Pi OS (64-bit), for a Pi 3, 4, 5 or Zero 2 W"
[ "$(id -u)" = 0 ] || die "run as root"
# Saved options are defaults only: the environment and the flags below override them.
# The PSK identity is the proxy's or the fleet's: it is kept only while the uplink stays.
saved_uplink=
saved_psk_identity=
if [ -f "$saved" ]; then
    while IFS='=' read -r key value; do
        case $key in
            TRAPLINE_PSK_IDENTITY) saved_psk_identity=$value ;;
            TRAPLINE_[A-Z_]*)
                [[ $key == TRAPLINE_UPLINK ]] && saved_uplink=$value
                [ -n "${!key+x}" ] || printf -v "$key" '%s' "$value"
                ;;
        esac
    done <"$saved"
fi
server=${TRAPLINE_SERVER:-}
vehicle=${TRAPLINE_VEHICLE:-}
uplink=${TRAPLINE_UPLINK:-proxy}
proxy_name=${TRAPLINE_PROXY_NAME:-}
psk_identity=${TRAPLINE_PSK_IDENTITY:-}
offline_hours=${TRAPLINE_OFFLINE_BUFFER_HOURS:-72}
elm327_mac=${TRAPLINE_ELM327_MAC:-usb}
gps_device=${TRAPLINE_GPS_DEVICE:-/dev/ttyACM0}
source=${TRAPLINE_SOURCE:-}
new_fleet_psk=${TRAPLINE_PSK_FILE:-}

while (($#)); do
    case $1 in
        --server) server=${2:?}; shift ;;
        --vehicle) vehicle=${2:?}; shift ;;
        --uplink) uplink=${2:?}; shift ;;
        --direct) uplink=direct ;;
        --proxy-name) proxy_name=${2:?}; shift ;;
        --psk-identity) psk_identity=${2:?}; shift ;;
        --psk-file) new_fleet_psk=${2:?}; shift ;;
        --offline-buffer-hours) offline_hours=${2:?}; shift ;;
        --elm327-mac) elm327_mac=${2:?}; shift ;;
        --gps-device) gps_device=${2:?}; shift ;;
        --source) source=${2:?}; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option $1" ;;
    esac
    shift
done

vehicle=${vehicle:-$(hostname -s)}
proxy_name=${proxy_name:-$vehicle-proxy}
[[ $uplink == "$saved_uplink" ]] && psk_identity=${psk_identity:-$saved_psk_identity}
if [[ $uplink == direct ]]; then
    psk_identity=${psk_identity:-$fleet_identity_default}
else
    psk_identity=${psk_identity:-$proxy_name}
fi
elm327_mac=${elm327_mac^^}
[ "$elm327_mac" = USB ] && elm327_mac=usb

# Every value ends up in a config file; a strict character set keeps quoting trivial.
[ -n "$server" ] || die "--server is required on the first run"
server_pattern='^[][A-Za-z0-9.:;-]+$'  # names, IPv4, [IPv6], ports, ";" between HA nodes
[[ $server =~ $server_pattern ]] || die "--server: unexpected characters in '$server'"
for pair in "vehicle:$vehicle" "proxy-name:$proxy_name" "psk-identity:$psk_identity"; do
    [[ ${pair#*:} =~ ^[A-Za-z0-9._\ -]{1,128}$ ]] || die "--${pair%%:*}: expected letters, digits, '.', '_', '-' or spaces"
done
[[ $uplink == proxy || $uplink == direct ]] || die "--uplink: expected proxy or direct"
if ! [[ $offline_hours =~ ^[0-9]+$ ]] || ((offline_hours < 1 || offline_hours > 720)); then
    die "--offline-buffer-hours: expected 1-720"
fi
[[ $elm327_mac == usb || $elm327_mac =~ ^([0-9A-F]{2}:){5}[0-9A-F]{2}$ ]] ||
    die "--elm327-mac: expected a Bluetooth address like 00:1D:A5:68:98:8B, or usb"
[[ $gps_device =~ ^/dev/[A-Za-z0-9/._-]+$ ]] || die "--gps-device: expected a /dev path"
source=$(trapline_source "$source" "$(cd "$here/../.." && pwd)")

# The release decides the Python, and only Python 3.13 (trixie) has TLS-PSK: say so before
# changing anything, rather than leave an agent that refuses its config.
release=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
case $release in
    bookworm)
        [[ $uplink == proxy ]] || die "--direct needs TLS-PSK from Python 3.13 (trixie); this is" \
            "bookworm (Python 3.11): use the proxy uplink (leave out --direct)," \
            "README.md beside this script"
        ;;
    trixie) ;;
    *) die "this is '${release:-unknown}'; expected Raspberry Pi OS or Debian bookworm (12) or trixie (13)" ;;
esac
if [[ $uplink == direct ]]; then
    if [ -n "$new_fleet_psk" ]; then
        [ -r "$new_fleet_psk" ] || die "--psk-file: cannot read $new_fleet_psk"
        # Whitespace, a final newline above all, is the copy-and-paste's, not the key's.
        fleet_psk=$(tr -d '[:space:]' <"$new_fleet_psk")
        # Zabbix's rule for a PSK, as the agent's; the message never quotes the key.
        [[ $fleet_psk =~ ^([0-9A-Fa-f]{2}){16,256}$ ]] ||
            die "--psk-file: $new_fleet_psk is not a PSK (expected 32 to 512 hex digits, an even number)"
    elif [ ! -s "$fleet_psk_file" ]; then
        die "--psk-file is required on the first direct run: the fleet's key, as" \
            "'trapline provision --autoregistration --new-psk' printed it"
    fi
elif [ -n "$new_fleet_psk" ]; then
    die "--psk-file is for --direct only: the proxy's key is generated here"
fi

# systemd may be installed but not running (a chroot, an image build): then only enable units.
if [ -d /run/systemd/system ]; then systemd_running=yes; else systemd_running=no; fi

# ---------------------------------------------------------------- helpers
# render TEMPLATE - the template with every @KEY@ replaced (values are validated above).
render() {
    sed -e "s|@VEHICLE@|$vehicle|g" -e "s|@SERVER@|$server|g" \
        -e "s|@PROXY_NAME@|$proxy_name|g" -e "s|@PSK_IDENTITY@|$psk_identity|g" \
        -e "s|@OFFLINE_BUFFER_HOURS@|$offline_hours|g" -e "s|@GPS_DEVICE@|$gps_device|g" \
        -e "s|@OBD_DEVICE@|$obd_device|g" -e "s|@TRAPLINE_SERVERS@|$trapline_servers|g" \
        -e "s|@UPLINK_COMMENT@|$uplink_comment|g" -e "s|@PSK_COMMENT@|$psk_comment|g" \
        -e "s|@FLEET_PSK_IDENTITY@|$fleet_identity|g" -e "s|@FLEET_PSK_FILE@|$fleet_psk_file|g" "$1"
}

# put_rendered TEMPLATE DEST MODE OWNER:GROUP
put_rendered() {
    local tmp
    tmp=$(mktemp)
    render "$1" >"$tmp"
    put_file "$tmp" "$2" "$3" "$4"
    rm -f "$tmp"
}

# ---------------------------------------------------------------- packages
if [[ $elm327_mac == usb ]]; then
    obd_device=/dev/elm327
else
    obd_device=/dev/rfcomm0
fi
if [[ $uplink == proxy ]]; then
    trapline_servers=127.0.0.1:10051
    uplink_comment="the Zabbix proxy on this machine (install.sh --uplink proxy)"
    psk_comment="# "
    fleet_identity=$fleet_identity_default
else
    trapline_servers=$server
    uplink_comment="straight to the Zabbix server, TLS-PSK with the fleet's key (install.sh --direct)"
    psk_comment=
    fleet_identity=$psk_identity
fi

packages=(python3 python3-venv openssl gpsd udev systemd)
[[ $uplink == proxy ]] && packages+=(zabbix-proxy-sqlite3)
[[ $elm327_mac != usb ]] && packages+=(bluez)
ensure_packages "${packages[@]}"

# ---------------------------------------------------------------- user, directories
ensure_system_user trapline "trapline vehicle agent"
# The ELM327 device nodes belong to group dialout (udev rule, rfcomm).
if ! id -nG trapline | tr ' ' '\n' | grep -qx dialout; then
    usermod -a -G dialout trapline
    changed "trapline joins group dialout"
fi
ensure_dir "$etc" 0750 root:trapline
# Secret files named by *_file keys live here; the agent refuses group- or world-readable ones.
ensure_dir "$etc/secrets" 0700 trapline:trapline
for secret in "$etc"/secrets/*; do
    [ -f "$secret" ] || continue
    if [ "$(stat -c '%a %U:%G' "$secret")" != "600 trapline:trapline" ]; then
        chown trapline:trapline "$secret"
        chmod 0600 "$secret"
        changed "$secret (mode 0600, owner trapline)"
    fi
done
ensure_dir /var/lib/trapline 0750 trapline:trapline

if [[ $uplink == direct && -n $new_fleet_psk ]]; then
    key_tmp=$(mktemp)  # 0600 from the start: the key is never readable by others, not even briefly
    printf '%s\n' "$fleet_psk" >"$key_tmp"
    put_file "$key_tmp" "$fleet_psk_file" 0600 trapline:trapline
    rm -f "$key_tmp"
fi

# ---------------------------------------------------------------- trapline in a virtualenv
# mqtt too: a van may send through a broker ([mqtt] exporter, README "Scaling past one machine").
install_trapline "$prefix" "$source" vehicle,mqtt
# The release check above stands for the Python; this asks the installed one itself (its ssl
# may lack PSK, e.g. an OpenSSL built without it).
has_psk='from trapline.exporters.zabbix.client import PSK_SUPPORTED; raise SystemExit(not PSK_SUPPORTED)'
if [[ $uplink == direct ]] && ! "$prefix/bin/python" -c "$has_psk"; then
    die "the direct uplink needs TLS-PSK, and $prefix/bin/python has none: use the proxy uplink"
fi

# ---------------------------------------------------------------- configuration
if [ ! -e "$etc/trapline.toml" ]; then
    put_rendered "$here/trapline.toml.in" "$etc/trapline.toml" 0640 root:trapline
else
    # The config is the owner's after the first run: point out a mismatch, never rewrite it.
    expected=("servers = [\"$trapline_servers\"]")
    [[ $uplink == direct ]] && expected+=("tls_psk_identity = \"$psk_identity\""
        "tls_psk_file = \"$fleet_psk_file\"" "autoregistration_host = \"$vehicle\"")
    for line in "${expected[@]}"; do
        grep -qxF "$line" "$etc/trapline.toml" ||
            say "WARNING: $etc/trapline.toml lacks, for the $uplink uplink, in [zabbix]: $line"
    done
    # The local proxy takes plain trapper traffic: the fleet's PSK is for the server only.
    if [[ $uplink == proxy ]] && grep -q '^tls_psk_' "$etc/trapline.toml"; then
        say "WARNING: $etc/trapline.toml has tls_psk_* keys, which the proxy uplink does not use:" \
            "comment them out in [zabbix]"
    fi
fi

saved_tmp=$(mktemp)
cat >"$saved_tmp" <<EOF
TRAPLINE_SERVER=$server
TRAPLINE_VEHICLE=$vehicle
TRAPLINE_UPLINK=$uplink
TRAPLINE_PROXY_NAME=$proxy_name
TRAPLINE_PSK_IDENTITY=$psk_identity
TRAPLINE_OFFLINE_BUFFER_HOURS=$offline_hours
TRAPLINE_ELM327_MAC=$elm327_mac
TRAPLINE_GPS_DEVICE=$gps_device
EOF
put_file "$saved_tmp" "$saved" 0600 root:root
rm -f "$saved_tmp"

# ---------------------------------------------------------------- devices
put_file "$here/70-trapline-elm327.rules" /etc/udev/rules.d/70-trapline-elm327.rules 0644 root:root
put_file "$here/trapline-rfcomm.service" "$units/trapline-rfcomm.service" 0644 root:root
if [[ $elm327_mac != usb ]]; then
    bt_tmp=$(mktemp)
    printf 'ELM327_MAC=%s\nELM327_CHANNEL=1\n' "$elm327_mac" >"$bt_tmp"
    put_file "$bt_tmp" "$etc/elm327-bluetooth.conf" 0644 root:root
    rm -f "$bt_tmp"
else
    remove_file "$etc/elm327-bluetooth.conf"
fi
put_rendered "$here/gpsd.default.in" /etc/default/gpsd 0644 root:root
unit_enable gpsd.socket
# -n keeps the receiver busy from boot, so the service starts without waiting for a client.
unit_enable gpsd.service

# ---------------------------------------------------------------- uplink
dropin=$units/trapline.service.d/uplink.conf
if [[ $uplink == proxy ]]; then
    if [ ! -s "$psk_file" ]; then
        # 256 bits, hex as Zabbix wants it; written straight to the file, never shown.
        (umask 077 && openssl rand -hex 32 >"$psk_file")
        changed "$psk_file (new PSK)"
    fi
    if [ "$(stat -c '%a %U:%G' "$psk_file")" != "640 root:zabbix" ]; then
        chown root:zabbix "$psk_file"
        chmod 0640 "$psk_file"
        changed "$psk_file (mode 0640, root:zabbix)"
    fi
    put_rendered "$here/zabbix_proxy.conf.in" "$proxy_conf" 0640 root:zabbix
    put_file "$here/zabbix-proxy.service.d/trapline.conf" \
        "$units/zabbix-proxy.service.d/trapline.conf" 0644 root:root
    # Only the proxy on loopback is reachable: the agent has no business anywhere else.
    dropin_tmp=$(mktemp)
    printf '# Written by install.sh (--uplink proxy).\n[Service]\nIPAddressDeny=any\nIPAddressAllow=localhost\n' \
        >"$dropin_tmp"
    put_file "$dropin_tmp" "$dropin" 0644 root:root
    rm -f "$dropin_tmp"
else
    remove_file "$dropin"
    remove_file "$units/zabbix-proxy.service.d/trapline.conf"
    if [ -f /lib/systemd/system/zabbix-proxy.service ]; then unit_disable zabbix-proxy.service; fi
fi

# ---------------------------------------------------------------- the agent's unit
put_file "$here/trapline.service" "$units/trapline.service" 0644 root:root
put_file "$here/README.md" /usr/local/share/doc/trapline/raspberrypi.md 0644 root:root

if [[ $systemd_running == yes ]]; then
    systemctl daemon-reload
    udevadm control --reload
    udevadm trigger --subsystem-match=tty --action=change
fi
[[ $uplink == proxy ]] && unit_enable zabbix-proxy.service
if [[ $elm327_mac != usb ]]; then
    unit_enable bluetooth.service
    unit_enable trapline-rfcomm.service
else
    unit_disable trapline-rfcomm.service
fi
unit_enable trapline.service

if [[ $systemd_running == yes ]] && ((changes > 0)); then
    # Restart what this run changed the configuration of; harmless when nothing else changed.
    systemctl restart gpsd.socket gpsd.service
    [[ $uplink == proxy ]] && systemctl restart zabbix-proxy.service
    [[ $elm327_mac != usb ]] && systemctl restart trapline-rfcomm.service
    systemctl restart trapline.service
elif [[ $systemd_running == no ]]; then
    say "systemd is not running here: units enabled, not started"
fi

say "done: $changes change(s)"
if [[ $uplink == proxy ]]; then
    say "in Zabbix: proxy '$proxy_name' (active), PSK identity '$psk_identity', key in $psk_file"
    say "           (read it there as root; it is not printed); host '$vehicle' monitored by that proxy"
    say "to add this van, copy $psk_file to the admin machine (mode 0600) and run there:"
    say "  trapline provision $(printf '%q' "$vehicle") --proxy-name $(printf '%q' "$proxy_name") --create-proxy" \
        "--psk-identity $(printf '%q' "$psk_identity") --psk-file ./$(printf '%q' "$vehicle").psk" \
        "--url https://ZABBIX/ --token-file API_TOKEN_FILE"
else
    say "in Zabbix: host '$vehicle' registers itself (autoregistration) with PSK identity" \
        "'$psk_identity', key in $fleet_psk_file (not printed), sending straight to $server"
    say "nothing to do per van: 'trapline provision --autoregistration', once per fleet, set up" \
        "what registers it (README.md beside this script, 'Add a van')"
fi
exit 0
}
