#!/usr/bin/env bash
# `make demo`: a local Palisade cluster out of network namespaces (a 3-voter control plane, an
# agent per node, pods made by the CNI plugin), the reachability matrix before and after a policy
# applied to the control plane, and where the policy's propagation shows.
# Usage: demo.sh PALISADE_BIN LAB_NAME
set -euo pipefail
bin=$1
lab=$2
step() { printf '\n\033[1m== %s ==\033[0m\n' "$*"; }
policy=$(mktemp --suffix=.yaml)
trap 'rm -f "$policy"' EXIT

step "Palisade lab: 3 control-plane voters, 2 nodes x 3 pods (lab '$lab')"
"$bin" lab down --name "$lab" >/dev/null
"$bin" lab up --name "$lab" --nodes 2 --pods-per-node 3

step "The control plane"
"$bin" cluster status --lab "$lab"
"$bin" node list --lab "$lab"

step "Before any policy: every pod reaches every other pod (TCP 80)"
"$bin" lab matrix --name "$lab" --port 80 --protocol tcp || true

cat >"$policy" <<'YAML'
# n1-p2 is the database: only n2-p1 (the API, on the other node) may connect, and only to TCP 80.
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: db-from-api
  namespace: default
spec:
  endpointSelector:
    matchLabels: {app: n1-p2}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: n2-p1}
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
---
# n2-p3 sends nothing anywhere (Kubernetes NetworkPolicy, applied unchanged).
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: n2-p3-no-egress
  namespace: default
spec:
  podSelector:
    matchLabels: {app: n2-p3}
  policyTypes: [Egress]
YAML

step "Apply two policies to the control plane and wait until every node enforces them"
cat "$policy"
"$bin" policy apply --lab "$lab" -f "$policy"
"$bin" policy wait --lab "$lab" --timeout 30s

step "After: only n2-p1 reaches n1-p2, and n2-p3 reaches nobody"
"$bin" lab matrix --name "$lab" --port 80 --protocol tcp || true

step "The denied connections, as flows (hubble observe --verdict DROPPED)"
"$bin" observe --lab "$lab" --verdict DROPPED --last 8 || true

step "Pod traffic between nodes is encrypted: WireGuard between the agents (cilium encrypt status)"
"$bin" encrypt status --lab "$lab"

step "What node n1's agent enforces"
"$bin" agent status --socket "/run/palisade/labs/$lab/agents/n1/agent.sock"

step "Done"
cat <<TXT
The lab is still running. Try:
  $bin policy list --lab $lab
  $bin policy delete --lab $lab ciliumnetworkpolicy/default/db-from-api && $bin policy wait --lab $lab
  $bin lab probe --name $lab n1-p1 n1-p2 --port 80
  $bin identity list --lab $lab
  $bin encrypt rotate --lab $lab --node n1 && $bin encrypt status --lab $lab
  $bin observe --lab $lab --verdict DROPPED --follow        (Ctrl-C to stop)
  $bin observe --lab $lab --from-pod default/n2-p1 -o json
Tear it down with:
  make demo-down        (or: $bin lab down --name $lab)
TXT
