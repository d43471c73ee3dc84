# Python: the foorpc package (PyO3 extension built by maturin) and its pytest suite.
.PHONY: venv build-python test-python lint-python
TEST_TARGETS += test-python

PY_TEST_DEPS := pytest pytest-timeout mypy msgpack pynvim

## A virtual environment with the test tools; other parts may depend on it.
venv: $(VENV)/.deps-stamp

$(VENV)/.deps-stamp:
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet $(PY_TEST_DEPS)
	touch $@

## Builds the wheel and installs foorpc into the venv (the way users do: pip install ./python).
build-python: venv
	$(VPY) -m pip install --quiet --force-reinstall --no-deps ./python

test-python: build-python build-rust
	cd python && $(VPY) -m pytest tests -q

lint-python: build-python
	cd python && $(VPY) -m mypy.stubtest foorpc._native --allowlist tests/stubtest-allowlist.txt
	rustfmt --edition 2021 --check python/src/*.rs
