#!/usr/bin/env bash
# Runs Palisade's benchmarks and prints their figures; docs/BENCHMARKS.md records the latest run.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== policy engine (criterion) =="
cargo bench -p palisade-policy
echo "== gossip state signatures (sign / verify per state) =="
cargo bench -p palisade-node-agent --bench gossip_sign
