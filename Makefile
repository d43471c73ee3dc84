# foorpc: the two commands are `make demo` and `make test`.
# Each part of the project keeps its targets in mk/<part>.mk.

PREFIX ?= $(CURDIR)/build/prefix
CARGO ?= cargo
PYTHON ?= python3
VENV ?= $(CURDIR)/.venv
VPY := $(VENV)/bin/python

.PHONY: all build test demo clean
all: build

include $(sort $(wildcard mk/*.mk))

## Run every test: Rust, C, Python and the cross-language matrix.
test: $(TEST_TARGETS)
	@echo "make test: all suites passed"

clean:
	$(CARGO) clean
	rm -rf build $(VENV)
