#!/usr/bin/env bash
# `make demo`: the zero-trust tutorial end to end on this host (`palisade tutorial`): a lab with a
# 3-voter control plane and 2 nodes with WireGuard, a three-tier app in namespace `demo`, the
# policies of deploy/examples/zero-trust/ applied one at a time, each step probed with real
# traffic and printed beside its expectation, then the tutorial's checklist. The lab keeps running
# until `make demo-down`. Exit status: the tutorial's (0 every step matched, 1 a mismatch).
# Usage: demo.sh PALISADE_BIN LAB_NAME
set -euo pipefail
bin=$1
lab=$2
step() { printf '\n\033[1m== %s ==\033[0m\n' "$*"; }

rc=0
"$bin" tutorial --lab "$lab" || rc=$?
if [ "$rc" -ge 2 ]; then
  echo "make demo: the tutorial could not run (see above); the lab is left for inspection: $bin lab status --name $lab" >&2
  exit "$rc"
fi

step "The fabric at a glance (cilium status)"
"$bin" status --lab "$lab" || true

step "The denied flows of namespace demo (hubble observe -n demo --verdict DROPPED)"
"$bin" observe --lab "$lab" -n demo --verdict DROPPED --last 10 || true

step "Pod traffic between nodes is encrypted (cilium encrypt status)"
"$bin" encrypt status --lab "$lab"

step "The lab is still running"
cat <<TXT
  $bin ui --lab $lab              the web UI (service map, live flows): open the URL it prints
                                  (http://127.0.0.1:12000/#token=...), namespace demo; Ctrl-C to stop
  $bin observe --lab $lab -n demo --verdict DROPPED --follow     (Ctrl-C to stop)
  $bin observe --lab $lab -n demo --protocol http
  $bin policy list --lab $lab
  $bin lab status --name $lab
Tear it down with:
  make demo-down        (or: $bin lab down --name $lab)
TXT
exit "$rc"
