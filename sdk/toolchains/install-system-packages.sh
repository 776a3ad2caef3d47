#!/bin/sh
# Installs, from Debian's packages, what building and testing weir needs beyond
# Rust: PostgreSQL (the warehouse tests), and clang, lld, wasi-libc and
# libclang-rt-dev-wasm32 (plugins written in C). Python 3 with pip and Node.js
# 20 with npm are expected on the machine (Python and JavaScript plugins).
# Run as root; does nothing when everything is there.
set -eu
missing=""
command -v pg_ctlcluster >/dev/null 2>&1 || missing="$missing postgresql"
command -v clang >/dev/null 2>&1 || missing="$missing clang"
command -v wasm-ld >/dev/null 2>&1 || missing="$missing lld"
{ [ -d /usr/lib/wasm32-wasi ] || [ -d /usr/lib/wasm32-wasip1 ]; } || missing="$missing wasi-libc"
ls /usr/lib/llvm-*/lib/clang/*/lib/wasi/libclang_rt.builtins-wasm32.a >/dev/null 2>&1 || missing="$missing libclang-rt-dev-wasm32"
if [ -n "$missing" ]; then
    echo "installing:$missing" >&2
    apt-get update -qq
    # shellcheck disable=SC2086 # one word per package
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
for tool in python3 node npm; do
    command -v "$tool" >/dev/null 2>&1 || echo "warning: $tool is missing: Python or JavaScript plugins will not build" >&2
done
