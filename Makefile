# The project's commands. `make test` is what CI runs (.ci/run).
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all build release run test lint unit e2e bench clean

all: build

## Debug builds of every binary (the e2e tests run these).
build:
	$(CARGO) build --workspace --bins

## Optimised builds of the binaries.
release:
	$(CARGO) build --release -p server -p uploader-cli --bins
	$(CARGO) build --release -p tests --bin loadgen

## Start the server on 127.0.0.1:8080, storing under ./data.
run:
	$(CARGO) run --release -p server --bin upload-server

## Formatting and lints (part of `make test`).
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Everything: lints, unit tests, end-to-end tests against the real binaries.
test: lint build
	$(CARGO) test --workspace

## Throughput and memory against ceilings measured in the same run; updates README.md.
bench: release
	bash bench/bench.sh

clean:
	$(CARGO) clean
	rm -rf data
