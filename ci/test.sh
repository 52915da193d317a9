#!/usr/bin/env bash
# The whole test suite on a fresh machine: the README's test command, and what
# .ci/run calls. The static checks first (ci/lint.sh: a finding fails the run before
# any image is built), then what the tests need (ci/test-env.sh); if the Docker engine
# cannot start, this fails: integration tests never skip.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash ci/lint.sh
bash ci/test-env.sh
mkdir -p artifacts
disk_report() {
    local root
    root=$(docker info --format '{{.DockerRootDir}}' 2>/dev/null || echo /var/lib/docker)
    echo "[test] disk $1: $(df -h --output=avail "$root" | tail -1 | tr -d ' ') free for the engine ($root), $(df -h --output=avail /tmp | tail -1 | tr -d ' ') for /tmp" >&2
}
# The suite writes about 15 GB at its peak (images, registries, clones); a run that ends
# in "out of disk space" is then easy to tell from a bug.
disk_report "before the tests"
set +e
python3 -m pytest -p no:cacheprovider --durations=25 --junitxml=artifacts/junit.xml "$@"
rc=$?
set -e
disk_report "after the tests"
echo "[test] whole run: $(( $(date +%s) - start )) s, pytest exit code $rc" >&2
if [ "$rc" = 5 ]; then
    echo "[test] FATAL: pytest collected no tests" >&2
    exit 1
fi
exit "$rc"
