# mtcpd — build, test, bench, perf, demo, fuzz, lint.
CARGO ?= cargo
NEXTEST := $(shell $(CARGO) nextest --version >/dev/null 2>&1 && echo yes)

.PHONY: build test lint fmt bench perf perf-quick perf-deps perf-build demo fuzz clean

build:
	$(CARGO) build --release --workspace

## The test command CI runs (.ci/run calls `make test`).
test: lint
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
##   make perf        the full grid, about 30 minutes (on a quiet machine)
##   make perf-quick  100 ms / 1 % and the 20 Mbit/s-per-flow path, the contenders behind each
##                    target, TTFB; under 3 minutes; writes results/quick/
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

## Runs the daemon pair locally on built-in defaults and sends traffic through it.
demo: build
	./scripts/demo.sh

FUZZ_SECONDS ?= 20
fuzz:
	command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for t in $$(RUSTC_BOOTSTRAP=1 $(CARGO) fuzz list); do \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

clean:
	$(CARGO) clean
