# The cross-language interop matrix (tests/interop/README.md).
.PHONY: build-interop test-interop
build: build-interop
TEST_TARGETS += test-interop

build-interop: build-rust
	$(CARGO) build --release -p foorpc-interop

test-interop: build-interop
	$(PYTHON) tests/interop/matrix.py
