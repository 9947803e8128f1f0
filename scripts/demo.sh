#!/usr/bin/env bash
# `make demo`: a local cluster of network namespaces, with the reachability matrix before policy.
# Usage: demo.sh PALISADE_BIN LAB_NAME
set -euo pipefail
bin=$1
lab=$2
step() { printf '\n\033[1m== %s ==\033[0m\n' "$*"; }

step "Palisade lab: 2 nodes x 3 pods (lab '$lab')"
"$bin" lab down --name "$lab" >/dev/null
"$bin" lab up --name "$lab" --nodes 2 --pods-per-node 3

step "Nodes and pods"
"$bin" lab status --name "$lab"

step "Reachability, TCP port 80 (no policy: every pod reaches every other pod)"
"$bin" lab matrix --name "$lab" --port 80 --protocol tcp

step "Reachability, UDP port 80"
"$bin" lab matrix --name "$lab" --port 80 --protocol udp

step "Done"
cat <<TXT
The lab is still running. Try:
  $bin lab status --name $lab
  $bin lab probe --name $lab n1-p1 n2-p3 --port 80 --protocol tcp
Tear it down with:
  make demo-down        (or: $bin lab down --name $lab)
TXT
