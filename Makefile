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

perf:
	$(CARGO) run --release -p mtcp-perf -- --help

perf-quick: perf

demo: build
	@echo "daemon not built yet (issue 3)"

FUZZ_SECONDS ?= 20
fuzz:
	command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for t in $$(RUSTC_BOOTSTRAP=1 $(CARGO) fuzz list); do \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

clean:
	$(CARGO) clean
