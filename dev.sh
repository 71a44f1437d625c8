#!/usr/bin/env bash
# One entry point for a fresh machine: finds a Python >= 3.12, creates or updates
# the virtualenv .venv with the project and all its extras, then runs a task.
#
#   ./dev.sh demo      the main job: PMM and LMC on a bundled non-log-concave posterior
#   ./dev.sh test      lint, format check and the test suite (what CI runs)
#   ./dev.sh bench     the benchmark scripts (see benchmarks/README.md)
#   ./dev.sh python …  run the venv's Python
set -euo pipefail
cd "$(dirname "$0")"

VENV="${PMM_VENV:-.venv}"

version_ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; }

find_python() {
    local c
    for c in "${PMM_PYTHON:-}" python3.14 python3.13 python3.12 python3 python; do
        [ -n "$c" ] && command -v "$c" >/dev/null 2>&1 && version_ok "$c" && { command -v "$c"; return; }
    done
    # pyenv keeps interpreters that are not on PATH (this machine's python3 is 3.11).
    local root
    root="$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")"
    for c in $(ls -d "$root"/versions/3.1[2-9]* 2>/dev/null | sort -rV); do
        for exe in "$c"/bin/python3.1[2-9] "$c"/bin/python3; do
            [ -x "$exe" ] && version_ok "$exe" && { echo "$exe"; return; }
        done
    done
    for c in /usr/local/bin/python3.1[2-9] /usr/bin/python3.1[2-9]; do
        [ -x "$c" ] && version_ok "$c" && { echo "$c"; return; }
    done
    echo "error: pmm-pymc needs Python >= 3.12 and none was found (set PMM_PYTHON=/path/to/python3.12)" >&2
    exit 1
}

ensure_venv() {
    if [ ! -x "$VENV/bin/python" ] || ! version_ok "$VENV/bin/python"; then
        local py
        py="$(find_python)"
        echo "dev.sh: creating $VENV with $py" >&2
        rm -rf "$VENV"
        "$py" -m venv "$VENV"
        "$VENV/bin/python" -m pip install -q --upgrade pip
    fi
    local stamp want
    stamp="$VENV/.pmm-installed"
    want="$(cat pyproject.toml | sha256sum | cut -d' ' -f1)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "dev.sh: installing pmm-pymc[torch,plot,dev] into $VENV" >&2
        "$VENV/bin/python" -m pip install -q -e ".[torch,plot,dev]"
        echo "$want" > "$stamp"
    fi
}

task="${1:-help}"
shift || true
case "$task" in
    demo)
        ensure_venv
        exec "$VENV/bin/python" examples/demo.py "$@"
        ;;
    test)
        ensure_venv
        "$VENV/bin/ruff" check .
        "$VENV/bin/ruff" format --check .
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    bench)
        ensure_venv
        exec "$VENV/bin/python" benchmarks/run_all.py "$@"
        ;;
    python)
        ensure_venv
        exec "$VENV/bin/python" "$@"
        ;;
    *)
        sed -n '2,9p' "$0"
        exit 2
        ;;
esac
