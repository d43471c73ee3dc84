# `make demo`: build libfoorpc and the examples, install the Python package into
# a local venv, start the C and the Rust calc_server, and call both from Python.
.PHONY: demo
DEMO_PREFIX := $(CURDIR)/build/prefix

demo: build-rust build-python
	@echo "==> installing libfoorpc into $(DEMO_PREFIX) and building the C examples with pkg-config"
	@$(MAKE) --no-print-directory install PREFIX=$(DEMO_PREFIX) >/dev/null
	@PKG_CONFIG_PATH=$(DEMO_PREFIX)/lib/pkgconfig $(MAKE) --no-print-directory -C examples-c >/dev/null
	@LD_LIBRARY_PATH=$(DEMO_PREFIX)/lib $(VPY) demo/demo.py examples-c/calc_server target/release/examples/calc_server
