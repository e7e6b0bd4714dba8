# The project's commands. `make test` is what CI runs (.ci/run).
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

S3_SERVER := bash scripts/s3-server/run.sh
WEBCLIENTS := bash scripts/webclients/setup.sh
API_TOOLS := bash scripts/api-tools/setup.sh
NGINX := bash scripts/nginx/setup.sh

.PHONY: all build release run test test-deps lint fuzz bench clean s3-install s3-start s3-stop s3-status webclients-install api-tools-install nginx-install torture

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

## The parsers' property tests (common/src/fuzz.rs, server/src/fuzz.rs) with many cases:
## FUZZ_CASES per property instead of the 256 of `cargo test`. The test profile, not
## --release, so that an integer overflow panics instead of wrapping unseen.
FUZZ_CASES ?= 200000
fuzz:
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test -p common -p server --lib fuzz

## What the tests need beyond Rust, installed when missing (idempotent): tmux for the
## terminal test, strace for the power-cut test, a local S3-compatible server (moto, in
## target/tools/s3-venv), the real web clients (tus-js-client, Uppy, playwright-core,
## tuspy, Debian's chromium), the API checkers (promtool, Schemathesis) and Debian's nginx
## (the reverse-proxy tests).
test-deps: s3-install webclients-install api-tools-install nginx-install
	@command -v tmux >/dev/null || { apt-get update -qq && apt-get install -y -qq tmux >/dev/null; }
	@command -v strace >/dev/null || { apt-get update -qq && apt-get install -y -qq strace >/dev/null; }

## Everything: lints, unit tests, end-to-end tests against the real binaries and clients.
test: lint build test-deps
	S3_REQUIRED=1 WEBCLIENTS_REQUIRED=1 API_TOOLS_REQUIRED=1 STRACE_REQUIRED=1 NGINX_REQUIRED=1 $(CARGO) test --workspace

## Real web clients for the browser and tus tests: ~30 s once, then a no-op.
webclients-install:
	@$(WEBCLIENTS) install

## promtool (unpacked from Debian's prometheus package) and Schemathesis (in a venv):
## ~15 s once, then a no-op.
api-tools-install:
	@$(API_TOOLS) install

## Debian's nginx, unpacked (not installed) under target/tools/nginx for the reverse-proxy
## tests: ~5 s once, then a no-op.
nginx-install:
	@$(NGINX) install

## Local S3-compatible test server: installed once (~20 s), then a no-op.
s3-install:
	@$(S3_SERVER) install

## A shared S3-compatible server for manual runs (prints S3_ENDPOINT=...); stopped by PID.
s3-start: s3-install
	@$(S3_SERVER) start
s3-stop:
	@$(S3_SERVER) stop
s3-status:
	@$(S3_SERVER) status

## The long reliability pass: 200 crash rounds (kill -9 of the server mid-upload); its
## figures go into README.md and target/torture/.
torture: build
	bash bench/torture.sh

## Throughput and memory against ceilings measured in the same run; updates README.md.
bench: release
	bash bench/bench.sh

clean:
	$(CARGO) clean
	rm -rf data
