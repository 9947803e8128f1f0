#!/usr/bin/env bash
# Gossip's CPU at the lab's default interval (issue 10): a cluster lab of NODES nodes (gossip every
# 300 ms, every state signed), left idle for a few seconds, then each agent's `gossip` thread and
# whole process sampled from /proc (utime + stime, clock ticks) SECONDS apart.
# Usage (root): bench/gossip_cpu.sh [PALISADE_BIN] [NODES] [SECONDS]
set -euo pipefail
bin=${1:-${CARGO_TARGET_DIR:-/var/tmp/palisade-target}/debug/palisade}
nodes=${2:-3}
secs=${3:-60}
lab=gcpu-$$
trap '"$bin" lab down --name "$lab" >/dev/null 2>&1 || true' EXIT
"$bin" lab up --name "$lab" --nodes "$nodes" --pods-per-node 1 >/dev/null
sleep 5
mapfile -t pids < <(pgrep -f -- "agent run .*pal-$lab-" || true)
[ "${#pids[@]}" -eq "$nodes" ] || { echo "expected $nodes agents, found ${#pids[@]}" >&2; exit 1; }
tck=$(getconf CLK_TCK)
# One line per agent: pid, ticks of its gossip thread, ticks of the whole process.
snap() {
  for p in "${pids[@]}"; do
    g=0
    for t in /proc/"$p"/task/*; do
      [ "$(cat "$t/comm")" = gossip ] && g=$(awk '{print $14 + $15}' "$t/stat")
    done
    echo "$p $g $(awk '{print $14 + $15}' /proc/"$p"/stat)"
  done
}
before=$(snap)
sleep "$secs"
after=$(snap)
paste <(echo "$before") <(echo "$after") | awk -v s="$secs" -v t="$tck" \
  '{printf "agent %s: gossip thread %.2f%% of a core, whole agent %.2f%%\n", $1, 100*($5-$2)/t/s, 100*($6-$3)/t/s}'
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
