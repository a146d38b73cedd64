#!/usr/bin/env bash
# One idempotent set-up step of a fresh Debian 12 machine for development and the tests:
# scripts/install.sh (what running the relay needs, and the build), then the test lab.
# Every step is skipped when its result is already present, so `npm test` stays fast.
# --print-packages: the Debian packages it would install, one a line.
set -euo pipefail
cd "$(dirname "$0")/.."

# The part a gateway needs too (Debian packages, Bun, Zig, the build) is scripts/install.sh;
# this adds what development and the tests need: npm's devDependencies, the real peers
# the tests drive (APT_PACKAGES: the test set-up's Debian packages, installed by install.sh
# with its own), and promtool.
# dnsmasq-base is the binary alone: the lab runs its own dnsmasq in a namespace, so no
# system DNS/DHCP service (package dnsmasq) is installed or enabled on the machine.
# tmux is the pseudo-terminal in which test/netns/control.test.ts drives `relay top`.
# iptables: the rules' iptables backend; systemd: `systemd-analyze verify` of the unit
# (test/unit/service_unit.test.ts), never started; dante-server: a real SOCKS5 server (UDP
# ASSOCIATE too) that test/lab/dante.ts runs in a lab namespace, never as the service.
# dnsdist: the resolver proxy bench/dns_forced.ts compares the forced resolver with, run
# in the lab's router namespace with its own config file, never as the service.
# linux-perf: `perf stat` counts each proxy's system calls in `bun run bench` (issue 14).
APT_PACKAGES=(iputils-ping dnsmasq-base knot-dnsutils dnsperf iperf3 ngtcp2-server ngtcp2-client
  curl haproxy tmux iptables systemd dante-server dnsdist linux-perf)

say() { printf '[setup] %s\n' "$*"; }

if [[ ${1:-} == --print-packages ]]; then
  exec bash scripts/install.sh --print-packages --extra-packages "${APT_PACKAGES[*]}"
fi
bash scripts/install.sh --dev --extra-packages "${APT_PACKAGES[*]}"

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
