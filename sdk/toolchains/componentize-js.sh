#!/bin/sh
# Builds a weir plugin from JavaScript:
#   sh componentize-js.sh <world> <out.wasm> <main.js>
# The plugin's folder (its .js files) and weir's helpers (sdk/js/weir.js, imported
# as './weir.js') are staged together, then componentize-js, at the version
# pinned in js/package-lock.json, makes the component. componentize-js is
# installed from npm into sdk/toolchains/js/node_modules first when missing.
set -eu
if [ $# -ne 3 ]; then
    echo "usage: componentize-js.sh <world> <out.wasm> <main.js>" >&2
    exit 2
fi
WORLD=$1
OUT=$2
MAIN=$3
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TOOL="$HERE/js/node_modules/.bin/componentize-js"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "weir: JavaScript plugins need Node.js 20 or newer with npm (e.g. apt-get install nodejs npm)" >&2
    exit 1
fi
MAJOR=$(node -p 'process.versions.node.split(".")[0]')
if [ "$MAJOR" -lt 20 ]; then
    echo "weir: JavaScript plugins need Node.js 20 or newer; this is $(node --version)" >&2
    exit 1
fi
if [ ! -x "$TOOL" ] || [ "$HERE/js/package-lock.json" -nt "$HERE/js/node_modules/.package-lock.json" ]; then
    echo "weir: installing componentize-js from npm (sdk/toolchains/js/package-lock.json)" >&2
    (cd "$HERE/js" && npm ci --no-audit --no-fund --loglevel=error >&2) || {
        echo "weir: could not install componentize-js: run \`npm ci\` in $HERE/js" >&2
        exit 1
    }
fi
# componentize-js loads modules from the main file's folder only: stage them together.
STAGE="$ROOT/target/wasm/js/$(basename "$OUT" .wasm)"
rm -rf "$STAGE"
mkdir -p "$STAGE" "$(dirname "$OUT")"
cp ./*.js "$STAGE/"
cp "$ROOT/sdk/js/weir.js" "$STAGE/weir.js"
exec "$TOOL" --wit "$ROOT/wit" --world-name "$WORLD" -d http fetch-event -o "$OUT" "$STAGE/$MAIN"
