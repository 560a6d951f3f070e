# Sibyl -- a thin wrapper around CMake. On a fresh Debian machine:
#   make run    installs dependencies, builds, runs the demo agent
#   make test   the same, then the whole test suite (ctest)
.PHONY: all build deps run test test-asan bench clean

BUILD      ?= build
ASAN_BUILD ?= build-asan
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_ARGS ?=

# Every Debian package the project needs: build, runtime, tests, benchmarks
# (the last line: the peers and load tools of `make bench`; Node for the
# openai-client peer is used when present).
DEB_PACKAGES = build-essential cmake pkg-config \
	luajit libluajit-5.1-dev libevent-dev libyaml-dev lua-cjson-dev libcurl4-openssl-dev libhttp-parser-dev \
	libreadline-dev lua-busted \
	libhiredis-dev redis-server \
	libsqlite3-dev \
	libopenblas-dev \
	hyperfine python3 python3-aiohttp python3-numpy python3-faiss nginx-light wrk curl time

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

all: build

# Idempotent and quiet: apt-get runs only when a package is missing.
deps:
	@missing=$$(for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "Installing:" $$missing; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(BUILD)/Makefile: CMakeLists.txt
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_ARGS) >/dev/null

build: $(BUILD)/Makefile
	cmake --build $(BUILD) -j $(JOBS)

run: deps build
	./$(BUILD)/sibyl scripts/demo.lua

test: deps build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

test-asan: deps
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DSIBYL_SANITIZE=ON $(CMAKE_ARGS) >/dev/null
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
		UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp \
		ctest --output-on-failure -j $(JOBS)

bench: deps build
	tests/bench/run.sh $(BUILD)/sibyl

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
