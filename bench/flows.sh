#!/usr/bin/env bash
# Flow pipeline throughput (issue 7, item 7): how many flow events one agent's pipeline (ring
# buffer reader, decode, enrichment, metrics, flow ring) takes with zero loss, and its CPU.
# A real `palisade agent` in its own network namespace with one endpoint (a veth whose pod end
# lives in a second namespace); the pod sends UDP datagrams to ever new destination ports, so
# every datagram is a new connection and the datapath emits one flow event for it. Offered rates
# step up; for each step the agent's counters give the events processed and lost (kernel ring
# buffer full), /proc the agent's CPU time. Also prints the flow ring's history window at a
# given rate (default 576 flows/s) for the default ring size (4096 flows).
# With FOLLOW=1 a `palisade observe -f -o json` client follows every flow throughout (its output
# discarded), so the agent also builds and streams each flow.
# With POLICY=1 a CiliumNetworkPolicy allows the pod's egress to the datagrams' destinations, so
# every flow carries a rule id the agent names (`egress_allowed_by`) when the flow is built.
# Usage (root): [FOLLOW=1] [POLICY=1] bench/flows.sh [PALISADE_BIN] [SECONDS_PER_STEP] [RATES...]
set -euo pipefail
bin=${1:-${CARGO_TARGET_DIR:-/var/tmp/palisade-target}/release/palisade}
secs=${2:-3}
shift $(( $# > 2 ? 2 : $# )) || true
rates=${*:-5000 10000 20000 40000 80000 160000}
ns=pal-bench-flows-$$
pod=pal-bench-flowp-$$
work=$(mktemp -d)
pins=/sys/fs/bpf/palisade-bench-flows-$$
cleanup() {
  [ -n "${follower:-}" ] && kill "$follower" 2>/dev/null || true
  [ -n "${agent:-}" ] && kill "$agent" 2>/dev/null || true
  ip netns del "$pod" 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$work" "$pins"
}
trap cleanup EXIT

ip netns add "$ns"
ip netns add "$pod"
ip -n "$ns" link set lo up
ip -n "$pod" link set lo up
ip -n "$ns" link add lxcflow type veth peer name eth0 netns "$pod"
ip -n "$ns" link set lxcflow up
ip -n "$ns" addr add 10.241.0.1/32 dev lxcflow
ip -n "$ns" route add 10.241.0.10/32 dev lxcflow
ip -n "$pod" link set eth0 up
ip -n "$pod" addr add 10.241.0.10/32 dev eth0
ip -n "$pod" route add 10.241.0.1/32 dev eth0
ip -n "$pod" route add default via 10.241.0.1 dev eth0
# The datagrams go to an address nobody answers: only the datapath's view of them matters.
ip -n "$ns" route add blackhole 10.242.0.0/16

policy_args=()
if [ "${POLICY:-0}" = 1 ]; then
  mkdir -p "$work/policies"
  cat > "$work/policies/load-out.yaml" <<'YAML'
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: load-out, namespace: bench}
spec:
  endpointSelector: {matchLabels: {app: load}}
  egress:
    - toCIDR: [10.242.0.0/16]
YAML
  policy_args=(--policy-dir "$work/policies")
fi
"$bin" agent run --netns "$ns" --node bench --pod-cidr 10.241.0.0/24 --socket "$work/agent.sock" \
  --state-dir "$work/state" --bpf-pin-dir "$pins" --metrics-listen 127.0.0.1:9962 \
  --hubble-listen 127.0.0.1:4244 "${policy_args[@]}" > "$work/agent.log" 2>&1 &
agent=$!
for _ in $(seq 1 100); do [ -S "$work/agent.sock" ] && break; sleep 0.1; done
python3 - "$work/agent.sock" "$pod" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
s.sendall((json.dumps({"op": "endpointAdd", "containerId": "c1", "ifname": "eth0",
    "netns": f"/run/netns/{sys.argv[2]}", "hostIface": "lxcflow", "podNamespace": "bench",
    "podName": "load-1", "labels": {"app": "load"}, "serviceAccount": None,
    "ips": ["10.241.0.10"]}) + "\n").encode())
r = json.loads(s.makefile().readline())
if r.get("result") == "error": raise SystemExit(f"agent: {r}")
PY
sleep 1
if [ "${FOLLOW:-0}" = 1 ]; then
  ip netns exec "$ns" "$bin" observe --server 127.0.0.1:4244 -f -o json > /dev/null 2>&1 &
  follower=$!
  sleep 1
fi

# Counter values from the agent's /metrics: processed flows, kernel losses.
counters() {
  ip netns exec "$ns" python3 - <<'PY'
import urllib.request
text = urllib.request.urlopen("http://127.0.0.1:9962/metrics").read().decode()
seen = lost = 0.0
for line in text.splitlines():
    if line.startswith("hubble_flows_processed_total"):
        seen += float(line.rsplit(" ", 1)[1])
    if line.startswith('palisade_agent_flows_lost_total{source="kernel"}'):
        lost += float(line.rsplit(" ", 1)[1])
print(int(seen), int(lost))
PY
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$agent/stat"; }
hz=$(getconf CLK_TCK)

printf '%-12s %-12s %-12s %-10s %-10s\n' offered/s sent/s processed/s lost agent-CPU
for rate in $rates; do
  read -r seen0 lost0 < <(counters)
  cpu0=$(cpu_ticks)
  sent=$(ip netns exec "$pod" python3 - "$rate" "$secs" <<'PY'
import socket, sys, time
rate, secs = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent, start, port, host = 0, time.monotonic(), 1, 0
while True:
    now = time.monotonic() - start
    if now >= secs:
        break
    due = int(now * rate) + 1
    while sent < due:
        # A new (address, port) each datagram: a new connection, one flow event.
        port = port % 65535 + 1
        if port == 1:
            host = (host + 1) % 65536
        s.sendto(b"x", (f"10.242.{host >> 8}.{host & 255}", port))
        sent += 1
print(sent)
PY
)
  sleep 1.5
  read -r seen1 lost1 < <(counters)
  cpu1=$(cpu_ticks)
  python3 - "$rate" "$sent" "$secs" "$((seen1 - seen0))" "$((lost1 - lost0))" "$((cpu1 - cpu0))" "$hz" <<'PY'
import sys
rate, sent, secs, seen, lost, ticks, hz = sys.argv[1:]
secs = float(secs)
cpu = int(ticks) / int(hz) / secs * 100
print(f"{rate:<12} {int(sent)/secs:<12.0f} {int(seen)/secs:<12.0f} {lost:<10} {cpu:.0f}%")
PY
done
if [ "${POLICY:-0}" = 1 ]; then
  # The measured flows must have named the policy: check the newest one.
  ip netns exec "$ns" "$bin" observe --server 127.0.0.1:4244 --last 1 -o json |
    python3 -c 'import json, sys
f = json.loads(sys.stdin.readline())
names = [p.get("name") for p in f.get("egress_allowed_by", [])]
sys.exit(0 if names == ["load-out"] else f"POLICY=1: the newest flow names {names}, not load-out")'
  echo "the flows name their policy (egress_allowed_by: load-out)"
fi
python3 - <<'PY'
ring, rate = 4096, 576
print(f"history window: a {ring}-flow ring at {rate} flows/s holds {ring / rate:.1f} s of flows")
PY
