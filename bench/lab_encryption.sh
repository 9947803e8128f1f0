#!/usr/bin/env bash
# Pod-to-pod across two lab nodes, in one run: the agents' WireGuard tunnel (the lab's default,
# `--encryption wireguard`) against plain routing on the underlay (`--encryption disabled`).
# Both labs run the full Palisade stack (3 voters, agents, eBPF policy on every pod veth, pods made
# by the CNI plugin), so the difference is the tunnel. iperf3 TCP n1-p1 -> n2-p1, ping for the
# round trip. The standalone tunnel vs Debian's wireguard-go is bench/wireguard.sh.
# Usage (root): bench/lab_encryption.sh [SECONDS]     Figures go to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-10}"
for tool in ip iperf3 ping; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
cargo build --release -q -p palisade-cli -p palisade-cni
BIN="${CARGO_TARGET_DIR:-target}/release/palisade"
LAB="benchwg$$"
trap '"$BIN" lab down --name "$LAB" >/dev/null 2>&1 || true' EXIT

measure() { # mode
  "$BIN" lab up --name "$LAB" --nodes 2 --pods-per-node 1 --encryption "$1" >/dev/null
  local a="pal-$LAB-n1-p1" b="pal-$LAB-n2-p1" dst
  dst=$(python3 -c 'import json,sys; print([p["ip"] for p in json.load(open(sys.argv[1]))["pods"] if p["name"]=="n2-p1"][0])' \
    "/run/palisade/labs/$LAB/state.json")
  ip netns exec "$b" iperf3 -s -1 -p 5201 >/dev/null 2>&1 &
  sleep 0.5
  local gbps rtt
  gbps=$(ip netns exec "$a" iperf3 -c "$dst" -p 5201 -t "$SECS" -J | python3 -c \
    'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))')
  rtt=$(ip netns exec "$a" ping -q -c 50 -i 0.02 "$dst" | awk -F/ '/^rtt/ {print $5}')
  wait || true
  printf '| %-44s | %8s | %8s ms |\n' "$2" "$gbps" "$rtt"
  "$BIN" lab down --name "$LAB" >/dev/null
}

echo "pod-to-pod across nodes, iperf3 TCP ${SECS} s (load average before: $(cut -d' ' -f1-3 /proc/loadavg))"
printf '| %-44s | %8s | %11s |\n' "path (n1-p1 -> n2-p1)" "Gbit/s" "ping avg"
printf '| %-44s | %8s | %11s |\n' "---" "---:" "---:"
measure disabled "plain routing on the underlay (no encryption)"
measure wireguard "Palisade agents' WireGuard (userspace)"
