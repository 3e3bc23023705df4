#!/usr/bin/env bash
# Runs the whole test suite: installs what the tests need when it is missing
# (redis-server, promtool, Chromium and its WebDriver for the web console's
# browser tests, a Python venv with pytest, selenium, the CloudEvents SDK and
# the Python SDK's tools), then `cargo test`, the Python end-to-end tests in
# tests/python and the Python SDK's suite in clients/python/tests (which also
# runs `mypy --strict` and `ruff check` over the SDK).
#
# Usage: ./scripts/test.sh        (CI runs it through .ci/run)
# Exits non-zero when any step fails; pytest finding no tests is a failure.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
VENV=$TARGET_DIR/venv
PY_PACKAGES=(pytest cloudevents requests websocket-client helm-python-sdk kubernetes-validate pyyaml
    "websockets>=15" mypy ruff maturin selenium cryptography)

export CARGO_INCREMENTAL=0
export CARGO_TERM_COLOR=never

section() {
    printf '\n==> %s\n' "$*"
}

failed=()

# --- system packages ---------------------------------------------------------
apt_updated=0
apt_install() {
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo=(sudo)
        else
            echo "error: need root or sudo to install: $*" >&2
            return 1
        fi
    fi
    if [ "$apt_updated" -eq 0 ]; then
        "${sudo[@]}" apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@"
}

section "system packages"
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-venv)
# Debian's Chromium and its driver: tests/python/test_ui.py drives the console.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt_install "${missing[@]}"
fi
echo "redis-server: $(redis-server --version | head -n1)"
echo "promtool:     $(promtool --version 2>&1 | head -n1)"
echo "python3:      $(python3 --version)"
echo "chromium:     $(chromedriver --version 2>/dev/null | head -n1)"
# `kubectl kustomize` builds the deploy/ overlays in the packaging tests.
if command -v kubectl >/dev/null 2>&1; then
    echo "kubectl:      $(kubectl version --client 2>/dev/null | head -n1)"
else
    echo "error: kubectl is missing; the packaging tests need \`kubectl kustomize\`" >&2
    failed+=("kubectl missing")
fi

# --- Python venv ---------------------------------------------------------------
section "python venv ($VENV)"
if ! "$VENV/bin/python" -c 'import pytest, cloudevents, requests, websocket, helm_python, kubernetes_validate, yaml, websockets, mypy, ruff, maturin, selenium, cryptography' >/dev/null 2>&1; then
    if ! python3 -m venv "$VENV"; then
        apt_install python3-venv
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}"
fi
"$VENV/bin/python" -m pip list --disable-pip-version-check 2>/dev/null \
    | grep -Ei '^(pytest|cloudevents|requests|websocket-client|helm-python-sdk|kubernetes-validate|PyYAML|websockets|mypy|ruff|maturin|selenium|cryptography) ' || true

# --- Rust ------------------------------------------------------------------------
# One `cargo test` build serves every step: it also builds the binary that the
# CLI and Python tests run (a separate `cargo build` would recompile much of
# the graph with different dev-dependency features).
section "cargo test --no-run (build)"
if ! cargo test --locked --no-run; then
    echo "error: the build failed; nothing was tested" >&2
    exit 1
fi

section "cargo test"
if ! cargo test --locked --no-fail-fast; then
    failed+=("cargo test")
fi

section "fuzz: parsers, short seeded run (./scripts/fuzz.sh for the long runs)"
if ! ./scripts/fuzz.sh --short; then
    failed+=("fuzz")
fi

# --- Python end-to-end tests --------------------------------------------------
section "pytest tests/python"
export EVENT_ROUTER_BIN=$TARGET_DIR/debug/event-router
if [ ! -x "$EVENT_ROUTER_BIN" ]; then
    echo "error: $EVENT_ROUTER_BIN was not built" >&2
    failed+=("pytest (no binary)")
else
    set +e
    "$VENV/bin/python" -m pytest -q tests/python
    code=$?
    set -e
    case $code in
        0) ;;
        5) echo "error: pytest collected no tests" >&2; failed+=("pytest (no tests)") ;;
        *) failed+=("pytest") ;;
    esac
fi

# --- Python SDK ------------------------------------------------------------------
# Against the binary built above (no second build: the wheel build is checked
# structurally, and for real only with EVENT_ROUTER_BUILD_WHEEL=1).
section "pytest clients/python (SDK, with mypy --strict and ruff)"
if [ ! -x "$EVENT_ROUTER_BIN" ]; then
    failed+=("pytest sdk (no binary)")
else
    set +e
    (cd clients/python && "$VENV/bin/python" -m pytest -q tests)
    code=$?
    set -e
    case $code in
        0) ;;
        5) echo "error: pytest collected no SDK tests" >&2; failed+=("pytest sdk (no tests)") ;;
        *) failed+=("pytest sdk") ;;
    esac
fi

# --- summary ---------------------------------------------------------------------
section "summary"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
echo "all test steps passed"
