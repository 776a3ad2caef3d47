#!/bin/sh
# Builds a weir plugin from C sources:
#   sh componentize-c.sh <world> <out.wasm> <source.c>...
# 1. the WIT bindings of <world> (<world>.h, <world>.c) from weir's WIT package,
# 2. clang compiles the sources and the bindings to a wasm32-wasi reactor module,
# 3. the module becomes a component with the WASI preview-1 adapter.
# Steps 1 and 3 are weir-componentize-c (sdk/toolchains/componentize-c), built
# here with cargo; step 2 needs Debian's clang, lld, wasi-libc and
# libclang-rt-dev-wasm32 (or WASI_SYSROOT pointing at a wasi-sdk sysroot).
set -eu
if [ $# -lt 3 ]; then
    echo "usage: componentize-c.sh <world> <out.wasm> <source.c>..." >&2
    exit 2
fi
WORLD=$1
OUT=$2
shift 2
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SYSROOT=${WASI_SYSROOT:-/usr}
CLANG=${CLANG:-clang}
if ! command -v "$CLANG" >/dev/null 2>&1 || ! command -v wasm-ld >/dev/null 2>&1 \
    || { [ ! -d "$SYSROOT/lib/wasm32-wasi" ] && [ ! -d "$SYSROOT/lib/wasm32-wasip1" ]; }; then
    echo "weir: C plugins need clang, wasm-ld and a WASI libc:" >&2
    echo "  apt-get install -y clang lld wasi-libc libclang-rt-dev-wasm32   (or set WASI_SYSROOT to a wasi-sdk sysroot)" >&2
    exit 1
fi
WORK="$ROOT/target/wasm/c/$(basename "$OUT" .wasm)"
mkdir -p "$WORK" "$(dirname "$OUT")"
# Its own target dir: this may run inside an outer cargo build, which holds target/'s lock.
cargo build -q --manifest-path "$ROOT/Cargo.toml" -p weir-componentize-c --target-dir "$ROOT/target/wasm"
TOOL="$ROOT/target/wasm/debug/weir-componentize-c"
"$TOOL" bindings "$ROOT/wit" "$WORLD" "$WORK"
WORLD_C=$(echo "$WORLD" | tr '-' '_')
"$CLANG" --target=wasm32-wasi --sysroot="$SYSROOT" -mexec-model=reactor -O2 -Wall -Werror \
    -Wno-unused-parameter -I "$WORK" "$@" "$WORK/$WORLD_C.c" "$WORK/${WORLD_C}_component_type.o" -o "$WORK/core.wasm"
"$TOOL" component "$WORK/core.wasm" "$OUT"
