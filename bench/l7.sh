#!/usr/bin/env bash
# L7 proxy cost (issue 8, item 4): in a 2-node lab (WireGuard between nodes, as `lab up` sets it
# up), an HTTP server (`palisade workload serve --http`) in n2-p1; `palisade workload load` from
# n2-p2 (same node) and n1-p1 (across nodes) sends GET /get over 8 kept-alive connections, first
# with no policy (direct: eBPF datapath only), then with a CiliumNetworkPolicy whose HTTP rules
# send both clients through n2's agent proxy. Each path at a fixed 1,000 requests/s (latency
# counted from each request's scheduled time) and at saturation (closed loop).
# Usage (root): bench/l7.sh [PALISADE_BIN] [SECONDS]     Figures go to stdout.
set -euo pipefail
bin=${1:-${CARGO_TARGET_DIR:-/var/tmp/palisade-target}/release/palisade}
secs=${2:-10}
lab=bl7$$
work=$(mktemp -d)
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  "$bin" lab down --name "$lab" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

"$bin" lab up --name "$lab" --nodes 2 --pods-per-node 2 >/dev/null
ip netns exec "pal-$lab-n2-p1" "$bin" workload serve --http 8080 --name n2-p1 2>/dev/null &
server_pid=$!
sleep 0.5

run() { # MODE CLIENT RATE
  local out
  out=$(ip netns exec "pal-$lab-$2" "$bin" workload load --to 10.200.2.11 --port 8080 \
    --path /get --rate "$3" --duration "${secs}s" --connections 8)
  python3 - "$1" "$2" "$3" "$out" <<'PY'
import json, sys
mode, client, rate, out = sys.argv[1:]
r = json.loads(out)
where = "same node" if client == "n2-p2" else "cross node"
target = "saturation" if rate == "0" else f"{rate}/s"
ok = r["statuses"].get("200", 0)
print(f"| {mode} | {where} | {target} | {r['rps']:.0f} | {r['p50_us']/1000:.3f} | {r['p99_us']/1000:.3f} | {ok}/{r['requests']} ok, {r['errors']} errors |")
PY
}

echo "lab: 2 nodes (WireGuard), server n2-p1:8080, 8 connections, ${secs}s per row"
echo
echo "| path | client | load | req/s | p50 ms | p99 ms | answers |"
echo "| --- | --- | --- | ---: | ---: | ---: | --- |"
for client in n2-p2 n1-p1; do
  run direct "$client" 1000
  run direct "$client" 0
done

cat >"$work/l7.yaml" <<'YAML'
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench-l7}
spec:
  endpointSelector: {matchLabels: {app: n2-p1}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: n1-p1}}, {matchLabels: {app: n2-p2}}]
    toPorts:
    - ports: [{port: '8080', protocol: TCP}]
      rules:
        http:
        - {method: GET, path: /get}
        - {method: POST, path: /post}
YAML
"$bin" policy apply --lab "$lab" -f "$work/l7.yaml" >/dev/null
"$bin" policy wait --lab "$lab" --timeout 20s >/dev/null
for client in n2-p2 n1-p1; do
  run "L7 proxy" "$client" 1000
  run "L7 proxy" "$client" 0
done
# Proof that the L7 rows went through the proxy: its request count.
"$bin" agent status --socket "/run/palisade/labs/$lab/agents/n2/agent.sock" -o json \
  | python3 -c 'import json,sys; print("\nn2 proxy: requestsTotal =", json.load(sys.stdin)["l7Proxy"]["requestsTotal"])'
