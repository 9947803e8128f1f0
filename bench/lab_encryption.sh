#!/usr/bin/env bash
# Pod-to-pod across two lab nodes, in one run: the agents' WireGuard tunnel (the lab's default,
# `--encryption wireguard`) against plain routing on the underlay (`--encryption disabled`).
# Both labs run the full Palisade stack (3 voters, agents, eBPF policy on every pod veth, pods made
# by the CNI plugin), so the difference is the tunnel. iperf3 TCP n1-p1 -> n2-p1, ping for the
# round trip; then Debian's wireguard-go set up between the same two nodes, in the same run.
# Usage (root): bench/lab_encryption.sh [SECONDS]     Figures go to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-10}"
for tool in ip iperf3 ping wireguard-go python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
cargo build --release -q -p palisade-cli -p palisade-cni
BIN="${CARGO_TARGET_DIR:-target}/release/palisade"
LAB="benchwg$$"
trap '"$BIN" lab down --name "$LAB" >/dev/null 2>&1 || true' EXIT

# Debian's wireguard-go between the two lab nodes, set up the way the agents set up theirs: one
# interface per node on UDP 51821, the other node as its peer with that node's pod CIDR as allowed
# IPs, the pod CIDR routed into it, pod MTU 1420. Keys are made here (x25519 in a few lines of
# Python, bench/wg_keys.py, so no `wg` tool is needed) and handed over the UAPI socket.
WGO_PIDS=()
wireguard_go() {
  local state="/run/palisade/labs/$LAB/state.json"
  read -r PA PUBA PB PUBB < <(python3 bench/wg_keys.py)
  read -r U1 U2 C1 C2 < <(python3 -c '
import json, sys
n = json.load(open(sys.argv[1]))["nodes"]
print(n[0]["underlay_ip"], n[1]["underlay_ip"], n[0]["pod_cidr"], n[1]["pod_cidr"])' "$state")
  local i
  for i in 1 2; do
    ip netns exec "pal-$LAB-n$i" env WG_PROCESS_FOREGROUND=1 wireguard-go "wgo$i" >/dev/null 2>&1 &
    WGO_PIDS+=($!)
  done
  for _ in $(seq 50); do
    [ -S /var/run/wireguard/wgo1.sock ] && [ -S /var/run/wireguard/wgo2.sock ] && break
    sleep 0.1
  done
  uapi() { python3 bench/wg_uapi.py "$1" "$2"; }
  uapi /var/run/wireguard/wgo1.sock "set=1
private_key=$PA
listen_port=51821
public_key=$PUBB
endpoint=$U2:51821
allowed_ip=$C2
"
  uapi /var/run/wireguard/wgo2.sock "set=1
private_key=$PB
listen_port=51821
public_key=$PUBA
endpoint=$U1:51821
allowed_ip=$C1
"
  ip -n "pal-$LAB-n1" link set wgo1 mtu 1420 up
  ip -n "pal-$LAB-n2" link set wgo2 mtu 1420 up
  ip -n "pal-$LAB-n1" route replace "$C2" dev wgo1
  ip -n "pal-$LAB-n2" route replace "$C1" dev wgo2
  ip -n "pal-$LAB-n1-p1" link set eth0 mtu 1420
  ip -n "pal-$LAB-n2-p1" link set eth0 mtu 1420
}

measure() { # mode label [wireguard-go]
  "$BIN" lab up --name "$LAB" --nodes 2 --pods-per-node 1 --encryption "$1" >/dev/null
  local a="pal-$LAB-n1-p1" b="pal-$LAB-n2-p1" dst
  dst=$(python3 -c 'import json,sys; print([p["ip"] for p in json.load(open(sys.argv[1]))["pods"] if p["name"]=="n2-p1"][0])' \
    "/run/palisade/labs/$LAB/state.json")
  if [ "${3:-}" = wireguard-go ]; then
    wireguard_go
    ip netns exec "$a" ping -q -c 3 -W 2 "$dst" >/dev/null
  fi
  ip netns exec "$b" iperf3 -s -1 -p 5201 >/dev/null 2>&1 &
  local server=$!
  sleep 0.5
  local gbps rtt
  gbps=$(ip netns exec "$a" iperf3 -c "$dst" -p 5201 -t "$SECS" -J | python3 -c \
    'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))')
  rtt=$(ip netns exec "$a" ping -q -c 50 -i 0.02 "$dst" | awk -F/ '/^rtt/ {print $5}')
  wait "$server" || true
  printf '| %-44s | %8s | %8s ms |\n' "$2" "$gbps" "$rtt"
  if [ "${#WGO_PIDS[@]}" -gt 0 ]; then
    kill "${WGO_PIDS[@]}" 2>/dev/null || true
    wait "${WGO_PIDS[@]}" 2>/dev/null || true
    WGO_PIDS=()
  fi
  "$BIN" lab down --name "$LAB" >/dev/null
}

echo "pod-to-pod across nodes, iperf3 TCP ${SECS} s (load average before: $(cut -d' ' -f1-3 /proc/loadavg))"
printf '| %-44s | %8s | %11s |\n' "path (n1-p1 -> n2-p1)" "Gbit/s" "ping avg"
printf '| %-44s | %8s | %11s |\n' "---" "---:" "---:"
measure disabled "plain routing on the underlay (no encryption)"
measure wireguard "Palisade agents' WireGuard (userspace)"
measure disabled "wireguard-go $(wireguard-go --version | sed -n 's/.* v/v/p') between the nodes" wireguard-go
