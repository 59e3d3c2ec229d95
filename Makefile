# Ringside: the two commands.
#   make demo   serve echo on io_uring and epoll (and the C liburing reference), drive each with the
#               bundled load client pinned to the other core, print the side-by-side figures
#   make test   build and run every test (the conformance suite on both backends, rare paths)
SHELL := /bin/bash
.PHONY: demo test setup build release bench-tools

setup:
	@bash scripts/setup.sh

build: setup
	swift build

release: setup
	swift build -c release --product ringside

bench-tools: setup
	$(MAKE) -s -C bench/c

test: setup
	swift build --build-tests
	swift test --skip-build --disable-xctest

demo: release bench-tools
	bash bench/echo-bench.sh --duration 5 --reps 3 --connections 50 --size 64 \
	  uring="$$(swift build -c release --show-bin-path)/ringside serve --backend uring --port 0" \
	  epoll="$$(swift build -c release --show-bin-path)/ringside serve --backend epoll --port 0" \
	  c-ref="bench/c/build/ref_echo_server --port 0"
