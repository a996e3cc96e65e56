# mtcpd — build, test, bench, perf, demo, fuzz, lint.
CARGO ?= cargo
NEXTEST := $(shell $(CARGO) nextest --version >/dev/null 2>&1 && echo yes)

.PHONY: build test lint fmt bench perf perf-quick perf-deps perf-build demo fuzz fuzz-check \
	fuzz-long clean install install-build uninstall socket-scale soak

build:
	$(CARGO) build --release --workspace

## The test command CI runs (.ci/run calls `make test`): lint, build every fuzz target, test.
test: lint fuzz-check
ifeq ($(NEXTEST),yes)
	$(CARGO) nextest run --workspace --cargo-profile ci --no-fail-fast
else
	$(CARGO) test --workspace --profile ci
endif

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

bench:
	$(CARGO) bench -p mtcpd-bench

## The WAN benchmark grid (issue 4; root and Linux network namespaces). Results go to results/
## (JSON, CSV, SVG plots) and the generated section of docs/BENCHMARKS.md is rewritten.
##   make perf        the full grid, about 70 minutes (20 s runs; the cells behind a target 3×)
##   make perf-quick  the three 100 ms paths behind the targets (clean, 1 %, 20 Mbit/s per
##                    flow), one bbr flow / 8 bbr flows / mtcpd 8 bbr tunnels / mtcpd-auto, 3 repeats
##                    each, TTFB; about 14 minutes; writes results/quick/
## Both run with tcp_rmem/tcp_wmem max 64 MiB in the lab namespaces (a tuned host).
## PERF_ARGS adds grid flags, e.g. PERF_ARGS="--paths rtt100 --time 10s" (see `mtcp-perf grid --help`).
PERF := target/release/mtcp-perf
PERF_ARGS ?=
PERF_PKGS := kcptun mptcpd iproute2

## Debian packages the grid's contenders need (kcptun; mptcpize from mptcpd; ss and ip from
## iproute2). Installs only what is missing; if that fails the grid still runs and reports the
## contenders whose tool is missing as skipped.
perf-deps:
	@if command -v kcptun-client >/dev/null && command -v kcptun-server >/dev/null \
		&& command -v mptcpize >/dev/null && command -v ss >/dev/null; then \
		echo "perf-deps: kcptun, mptcpize and ss are installed"; \
	else \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $(PERF_PKGS)) \
		|| echo "perf-deps: could not install $(PERF_PKGS); their contenders will be skipped"; \
	fi

perf-build:
	$(CARGO) build --release -p mtcpd -p mtcp-perf

perf: perf-deps perf-build
	$(PERF) grid --out results --doc docs/BENCHMARKS.md $(PERF_ARGS)

perf-quick: perf-deps perf-build
	$(PERF) grid --quick --out results/quick --doc docs/BENCHMARKS.md $(PERF_ARGS)

## Real sockets at scale (issue 10): 64 B ping-pong over 1,000 and 8,000 connections direct, through
## two socat relays and through the mtcpd pair on both drivers; medians of ROUNDS (3) and ratios
## (docs/BENCHMARKS.md "Scale: real sockets"). Variables: CONNS, TIME, ROUNDS, HOLD, PATHS.
socket-scale: perf-build
	./perf/scripts/socket-scale.sh

## The soak: stream churn through the daemon pair with RSS and descriptors sampled, then a peak
## and a quiet spell; PASS/FAIL (docs/BENCHMARKS.md "Soak"). E.g. make soak DURATION=10m IO=mio
DURATION ?= 10m
IO ?= auto
soak: perf-build
	DURATION=$(DURATION) IO=$(IO) ./perf/scripts/soak.sh

## Runs the daemon pair locally on built-in defaults and sends traffic through it.
demo: build
	./scripts/demo.sh

## Fuzzing (fuzz/: cargo-fuzz targets, a crate outside the workspace with its own Cargo.lock;
## docs/FUZZING.md).
##   make fuzz-check  type-checks and lints every target on stable: no nightly features, no C++
##                    compiler (the libFuzzer runtime is left out). `make test` runs it, so a
##                    target cannot silently stop compiling; --locked fails on a stale lock file.
##   make fuzz        runs every target for FUZZ_SECONDS (default 20) each
##   make fuzz-long   runs every target for FUZZ_SECONDS (default FUZZ_LONG_SECONDS, 3600) each
##                    and prints each target's executions
## Both runs need cargo-fuzz (installed when missing) and a C++ compiler; they run on stable
## through RUSTC_BOOTSTRAP=1. New corpus entries stay in fuzz/corpus/<target> (git-ignored beyond
## the committed seeds); crashes land in fuzz/artifacts/<target>/. FUZZ_ARGS adds libFuzzer
## flags, e.g. FUZZ_ARGS="-rss_limit_mb=4096".
FUZZ_SECONDS ?= 20
FUZZ_LONG_SECONDS ?= 3600
FUZZ_ARGS ?=
## cargo-fuzz's sanitizer: address (the default), or none (safe Rust: several times the
## executions per second; what the recorded 10-million-execution runs used).
FUZZ_SANITIZER ?= address

fuzz-check:
	cd fuzz && $(CARGO) fmt --check
	cd fuzz && $(CARGO) clippy --locked --no-default-features --bins -- -D warnings \
		|| { echo "fuzz-check failed; if Cargo.lock is stale: cd fuzz && cp ../Cargo.lock Cargo.lock && cargo update --workspace"; exit 1; }

fuzz:
	command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for t in $$(RUSTC_BOOTSTRAP=1 $(CARGO) fuzz list); do \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run -s $(FUZZ_SANITIZER) $$t -- -max_total_time=$(FUZZ_SECONDS) $(FUZZ_ARGS) \
			|| exit 1; \
	done

# libFuzzer's own summary line ("Done N runs in S second(s)") is kept from each run's log.
fuzz-long: FUZZ_SECONDS = $(FUZZ_LONG_SECONDS)
fuzz-long:
	command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	cd fuzz && mkdir -p target && rm -f target/fuzz-long.summary && \
	for t in $$(RUSTC_BOOTSTRAP=1 $(CARGO) fuzz list); do \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run -s $(FUZZ_SANITIZER) $$t -- -max_total_time=$(FUZZ_SECONDS) \
			-print_final_stats=1 $(FUZZ_ARGS) 2>&1 | tee target/fuzz-long-$$t.log; \
		grep -q '^Done [0-9]* runs' target/fuzz-long-$$t.log || { echo "fuzz-long: $$t failed"; exit 1; }; \
		echo "$$t: $$(grep '^Done [0-9]* runs' target/fuzz-long-$$t.log)" >> target/fuzz-long.summary; \
	done; \
	echo "fuzz-long ($(FUZZ_SECONDS) s per target):"; cat target/fuzz-long.summary

clean:
	$(CARGO) clean

## Install (docs/OPERATIONS.md, "Install and run as a service").
##   make install            builds the release binary, then installs it to $(PREFIX)/bin, the
##                           systemd units, the sysusers.d entry of the `mtcpd` user, the docs,
##                           and /etc/mtcpd/server.toml + client.toml only where none exist
##   sudo make install       after `make build` (sudo may not find cargo: the binary built
##                           before is installed)
##   make uninstall          removes what install put there, except /etc/mtcpd and /var/lib/mtcpd
## DESTDIR stages the files under a directory (packaging); PREFIX (default /usr/local) moves
## the binary, the units and the docs, and the units' ExecStart follows it. SYSCONFDIR
## (default /etc) moves the config directory, for tests. BINARY installs an already built
## binary instead of building one (PROFILE picks the cargo profile that is built, default
## release). POSTINSTALL=no skips, on a live install by root (no DESTDIR), creating the user
## with systemd-sysusers and `systemctl daemon-reload`.
PREFIX ?= /usr/local
DESTDIR ?=
BINDIR ?= $(PREFIX)/bin
SYSCONFDIR ?= /etc
DOCDIR ?= $(PREFIX)/share/doc/mtcpd
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
PROFILE ?= release
POSTINSTALL ?= yes
CARGO_TARGET_DIR ?= target
BINARY ?= $(CARGO_TARGET_DIR)/$(if $(filter dev,$(PROFILE)),debug,$(PROFILE))/mtcpd
UNITS := mtcpd-server.service mtcpd-client.service
STARTER_CONFIGS := server.toml client.toml

# Builds only when BINARY was not given (its origin is then this file).
install: $(if $(filter file,$(origin BINARY)),install-build)
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(SYSTEMDUNITDIR) $(DESTDIR)$(SYSUSERSDIR) \
		$(DESTDIR)$(DOCDIR) $(DESTDIR)$(SYSCONFDIR)/mtcpd
	install -m 0755 $(BINARY) $(DESTDIR)$(BINDIR)/mtcpd
	for unit in $(UNITS); do \
		sed -e 's|/usr/local/bin/mtcpd|$(BINDIR)/mtcpd|g' \
			-e 's|/usr/local/share/doc/mtcpd|$(DOCDIR)|g' \
			-e 's|/etc/mtcpd/|$(SYSCONFDIR)/mtcpd/|g' \
			contrib/systemd/$$unit > $(DESTDIR)$(SYSTEMDUNITDIR)/$$unit \
		&& chmod 0644 $(DESTDIR)$(SYSTEMDUNITDIR)/$$unit || exit 1; \
	done
	install -m 0644 contrib/systemd/mtcpd.sysusers $(DESTDIR)$(SYSUSERSDIR)/mtcpd.conf
	install -m 0644 README.md docs/OPERATIONS.md config/mtcpd.example.toml $(DESTDIR)$(DOCDIR)/
	for config in $(STARTER_CONFIGS); do \
		if [ -e $(DESTDIR)$(SYSCONFDIR)/mtcpd/$$config ]; then \
			echo "install: kept $(DESTDIR)$(SYSCONFDIR)/mtcpd/$$config"; \
		else \
			install -m 0644 contrib/systemd/$$config $(DESTDIR)$(SYSCONFDIR)/mtcpd/$$config || exit 1; \
		fi; \
	done
	@if [ -z "$(DESTDIR)" ] && [ "$(POSTINSTALL)" = yes ] && [ "$$(id -u)" = 0 ]; then \
		if command -v systemd-sysusers >/dev/null 2>&1; then \
			systemd-sysusers $(SYSUSERSDIR)/mtcpd.conf || echo "install: create the user mtcpd yourself"; \
		fi; \
		if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi; \
	fi

install-build:
	@if command -v $(CARGO) >/dev/null 2>&1; then \
		echo "$(CARGO) build --profile $(PROFILE) -p mtcpd"; \
		$(CARGO) build --profile $(PROFILE) -p mtcpd; \
	elif [ -x $(BINARY) ]; then \
		echo "install: $(CARGO) not found (under sudo?): installing $(BINARY) as built before"; \
	else \
		echo "install: neither $(BINARY) nor $(CARGO) to build it: run 'make build' first"; \
		exit 1; \
	fi

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/mtcpd $(DESTDIR)$(SYSUSERSDIR)/mtcpd.conf
	for unit in $(UNITS); do rm -f $(DESTDIR)$(SYSTEMDUNITDIR)/$$unit; done
	rm -f $(DESTDIR)$(DOCDIR)/README.md $(DESTDIR)$(DOCDIR)/OPERATIONS.md \
		$(DESTDIR)$(DOCDIR)/mtcpd.example.toml
	-rmdir $(DESTDIR)$(DOCDIR) 2>/dev/null
	@echo "uninstall: kept $(DESTDIR)$(SYSCONFDIR)/mtcpd (your configuration and key) and /var/lib/mtcpd (the server's TLS key pair)"
