#!/usr/bin/env bash
# Policy propagation (issue 5, item 5; issue 4, item 3): in a lab running Palisade (3 voters over
# mTLS, N nodes with an agent each, pods made by the CNI plugin), apply a policy change to the
# control plane and wait until every node acknowledges it, K times. Prints:
#   - apply+wait wall time per change as the CLI sees it (two CLI processes, each entering the
#     control plane's namespace and opening TLS connections: an upper bound);
#   - the agents' own commit→enforced latency (palisade_agent_policy_propagation_seconds: from
#     the change's commit on the replicated clock to the end of the map sync on that node).
# Usage (root): bench/propagation.sh [PALISADE_BIN] [NODES] [PODS_PER_NODE] [CHANGES]
set -euo pipefail
bin=${1:-${CARGO_TARGET_DIR:-/var/tmp/palisade-target}/release/palisade}
nodes=${2:-4}
pods=${3:-10}
changes=${4:-50}
lab=bprop$$
work=$(mktemp -d)
cleanup() {
  "$bin" lab down --name "$lab" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

"$bin" lab up --name "$lab" --nodes "$nodes" --pods-per-node "$pods" >/dev/null
echo "lab: 3 voters, $nodes nodes x $pods pods; $changes policy changes"

times=()
for i in $(seq 1 "$changes"); do
  # Each change moves which pod may reach n1-p1: a real recompile on every node.
  peer="n$(( (i % nodes) + 1 ))-p$(( (i % pods) + 1 ))"
  cat >"$work/p.yaml" <<YAML
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: n1-p1}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: $peer}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
YAML
  t0=$(date +%s%N)
  "$bin" policy apply --lab "$lab" -f "$work/p.yaml" >/dev/null
  "$bin" policy wait --lab "$lab" --timeout 30s >/dev/null
  t1=$(date +%s%N)
  times+=($(( (t1 - t0) / 1000 )))
done
printf '%s\n' "${times[@]}" | sort -n >"$work/t"
pct() { awk -v p="$1" '{a[NR]=$1} END {i=int(NR*p/100); if (i<1) i=1; printf "%.1f", a[i]/1000}' "$work/t"; }
echo "apply + wait (CLI, ms): p50 $(pct 50)  p90 $(pct 90)  p99 $(pct 99)  max $(pct 100)"

for i in $(seq 1 "$nodes"); do
  m=$(ip netns exec "pal-$lab-n$i" bash -c "exec 3<>/dev/tcp/10.98.0.$((10 + i))/9962; printf 'GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n' >&3; cat <&3")
  sum=$(echo "$m" | awk '/^palisade_agent_policy_propagation_seconds_sum /{print $2}')
  count=$(echo "$m" | awk '/^palisade_agent_policy_propagation_seconds_count /{print $2}')
  le10=$(echo "$m" | awk -F'[{}" ]+' '/^palisade_agent_policy_propagation_seconds_bucket/ && /le="0.01"/ {print $NF}')
  le25=$(echo "$m" | awk -F'[{}" ]+' '/^palisade_agent_policy_propagation_seconds_bucket/ && /le="0.025"/ {print $NF}')
  awk -v s="$sum" -v c="$count" -v a="$le10" -v b="$le25" -v n="n$i" \
    'BEGIN {printf "agent %s: %d changes enforced, mean commit→enforced %.1f ms, ≤10 ms: %d, ≤25 ms: %d\n", n, c, (c ? s / c * 1000 : 0), a, b}'
done
