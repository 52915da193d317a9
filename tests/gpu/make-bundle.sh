#!/bin/sh
# Make the offline bundle for the real GPU check (tests/gpu/check.py).
#
# Run on a Debian bookworm machine that reaches Debian's mirror and PyPI, with
# a Docker engine (to build and save the probe image). Writes
#   .gpu-bundle/hubstack-gpu-check.tar.xz
# holding everything the GPU host lacks (it has no Docker, no network, no
# registry; see docs/gpu.md):
#   engine/bin   Debian's dockerd, containerd, containerd-shim-runc-v2, runc,
#                docker-init (tini-static) and docker client
#   engine/lib   the non-glibc shared libraries ldd lists for them
#   image.tar    a small bookworm image with python3 (for the ctypes CUDA probe)
#   wheels/      docker, pydantic, PyYAML... for the GPU host's Python
#                (PYTHON_VERSIONS, default "3.10 3.11 3.12 3.13")
#   src/         the hubstack package and tests/gpu (the code under test)
#
# Usage: tests/gpu/make-bundle.sh [OUTDIR]      (default: .gpu-bundle)
set -eu

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${1:-$ROOT/.gpu-bundle}
PYTHON_VERSIONS=${PYTHON_VERSIONS:-"3.10 3.11 3.12 3.13"}
IMAGE=${GPU_CHECK_IMAGE:-hubstack-gpu-check:bookworm}
BASE_IMAGE=${BASE_IMAGE:-debian:bookworm-slim}
# Python packages the check imports (hubstack.config + hubstack.hub.gpu + docker-py).
PY_DEPS="docker>=7.1,<8 requests urllib3 idna certifi charset-normalizer pydantic>=2.7,<3 pyyaml>=6,<7"

say() { printf '%s\n' "make-bundle: $*" >&2; }
die() { say "error: $*"; exit 1; }

command -v apt-get >/dev/null || die "needs apt-get (a Debian bookworm machine)"
command -v docker >/dev/null || die "needs docker (to build and save the probe image)"
command -v xz >/dev/null || die "needs xz (apt-get install xz-utils)"

STAGE=$OUT/stage
rm -rf "$STAGE"
mkdir -p "$STAGE/debs" "$STAGE/root" "$STAGE/bundle/engine/bin" "$STAGE/bundle/engine/lib" "$STAGE/bundle/wheels" "$STAGE/bundle/src"
B=$STAGE/bundle

say "downloading Debian's engine packages"
(cd "$STAGE/debs" && apt-get download docker.io containerd runc tini >/dev/null) \
  || die "apt-get download failed (run apt-get update first?)"
for deb in "$STAGE"/debs/*.deb; do dpkg-deb -x "$deb" "$STAGE/root"; done
R=$STAGE/root
cp "$R/usr/sbin/dockerd" "$R/usr/bin/containerd" "$R/usr/bin/containerd-shim-runc-v2" "$R/usr/sbin/runc" "$R/usr/bin/docker" "$B/engine/bin/"
cp "$R/usr/bin/tini-static" "$B/engine/bin/docker-init"   # dockerd's --init looks for docker-init

say "collecting shared libraries (glibc comes from the GPU host, which is newer)"
missing=$(ldd "$B"/engine/bin/* 2>/dev/null | awk '/not found/ {print $1}' | sort -u)
[ -z "$missing" ] || die "ldd cannot resolve: $missing (apt-get install docker.io here so its libraries are present)"
ldd "$B"/engine/bin/* 2>/dev/null | awk '/=> \// {print $1, $3}' | sort -u | while read -r name path; do
  case $name in
    libc.so.*|libm.so.*|libpthread.so.*|libdl.so.*|librt.so.*|libresolv.so.*|ld-linux*) continue ;;
  esac
  cp -L "$path" "$B/engine/lib/$name"
done

say "building and saving the probe image $IMAGE (bookworm minbase + python3 with ctypes, one flattened layer)"
printf 'FROM %s\nRUN apt-get update && apt-get install -y --no-install-recommends python3 \\\n && apt-get clean && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* /usr/share/locale/* /usr/share/info/*\n' "$BASE_IMAGE" \
  | docker build -q -t "$IMAGE-layers" - >/dev/null
cid=$(docker create --name "gpu-bundle-export-$$" "$IMAGE-layers" true)
docker export "$cid" | docker import - "$IMAGE" >/dev/null   # deleted files leave the saved image too
docker rm "$cid" >/dev/null
docker rmi "$IMAGE-layers" >/dev/null
docker save "$IMAGE" -o "$B/image.tar"
echo "$IMAGE" > "$B/image.name"

say "downloading wheels for Python $PYTHON_VERSIONS"
for v in $PYTHON_VERSIONS; do
  # shellcheck disable=SC2086
  python3 -m pip download --quiet --only-binary=:all: --python-version "$v" \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    -d "$B/wheels" $PY_DEPS >"$STAGE/pip.log" 2>&1 || { cat "$STAGE/pip.log" >&2; die "pip download for Python $v failed"; }
done

cp -r "$ROOT/hubstack" "$B/src/hubstack"
mkdir -p "$B/src/tests"
cp -r "$ROOT/tests/gpu" "$B/src/tests/gpu"
find "$B/src" -name __pycache__ -prune -exec rm -rf {} +
git -C "$ROOT" rev-parse HEAD > "$B/src/REVISION" 2>/dev/null || echo unknown > "$B/src/REVISION"

say "packing"
tar -C "$STAGE" -cf - bundle | xz -T0 -6 > "$OUT/hubstack-gpu-check.tar.xz"
rm -rf "$STAGE"
size=$(du -h "$OUT/hubstack-gpu-check.tar.xz" | cut -f1)
say "wrote $OUT/hubstack-gpu-check.tar.xz ($size)"
cat >&2 <<EOF
On the GPU host (as root, no network needed):
  mkdir -p /tmp/hubstack-gpu && tar -xJf hubstack-gpu-check.tar.xz -C /tmp/hubstack-gpu
  python3 /tmp/hubstack-gpu/bundle/src/tests/gpu/check.py --bundle /tmp/hubstack-gpu/bundle
EOF
