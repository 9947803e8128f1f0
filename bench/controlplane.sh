#!/usr/bin/env bash
# Control-plane write benchmark: 3 voters of the release `palisade-controlplane` on loopback
# (RocksDB, log fsynced on every append), driven over REST by the cp_bench example.
# Usage: bench/controlplane.sh [REQUESTS]   (figures go to stdout; see docs/BENCHMARKS.md)
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS="${1:-3000}"
cargo build --release -p palisade-control-plane --bin palisade-controlplane --example cp_bench
TARGET="${CARGO_TARGET_DIR:-target}/release"
BIN="$TARGET/palisade-controlplane"
BENCH="$TARGET/examples/cp_bench"
DIR="$(mktemp -d)"
PIDS=()
cleanup() {
  status=$?
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$status" -ne 0 ]; then
    # A failed run says why: the voters' last words.
    for i in 1 2 3; do
      echo "--- voter $i log (last lines) ---" >&2
      tail -15 "$DIR/log$i" >&2 2>/dev/null || true
    done
  fi
  rm -rf "$DIR"
}
trap cleanup EXIT

BASE=$((20000 + RANDOM % 20000))
PEERS=()
for i in 1 2 3; do
  PEERS+=(--peer "$i=127.0.0.1:$((BASE + i))=127.0.0.1:$((BASE + 10 + i))")
done
for i in 1 2 3; do
  INIT=()
  [ "$i" = 1 ] && INIT=(--init)
  "$BIN" --id "$i" --data-dir "$DIR/d$i" --raft-listen "127.0.0.1:$((BASE + i))" \
    --api-listen "127.0.0.1:$((BASE + 10 + i))" "${PEERS[@]}" "${INIT[@]}" \
    >"$DIR/log$i" 2>&1 &
  PIDS+=($!)
done

LEADER_API=""
for _ in $(seq 1 100); do
  LEADER_API=$(curl -fsS "127.0.0.1:$((BASE + 11))/v1/cluster/status" 2>/dev/null |
    sed -n 's/.*"leader_api_addr":"\([^"]*\)".*/\1/p') || true
  [ -n "$LEADER_API" ] && break
  sleep 0.1
done
[ -n "$LEADER_API" ] || { echo "no leader" >&2; exit 1; }
echo "leader API: $LEADER_API; cores: $(nproc); load: $(cut -d' ' -f1-3 /proc/loadavg)"

"$BENCH" --api "$LEADER_API" --mode latency --requests 1000 --concurrency 1 --prefix lat
"$BENCH" --api "$LEADER_API" --mode throughput --requests "$REQUESTS" --concurrency 64 --prefix tp
"$BENCH" --api "$LEADER_API" --mode identities --requests "$REQUESTS" --concurrency 64 --prefix id
"$BENCH" --api "$LEADER_API" --mode identities --requests 100000 --concurrency 64 --prefix gc \
  | sed 's/^/gc-setup: /'
"$BENCH" --api "$LEADER_API" --mode gc
"$BENCH" --api "127.0.0.1:$((BASE + 13))" --mode latency --requests 300 --concurrency 1 --prefix fwd \
  | sed 's/^/via-follower-or-leader(member 3): /'
