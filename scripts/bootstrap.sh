#!/usr/bin/env bash
# Takes a fresh Debian machine of this project's kind to a state where `make test` and
# `make demo` build and run. Idempotent: every step checks before it acts, so a second run is
# a fast no-op. Versions are pinned here and in rust-toolchain.toml files.
set -euo pipefail

# --- pinned versions -------------------------------------------------------------------------
LLVM_MAJOR=22                 # must equal the LLVM major of the nightly that builds the eBPF crate
BPF_LINKER_VERSION=0.13.0     # bpf-linker release linked against Debian's llvm-${LLVM_MAJOR}
NIGHTLY=nightly               # the nightly channel installed on this machine kind (rustc 1.97, LLVM 22)

APT_PACKAGES=(
  "llvm-${LLVM_MAJOR}-dev" "libpolly-${LLVM_MAJOR}-dev" zlib1g-dev libzstd-dev  # bpf-linker
  librocksdb-dev libclang-dev                                                   # rocksdb crate
  protobuf-compiler                                                             # prost / tonic
  iproute2 iputils-ping nftables iptables iperf3 tcpdump ethtool               # lab + benches
  redis-server dnsmasq wireguard-go                                             # demo workloads, DNS lab test (t61) / bench baseline
  curl                                                                          # L7 lab tests (HTTP/1.1 and h2c client)
  gcc                                                                           # linker; the lab's zombie-thread test compiles C
  bind9-dnsutils                                                                # dig: the tutorial's DNS probes
  chromium                                                                      # web UI test (headless) and its screenshot
)

log() { printf '[bootstrap] %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  echo "bootstrap: must run as root (it installs packages and mounts bpffs)" >&2
  exit 1
fi

# --- Debian packages -------------------------------------------------------------------------
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# redis and dnsmasq are used as lab workloads only; never leave the system daemons running.
for svc in redis-server dnsmasq; do
  if command -v systemctl >/dev/null 2>&1; then systemctl disable --now "$svc" >/dev/null 2>&1 || true; fi
done
# Only the system daemons (their init scripts' pid files, their command lines): a lab's own
# redis-server and dnsmasq (the tutorial's db and kube-dns pods) keep running through a bootstrap.
for svc in redis-server dnsmasq; do
  if [ -x "/etc/init.d/$svc" ]; then "/etc/init.d/$svc" stop >/dev/null 2>&1 || true; fi
done
pkill -f '^/usr/bin/redis-server 127\.0\.0\.1:6379' 2>/dev/null || true
pkill -f -- '-x /run/dnsmasq/dnsmasq\.pid' 2>/dev/null || true

# --- kubectl ---------------------------------------------------------------------------------
# The Kubernetes-compatible policy API's tests drive the real kubectl. Any kubectl already on
# PATH is kept; otherwise Debian's `kubernetes-client` (v1.20 on bookworm: the tests pass with it
# and with v1.32).
if ! command -v kubectl >/dev/null 2>&1; then
  log "installing kubectl (Debian package kubernetes-client)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends kubernetes-client >/dev/null
fi

# --- Rust toolchains -------------------------------------------------------------------------
if ! rustup toolchain list | grep -q "^${NIGHTLY}"; then
  log "installing the ${NIGHTLY} toolchain"
  rustup toolchain install "$NIGHTLY" --profile minimal
fi
if ! rustup component list --toolchain "$NIGHTLY" --installed | grep -q '^rust-src'; then
  log "adding rust-src to ${NIGHTLY}"
  rustup component add rust-src --toolchain "$NIGHTLY"
fi
nightly_llvm=$(rustup run "$NIGHTLY" rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
if [ "$nightly_llvm" != "$LLVM_MAJOR" ]; then
  echo "bootstrap: ${NIGHTLY} uses LLVM ${nightly_llvm}, bpf-linker is pinned to LLVM ${LLVM_MAJOR}; update LLVM_MAJOR" >&2
  exit 1
fi

# --- bpf-linker ------------------------------------------------------------------------------
if ! command -v bpf-linker >/dev/null 2>&1 || ! bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
  log "building bpf-linker ${BPF_LINKER_VERSION} against llvm-${LLVM_MAJOR} (a few minutes, once)"
  LLVM_PREFIX="/usr/lib/llvm-${LLVM_MAJOR}" cargo install --locked bpf-linker \
    --version "$BPF_LINKER_VERSION" --no-default-features --features "llvm-${LLVM_MAJOR}"
fi

# --- bpffs -----------------------------------------------------------------------------------
if ! mountpoint -q /sys/fs/bpf; then
  log "mounting bpffs at /sys/fs/bpf"
  mount -t bpf bpffs /sys/fs/bpf
fi

log "ready"
