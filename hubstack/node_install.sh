#!/bin/sh
# Installs a hubstack node bundle (written by `hubstack nodes bundle`) on this machine.
# Run as root, from anywhere: sh /path/to/bundle/install.sh [--no-packages] [--no-images]
#   1. checks every file against the bundle's SHA256SUMS;
#   2. places the platform CA where the engine looks for the registry's certificate
#      (/etc/docker/certs.d/ADDRESS/ca.crt for the blessed images' and the per-user
#      images' registry addresses), and writes /etc/docker/daemon.json
#      with "no-new-privileges": true when there is none (Swarm services cannot ask for it);
#   3. installs the engine's Debian packages with dpkg (those not installed already at
#      that version or newer); --no-packages skips it (an engine is installed already);
#   4. loads the platform's images into the engine (docker load); --no-images skips it;
#   5. prints how to join the swarm: the join token is not in the bundle, a manager's
#      `hubstack nodes join-command` prints it.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
packages=1
images=1
for arg in "$@"; do
    case "$arg" in
        --no-packages) packages=0 ;;
        --no-images) images=0 ;;
        -h | --help)
            sed -n '2,13p' "$0"
            exit 0
            ;;
        *)
            echo "install.sh: unknown option $arg (options: --no-packages, --no-images)" >&2
            exit 2
            ;;
    esac
done

say() { printf '[install] %s\n' "$*"; }
die() {
    printf '[install] FAILED: %s\n' "$*" >&2
    exit 1
}

PULL_ADDRESS=
CA_ADDRESSES=
ARCH=
IMAGES=
MANAGERS=
# shellcheck source=/dev/null
. "$here/bundle.env"

say "checking the bundle's files against SHA256SUMS"
(cd "$here" && sha256sum --quiet --strict -c SHA256SUMS) \
    || die "a file of the bundle is missing or differs from SHA256SUMS: copy the bundle again"
[ "$(id -u)" = 0 ] || die "run as root: it writes /etc/docker and installs packages"

for address in ${CA_ADDRESSES:-$PULL_ADDRESS}; do
    ca_dir="/etc/docker/certs.d/$address"
    mkdir -p "$ca_dir"
    cp "$here/certs.d/$address/ca.crt" "$ca_dir/ca.crt"
    chmod 0644 "$ca_dir/ca.crt"
    say "platform CA: $ca_dir/ca.crt (the engine reads it at each pull from $address)"
done

# Before the packages: a freshly installed engine starts with it.
if [ ! -e /etc/docker/daemon.json ]; then
    printf '{"no-new-privileges": true}\n' >/etc/docker/daemon.json
    say "wrote /etc/docker/daemon.json: {\"no-new-privileges\": true}"
elif ! grep -q '"no-new-privileges": *true' /etc/docker/daemon.json; then
    say "WARNING: /etc/docker/daemon.json lacks \"no-new-privileges\": true (servers would run" \
        "without it: a Swarm service cannot ask for it); add it and restart the engine"
fi

if [ "$packages" = 1 ]; then
    arch=$(dpkg --print-architecture)
    [ "$arch" = "$ARCH" ] || die "this machine is $arch, the bundle's packages are $ARCH"
    set --
    for deb in "$here"/packages/*.deb; do
        [ -e "$deb" ] || die "the bundle has no packages (written with --no-packages)"
        name=$(dpkg-deb --field "$deb" Package)
        version=$(dpkg-deb --field "$deb" Version)
        # shellcheck disable=SC2016 # dpkg-query's own ${...} fields, not the shell's
        have=$(dpkg-query --show --showformat='${db:Status-Status} ${Version}' "$name" 2>/dev/null || true)
        if [ "${have%% *}" = installed ] && dpkg --compare-versions "${have#* }" ge "$version"; then
            continue
        fi
        set -- "$@" "$deb"
    done
    if [ "$#" -gt 0 ]; then
        say "installing $# packages with dpkg"
        dpkg --install "$@"
    else
        say "packages: every one is installed already, at that version or newer"
    fi
fi

if [ "$images" = 1 ]; then
    docker info >/dev/null 2>&1 \
        || die "the Docker engine does not answer (docker info): start it (systemctl start docker, or dockerd &), then run $0 --no-packages"
    say "loading the images into the engine: $IMAGES"
    docker load --input "$here/images.tar"
fi

say "done. To join the swarm: on a manager run 'hubstack nodes join-command > join.sh'"
say "(--manager for a manager), bring join.sh here and run 'sh join.sh' as root."
if [ -n "$MANAGERS" ]; then
    say "the swarm's managers when the bundle was written: $MANAGERS"
fi
say "Then on a manager: hubstack nodes label NODE hubstack.gpu=true (or hubstack.spark=true);"
say "a GPU node also lists its GPUs in daemon.json (node-generic-resources): docs/multi-node.md"
