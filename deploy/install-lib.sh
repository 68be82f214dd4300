# Shared by deploy/raspberrypi/install.sh and deploy/centre/install.sh (sourced, not run).
# Every function is idempotent and reports what it changed through `changed`, so a script
# can end with "done: N change(s)" and a second run says 0.
# shellcheck shell=bash

changes=0

say() { echo "install.sh: $*"; }
die() { echo "install.sh: error: $*" >&2; exit 1; }
changed() { changes=$((changes + 1)); say "changed: $*"; }

# put_file SRC DEST MODE OWNER:GROUP - install SRC as DEST unless identical in content and mode.
put_file() {
    local src=$1 dest=$2 mode=$3 owner=$4
    if [ -f "$dest" ] && cmp -s "$src" "$dest" &&
        [ "$(stat -c '%a %U:%G' "$dest")" = "${mode#0} $owner" ]; then
        return
    fi
    install -D -m "$mode" -o "${owner%:*}" -g "${owner#*:}" "$src" "$dest"
    changed "$dest"
}

ensure_dir() { # ensure_dir PATH MODE OWNER:GROUP
    if [ -d "$1" ] && [ "$(stat -c '%a %U:%G' "$1")" = "${2#0} $3" ]; then return; fi
    install -d -m "$2" -o "${3%:*}" -g "${3#*:}" "$1"
    changed "$1/"
}

remove_file() {
    if [ -e "$1" ]; then rm -f "$1"; changed "removed $1"; fi
}

unit_enable() {
    if ! systemctl is-enabled --quiet "$1" 2>/dev/null; then
        systemctl enable --quiet "$1"
        changed "enabled $1"
    fi
}

unit_disable() {
    if systemctl is-enabled --quiet "$1" 2>/dev/null; then
        systemctl disable --quiet "$1"
        changed "disabled $1"
    fi
}

# ensure_packages NAME... - apt-get install those not installed yet. Only then: a machine
# re-running the script offline must not need the mirror.
ensure_packages() {
    local p missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
    changed "packages ${missing[*]}"
}

# ensure_system_user NAME COMMENT - a system user and group, no login, home the state directory.
ensure_system_user() {
    getent passwd "$1" >/dev/null && return
    useradd --system --user-group --home-dir "/var/lib/$1" --no-create-home \
        --shell /usr/sbin/nologin --comment "$2" "$1"
    changed "user $1"
}

# install_trapline PREFIX SOURCE EXTRAS - trapline[EXTRAS] from a checkout or a wheel in the
# virtualenv PREFIX; reinstalled only when the source or the extras change.
install_trapline() {
    local prefix=$1 source=$2 extras=$3 install_from fingerprint stamp
    if ! "$prefix/bin/python" -c "" 2>/dev/null; then
        # Missing, or broken by a Python upgrade: start over.
        rm -rf "$prefix"
        python3 -m venv "$prefix"
        changed "virtualenv $prefix"
    fi
    # Global, for the EXIT trap: a failed pip must not leave the copy behind either.
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    if [ -d "$source" ]; then
        # Build from a clean copy: pip would otherwise leave build/ and *.egg-info in the checkout.
        tar -C "$source" -c --exclude=.git --exclude=.venv --exclude=build --exclude='*.egg-info' \
            --exclude=__pycache__ --exclude=.mypy_cache --exclude=.pytest_cache --exclude=.ruff_cache \
            --exclude=.hypothesis . | tar -C "$work" -x
        install_from=$work
        fingerprint=$(cd "$work" && {
            find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
            find . -type l -printf '%p -> %l\n' | LC_ALL=C sort
            echo "extras: $extras"
        } | sha256sum | cut -d' ' -f1)
    else
        install_from=$source
        fingerprint=$( { sha256sum "$source"; echo "extras: $extras"; } | sha256sum | cut -d' ' -f1)
    fi
    stamp=$prefix/.trapline-source.sha256
    if [ "$(cat "$stamp" 2>/dev/null)" != "$fingerprint" ] || [ ! -x "$prefix/bin/trapline" ]; then
        say "installing trapline[$extras] from $source into $prefix"
        # Only the role's libraries (pyproject.toml extras): no boto3 on a Pi, no python-OBD on a server.
        "$prefix/bin/pip" install -q --disable-pip-version-check "$install_from[$extras]"
        echo "$fingerprint" >"$stamp"
        changed "trapline[$extras] in $prefix"
    fi
    "$prefix/bin/trapline" --version >/dev/null || die "$prefix/bin/trapline does not run"
}

# trapline_source PATH_OR_EMPTY DEFAULT - the checkout or wheel to install, as an absolute path.
trapline_source() {
    local source=${1:-$2}
    [ -f "$source/pyproject.toml" ] || [[ -f $source && $source == *.whl ]] ||
        die "--source: $source is neither a trapline checkout nor a wheel"
    realpath "$source"
}
