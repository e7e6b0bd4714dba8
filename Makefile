# The project's commands. `make test` is what CI runs (.ci/run).
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

S3_SERVER := bash scripts/s3-server/run.sh
WEBCLIENTS := bash scripts/webclients/setup.sh
API_TOOLS := bash scripts/api-tools/setup.sh

.PHONY: all build release run install install-files test test-deps lint fuzz bench clean s3-install s3-start s3-stop s3-status webclients-install api-tools-install torture

all: build

## Debug builds of every binary (the e2e tests run these).
build:
	$(CARGO) build --workspace --bins

## Optimised builds of the binaries.
release:
	$(CARGO) build --release -p server -p uploader-cli --bins
	$(CARGO) build --release -p tests --bin loadgen

## Build both binaries and start the server on 127.0.0.1:8080, storing under ./data
## (the CLI is then target/release/uploader).
run:
	$(CARGO) build --release -p uploader-cli --bin uploader
	$(CARGO) run --release -p server --bin upload-server

## Install upload-server and uploader (release builds), uploader's man pages and its bash,
## zsh and fish completions under $(DESTDIR)$(PREFIX). `install-files` installs binaries
## already built in BIN_DIR (what `make test` checks, into a temporary root).
PREFIX ?= /usr/local
DESTDIR ?=
BIN_DIR ?= $(or $(CARGO_TARGET_DIR),target)/release
install: release
	$(MAKE) --no-print-directory install-files

install-files:
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1 \
		$(DESTDIR)$(PREFIX)/share/bash-completion/completions \
		$(DESTDIR)$(PREFIX)/share/zsh/site-functions \
		$(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d
	install -m 755 $(BIN_DIR)/upload-server $(BIN_DIR)/uploader $(DESTDIR)$(PREFIX)/bin/
	$(BIN_DIR)/uploader man --out-dir $(DESTDIR)$(PREFIX)/share/man/man1
	$(BIN_DIR)/uploader completions bash > $(DESTDIR)$(PREFIX)/share/bash-completion/completions/uploader
	$(BIN_DIR)/uploader completions zsh > $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_uploader
	$(BIN_DIR)/uploader completions fish > $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/uploader.fish

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
## tuspy, Debian's chromium), and the API checkers (promtool, Schemathesis).
test-deps: s3-install webclients-install api-tools-install
	@command -v tmux >/dev/null || { apt-get update -qq && apt-get install -y -qq tmux >/dev/null; }
	@command -v strace >/dev/null || { apt-get update -qq && apt-get install -y -qq strace >/dev/null; }

## Everything: lints, unit tests, end-to-end tests against the real binaries and clients.
test: lint build test-deps
	S3_REQUIRED=1 WEBCLIENTS_REQUIRED=1 API_TOOLS_REQUIRED=1 STRACE_REQUIRED=1 $(CARGO) test --workspace

## Real web clients for the browser and tus tests: ~30 s once, then a no-op.
webclients-install:
	@$(WEBCLIENTS) install

## promtool (unpacked from Debian's prometheus package) and Schemathesis (in a venv):
## ~15 s once, then a no-op.
api-tools-install:
	@$(API_TOOLS) install

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
