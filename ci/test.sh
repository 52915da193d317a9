#!/usr/bin/env bash
# The whole test suite on a fresh machine: the README's test command, and what
# .ci/run calls. The static checks (ci/lint.sh) run beside the set-up of what the tests
# need (ci/test-env.sh), both mostly downloads, and a finding fails the run before any
# test starts; if the Docker engine cannot start, this fails: integration tests never skip.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
mkdir -p artifacts
bash ci/lint.sh > artifacts/lint.log 2>&1 &
lint_pid=$!
bash ci/test-env.sh
lint_rc=0
wait "$lint_pid" || lint_rc=$?
cat artifacts/lint.log >&2
if [ "$lint_rc" != 0 ]; then
    echo "[test] FATAL: the static checks failed (above; artifacts/lint.log): no test ran" >&2
    exit "$lint_rc"
fi
echo "[test] set-up and static checks: $(( $(date +%s) - start )) s" >&2
disk_report() {
    local root
    root=$(docker info --format '{{.DockerRootDir}}' 2>/dev/null || echo /var/lib/docker)
    echo "[test] disk $1: $(df -h --output=avail "$root" | tail -1 | tr -d ' ') free for the engine ($root), $(df -h --output=avail /tmp | tail -1 | tr -d ' ') for /tmp" >&2
}
# The suite writes about 15 GB at its peak (images, registries, clones); a run that ends
# in "out of disk space" is then easy to tell from a bug.
disk_report "before the tests"
run_pytest() {
    python3 -m pytest -p no:cacheprovider --durations=25 "$@"
}
set +e
if [ $# -gt 0 ]; then
    run_pytest --junitxml=artifacts/junit.xml "$@"
    rc=$?
else
    # The whole suite as two sessions at once on one engine (tests/conftest.py,
    # STANDALONE_MODULES): one session leaves a third of two cores idle. The standalone
    # stream's output is printed when both are done; it holds a shared lock on the engine
    # lock file while it runs, which a test that restarts the engine takes exclusively
    # first. `--stream=X`, one word: pytest reads a separate `hub` as the repository's hub/
    # folder before it knows the option, and then does not load tests/conftest.py, which
    # defines it.
    engine_lock=$(mktemp /tmp/hubstack-test-engine.XXXXXX)
    export HUBSTACK_TEST_ENGINE_LOCK=$engine_lock
    exec 9<"$engine_lock"
    flock -s 9
    run_pytest --stream=standalone --junitxml=artifacts/junit-standalone.xml \
        > artifacts/standalone.log 2>&1 &
    standalone_pid=$!
    exec 9<&-
    run_pytest --stream=hub --junitxml=artifacts/junit.xml
    rc=$?
    wait "$standalone_pid"
    standalone_rc=$?
    echo "[test] ---- the standalone stream (artifacts/standalone.log) ----" >&2
    cat artifacts/standalone.log
    echo "[test] pytest exit codes: hub stream $rc, standalone stream $standalone_rc" >&2
    rm -f "$engine_lock"
    if [ "$rc" = 0 ] || [ "$rc" = 5 ]; then
        rc=$standalone_rc
    fi
fi
set -e
disk_report "after the tests"
echo "[test] whole run: $(( $(date +%s) - start )) s, pytest exit code $rc" >&2
if [ "$rc" = 5 ]; then
    echo "[test] FATAL: pytest collected no tests" >&2
    exit 1
fi
exit "$rc"
