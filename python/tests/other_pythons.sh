#!/usr/bin/env bash
# Runs the Python test suite on other CPython versions than the venv's, with
# the same abi3 wheel users install: the package says requires-python >= 3.10,
# and asyncio, exceptions and interpreter shutdown differ between versions.
#
# usage: python/tests/other_pythons.sh WHEEL VERSION...   (e.g. 3.10 3.13)
# A version with no interpreter on this machine (pyenv, then PATH) is listed
# as not tested, and not counted as a pass. Exit status 1 if a suite failed.
set -euo pipefail
cd "$(dirname "$0")/../.."

wheel=$1
shift
deps=(pytest pytest-timeout mypy msgpack pynvim)
pyenv_root=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")

# The first candidate that runs (a pyenv shim on PATH may not).
find_python() {
  local v=$1 p
  for p in "$pyenv_root"/versions/"$v".*/bin/"python$v" "$(command -v "python$v" 2>/dev/null)"; do
    if [ -x "$p" ] && "$p" -c "import venv" >/dev/null 2>&1; then
      echo "$p"
      return
    fi
  done
  return 1
}

tested=0
failed=()
for v in "$@"; do
  if ! py=$(find_python "$v"); then
    echo "python $v: no interpreter here ($pyenv_root/versions or PATH): not tested"
    continue
  fi
  venv=build/pyvenvs/$v
  if [ ! -e "$venv/.deps-stamp" ]; then
    "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet "${deps[@]}"
    touch "$venv/.deps-stamp"
  fi
  "$venv/bin/python" -m pip install --quiet --force-reinstall --no-deps "$wheel"
  echo "python $v: $("$venv/bin/python" -V) ($py)"
  tested=$((tested + 1))
  if ! (cd python && "../$venv/bin/python" -m pytest tests -q -p no:cacheprovider); then
    failed+=("$v")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "other Pythons: the suite failed on ${failed[*]}"
  exit 1
fi
echo "other Pythons: the suite passed on $tested of the $# versions asked for ($*)"
