"""Tuned recommender settings (``models/tuned.toml``) turned into a config and sources.

Profiles: ``sessions`` (session benchmarks: learn from training sessions, predict
each next click) and ``events`` (prequential shop event streams). The file says
how each was chosen.

>>> from models.features.memory import MemoryStore
>>> from models.features.keys import Keys
>>> cfg, sources, prior, warmup = build("sessions", MemoryStore(), Keys(), k=20)
>>> [s.name for s in sources], cfg.k, cfg.exclude_current
(['session_knn', 'sequential'], 20, False)
"""

from __future__ import annotations

import inspect
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

from models.candidates import CandidateSource
from models.candidates.buy_again import BuyAgain
from models.candidates.covis import CoVisitation
from models.candidates.popular import Popularity
from models.candidates.sequential import Sequential
from models.candidates.session_knn import SessionKNN
from models.features.keys import Keys
from models.features.store import FeatureStore
from models.pipeline import RecommenderConfig

TUNED_FILE = Path(__file__).with_name("tuned.toml")
PROFILES = ("sessions", "events")


def load(profile: str, path: Path = TUNED_FILE) -> dict[str, Any]:
    """The settings of one profile as a dict. A missing or damaged file, a missing
    profile and a setting nothing reads are each a ``ValueError`` saying so.

    >>> load("events")["sources"][-1]
    'popular'
    >>> load("shop")
    Traceback (most recent call last):
    ValueError: no profile 'shop' in models/tuned.toml (it has sessions, events)
    """
    shown = "models/tuned.toml" if Path(path) == TUNED_FILE else str(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ValueError(f"no profile file {shown}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{shown} is not a TOML file of profiles: {e}") from None
    if not isinstance(data.get(profile), dict):
        have = ", ".join(k for k, v in data.items() if isinstance(v, dict)) or "none"
        raise ValueError(f"no profile {profile!r} in {shown} (it has {have})")
    p = data[profile]
    problems = _unread(p)
    if problems:
        raise ValueError(f"profile {profile!r} in {shown}: " + "; ".join(problems))
    return p


def _source_classes() -> dict[str, Any]:
    """Each source's name -> the class its profile table configures (None: no options)."""
    from models.content.sources import NewItemsSource

    return {"session_knn": SessionKNN, "sequential": Sequential, "covis": CoVisitation, "popular": Popularity,
            "buy_again": BuyAgain, "new_items": NewItemsSource, "content": None}


def _unread(p: dict[str, Any]) -> list[str]:
    """What in profile ``p`` nothing would read: unknown sources, settings and options
    (a misspelt name would otherwise be ignored without a word).

    >>> _unread({"sources": ["covis", "sesion_knn"], "depht": 2, "covis": {"anchor": 3}})
    ["unknown source 'sesion_knn'", "unknown setting 'depht'", "covis: unknown option 'anchor'"]
    """
    classes = _source_classes()
    config = {f.name for f in fields(RecommenderConfig)}
    sources = p.get("sources", [])
    if not isinstance(sources, list):
        return ["sources must be a list of source names"]
    out = [f"unknown source {n!r}" for n in sources if n not in classes]
    for key, value in p.items():
        if key in ("sources", "prior", "ranker_warmup") or key in config:
            continue
        if key not in classes:
            out.append(f"unknown setting {key!r}")
        elif not isinstance(value, dict):
            out.append(f"{key} must be a table of options")
        else:
            cls = classes[key]
            known = set() if cls is None else set(inspect.signature(cls.__init__).parameters) - {
                "self", "store", "keys", "content"}
            out += [f"{key}: unknown option {o!r}" for o in value if o not in known]
    prior = p.get("prior", {})
    if not isinstance(prior, dict) or not all(isinstance(v, (int, float)) for v in prior.values()):
        out.append("prior must map source names to numbers")
    return out


def source_names(path: Path = TUNED_FILE) -> list[str]:
    """Every candidate source the profiles in ``path`` name, in first-named order.

    >>> "session_knn" in source_names() and "popular" in source_names()
    True
    """
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    return list(dict.fromkeys(n for p in data.values() if isinstance(p, dict) for n in p.get("sources", [])))


def build(profile: str | dict[str, Any], store: FeatureStore, keys: Keys, k: int = 20,
          content: Callable[[FeatureStore, Keys], CandidateSource] | None = None
          ) -> tuple[RecommenderConfig, list[CandidateSource], dict[str, float], int]:
    """``(config, sources, ranker prior, ranker warmup)`` for a profile name or dict.

    ``content`` builds the content source; when None the ``content`` entry is skipped,
    and so is ``new_items`` (text neighbours among never-touched items), which shares
    the content source's index.
    """
    p = load(profile) if isinstance(profile, str) else profile
    names = {f.name for f in fields(RecommenderConfig)}
    cfg = RecommenderConfig(**{key: v for key, v in p.items() if key in names and not isinstance(v, dict)})
    cfg.k = k
    sources: list[CandidateSource] = []
    for name in p.get("sources", []):
        opts = dict(p.get(name, {}))
        if name == "session_knn":
            opts.setdefault("session_cap", cfg.session_cap)
            sources.append(SessionKNN(store, keys, **opts))
        elif name == "sequential":
            sources.append(Sequential(store, keys, **opts))
        elif name == "covis":
            sources.append(CoVisitation(store, keys, **opts))
        elif name == "popular":
            sources.append(Popularity(store, keys, **opts))
        elif name == "buy_again":
            sources.append(BuyAgain(**opts))
        elif name == "content":
            source = content(store, keys) if content is not None else None
            if source is not None:  # None: no text encoder installed
                sources.append(source)
        elif name == "new_items":  # rides on the content source listed before it
            from models.content.sources import ContentSource, NewItemsSource

            text = next((s for s in sources if isinstance(s, ContentSource)), None)
            if text is not None:
                sources.append(NewItemsSource(text, **opts))
        else:
            raise ValueError(f"unknown candidate source {name!r} in the tuned settings")
    return cfg, sources, dict(p.get("prior", {})), int(p.get("ranker_warmup", 500))
