# Palisade: the two commands a user needs are `make demo` and `make test`; both run the bootstrap
# first, so a fresh machine of this kind needs nothing else. Everything here runs as root (BPF,
# network namespaces).

SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
# A persistent target dir outside the clone: a fresh clone reuses the compiled dependencies.
export CARGO_TARGET_DIR ?= /var/tmp/palisade-target
CARGO ?= cargo
PALISADE_RELEASE := $(CARGO_TARGET_DIR)/release/palisade
DEMO_LAB ?= palisade

.PHONY: help bootstrap build test chaos lint bench demo demo-down clean-lab

help: ## Show the targets.
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

bootstrap: ## Install packages and toolchains, mount bpffs (idempotent).
	@bash scripts/bootstrap.sh

build: bootstrap ## Build every host crate (the eBPF programs build as part of node-agent).
	$(CARGO) build --all-targets

test: bootstrap ## Run every test (unit, policy suites, lab, eBPF); needs root.
	@bash scripts/require-root.sh
	$(CARGO) test --no-fail-fast

chaos: bootstrap ## The chaos suite's long form: real faults on voters and agents (see chaos-tests/).
	@bash scripts/require-root.sh
	$(CARGO) build -p palisade-cli -p palisade-cni
	PALISADE_CHAOS=full $(CARGO) test -p palisade-chaos-tests -- --nocapture --test-threads 1

lint: bootstrap ## rustfmt and clippy, warnings are errors.
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

bench: bootstrap ## Run the benchmarks and print their figures (see docs/BENCHMARKS.md).
	@bash bench/run.sh

demo: bootstrap ## The zero-trust tutorial: 3 voters, 2 nodes with WireGuard, a 3-tier app, 9 policies, real traffic.
	@bash scripts/require-root.sh
	$(CARGO) build --release -p palisade-cli -p palisade-cni
	@bash scripts/demo.sh "$(PALISADE_RELEASE)" "$(DEMO_LAB)"

demo-down: ## Tear the demo lab down.
	@if [ -x "$(PALISADE_RELEASE)" ]; then "$(PALISADE_RELEASE)" lab down --name "$(DEMO_LAB)"; \
	else echo "no palisade binary at $(PALISADE_RELEASE); nothing to tear down"; fi
