#!/usr/bin/env bash
# Installs the real third-party OpAMP clients that opampd's interop tests drive, at pinned versions:
#
#   $OPAMPD_INTEROP_DIR/venv   Python venv with opentelemetry-opamp-client==0.5b0 (requirements.txt)
#   $OPAMPD_INTEROP_DIR/node   npm project with @elastic/opamp-client-node@0.5.0 (package.json + lock)
#
# OPAMPD_INTEROP_DIR defaults to <repo root>/target/interop; a relative value is taken relative to the
# repo root. Idempotent: work already done (same pins, expected versions installed) is skipped, so it
# is cheap to call before every test run. Safe to run concurrently (flock on a lock file).
#
# Usage: tests/interop/setup.sh [--force] [--python-only | --node-only]
# Env:   OPAMPD_INTEROP_DIR, OPAMPD_PYTHON (interpreter used to create the venv, default python3)
# Exit:  0 when both clients are installed and verified; non-zero with a message on stderr otherwise.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"

PY_PKG="opentelemetry-opamp-client"
PY_VERSION="0.5b0"
NODE_PKG="@elastic/opamp-client-node"
NODE_VERSION="0.5.0"

FORCE=0
DO_PYTHON=1
DO_NODE=1
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        --python-only) DO_NODE=0 ;;
        --node-only) DO_PYTHON=0 ;;
        -h | --help)
            sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "setup.sh: unknown argument: $arg" >&2
            exit 2
            ;;
    esac
done

INTEROP_DIR="${OPAMPD_INTEROP_DIR:-target/interop}"
case "$INTEROP_DIR" in
    /*) ;;
    *) INTEROP_DIR="$REPO_ROOT/$INTEROP_DIR" ;;
esac
VENV_DIR="$INTEROP_DIR/venv"
NODE_DIR="$INTEROP_DIR/node"

log() { echo "interop setup: $*" >&2; }
die() {
    echo "interop setup: ERROR: $*" >&2
    exit 1
}

mkdir -p "$INTEROP_DIR" || die "cannot create $INTEROP_DIR"

# Serialise concurrent runs (e.g. several test binaries calling this at once).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$INTEROP_DIR/.setup.lock"
    flock 9
fi

# ---------------------------------------------------------------- Python
python_installed_version() {
    "$VENV_DIR/bin/python" - "$PY_PKG" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
import opentelemetry._opamp.agent  # noqa: F401  (the module really imports)
print(version(sys.argv[1]))
EOF
}

setup_python() {
    local req="$SCRIPT_DIR/requirements.txt"
    local stamp="$VENV_DIR/.opampd-requirements.txt"
    [ -f "$req" ] || die "missing $req"

    if [ "$FORCE" = 0 ] && [ -x "$VENV_DIR/bin/python" ] && cmp -s "$req" "$stamp" &&
        [ "$(python_installed_version || true)" = "$PY_VERSION" ]; then
        log "python: $PY_PKG==$PY_VERSION already installed in $VENV_DIR"
        return 0
    fi

    local py="${OPAMPD_PYTHON:-python3}"
    command -v "$py" >/dev/null 2>&1 || die "python: '$py' not found (need Python >= 3.10 with venv and pip)"
    "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' ||
        die "python: $("$py" --version 2>&1) is too old; $PY_PKG $PY_VERSION needs Python >= 3.10"

    if [ "$FORCE" = 1 ] || ! "$VENV_DIR/bin/python" -c 'import sys' >/dev/null 2>&1; then
        log "python: creating venv $VENV_DIR"
        rm -rf "$VENV_DIR"
        "$py" -m venv "$VENV_DIR" ||
            die "python: '$py -m venv' failed (on Debian/Ubuntu install the python3-venv package)"
    fi

    log "python: installing $PY_PKG==$PY_VERSION from requirements.txt"
    rm -f "$stamp"
    "$VENV_DIR/bin/python" -m pip install --disable-pip-version-check --no-input --quiet -r "$req" ||
        die "python: pip install -r $req failed (is PyPI reachable?)"

    local got
    got="$(python_installed_version || true)"
    [ "$got" = "$PY_VERSION" ] ||
        die "python: expected $PY_PKG==$PY_VERSION in $VENV_DIR, found '${got:-nothing importable}'"
    cp "$req" "$stamp"
    log "python: $PY_PKG==$PY_VERSION installed in $VENV_DIR"
}

# ---------------------------------------------------------------- Node
node_installed_version() {
    node -e 'process.stdout.write(require(process.argv[1]).version)' \
        "$NODE_DIR/node_modules/$NODE_PKG/package.json" 2>/dev/null
}

setup_node() {
    local pj="$SCRIPT_DIR/package.json" lock="$SCRIPT_DIR/package-lock.json"
    [ -f "$pj" ] && [ -f "$lock" ] || die "missing $pj or $lock"
    command -v node >/dev/null 2>&1 || die "node: 'node' not found (need Node.js ^18.19 or >= 20.6 with npm)"
    command -v npm >/dev/null 2>&1 || die "node: 'npm' not found"
    node -e '
        const [maj, min] = process.versions.node.split(".").map(Number);
        process.exit((maj === 18 && min >= 19) || (maj === 20 && min >= 6) || maj > 20 ? 0 : 1);
    ' || die "node: Node.js $(node --version) is too old; $NODE_PKG $NODE_VERSION needs ^18.19.0 || >=20.6.0"

    if [ "$FORCE" = 0 ] && cmp -s "$pj" "$NODE_DIR/package.json" && cmp -s "$lock" "$NODE_DIR/package-lock.json" &&
        [ "$(node_installed_version || true)" = "$NODE_VERSION" ]; then
        log "node: $NODE_PKG@$NODE_VERSION already installed in $NODE_DIR"
        return 0
    fi

    log "node: installing $NODE_PKG@$NODE_VERSION with npm ci (package-lock.json)"
    mkdir -p "$NODE_DIR"
    rm -rf "$NODE_DIR/node_modules"
    cp "$pj" "$lock" "$NODE_DIR/"
    (cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error >&2) ||
        die "node: npm ci in $NODE_DIR failed (is the npm registry reachable?)"

    local got
    got="$(node_installed_version || true)"
    [ "$got" = "$NODE_VERSION" ] ||
        die "node: expected $NODE_PKG@$NODE_VERSION in $NODE_DIR, found '${got:-nothing}'"
    log "node: $NODE_PKG@$NODE_VERSION installed in $NODE_DIR"
}

if [ "$DO_PYTHON" = 1 ]; then setup_python; fi
if [ "$DO_NODE" = 1 ]; then setup_node; fi

log "ready: python=$VENV_DIR/bin/python node_modules=$NODE_DIR/node_modules"
exit 0
