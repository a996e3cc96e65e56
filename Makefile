# mtcpd — build, test, bench, perf, demo, fuzz, lint.
CARGO ?= cargo
NEXTEST := $(shell $(CARGO) nextest --version >/dev/null 2>&1 && echo yes)

.PHONY: build test lint fmt bench perf perf-quick demo fuzz clean

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

## The WAN benchmark grid is not built yet (issue 4); the tools it will drive are.
perf perf-quick:
	@echo "make $@: the benchmark grid is not built yet; the load tool and WAN emulator are:"
	$(CARGO) run --release -p mtcp-perf -- --help
	@echo "see docs/BENCHMARKS.md for measured emulator figures and the commands behind them"
	@exit 1

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
