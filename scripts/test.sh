#!/usr/bin/env bash
# The test command (npm test runs it after scripts/setup.sh): every test with the relay on
# Bun, then the end-to-end files that start a relay once more with the relay on Node.js
# (RELAY_RUNTIME=node, docs/node.md), against a fresh build of dist/node: on the
# distribution's node, and again on the current LTS from npm (scripts/node_lts.sh) when
# that is another version. Two more runs cover the other data planes: the UDP end-to-end
# files on io_uring (the main run's relays take the default udp.ioBackend, epoll;
# RELAY_UDP_IO_BACKEND, docs/io_uring.md), and the end-to-end files with TCP
# listeners on tcp.dataPlane "main" (the main run has the default "worker";
# RELAY_TCP_DATA_PLANE, docs/tcp_single_thread.md). Ends with the runs' sum in bun test's
# own summary form (" N pass" / " N fail"), which .ci/run reads.
#   scripts/test.sh               both runs
#   scripts/test.sh FILES...      only these files, on Bun
#   RELAY_RUNTIME=node scripts/test.sh FILES...   only these files, the relay on Node.js
set -uo pipefail
cd "$(dirname "$0")/.."
BUN=node_modules/.bin/bun
TEST=("$BUN" test --timeout 120000)

if [[ $# -gt 0 ]]; then
  [[ ${RELAY_RUNTIME:-bun} == node ]] && "$BUN" scripts/build_node.ts
  exec "${TEST[@]}" "$@"
fi

# Every end-to-end file that starts the relay (RelayLab, RelayProcess or RELAY_BIN).
mapfile -t NODE_FILES < <(grep -lE 'RelayLab|RelayProcess|RELAY_BIN' test/netns/*.test.ts)

# The UDP end-to-end files, run again with the relay's UDP I/O on io_uring.
UDP_FILES=(test/netns/udp_relay.test.ts test/netns/udp_client_source.test.ts
  test/netns/udp_policy.test.ts test/netns/dns_forced.test.ts test/netns/quic_relay.test.ts
  test/netns/failure_paths.test.ts test/netns/udp_io_backend.test.ts
  test/netns/udp_workers.test.ts)

# The end-to-end files whose relays have TCP listeners (both TCP planes must pass them).
mapfile -t TCP_FILES < <(grep -lE 'protocol: "tcp"' "${NODE_FILES[@]}")

bun_log=$(mktemp)
uring_log=$(mktemp)
tcp_log=$(mktemp)
node_log=$(mktemp)
lts_log=$(mktemp)
trap 'rm -f "$bun_log" "$uring_log" "$tcp_log" "$node_log" "$lts_log"' EXIT

"${TEST[@]}" 2>&1 | tee "$bun_log"
bun_status=${PIPESTATUS[0]}

echo
echo "[test] ${#UDP_FILES[@]} UDP end-to-end files again, udp.ioBackend io_uring"
RELAY_UDP_IO_BACKEND=io_uring "${TEST[@]}" "${UDP_FILES[@]}" 2>&1 | tee "$uring_log"
[[ ${PIPESTATUS[0]} -ne 0 ]] && bun_status=1
echo "[test] ${#TCP_FILES[@]} end-to-end files with TCP again, tcp.dataPlane main"
RELAY_TCP_DATA_PLANE=main "${TEST[@]}" "${TCP_FILES[@]}" 2>&1 | tee "$tcp_log"
[[ ${PIPESTATUS[0]} -ne 0 ]] && bun_status=1

# The end-to-end files with the relay on the node binary $1, into log $2.
node_pass() {
  echo
  echo "[test] ${#NODE_FILES[@]} end-to-end files again, the relay on Node.js $("$1" --version)"
  RELAY_RUNTIME=node RELAY_NODE="$1" "${TEST[@]}" "${NODE_FILES[@]}" 2>&1 | tee "$2"
  return "${PIPESTATUS[0]}"
}
node_status=0
logs=("$bun_log" "$uring_log" "$tcp_log" "$node_log")
if ! "$BUN" scripts/build_node.ts; then
  echo "[test] the Node.js bundle did not build (scripts/build_node.ts)" >&2
  node_status=1
else
  node_pass "$(command -v node)" "$node_log" || node_status=1
  if ! lts=$(bash scripts/node_lts.sh); then
    echo "[test] the current Node.js LTS could not be installed (scripts/node_lts.sh)" >&2
    node_status=1
  elif [[ $("$lts" --version) != $(node --version) ]]; then
    logs+=("$lts_log")
    node_pass "$lts" "$lts_log" || node_status=1
  fi
fi

# A run that printed no summary (it crashed) counts as one failure.
count() { grep -E "^ *[0-9]+ $1\$" "$2" | tail -1 | tr -dc '0-9'; }
passed=0
failed=0
for log in "${logs[@]}"; do
  p=$(count pass "$log")
  f=$(count fail "$log")
  [[ -z $p ]] && f=$((${f:-0} + 1))
  passed=$((passed + ${p:-0}))
  failed=$((failed + ${f:-0}))
done
# The names of the tests that failed, from every run (bun test marks them "(fail)"), so a
# failure far up a long log is named beside the summary.
fails=$(grep -h '^(fail)' "${logs[@]}")
if [[ -n $fails ]]; then
  echo
  echo "[test] failed:"
  echo "$fails"
fi
status=0
[[ $bun_status -ne 0 || $node_status -ne 0 || $failed -gt 0 ]] && status=1
echo
echo "[test] all runs: Bun (every test; ${#UDP_FILES[@]} UDP files on io_uring and" \
  "${#TCP_FILES[@]} files with TCP on tcp.dataPlane main too), Node.js" \
  "(${#NODE_FILES[@]} end-to-end files on $((${#logs[@]} - 3)) version(s))"
printf ' %d pass\n %d fail\n' "$passed" "$failed"
exit "$status"
