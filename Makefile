# Portcullis: `make run` starts the demo, `make test` runs every test.
# Each target installs what it needs on a Debian machine with Rust (cmake for
# pingora's build, Node.js for the interop suites, redis-server for the global rate
# limit tests); npm packages come from lock files.

SHELL := /bin/bash
CARGO ?= cargo
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: run test build deps deps-node deps-redis lint bench clean

run: deps
	$(CARGO) run --release -p portcullis -- demo

build: deps
	$(CARGO) build --workspace --bins

test: deps deps-node deps-redis build
	$(CARGO) fmt --all -- --check
	$(CARGO) test --workspace --no-fail-fast
	target/debug/portcullis policy test policies/
	bash tests/interop/run.sh
	bash tests/conformance/run.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench: deps
	@command -v wrk >/dev/null 2>&1 || { echo "make: installing wrk"; $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq wrk >/dev/null; }
	@command -v h2load >/dev/null 2>&1 || { echo "make: installing h2load (nghttp2-client)"; $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq nghttp2-client >/dev/null; }
	$(CARGO) build --release -p portcullis -p portcullis-bench
	target/release/portcullis-bench run --portcullis target/release/portcullis $(BENCH_ARGS)
	$(CARGO) bench -p portcullis-policy --bench decide
	$(CARGO) bench -p portcullis-proxy --bench sessions

# cmake builds pingora's vendored C dependencies.
deps:
	@command -v cmake >/dev/null 2>&1 || { \
	  echo "make: installing cmake (needed to build pingora)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq cmake >/dev/null; }

# Node.js runs the official TypeScript SDK and the conformance suite.
deps-node:
	@command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || { \
	  echo "make: installing nodejs and npm (interop and conformance suites)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq nodejs npm >/dev/null; }

# A real Redis on loopback for the global rate limit tests (tests/e2e/tests/global.rs).
deps-redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "make: installing redis-server (global rate limit tests)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server >/dev/null; }

clean:
	$(CARGO) clean
	rm -rf tests/interop/node_modules tests/conformance/node_modules
