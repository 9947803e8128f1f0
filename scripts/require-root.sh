#!/usr/bin/env bash
# Palisade's tests and lab create network namespaces and load eBPF programs: they need root.
if [ "$(id -u)" -ne 0 ]; then
  echo "error: this target needs root (network namespaces, eBPF); rerun with sudo" >&2
  exit 2
fi
