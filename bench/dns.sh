#!/usr/bin/env bash
# DNS proxy cost (issue 8): in a 1-node lab, dnsmasq (`palisade lab dns`) in n1-p2 serves a
# test zone; `palisade workload resolve --count N` in n1-p1 sends N A queries one after the
# other over UDP (each waits for its answer, so queries/s is the rate with one in flight), first
# with no policy (direct: eBPF datapath only), then with a CiliumNetworkPolicy whose `rules.dns`
# steers n1-p1's queries through the agent's DNS proxy, for a name the proxy learns (its address
# programmed into engine, policy maps and ipcache before every answer is released; the address
# is already known after the first) and for a REFUSED name (answered by the proxy itself).
# Usage (root): bench/dns.sh [PALISADE_BIN] [QUERIES]     Figures go to stdout.
set -euo pipefail
bin=${1:-${CARGO_TARGET_DIR:-/var/tmp/palisade-target}/release/palisade}
count=${2:-2000}
lab=bdns$$
work=$(mktemp -d)
dns_pid=
cleanup() {
  [ -n "$dns_pid" ] && kill "$dns_pid" 2>/dev/null && wait "$dns_pid" 2>/dev/null || true
  "$bin" lab down --name "$lab" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

"$bin" lab up --name "$lab" --nodes 1 --pods-per-node 2 --control-plane-voters 1 \
  --external web=10.96.0.11 >/dev/null
"$bin" lab dns --name "$lab" --host n1-p2 --ttl 300 \
  --record api.example.test=10.96.0.11 --record blocked.test=10.96.0.12 >/dev/null &
dns_pid=$!
sleep 1

run() { # PATH NAME
  local out
  out=$(ip netns exec "pal-$lab-n1-p1" "$bin" workload resolve "$2" --server 10.200.1.12 \
    --count "$count")
  python3 - "$1" "$2" "$out" <<'PY'
import json, sys
path, name, out = sys.argv[1:]
r = json.loads(out)
print(f"| {path} | {name} | {r['rcode']} | {r['qps']:,} | {r['p50_us']/1000:.3f} | {r['p99_us']/1000:.3f} |")
PY
}

echo "lab: 1 node, dnsmasq in n1-p2, client n1-p1, ${count} sequential UDP queries per row"
echo
echo "| path | name | rcode | queries/s | p50 ms | p99 ms |"
echo "| --- | --- | --- | ---: | ---: | ---: |"
run direct api.example.test
cat >"$work/dns.yaml" <<'YAML'
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench-dns}
spec:
  endpointSelector: {matchLabels: {app: n1-p1}}
  egress:
  - toEndpoints: [{matchLabels: {app: n1-p2}}]
    toPorts:
    - ports: [{port: '53', protocol: UDP}]
      rules:
        dns: [{matchPattern: '*.example.test'}]
  - toFQDNs: [{matchPattern: '*.example.test'}]
    toPorts: [{ports: [{port: '80', protocol: TCP}]}]
YAML
"$bin" policy apply --lab "$lab" -f "$work/dns.yaml" >/dev/null
"$bin" policy wait --lab "$lab" --timeout 20s >/dev/null
sleep 1
run "DNS proxy" api.example.test
run "DNS proxy" blocked.test
"$bin" agent status --socket "/run/palisade/labs/$lab/agents/n1/agent.sock" -o json \
  | python3 -c 'import json,sys; print("\nn1 dns proxy: queriesTotal =", json.load(sys.stdin)["dnsProxy"]["queriesTotal"])'
