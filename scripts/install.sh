#!/usr/bin/env bash
# Installs what RUNNING the relay needs on a Debian 12 machine and builds it from source:
# the kernel tools it drives (nftables, iproute2; iptables only for firewall.backend
# "iptables"), a C compiler for its helper, Bun (npm, pinned in package.json), Zig (PyPI,
# pinned below) for the WASM parsers. No test peer: scripts/setup.sh (the development and
# test set-up) calls this script, then adds the lab's packages and tools.
# Every step is skipped when its result is already present. Root is needed only to install
# Debian packages and for --service; everything else runs as whoever owns the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."

USAGE="usage: scripts/install.sh [--backend nft|iptables] [--config FILE]
                          [--service [--user NAME]] [--print-packages]

  --backend B        the firewall the rules use: nft (default) or iptables (adds the
                     iptables package); also read from the config's firewall.backend
  --config FILE      the configuration the service runs with
                     (default /etc/transparent-relay/config.json)
  --service          also install the systemd unit (root): a system user NAME, the
                     config FILE if absent, /etc/systemd/system/transparent-relay.service
  --user NAME        the service's user and group (default transparent-relay)
  --print-packages   print the Debian packages this would install, one a line, and exit
  --dev              (scripts/setup.sh) npm's devDependencies too
  --extra-packages L (scripts/setup.sh) more Debian packages, installed in the same step"

# Pinned toolchain versions. Bun's pin lives in package.json (dependencies.bun).
ZIG_VERSION="0.14.1"

# Debian packages the relay needs to run and to be built: the nft and ip commands (relay
# rules apply|remove), a C compiler for ffi/ (scripts/build.sh: make, cc, libc headers,
# liburing's static library and headers for the io_uring UDP plane, linked in: nothing of
# it is needed at run time), pip, which fetches Zig, and /bin/kill (procps; the unit's
# ExecReload). No package here starts a service.
RUNTIME_PACKAGES=(nftables iproute2 gcc make libc6-dev liburing-dev python3-pip procps)

say() { printf '[install] %s\n' "$*"; }
die() {
  say "$*" >&2
  exit 1
}

backend=""
config_path="/etc/transparent-relay/config.json"
service=false
service_user="transparent-relay"
print_packages=false
dev=false
extra_packages=()
while (($#)); do
  case "$1" in
    --backend)
      backend="${2:-}"
      [[ $backend == nft || $backend == iptables ]] || die "--backend: nft or iptables"
      shift
      ;;
    --config)
      config_path="${2:?--config needs a file path}"
      shift
      ;;
    --service) service=true ;;
    --user)
      service_user="${2:?--user needs a user name}"
      shift
      ;;
    --print-packages) print_packages=true ;;
    --dev) dev=true ;;
    --extra-packages)
      read -r -a more <<<"${2:-}"
      extra_packages+=("${more[@]}")
      shift
      ;;
    -h | --help)
      echo "$USAGE"
      exit 0
      ;;
    *) die "unknown argument \"$1\"
$USAGE" ;;
  esac
  shift
done

# iptables only when the rules will use it: by flag, or by the configuration. A look at the
# text is enough (firewall.backend is the config's only "backend"), and it works before any
# JSON tool is installed.
if [[ -z $backend ]]; then
  backend=nft
  if [[ -r $config_path ]] && grep -Eq '"backend"[[:space:]]*:[[:space:]]*"iptables"' \
    "$config_path"; then
    backend=iptables
  fi
fi
packages=("${RUNTIME_PACKAGES[@]}")
if [[ $backend == iptables ]]; then packages+=(iptables); fi
# Bun comes from npm: Debian's npm (and its nodejs) only when no npm is on the PATH.
if ! command -v npm >/dev/null; then packages+=(npm); fi
# Each once, in order (an extra package may repeat one of ours).
for p in "${extra_packages[@]}"; do
  [[ " ${packages[*]} " == *" $p "* ]] || packages+=("$p")
done

if $print_packages; then
  printf '%s\n' "${packages[@]}"
  exit 0
fi
# Said before anything is done, rather than after the build.
if $service && [[ $(id -u) -ne 0 ]]; then
  die "--service needs root (a system user, files in /etc): run it with sudo"
fi

# shellcheck source=scripts/policy_rc_d.sh
source scripts/policy_rc_d.sh

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    die "missing Debian packages: ${missing[*]}. Installing them needs root: run" \
      "'sudo apt-get install ${missing[*]}', then this script again (as yourself is fine)"
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

# npm: the runtime dependencies (Bun itself is one); --dev adds the development tools
# (TypeScript, Biome, tinybench). An install without them is redone when they are wanted.
bun_pin=$(node -p 'require("./package.json").dependencies.bun')
if [[ ! -x node_modules/.bin/bun ]] ||
  [[ package-lock.json -nt node_modules/.package-lock.json ]] ||
  { $dev && [[ ! -x node_modules/.bin/tsc ]]; }; then
  if $dev; then
    say "installing npm packages (Bun $bun_pin, with the development tools)"
    npm ci --no-audit --no-fund >/dev/null
  else
    say "installing npm packages (Bun $bun_pin; runtime only)"
    npm ci --omit=dev --no-audit --no-fund >/dev/null
  fi
fi

if [[ ! -x .tools/zig/ziglang/zig ]] ||
  ! grep -qx "$ZIG_VERSION" .tools/zig/.version 2>/dev/null; then
  say "installing Zig $ZIG_VERSION (PyPI ziglang) into .tools/zig"
  rm -rf .tools/zig
  python3 -m pip install --quiet --disable-pip-version-check --target .tools/zig \
    "ziglang==$ZIG_VERSION"
  echo "$ZIG_VERSION" >.tools/zig/.version
fi

# make and zig build rebuild only what changed.
bash scripts/build.sh

if ! $service; then exit 0; fi

# The systemd service: a system user, the default configuration, the rendered unit.
# Nothing is enabled or started here: the operator does that (the README's "Running as a
# systemd service").
# Elsewhere only for a trial run (or a packager's staging directory).
unit_path="${INSTALL_UNIT_DIR:-/etc/systemd/system}/transparent-relay.service"
if ! id -u "$service_user" >/dev/null 2>&1; then
  say "creating the system user $service_user (no login shell, no home)"
  useradd --system --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin "$service_user"
fi
service_group=$(id -gn "$service_user")
# The service runs the checkout as that user: every directory above it must let it in
# (absolute paths: a relative one would start inside the checkout and skip its parents).
if ! setpriv --reuid="$service_user" --regid="$service_group" --init-groups \
  test -r "$PWD/build/librelay.so" -a -x "$PWD/node_modules/.bin/bun" -a -r "$PWD/src/main.ts"
then
  die "user $service_user cannot read this checkout ($PWD): put it where every parent" \
    "directory is world-searchable (e.g. /opt/transparent-relay), not under /root or /home"
fi
if [[ ! -e $config_path ]]; then
  say "writing the default configuration $config_path (the built-in defaults)"
  install -d -m 0755 "$(dirname "$config_path")"
  printf '{\n  "$schema": "file://%s/dist/relay.schema.json"\n}\n' "$PWD" >"$config_path"
  chmod 0644 "$config_path"
fi
rendered=$(mktemp)
trap 'rm -f "$rendered"' EXIT
node_modules/.bin/bun src/main.ts service print --config "$config_path" \
  --user "$service_user" --group "$service_group" >"$rendered"
if cmp -s "$rendered" "$unit_path"; then
  say "$unit_path is current"
else
  say "installing $unit_path"
  install -m 0644 "$rendered" "$unit_path"
fi
# sd_booted(3): systemd is the running init when this directory exists.
if [[ -d /run/systemd/system ]]; then
  systemctl daemon-reload
  say "enable and start it: systemctl enable transparent-relay && systemctl start" \
    "transparent-relay; logs: journalctl -u transparent-relay"
else
  say "systemd is not running on this machine (PID 1: $(cat /proc/1/comm)): the unit is" \
    "installed; on a systemd host run: systemctl daemon-reload, then systemctl enable" \
    "transparent-relay and systemctl start transparent-relay"
fi
