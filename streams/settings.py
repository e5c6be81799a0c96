"""Typed settings from ``STREAMREC_*`` environment variables, validated at load.

CLI flags override them (``Settings(**overrides)``). Secrets are ``SecretStr``: they
never appear in ``repr``, logs or the web API.

>>> s = Settings(kafka_url="kafka://a:1;b:2", _env_file=None)
>>> s.kafka_bootstrap
['a:1', 'b:2']
>>> s.topic("clicks")
'clicks'
>>> "hunter2" in repr(Settings(llm_api_key="hunter2", _env_file=None))
False
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The worker's default ``gc_gen0_threshold`` (benchmarks settle their own process with it too).
GC_GEN0_THRESHOLD = 10_000

TOPICS = ("clicks", "carts", "items", "reviews", "feedback", "forget",
          "recommendations", "recommendations-enriched", "dead-letter", "ranker-labels")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMREC_", extra="ignore", populate_by_name=True)

    # -- connections ----------------------------------------------------------------
    kafka_url: str = "kafka://127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    topic_prefix: str = ""
    key_prefix: str = Field("", description="prefix on every feature-store key (tenancy)")
    partitions: int = Field(8, ge=1, le=1024, description="partitions of topics the worker creates")

    # Kafka security, passed through to Faust and aiokafka.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None
    kafka_ssl_certfile: str | None = None
    kafka_ssl_keyfile: str | None = None
    kafka_fetch_max_wait_ms: int = Field(20, ge=1, le=10_000, description="longest a fetch waits for data")
    kafka_fetch_min_bytes: int = Field(1, ge=1, le=52_428_800, description=(
        "data a fetch waits for (up to kafka_fetch_max_wait_ms): above 1, fewer and larger fetches"))
    kafka_consumer_in_loop: bool = Field(True, description=(
        "run the Kafka consumer in the worker's event loop (false: in Faust's consumer thread)"))
    kafka_session_timeout_s: float = Field(30.0, gt=1, description="how soon a dead worker's partitions move")

    # Redis security: a password (ACL user) and TLS via rediss://.
    redis_username: str | None = None
    redis_password: SecretStr | None = None
    redis_ssl_ca_certs: str | None = None
    redis_timeout_s: float = Field(2.0, gt=0)

    # -- worker ---------------------------------------------------------------------
    worker_id: str = Field(default_factory=lambda: f"worker-{os.getpid()}")
    app_id: str = "streamrec"
    web_port: int = Field(6066, ge=0, le=65535)
    web_host: str = "0.0.0.0"
    cors_origins: list[str] = Field(default_factory=lambda: ["*"])
    batch_size: int = Field(500, ge=1, le=10_000)
    batch_window_s: float = Field(0.005, ge=0, le=5, description=(
        "a batch waits this long from its first event for others to share it (what is left of it"
        " once the batch before is done: nothing after a long batch)"))
    dedupe_ttl_s: int = Field(7 * 86_400, ge=60, description=(
        "how long an event id is remembered: a redelivery or duplicate within it changes nothing"))
    rec_ttl_s: int = Field(86_400, ge=60, description=(
        "how long a list's record is kept for feedback on it (attribution, ranker labels)"))
    log_level: str = "INFO"

    # -- recommender ------------------------------------------------------------------
    k: int = Field(10, ge=1, le=200, description="items per recommendation")
    #: Business rules; unset = the tuned profile's choice (events: purchased out, cart in).
    exclude_purchased: bool | None = None
    exclude_in_cart: bool | None = None
    #: Leave out the item being viewed (unset = profile: events keep it, re-views are common).
    exclude_current: bool | None = None
    repurchase_after_days: float | None = Field(None, ge=0, description=(
        "with purchased items excluded, how long after its last purchase an item may be "
        "recommended to the shopper again (the buy_again source proposes it); unset: never "
        "again (durable goods). Set it for consumables, groceries or wholesale"))
    purchases_kept: int = Field(2000, ge=1, description=(
        "the most items a shopper's purchase record keeps (it is read with each of their "
        "events); past it the item bought longest ago leaves it and may be recommended again"))
    session_gap_s: float = Field(1800.0, gt=0, description="inactivity that starts a new session")
    coalesce_per_user: bool = Field(True, description=(
        "a shopper with several clicks/carts in one batch gets one list computed after the "
        "last of them, sent once per trigger (acts only when the worker is busy)"))
    shed_after_ms: float = Field(0.0, ge=0, description=(
        "a batch whose oldest event waited longer than this (the worker's clock minus the "
        "record's Kafka timestamp) gets lists without the shed_sources, which marks each "
        "(skipped_sources); state is updated alike. A shed list costs about a third less CPU, "
        "so a worker that fell behind sends simpler lists sooner instead of late ones (0 = never)"))
    shed_sources: str = Field("session_knn,content,new_items", description=(
        "the candidate sources a late batch's lists leave out, comma-separated"))
    snapshot_every_s: float = Field(30.0, gt=0)
    share_ranker_labels: bool = Field(True, description=(
        "every worker's ranker learns every worker's labels: each sends the labels it learned "
        "to ranker-labels and learns the others' from it (off: each learns its partitions' only)"))
    ranker_trial_share: float = Field(0.2, ge=0, le=1, description=(
        "the share of lists interleaved from the prior blend's order and the online model's "
        "once the model has learned its warm-up: clicks on them decide which ranks "
        "(0 = no experiment shown to shoppers, and the prior blend always ranks)"))
    gc_gen0_threshold: int = Field(GC_GEN0_THRESHOLD, ge=0, description=(
        "once started, the worker freezes what it has built (modules, app, catalog) out of "
        "the garbage collector's reach and collects its youngest generation after this many "
        "new objects instead of 700: pauses of a few to about 25 ms instead of 75-90 ms "
        "(0 = Python's defaults, nothing frozen)"))
    event_loop: Literal["uvloop", "asyncio"] = Field("asyncio" if sys.platform == "win32" else "uvloop", description=(
        "the worker's event loop: uvloop's (libuv, in C: less CPU for Faust's and aiokafka's "
        "socket reads, writes and wake-ups) or Python's own"))
    item_cache_s: float = Field(1.0, ge=0, le=60, description=(
        "seconds of the shop's time (its events' timestamps, or the wall clock where that runs "
        "ahead) the candidate sources reuse an item's co-visitation, next-item and session lists "
        "and the popularity ranking read from Redis (0 = read every time)"))
    profile: str = Field("events", description=(
        "the recommender's tuned settings: a profile of models/tuned.toml (events, sessions), or of "
        "profile_file"))
    profile_file: Path | None = Field(None, description=(
        "a TOML file of profiles read instead of models/tuned.toml, e.g. the one `streamrec tune` "
        "wrote for this shop"))
    model_path: str | None = Field(None, description="ONNX text encoder folder (model.onnx + tokenizer.json)")
    content: bool = True

    # -- LLM copy -------------------------------------------------------------------------
    llm_base_url: str = "https://api.openai.com/v1"
    llm_model: str = "gpt-4o-mini"
    llm_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("STREAMREC_LLM_API_KEY", "OPENAI_API_KEY", "llm_api_key"))
    llm_concurrency: int = Field(4, ge=1, le=256)
    llm_timeout_s: float = Field(3.0, gt=0, le=120)
    llm_max_retries: int = Field(2, ge=0, le=10)
    copy_queue_size: int = Field(1000, ge=1)
    copy_cache_ttl_s: int = Field(24 * 3600, ge=1)
    copy_in_worker: bool = True

    @field_validator("shed_sources")
    @classmethod
    def _shed_sources(cls, v: str) -> str:
        from models.tuned import source_names  # the sources the tuned profiles name

        known = source_names()
        names = [n.strip() for n in v.split(",") if n.strip()]
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise ValueError(f"unknown source(s) {', '.join(unknown)}; known: {', '.join(known)}")
        return ",".join(names)

    @model_validator(mode="after")
    def _profile_exists(self) -> "Settings":
        self.tuned_profile()  # a missing file or profile, or a damaged file, fails at start
        return self

    def tuned_profile(self, name: str | None = None) -> dict[str, Any]:
        """The recommender settings of profile ``name`` (default: ``profile``), from
        ``profile_file`` when set, else from ``models/tuned.toml``.

        >>> Settings(_env_file=None).tuned_profile()["sources"][0]
        'session_knn'
        >>> try:
        ...     Settings(profile="shop", _env_file=None)
        ... except ValueError as e:
        ...     print(e.errors()[0]["msg"])
        Value error, no profile 'shop' in models/tuned.toml (it has sessions, events)
        """
        from models import tuned

        return tuned.load(name or self.profile, self.profile_file or tuned.TUNED_FILE)

    @field_validator("kafka_url")
    @classmethod
    def _kafka_url(cls, v: str) -> str:
        if not v.startswith("kafka://") or not v[len("kafka://"):].strip():
            raise ValueError("must look like kafka://host:port[;host:port]")
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str) -> str:
        if not v.split("://", 1)[0] in ("redis", "rediss", "memory", "unix", "valkey", "valkeys"):
            raise ValueError("must start with redis://, rediss://, unix:// or memory://")
        return v

    def apply_business_rules(self, cfg: Any) -> Any:
        """Put the business rules that are set (``exclude_*``, ``repurchase_after_days``)
        and the purchase record's size on a ``RecommenderConfig``, over the tuned profile's; the worker and
        ``streamrec replay`` both call this, so a replay scores the rules the worker runs.

        >>> from models.pipeline import RecommenderConfig
        >>> cfg = Settings(repurchase_after_days=14).apply_business_rules(RecommenderConfig())
        >>> cfg.exclude_purchased, cfg.repurchase_after_s
        (True, 1209600.0)
        """
        for name in ("exclude_purchased", "exclude_in_cart", "exclude_current"):
            if getattr(self, name) is not None:
                setattr(cfg, name, getattr(self, name))
        if self.repurchase_after_days is not None:
            cfg.repurchase_after_s = self.repurchase_after_days * 86_400.0
        cfg.purchases_kept = self.purchases_kept
        return cfg

    @property
    def kafka_bootstrap(self) -> list[str]:
        return [h.strip() for h in self.kafka_url[len("kafka://"):].split(";") if h.strip()]

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    @property
    def llm_enabled(self) -> bool:
        return self.llm_base_url.strip().lower() != "template"

    def redis_kwargs(self) -> dict:
        """Extra connection arguments for redis-py (credentials and TLS)."""
        out: dict = {"timeout_s": self.redis_timeout_s}
        if self.redis_username:
            out["username"] = self.redis_username
        if self.redis_password is not None:
            out["password"] = self.redis_password.get_secret_value()
        if self.redis_ssl_ca_certs:
            out["ssl_ca_certs"] = self.redis_ssl_ca_certs
        return out

    def open_store(self) -> Any:
        """The feature store ``redis_url`` names, with the credentials and TLS settings
        (a ``models.features.FeatureStore``)."""
        from models.features import open_store

        memory = self.redis_url.startswith("memory://")
        return open_store(self.redis_url, **({} if memory else self.redis_kwargs()))

    def kafka_kwargs(self) -> dict:
        """aiokafka connection arguments for the security settings."""
        out: dict = {"security_protocol": self.kafka_security_protocol}
        if self.kafka_security_protocol.startswith("SASL"):
            out["sasl_mechanism"] = self.kafka_sasl_mechanism
            out["sasl_plain_username"] = self.kafka_sasl_username
            out["sasl_plain_password"] = (self.kafka_sasl_password.get_secret_value()
                                          if self.kafka_sasl_password else None)
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            out["ssl_context"] = create_ssl_context(cafile=self.kafka_ssl_cafile,
                                                    certfile=self.kafka_ssl_certfile,
                                                    keyfile=self.kafka_ssl_keyfile)
        return out


def load_settings(**overrides) -> Settings:
    """Settings from the environment, with non-None overrides (CLI flags) on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
