#!/usr/bin/env bash
# Builds the C helper (ffi/) and the WASM parsers (wasm/) from source into build/, and
# the relay's JavaScript for Node.js into dist/node/ (scripts/build_node.ts).
set -euo pipefail
cd "$(dirname "$0")/.."
make -s -C ffi
if [[ -f wasm/build.zig ]]; then
  (cd wasm && ../.tools/zig/ziglang/zig build -Doptimize=ReleaseSafe --prefix ../build/wasm)
fi
node_modules/.bin/bun scripts/build_node.ts
