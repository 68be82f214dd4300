#!/usr/bin/env bash
# Install one centre role of trapline on Debian 12 or 13, as root:
#
#   deploy/centre/install.sh ROLE [--server ADDR] [--source PATH]
#
# ROLE is mist (Juniper Mist stream), aws (EMR/Glue poller) or bridge (MQTT bridge). Each role
# gets its own virtualenv with only its libraries (/opt/trapline-ROLE), config
# (/etc/trapline/ROLE.toml), spool (/var/lib/trapline/ROLE/) and unit instance
# (trapline@ROLE.service); several roles can share one machine. Idempotent: a second run
# changes nothing and says so. See README.md beside this script.
set -euo pipefail
# The braces make bash read the whole script before running it: a `git pull` during a run
# cannot change the rest of the run.
{

usage() {
    cat <<'USAGE'
usage: install.sh ROLE [options]
  ROLE                    mist | aws | bridge
  --server ADDR           Zabbix server or proxy, host[:port]; ";" separates HA nodes
                          (needed on the first run of a role, which writes its config)
  --source PATH           a trapline checkout or wheel (default: the checkout holding this script)
  -h, --help
USAGE
}

here=$(cd "$(dirname "$0")" && pwd)
etc=/etc/trapline
units=/etc/systemd/system
# shellcheck source=deploy/install-lib.sh
source "$here/../install-lib.sh"

[ "$(id -u)" = 0 ] || die "run as root"
role=
server=
source=
while (($#)); do
    case $1 in
        --server) server=${2:?}; shift ;;
        --source) source=${2:?}; shift ;;
        -h | --help) usage; exit 0 ;;
        -*) usage >&2; die "unknown option $1" ;;
        *) [ -z "$role" ] || die "one role per run"; role=$1 ;;
    esac
    shift
done
# The role names the unit instance, the config and the pyproject.toml extra it installs.
case $role in
    mist) extra=mist ;;
    aws) extra=aws ;;
    bridge) extra=mqtt ;;
    "") usage >&2; die "which role? mist, aws or bridge" ;;
    *) die "unknown role '$role' (expected mist, aws or bridge)" ;;
esac
config=$etc/$role.toml
if [ -n "$server" ]; then
    server_pattern='^[][A-Za-z0-9.:;-]+$'  # names, IPv4, [IPv6], ports, ";" between HA nodes
    [[ $server =~ $server_pattern ]] || die "--server: unexpected characters in '$server'"
elif [ ! -e "$config" ]; then
    die "--server is required on the first run of role $role (it goes into $config)"
fi
source=$(trapline_source "$source" "$(cd "$here/../.." && pwd)")
if [ -d /run/systemd/system ]; then systemd_running=yes; else systemd_running=no; fi

# ---------------------------------------------------------------- packages, user, directories
# ca-certificates: the Mist cloud, AWS and a public broker are reached over TLS.
ensure_packages python3 python3-venv ca-certificates systemd
ensure_system_user trapline "trapline centre agent"
ensure_dir "$etc" 0750 root:trapline
# Secret files named by *_file keys. The agent refuses group- or world-readable ones; so does
# this script, rather than quietly tightening a file whose content may already have leaked.
ensure_dir "$etc/secrets" 0700 trapline:trapline
for secret in "$etc"/secrets/*; do
    [ -f "$secret" ] || continue
    [ "$(stat -c '%a' "$secret")" = 600 ] ||
        die "$secret is mode $(stat -c '%a' "$secret"), not 0600: if others could read it, replace the secret; then chmod 0600 it and run again"
    if [ "$(stat -c '%U:%G' "$secret")" != trapline:trapline ]; then
        chown trapline:trapline "$secret"
        changed "$secret (owner trapline)"
    fi
done
# The unit's StateDirectory= makes the role's directory too; made here as well, so that
# `trapline check` can open the spool before the first start.
ensure_dir /var/lib/trapline 0750 trapline:trapline
ensure_dir "/var/lib/trapline/$role" 0750 trapline:trapline

# ---------------------------------------------------------------- trapline, the role's extra only
install_trapline "/opt/trapline-$role" "$source" "$extra"

# ---------------------------------------------------------------- configuration
if [ ! -e "$config" ]; then
    host=$(hostname -s)
    config_tmp=$(mktemp)
    sed -e "s|@SERVER@|$server|g" -e "s|@AGENT_HOST@|trapline-$role-$host|g" -e "s|@HOSTNAME@|$host|g" \
        "$here/$role.toml.in" >"$config_tmp"
    put_file "$config_tmp" "$config" 0640 root:trapline
    rm -f "$config_tmp"
elif [ -n "$server" ] && ! grep -qF "servers = [\"$server\"]" "$config"; then
    # The config is the owner's after the first run: point out the mismatch, never rewrite it.
    say "WARNING: $config does not send to $server; set [zabbix] servers there if that is what you want"
fi

# ---------------------------------------------------------------- the unit
put_file "$here/trapline@.service" "$units/trapline@.service" 0644 root:root
put_file "$here/README.md" /usr/local/share/doc/trapline/centre.md 0644 root:root
if [[ $systemd_running == yes ]]; then systemctl daemon-reload; fi
unit_enable "trapline@$role.service"
if [[ $systemd_running == no ]]; then
    say "systemd is not running here: trapline@$role enabled, not started"
elif systemctl is-active --quiet "trapline@$role.service"; then
    # A running agent picks up a new unit or version; unchanged, it is left alone.
    if ((changes > 0)); then systemctl restart "trapline@$role.service"; fi
else
    # A first install's config still has placeholders (org ids, broker): the owner starts it.
    say "next: edit $config, then: sudo -u trapline /opt/trapline-$role/bin/trapline check -c $config"
    say "      and: systemctl start trapline@$role"
fi

say "done: $changes change(s)"
exit 0
}
