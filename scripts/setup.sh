#!/usr/bin/env bash
# One idempotent set-up step for a fresh Debian 12 machine: system packages, Bun (npm),
# Zig (PyPI), then a build of the C helper and the WASM parsers from source.
# Every step is skipped when its result is already present, so `npm test` stays fast.
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned toolchain versions. Bun's pin lives in package.json (devDependencies.bun).
ZIG_VERSION="0.14.1"

# Debian packages: the kernel tools the relay drives, and the real peers tests use.
# dnsmasq-base is the binary alone: the lab runs its own dnsmasq in a namespace, so no
# system DNS/DHCP service (package dnsmasq) is installed or enabled on the machine.
# tmux is the pseudo-terminal in which test/netns/control.test.ts drives `relay top`.
APT_PACKAGES=(build-essential nftables iproute2 iputils-ping dnsmasq-base knot-dnsutils dnsperf
  iperf3 ngtcp2-server ngtcp2-client python3-pip curl haproxy tmux dante-server iptables)

say() { printf '[setup] %s\n' "$*"; }
# shellcheck source=scripts/policy_rc_d.sh
source scripts/policy_rc_d.sh

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    say "missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})"
    exit 1
  fi
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # No package starts or restarts a service during the install (see policy_rc_d.sh).
  trap service_starts_restore EXIT
  if service_starts_forbid; then
    say "services stay as they are during the install ($POLICY_RC_D, removed afterwards)"
  else
    say "keeping the existing $POLICY_RC_D: it decides whether packages start services"
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  service_starts_restore
fi

# promtool (Prometheus' metrics checker), for the tests of the /metrics endpoint. Taken
# out of Debian's prometheus package, which is never installed: installing it would enable
# and start a Prometheus server on the machine. Only the one binary lands in .tools/.
install_promtool() (
  local dir deb
  dir=$(mktemp -d)
  trap 'rm -rf "$dir"' EXIT
  # As root, apt-get downloads as the _apt user: it must be able to write the directory.
  if [[ $(id -u) -eq 0 ]] && id _apt >/dev/null 2>&1; then chown _apt "$dir"; fi
  if ! (cd "$dir" && apt-get download -qq prometheus 2>/dev/null); then
    # A stale package list names a version the mirror has dropped: refresh it once.
    say "apt-get download prometheus failed; refreshing the package lists"
    apt-get update -qq
    (cd "$dir" && apt-get download -qq prometheus)
  fi
  deb=$(find "$dir" -maxdepth 1 -name 'prometheus_*.deb' -print -quit)
  dpkg-deb -x "$deb" "$dir/root"
  mkdir -p .tools
  install -m 0755 "$dir/root/usr/bin/promtool" .tools/promtool
)
if ! .tools/promtool --version >/dev/null 2>&1; then
  say "installing .tools/promtool (from Debian's prometheus package, not installed)"
  install_promtool
fi

if [[ ! -x node_modules/.bin/bun ]] || [[ package-lock.json -nt node_modules/.package-lock.json ]]; then
  say "installing npm packages (Bun $(node -p 'require("./package.json").devDependencies.bun'))"
  npm ci --no-audit --no-fund >/dev/null
fi

if [[ ! -x .tools/zig/ziglang/zig ]] || ! grep -qx "$ZIG_VERSION" .tools/zig/.version 2>/dev/null; then
  say "installing Zig $ZIG_VERSION (PyPI ziglang)"
  rm -rf .tools/zig
  python3 -m pip install --quiet --disable-pip-version-check --target .tools/zig "ziglang==$ZIG_VERSION"
  echo "$ZIG_VERSION" > .tools/zig/.version
fi

bash scripts/build.sh
