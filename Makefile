# Ringside: the two commands.
#   make demo   the side-by-side comparison (bench/compare.sh): Ringside io_uring and epoll, the
#               SwiftNIO peers and the C liburing reference, driven by ringload on the other core;
#               prints the table and the path of the HTML report (QUICK=1: one short repetition)
#   make test   build and run every test (the conformance suite on both backends, rare paths)
SHELL := /bin/bash
.PHONY: demo test setup build release bench-tools echo-bench bench-check attack kernel-matrix fuzz fuzz-ci sanitize conformance-masks haproxy-rolling docs

setup:
	@bash scripts/setup.sh

build: setup
	swift build

release: setup
	swift build -c release --product ringside

bench-tools: setup
	$(MAKE) -s -C bench/c

# Each step of `make test` echoed, run, and followed by its wall time (a failing step fails the target).
timed = echo '$(1)'; t0=$$(date +%s); $(1) && echo "make test: $$(( $$(date +%s) - t0 )) s:" '$(1)'

# The release binaries of the smoke, adversarial, HAProxy and kernel-matrix steps come from the bench
# package's release build (RINGSIDE_RELEASE_BIN, scripts/release-bin.sh): bench-check builds them there
# with the malloc benchmark in one configuration (scripts/bench-check.sh), so the engine's modules are
# compiled in release once.
BENCH_BIN = $$(cd bench && swift build -c release --show-bin-path)
test: setup
	@$(call timed,$(MAKE) -s bench-check)
	@$(call timed,RINGSIDE_RELEASE_BIN=$(BENCH_BIN) bash scripts/release-smoke.sh)
	@$(call timed,RINGSIDE_RELEASE_BIN=$(BENCH_BIN) bash scripts/adversarial.sh)
	@$(call timed,RINGSIDE_RELEASE_BIN=$(BENCH_BIN) bash scripts/haproxy-rolling.sh)
	@$(call timed,RINGSIDE_RELEASE_BIN=$(BENCH_BIN) $(MAKE) -s kernel-matrix KERNEL_MATRIX_ARGS="--nice -10")
	@$(call timed,swift build --build-tests)
	@$(call timed,swift test --skip-build --disable-xctest --no-parallel)
	@$(call timed,$(MAKE) -s conformance-masks)

# The conformance suite again under each kernel-feature mask (RINGSIDE_DISABLE), so every fallback path
# runs on this kernel too.
MASKS := defer-taskrun single-issuer coop-taskrun defer-taskrun,single-issuer,coop-taskrun recv-limit direct-fds socket-commands min-wait bundles
conformance-masks:
	@for m in $(MASKS); do echo "conformance with RINGSIDE_DISABLE=$$m"; \
	  RINGSIDE_DISABLE=$$m swift test --skip-build --disable-xctest --no-parallel --filter ConformanceTests 2>&1 \
	    | grep -E "^(✔|✘) (Suite ConformanceTests|Test .*recorded)|error" ; \
	  test $${PIPESTATUS[0]} -eq 0 || exit 1; done

# Steady-state mallocs per echoed message through the engine's real paths, against stored thresholds
# (bench/Thresholds: 0 per message on both backends).
# Built and run without the package plugin (scripts/bench-check.sh says why); it also builds the bench
# package's release ringside and ringload.
bench-check:
	bash scripts/bench-check.sh

# The adversarial suite alone (scripts/adversarial.sh; SCALE=0.2 for a quick run).
attack: setup
	bash scripts/adversarial.sh

# Behind a real load balancer (scripts/haproxy-rolling.sh): HAProxy with send-proxy-v2 and /ready health
# checks in front of two instances; a rolling restart under wrk load must fail 0 requests (about 30 s).
haproxy-rolling: setup
	bash scripts/haproxy-rolling.sh

# The kernel matrix (scripts/kernel-matrix/run.sh): Debian's 6.1 and 6.12 cloud kernels booted under
# qemu (TCG) with the release binaries; bursts, a non-reading client and a stop under load on io_uring
# and epoll, and the `auto` fallbacks. KERNEL_MATRIX_ARGS passes options, e.g. --bin-dir DIR, --kernels 6.1.
kernel-matrix: setup
	bash scripts/kernel-matrix/run.sh $(KERNEL_MATRIX_ARGS)

demo: setup
	bash bench/compare.sh $(if $(QUICK),--quick,)

# The C load client against ringside and the C reference (bench/echo-bench.sh), for cross-checking ringload.
echo-bench: release bench-tools
	bash bench/echo-bench.sh --duration 5 --reps 3 --connections 50 --size 64 \
	  uring="$$(swift build -c release --show-bin-path)/ringside serve --backend uring --port 0" \
	  epoll="$$(swift build -c release --show-bin-path)/ringside serve --backend epoll --port 0" \
	  c-ref="bench/c/build/ref_echo_server --port 0"

# DocC reference and articles of the library targets (swift-docc-plugin); any warning fails the build.
# Archives: .build/plugins/Swift-DocC/outputs/<Target>.doccarchive.
DOC_TARGETS := Ringside RingsideHTTP RingsideService RingsideOpenAPI
docs: setup
	swift package generate-documentation $(foreach t,$(DOC_TARGETS),--target $(t)) --warnings-as-errors

# Coverage-guided fuzzing (libFuzzer + AddressSanitizer; Fuzz/, scripts/fuzz.sh). FUZZ_SECONDS: total
# time shared by the targets (default 600); FUZZ_MERGE=1: merge new coverage into the committed seeds.
# A crash leaves a reproducer in Fuzz/.artifacts/ and prints the command that replays it.
fuzz: setup
	FUZZ_SECONDS=$(or $(FUZZ_SECONDS),600) bash scripts/fuzz.sh $(if $(FUZZ_MERGE),--merge,)

# CI: every fuzz target for 30 s on its corpus.
fuzz-ci: setup
	bash scripts/fuzz.sh --ci

# The test suite under AddressSanitizer (LeakSanitizer included) and under ThreadSanitizer
# (scripts/sanitize.sh; scratch dirs .build-asan, .build-tsan). SANITIZERS="address" for one.
sanitize: setup
	bash scripts/sanitize.sh $(SANITIZERS)
