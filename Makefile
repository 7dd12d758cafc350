# Troupe: the two commands a newcomer needs are `make run` and `make test`.
# Both install what a fresh Debian machine lacks (a C toolchain and libclang
# for the rocksdb crate); Rust itself comes from rustup.

CARGO ?= cargo
SHELL := /bin/bash

.PHONY: run cluster simulate test bench soak deps build fmt lint unit clean

## run: start a local node with the examples deployed and print where to look
run: deps
	$(CARGO) build --release --workspace --bins --examples
	@bash scripts/run-node.sh

## cluster: start the local three-node cluster (cluster-config/local-3.toml)
cluster: deps
	$(CARGO) build --release --workspace --bins --examples
	@bash scripts/run-cluster.sh

## simulate: dry-run every example through the engine, printing the timelines
simulate: deps
	$(CARGO) build --release -p troupe-cli
	@bash scripts/run-examples.sh $${CARGO_TARGET_DIR:-target}/release/troupe

## bench: the standard benchmark suite (release build, about 10 minutes of
## load); writes docs/benchmarks.md and bench/results/latest.json
bench: deps
	$(CARGO) build --release --workspace --bins --examples
	$${CARGO_TARGET_DIR:-target}/release/troupe-bench suite

## soak: ten minutes of closed-loop noop load, then ten at SOAK_RATE starts/s,
## ended instances kept SOAK_RETENTION; adds throughput, p99, memory and data
## dir size per 10-s window to docs/benchmarks.md
SOAK_RATE ?= 6500
SOAK_RETENTION ?= 60s
soak: deps
	$(CARGO) build --release --workspace --bins --examples
	$${CARGO_TARGET_DIR:-target}/release/troupe-bench soak --retention $(SOAK_RETENTION)
	$${CARGO_TARGET_DIR:-target}/release/troupe-bench soak --rate $(SOAK_RATE) --retention $(SOAK_RETENTION)

## test: fmt and clippy checks, then the whole test suite
test: deps lint unit

deps:
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust with rustup (https://rustup.rs)"; exit 1; }
	@missing=""; \
	for pkg in libclang-dev clang build-essential; do dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

build: deps
	$(CARGO) build --workspace --all-targets

fmt:
	$(CARGO) fmt --all --check

## lint: fmt and clippy with warnings as errors
lint: fmt
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  $(CARGO) nextest run --workspace --no-fail-fast; \
	else \
	  $(CARGO) test --workspace --no-fail-fast; \
	fi

clean:
	$(CARGO) clean
