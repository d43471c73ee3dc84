# The cross-language interop matrix (tests/interop/README.md).
.PHONY: build-interop test-interop
build: build-interop
TEST_TARGETS += test-interop

## The Rust and C conformance programs; the Python ones need the package in the venv.
build-interop: build-rust build-c build-python
	$(CARGO) build --release -p foorpc-interop
	$(MAKE) --no-print-directory -C tests/interop/c

test-interop: build-interop
	$(PYTHON) tests/interop/matrix.py
	$(PYTHON) tests/interop/hostile.py
	$(PYTHON) tests/interop/hostile_server.py
