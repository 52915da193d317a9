#!/usr/bin/env bash
# The project's static checks, all of them, in one command (ci/test.sh runs it beside
# its set-up, before any test):
#   ruff (lint and format check), mypy on hubstack/, hadolint on every Dockerfile,
#   ShellCheck on every shell script, yamllint on compose, config and workflow files.
# The tools are pinned in ci/lint-requirements.txt and installed into .venv-lint on
# first use (again only when that file changes). `ci/lint.sh --fix` applies ruff's fixes
# and formatting first. .pre-commit-config.yaml runs this same script.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv-lint
requirements=ci/lint-requirements.txt
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[lint] installing the pinned tools into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$requirements" \
        || { echo "[lint] FATAL: pip install -r $requirements failed" >&2; exit 1; }
    echo "$want" > "$stamp"
fi
PATH="$PWD/$venv/bin:$PATH"

if [ "${1:-}" = "--fix" ]; then
    ruff check --fix .
    ruff format .
fi

# Files by kind, from git so that ignored and generated files stay out.
mapfile -t dockerfiles < <(git ls-files --cached --others --exclude-standard '*Dockerfile*')
mapfile -t shell_scripts < <(git ls-files --cached --others --exclude-standard \
    | while read -r f; do [ -f "$f" ] && head -n1 "$f" | grep -qE '^#!.*\b(ba|da)?sh\b' && echo "$f"; done)
mapfile -t yaml_files < <(git ls-files --cached --others --exclude-standard '*.yml' '*.yaml')

failed=()
check() {
    local name="$1"; shift
    local started=$SECONDS
    if "$@"; then
        echo "[lint] $name: ok ($(( SECONDS - started )) s)" >&2
    else
        echo "[lint] $name: FAILED" >&2
        failed+=("$name")
    fi
}
check "ruff check" ruff check --no-fix .
check "ruff format" ruff format --check .
check "mypy" mypy
check "hadolint" hadolint "${dockerfiles[@]}"
check "shellcheck" shellcheck "${shell_scripts[@]}"
check "yamllint" yamllint --strict "${yaml_files[@]}"

if [ "${#failed[@]}" -gt 0 ]; then
    echo "[lint] FAILED: ${failed[*]} (ci/lint.sh --fix applies ruff's fixes and formatting)" >&2
    exit 1
fi
echo "[lint] all checks passed" >&2
