"""Settings: validated at load, secrets kept out of reprs, security passed through."""

from __future__ import annotations

import subprocess
import sys

import faust
import pytest
from pydantic import ValidationError

from streams.app import _faust_credentials
from streams.settings import Settings


def settings(**kw) -> Settings:
    return Settings(_env_file=None, **kw)


def test_environment_variables_are_read_with_the_prefix(monkeypatch):
    monkeypatch.setenv("STREAMREC_KAFKA_URL", "kafka://k1:9092;k2:9093")
    monkeypatch.setenv("STREAMREC_K", "7")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123")
    s = Settings()
    assert s.kafka_bootstrap == ["k1:9092", "k2:9093"] and s.k == 7
    assert s.llm_api_key.get_secret_value() == "sk-test-123"


@pytest.mark.parametrize("field,value", [("kafka_url", "localhost:9092"), ("redis_url", "postgres://x"),
                                         ("k", 0), ("llm_timeout_s", -1), ("web_port", 70000)])
def test_bad_values_fail_at_load(field, value):
    with pytest.raises(ValidationError):
        settings(**{field: value})


def test_secrets_never_show_in_repr_or_dumps():
    s = settings(llm_api_key="sk-live-abc", redis_password="pw-xyz", kafka_sasl_password="sasl-789")
    text = repr(s) + str(s.model_dump()) + s.model_dump_json()
    for secret in ("sk-live-abc", "pw-xyz", "sasl-789"):
        assert secret not in text
    assert s.redis_kwargs()["password"] == "pw-xyz"


def test_kafka_sasl_and_tls_reach_faust_and_aiokafka(tmp_path):
    s = settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="SCRAM-SHA-256",
                 kafka_sasl_username="app", kafka_sasl_password="sasl-secret")
    kw = s.kafka_kwargs()
    assert kw == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256",
                  "sasl_plain_username": "app", "sasl_plain_password": "sasl-secret"}
    creds = _faust_credentials(s)
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.username == "app" and creds.password == "sasl-secret" and creds.mechanism.value == "SCRAM-SHA-256"
    assert _faust_credentials(settings()) is None
    tls = settings(kafka_security_protocol="SSL")
    assert "ssl_context" in tls.kafka_kwargs()
    assert isinstance(_faust_credentials(tls), faust.SSLCredentials)


def test_redis_tls_url_and_credentials_are_accepted():
    s = settings(redis_url="rediss://cache.example:6380/0", redis_username="app", redis_password="p",
                 redis_ssl_ca_certs="/etc/ssl/ca.pem")
    kw = s.redis_kwargs()
    assert kw["username"] == "app" and kw["ssl_ca_certs"] == "/etc/ssl/ca.pem"
    from models.features import open_store

    store = open_store(s.redis_url, **kw)  # connects lazily: building the client must work
    assert store.kind == "redis"


@pytest.mark.parametrize("name", ["uvloop", "asyncio"])
def test_the_worker_event_loop_setting_picks_the_loop(name):
    # in a child process: the choice is process-wide (an event loop policy)
    code = ("import asyncio; from streams.app import use_event_loop; use_event_loop(%r); "
            "loop = asyncio.new_event_loop(); print(type(loop).__module__.split('.')[0]); loop.close()" % name)
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert got.stdout.split()[-1] == name
