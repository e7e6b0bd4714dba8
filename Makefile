# The project's commands. `make test` is what CI runs (.ci/run).
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

CEPH := bash scripts/ceph/run.sh
WEBCLIENTS := bash scripts/webclients/setup.sh
API_TOOLS := bash scripts/api-tools/setup.sh
NGINX := bash scripts/nginx/setup.sh

.PHONY: all build release run install install-files test test-deps lint fuzz bench clean ceph-install ceph-start ceph-stop ceph-status ceph-wipe webclients-install api-tools-install nginx-install torture

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
## terminal test, strace for the power-cut test, the S3 store (Ceph RGW in a Debian sid
## chroot, target/tools/ceph-root), the real web clients (tus-js-client, Uppy,
## playwright-core, tuspy, Debian's chromium), the API checkers (promtool,
## Schemathesis) and Debian's nginx (the reverse-proxy tests).
test-deps: ceph-install webclients-install api-tools-install nginx-install
	@command -v tmux >/dev/null || { apt-get update -qq && apt-get install -y -qq tmux >/dev/null; }
	@command -v strace >/dev/null || { apt-get update -qq && apt-get install -y -qq strace >/dev/null; }

## Everything: lints, unit tests, end-to-end tests against the real binaries and clients.
## The S3 store is started first (or reused) and stopped by PID afterwards, also when a
## test fails or make is interrupted; the tests' exit status is kept.
test: lint build test-deps
	@$(CEPH) start >/dev/null
	@trap '$(CEPH) stop >/dev/null' EXIT INT TERM; \
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

## The S3 store: Ceph RGW on a one-node Ceph cluster (scripts/ceph/run.sh). Installed
## once (~1.1 GB download, ~1-2 min, needs root), then a no-op; CEPH_ROOT=DIR shares one
## install between checkouts.
ceph-install:
	@$(CEPH) install

## Start the store for manual runs (prints S3_ENDPOINT=... and the test user's keys); a
## running one is reused. First start of a new cluster ~15 s, later ~7 s.
ceph-start: ceph-install
	@$(CEPH) start
ceph-stop:
	@$(CEPH) stop
ceph-status:
	@$(CEPH) status
## Stop the store and delete its data (the next start is an empty cluster).
ceph-wipe:
	@$(CEPH) wipe

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
