"""The one place that builds feature-store key names.

Keys of one user share the hash tag ``{u:<user_id>}`` so that on Redis Cluster every
per-user key lives in one slot (one pipeline, one node). ``user_keys`` lists every
per-user key: erasing a shopper deletes exactly those.

>>> k = Keys("shop1:")
>>> k.recent("alice")
'shop1:{u:alice}:recent'
>>> k.covis("i9")
'shop1:{i:i9}:covis'
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = ""

    # -- per user (hash tag {u:<id>}) -------------------------------------------
    def _u(self, user_id: str, what: str) -> str:
        return f"{self.prefix}{{u:{user_id}}}:{what}"

    def recent(self, user_id: str) -> str:
        """The user's recent item ids, newest first, joined by the unit separator."""
        return self._u(user_id, "recent")

    def session(self, user_id: str) -> str:
        """Hash: the current session's id, last event time and items (newest first)."""
        return self._u(user_id, "session")

    def session_ids(self, user_id: str) -> str:
        """List of the user's (opaque) session ids, so erasure can find them."""
        return self._u(user_id, "sessions")

    def cart(self, user_id: str) -> str:
        """Hash item_id -> quantity in the cart."""
        return self._u(user_id, "cart")

    def purchases(self, user_id: str) -> str:
        """Hash item_id -> ``"times bought|event time of the last purchase"``."""
        return self._u(user_id, "purchases")

    def bought(self, user_id: str) -> str:
        """Set of item ids the user purchased, as written by releases before the
        ``purchases`` hash. Read with the shopper's state: its items move into
        ``purchases`` (bought once, at that batch's time) and the set is deleted, in the
        first batch that shopper appears in. Also erased with the user."""
        return self._u(user_id, "bought")

    def profile(self, user_id: str) -> str:
        """Hash of per-user counters (clicks, carts, purchases, category affinities)."""
        return self._u(user_id, "profile")

    def latest_rec(self, user_id: str) -> str:
        """The latest recommendation event for the user (JSON bytes)."""
        return self._u(user_id, "rec")

    def latest_enriched(self, user_id: str) -> str:
        """The latest enriched recommendation event for the user (JSON bytes)."""
        return self._u(user_id, "rec-enriched")

    def last_rec(self, user_id: str) -> str:
        """The latest list's items, sources and ranker features (JSON bytes), for labels."""
        return self._u(user_id, "last-rec")

    def user_vector(self, user_id: str) -> str:
        """Per-user model state (e.g. a text-preference vector), bytes."""
        return self._u(user_id, "vector")

    def user_keys(self, user_id: str) -> list[str]:
        """Every per-user key, for erasure."""
        return [self.recent(user_id), self.session(user_id), self.session_ids(user_id),
                self.cart(user_id), self.purchases(user_id), self.bought(user_id), self.profile(user_id),
                self.latest_rec(user_id), self.latest_enriched(user_id), self.last_rec(user_id),
                self.user_vector(user_id)]

    # -- per session (opaque random ids, not derived from the user) ----------------
    def session_items(self, session_id: str) -> str:
        """The session's item ids, newest first, joined by the unit separator."""
        return f"{self.prefix}{{s:{session_id}}}:items"

    # -- per item ------------------------------------------------------------------
    def _i(self, item_id: str, what: str) -> str:
        return f"{self.prefix}{{i:{item_id}}}:{what}"

    def covis(self, item_id: str) -> str:
        """Zset: items co-visited with this one in a session, weighted."""
        return self._i(item_id, "covis")

    def next_items(self, item_id: str) -> str:
        """Zset: items clicked right after this one (sequential co-visitation)."""
        return self._i(item_id, "next")

    def item_sessions(self, item_id: str) -> str:
        """List of recent session ids that touched this item (session-kNN index)."""
        return self._i(item_id, "sessions")

    def item_meta(self, item_id: str) -> str:
        """Hash: catalog fields (title, category, price, available)."""
        return self._i(item_id, "meta")

    def item_vector(self, item_id: str) -> str:
        """The item's text embedding (float32 bytes)."""
        return self._i(item_id, "vector")

    # -- global ----------------------------------------------------------------------
    def popularity(self, landmark: int) -> str:
        """Zset: forward-decayed item popularity relative to one landmark period
        (see ``models.candidates.popular``)."""
        return f"{self.prefix}popularity:{landmark}"

    def counts(self) -> str:
        """Hash: item_id -> total interactions (not decayed), for inverse popularity."""
        return f"{self.prefix}item-counts"

    def seen(self, event_id: str) -> str:
        """Dedupe marker of one event id."""
        return f"{self.prefix}seen:{event_id}"

    def item_reviews(self, item_id: str) -> str:
        """List of recent review texts of the item (no user ids; scrubbed before any prompt)."""
        return self._i(item_id, "reviews")

    def rec(self, rec_id: str) -> str:
        """A recommendation's items and sources, for attributing feedback (JSON bytes)."""
        return f"{self.prefix}rec:{rec_id}"

    def snapshot(self, name: str) -> str:
        """A learner snapshot (bytes)."""
        return f"{self.prefix}snapshot:{name}"

    def ctr(self) -> str:
        """Hash: impressions and clicks per source and per model version."""
        return f"{self.prefix}ctr"

    def copy_cache(self, digest: str) -> str:
        """Cached copy for a (items, segment, prompt version) digest (JSON bytes)."""
        return f"{self.prefix}copy:{digest}"

    def catalog_ids(self) -> str:
        """Set of every known catalog item id."""
        return f"{self.prefix}catalog"
