#!/usr/bin/env bash
# Node-to-node throughput and latency between two network namespaces joined by a veth, in one
# run: plain routing over the veth, Palisade's userspace tunnel (release `palisade-wg`, boringtun's
# noise::Tunn over TUN; with and without TUN TSO/GRO and UDP GSO/GRO), and Debian's
# wireguard-go set up the same way (MTU 1420, pod range routed into the interface).
# iperf3 TCP from pod A to pod B; ping for the round trip.
# Usage (root): bench/wireguard.sh [SECONDS]     Figures go to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-5}"
for tool in ip iperf3 wireguard-go python3 ping; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
cargo build --release -q -p palisade-keymgr --bin palisade-wg
BIN="${CARGO_TARGET_DIR:-target}/release/palisade-wg"

ID="$$"
NSA="pwb-a-$ID"
NSB="pwb-b-$ID"
DIR="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$NSA" 2>/dev/null || true
  ip netns del "$NSB" 2>/dev/null || true
  rm -f "/var/run/wireguard/go-a$ID.sock" "/var/run/wireguard/go-b$ID.sock"
  rm -rf "$DIR"
}
trap cleanup EXIT

# Underlay 10.250.0.0/24 on the veth; pod ranges 10.251.1.0/24 (A) and 10.251.2.0/24 (B), the pod
# address on lo. Only these namespaces see any of it.
ip netns add "$NSA"
ip netns add "$NSB"
ip link add "ua$ID" netns "$NSA" type veth peer name "ub$ID" netns "$NSB"
for side in a b; do
  ns="pwb-$side-$ID"
  n=$([ "$side" = a ] && echo 1 || echo 2)
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "10.250.0.$n/24" dev "u$side$ID"
  ip -n "$ns" link set "u$side$ID" up
  ip -n "$ns" addr add "10.251.$n.1/32" dev lo
done

# route_via MODE: point each node's route to the other's pod range at the mode's interface.
route_via() {
  case "$1" in
    veth)
      ip -n "$NSA" route replace 10.251.2.0/24 via 10.250.0.2 src 10.251.1.1
      ip -n "$NSB" route replace 10.251.1.0/24 via 10.250.0.1 src 10.251.2.1 ;;
    *)
      ip -n "$NSA" route replace 10.251.2.0/24 dev "$1-a$ID" src 10.251.1.1
      ip -n "$NSB" route replace 10.251.1.0/24 dev "$1-b$ID" src 10.251.2.1 ;;
  esac
}

measure() {
  local name="$1"
  ip netns exec "$NSB" iperf3 -s -1 -B 10.251.2.1 -p 5201 >/dev/null 2>&1 &
  local server=$!
  sleep 0.5
  local json
  json=$(ip netns exec "$NSA" iperf3 -c 10.251.2.1 -B 10.251.1.1 -p 5201 -t "$SECS" -J)
  wait "$server" || true
  local gbps rtt
  gbps=$(python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.3f" % (d["end"]["sum_received"]["bits_per_second"]/1e9))' <<<"$json")
  rtt=$(ip netns exec "$NSA" ping -q -c 50 -i 0.02 -I 10.251.1.1 10.251.2.1 |
    sed -n 's|.*= [0-9.]*/\([0-9.]*\)/.*|\1|p')
  printf '%-28s %10s Gbit/s   ping rtt avg %s ms\n' "$name" "$gbps" "$rtt"
  RESULTS+=("$name $gbps")
}
RESULTS=()

echo "== node-to-node throughput, iperf3 TCP ${SECS}s, $(nproc) cores, $(uname -r) =="

# 1. Plain routing over the veth.
route_via veth
measure "plain veth routing"

# 2. Palisade userspace tunnel, with UDP GSO/GRO on the underlay socket (the default) and without.
KA=$("$BIN" pubkey --key-dir "$DIR/ka" 2>/dev/null)
KB=$("$BIN" pubkey --key-dir "$DIR/kb" 2>/dev/null)
palisade() { # palisade LABEL [EXTRA FLAGS]
  local label="$1"; shift
  ip netns exec "$NSA" "$BIN" up --key-dir "$DIR/ka" --ifname "pal-a$ID" --listen 10.250.0.1:51820 \
    --peer "b,$KB,1,10.250.0.2:51820,10.251.2.0/24" "$@" 2>>"$DIR/pal-a.log" &
  PIDS+=($!)
  ip netns exec "$NSB" "$BIN" up --key-dir "$DIR/kb" --ifname "pal-b$ID" --listen 10.250.0.2:51820 \
    --peer "a,$KA,1,10.250.0.1:51820,10.251.1.0/24" "$@" 2>>"$DIR/pal-b.log" &
  PIDS+=($!)
  for _ in $(seq 50); do
    ip -n "$NSA" link show "pal-a$ID" >/dev/null 2>&1 && ip -n "$NSB" link show "pal-b$ID" >/dev/null 2>&1 && break
    sleep 0.1
  done
  route_via pal
  ip netns exec "$NSA" ping -q -c 3 -W 2 -I 10.251.1.1 10.251.2.1 >/dev/null
  measure "$label"
  kill "${PIDS[@]}"; wait 2>/dev/null || true; PIDS=()
  # The TUN devices go with the processes; wait so the next run can reuse the names.
  while ip -n "$NSA" link show "pal-a$ID" >/dev/null 2>&1 || ip -n "$NSB" link show "pal-b$ID" >/dev/null 2>&1; do
    sleep 0.1
  done
}
palisade "palisade userspace"
palisade "palisade, no TUN TSO/GRO" --no-tun-offload
palisade "palisade, no offloads" --no-tun-offload --no-udp-offload

# 3. Debian's wireguard-go with the same addressing; keys made here (x25519 in a few lines of
# Python, so no `wg` tool is needed) and handed over its UAPI socket.
read -r PA PUBA PB PUBB < <(python3 bench/wg_keys.py)
uapi() { python3 bench/wg_uapi.py "$1" "$2"; }
for side in a b; do
  ns="pwb-$side-$ID"
  ip netns exec "$ns" env WG_PROCESS_FOREGROUND=1 wireguard-go "go-$side$ID" >"$DIR/go-$side.log" 2>&1 &
  PIDS+=($!)
done
for _ in $(seq 50); do
  [ -S "/var/run/wireguard/go-a$ID.sock" ] && [ -S "/var/run/wireguard/go-b$ID.sock" ] && break
  sleep 0.1
done
uapi "/var/run/wireguard/go-a$ID.sock" "set=1
private_key=$PA
listen_port=51821
public_key=$PUBB
endpoint=10.250.0.2:51821
allowed_ip=10.251.2.0/24
"
uapi "/var/run/wireguard/go-b$ID.sock" "set=1
private_key=$PB
listen_port=51821
public_key=$PUBA
endpoint=10.250.0.1:51821
allowed_ip=10.251.1.0/24
"
for side in a b; do
  ip -n "pwb-$side-$ID" link set "go-$side$ID" mtu 1420 up
done
route_via go
ip netns exec "$NSA" ping -q -c 3 -W 2 -I 10.251.1.1 10.251.2.1 >/dev/null
measure "wireguard-go $(wireguard-go --version | sed -n 's/.* v/v/p')"

echo "== ratios =="
python3 - "${RESULTS[@]}" <<'EOF'
import sys
vals = {}
for item in sys.argv[1:]:
    name, v = item.rsplit(" ", 1); vals[name] = float(v)
names = list(vals)
plain, pal, _, pal_plain, wgo = (vals[n] for n in names)
print("palisade / plain veth: %.1f%%" % (100 * pal / plain))
print("wireguard-go / plain veth: %.1f%%" % (100 * wgo / plain))
print("palisade / wireguard-go: %.2fx" % (pal / wgo))
print("palisade without offloads / wireguard-go: %.2fx" % (pal_plain / wgo))
EOF
