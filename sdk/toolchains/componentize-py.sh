#!/bin/sh
# Builds a weir plugin from Python:
#   sh componentize-py.sh <world> <out.wasm> <module>
# with componentize-py at the version weir's Python plugins are built and tested
# with, installed from PyPI first when it is missing or another version. The
# plugin's folder and weir's helpers (sdk/python/weir.py) are on the module path.
# Used by the plugins' [build] commands, so `weir run --build`, `cargo test` and
# .ci/run all build Python plugins the same way.
set -eu
if [ $# -ne 3 ]; then
    echo "usage: componentize-py.sh <world> <out.wasm> <module>" >&2
    exit 2
fi
WORLD=$1
OUT=$2
MODULE=$3
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VERSION=0.25.1
if ! command -v componentize-py >/dev/null 2>&1 || [ "$(componentize-py --version 2>/dev/null)" != "componentize-py $VERSION" ]; then
    if ! command -v python3 >/dev/null 2>&1; then
        echo "weir: Python plugins need python3 (3.10 or newer) with pip, to install componentize-py $VERSION" >&2
        exit 1
    fi
    echo "weir: installing componentize-py $VERSION from PyPI" >&2
    python3 -m pip install --quiet --disable-pip-version-check "componentize-py==$VERSION" >&2 || {
        echo "weir: could not install componentize-py $VERSION: run \`python3 -m pip install componentize-py==$VERSION\`" >&2
        exit 1
    }
fi
# pip puts the command beside the interpreter's scripts, which may not be on PATH yet.
SCRIPTS=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)
TOOL=componentize-py
if [ -x "$SCRIPTS/componentize-py" ]; then
    TOOL="$SCRIPTS/componentize-py"
fi
mkdir -p "$(dirname "$OUT")"
exec "$TOOL" -d "$ROOT/wit" -w "$WORLD" componentize -p . -p "$ROOT/sdk/python" "$MODULE" -o "$OUT"
