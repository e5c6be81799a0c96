"""Feature stores chosen by URL scheme: ``redis://``, ``rediss://`` (TLS) or ``memory://``.

>>> open_store("memory://").kind
'memory'
"""

from __future__ import annotations

from typing import Any

from models.features.store import FeatureStore, StoreError


def open_store(url: str, **kwargs: Any) -> FeatureStore:
    """Open the feature store that ``url`` names; raises ValueError for unknown schemes."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "memory":
        from models.features.memory import MemoryStore

        return MemoryStore(**kwargs)
    if scheme in ("redis", "rediss", "unix", "valkey", "valkeys"):
        from models.features.redis import RedisStore

        if scheme.startswith("valkey"):
            url = "redis" + url[len("valkey"):]
        return RedisStore.from_url(url, **kwargs)
    raise ValueError(f"feature store URL must start with redis://, rediss:// or memory://, got {scheme or url[:16]!r}")


__all__ = ["FeatureStore", "StoreError", "open_store"]
