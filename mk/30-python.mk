# Python: the foorpc package (PyO3 extension built by maturin) and its pytest suite.
.PHONY: venv build-python test-python test-python-versions lint-python
TEST_TARGETS += test-python test-python-versions

## The oldest and the newest CPython the package supports, when installed here.
PY_OTHER_VERSIONS ?= 3.10 3.13

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

## The same suite on other CPythons, with the one abi3 wheel (python/tests/other_pythons.sh).
test-python-versions: build-python build-rust
	rm -rf build/wheel
	$(VPY) -m pip wheel --quiet --no-deps ./python -w build/wheel
	python/tests/other_pythons.sh build/wheel/foorpc-*.whl $(PY_OTHER_VERSIONS)

lint-python: build-python
	cd python && $(VPY) -m mypy.stubtest foorpc._native --allowlist tests/stubtest-allowlist.txt
	rustfmt --edition 2021 --check python/src/*.rs
