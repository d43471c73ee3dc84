# C: libfoorpc (ffi/), its generated header, install with pkg-config, the C
# examples and the C tests.
#
#   make build-c                 libfoorpc.so / libfoorpc.a in target/release
#   make header                  regenerate include/foorpc.h with cbindgen
#   make install PREFIX=DIR      DIR/lib/libfoorpc.so*, libfoorpc.a, pkgconfig/foorpc.pc,
#                                DIR/include/foorpc.h
#   make test-c                  header + version checks, C API tests, C examples against
#                                each other, the Rust and a Python peer, valgrind
.PHONY: build-c header install test-c lint-c

FOORPC_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
FOORPC_MAJOR := $(firstword $(subst ., ,$(FOORPC_VERSION)))
CBINDGEN ?= cbindgen
C_TEST_PREFIX ?= $(CURDIR)/build/c-test-prefix
build: build-c
TEST_TARGETS += test-c

build-c:
	$(CARGO) build --release -p foorpc-ffi

header:
	$(CBINDGEN) --config ffi/cbindgen.toml --crate foorpc-ffi --output include/foorpc.h ffi

install: build-c
	@test -n "$(FOORPC_VERSION)" || { echo "cannot read the version from Cargo.toml" >&2; exit 1; }
	install -d $(abspath $(PREFIX))/lib/pkgconfig $(abspath $(PREFIX))/include
	install -m 755 target/release/libfoorpc.so $(abspath $(PREFIX))/lib/libfoorpc.so.$(FOORPC_VERSION)
	ln -sfn libfoorpc.so.$(FOORPC_VERSION) $(abspath $(PREFIX))/lib/libfoorpc.so.$(FOORPC_MAJOR)
	ln -sfn libfoorpc.so.$(FOORPC_MAJOR) $(abspath $(PREFIX))/lib/libfoorpc.so
	install -m 644 target/release/libfoorpc.a $(abspath $(PREFIX))/lib/libfoorpc.a
	install -m 644 include/foorpc.h $(abspath $(PREFIX))/include/foorpc.h
	sed -e 's|@PREFIX@|$(abspath $(PREFIX))|' -e 's|@VERSION@|$(FOORPC_VERSION)|' \
		ffi/foorpc.pc.in > $(abspath $(PREFIX))/lib/pkgconfig/foorpc.pc

## The C suite. Needs the Rust examples (build-rust) for the cross-language runs.
test-c: build-rust build-c
	$(CARGO) test --release -p foorpc-ffi
	$(CARGO) fmt -p foorpc-ffi -- --check
	$(CARGO) clippy --release -p foorpc-ffi --all-targets -- -D warnings
	rm -rf $(C_TEST_PREFIX)
	$(MAKE) --no-print-directory install PREFIX=$(C_TEST_PREFIX)
	PREFIX=$(C_TEST_PREFIX) PYTHON=$(PYTHON) tests/c/run.sh
