"""The online ranker: a River logistic model over the candidate sources' signals.

Candidates arrive with one score per source that proposed them. Items are ordered by
a fixed prior blend of those signals until the model has learned ``warmup`` labels
and has won its trial; then by the model's click probability (the prior breaks ties).
Labels come from what shoppers do with shown lists: a click on a recommended item is
a positive, shown items ranked above it (or dismissed) are negatives.

The trial is an interleaving experiment (team-draft interleaving, Radlinski et al.,
2008). Once the model has learned its warm-up, a share of the lists (``trial_share``,
drawn by the triggering event's id) is merged from both orders: turn by turn, in an
order drawn by coin, the prior blend and the model each place their best item not yet
placed, and the list records who placed what. A click on such a list counts for
whoever placed the item. Both rankers hold the top places equally often, so where shoppers look first, and
which items a list can show at all, favour neither; the clicks say which ranks what
shoppers want higher. The model takes over once it has drawn at least ``trial_min`` of
the latest ``trial_clicks`` clicks counted and its share of them beats a half by
``trial_margin`` and by three standard errors (two rankers of equal merit are rarely
that far apart: chance does not hand over); the trial goes on while it ranks, and it
hands back to the prior when its share falls below a half.

>>> r = Ranker(["covis", "popular"])
>>> f = r.features({"covis": 1.0}, rank={"covis": 0})
>>> sorted(f)
['covis', 'covis_rank', 'n_sources']
>>> r.learn(f, True); r.updates
1
"""

from __future__ import annotations

import collections
import math
import random
from typing import Any, Mapping, Sequence

import orjson
from river import compose, linear_model, optim, preprocessing, utils

DEFAULT_PRIOR = {"sequential": 1.0, "session_knn": 1.0, "covis": 0.7, "content": 0.4, "popular": 0.05}
#: the snapshot's format: JSON of the learned numbers, never a pickle (a pickle read from
#: a shared store runs whatever code whoever could write that key put in it)
SNAPSHOT_FORMAT = "streamrec-ranker/1"


class SnapshotError(ValueError):
    """A ranker snapshot that cannot be restored: not ours, of another format, or damaged."""


#: One click on an interleaved list: True when the model placed the item, False the prior.
Trial = bool
MODEL, PRIOR = "model", "prior blend"


class Ranker:
    """The prior blend, and the model that takes over once it has learned ``warmup``
    labels and won its trial (``trial_min=0``: no trial, the model ranks after the
    warm-up)."""

    def __init__(self, sources: list[str], prior: Mapping[str, float] | None = None,
                 warmup: int = 500, learning_rate: float = 0.05, trial_share: float = 0.2,
                 trial_clicks: int = 500, trial_min: int = 100, trial_margin: float = 0.05) -> None:
        self.sources = list(sources)
        self.prior = {**DEFAULT_PRIOR, **(prior or {})}
        self.warmup = warmup
        self.updates = 0
        self.positives = 0
        self.trial_share = trial_share
        #: the latest clicks on interleaved lists, oldest first: True where the model
        #: placed the item clicked
        self.trials: collections.deque[Trial] = collections.deque(maxlen=max(1, trial_clicks))
        self.trial_min, self.trial_margin = trial_min, trial_margin
        #: the trial's verdict: shoppers click what the model places more than what the prior does
        self.model_won = False
        #: Where this model's learning stands in the labels the workers share (opaque
        #: here: kept in the snapshot and given back by ``restore``); None: nowhere.
        self.seen_labels: dict[str, Any] | None = None
        self.model = compose.Pipeline(
            preprocessing.StandardScaler(),
            linear_model.LogisticRegression(optimizer=optim.SGD(learning_rate), l2=1e-4))

    @property
    def feature_names(self) -> frozenset[str]:
        """Every feature a candidate can have: each source's score and reciprocal rank,
        the number of sources, and the category affinity the pipeline adds.

        >>> sorted(Ranker(["covis"]).feature_names)
        ['cat_affinity', 'covis', 'covis_rank', 'n_sources']
        """
        return frozenset([*self.sources, *(f"{s}_rank" for s in self.sources), "n_sources", "cat_affinity"])

    @staticmethod
    def features(signals: Mapping[str, float], rank: Mapping[str, int]) -> dict[str, float]:
        """Model features of one candidate: each source's score and reciprocal rank."""
        f: dict[str, float] = {"n_sources": float(len(signals))}
        for s, v in signals.items():
            f[s] = float(v)
            f[f"{s}_rank"] = 1.0 / (1 + rank.get(s, 0))
        return f

    def prior_scores(self, signals: list[Mapping[str, float]]) -> list[float]:
        """The fixed prior blend of each candidate's signals (a weight per source, 0.1
        for a source the prior does not name).

        >>> Ranker(["covis"]).prior_scores([{"session_knn": 1.0, "popular": 2.0}, {"new": 1.0}, {}])
        [1.1, 0.1, 0.0]
        """
        weight = self.prior.get
        out = []
        for sig in signals:
            p = 0.0
            for s, v in sig.items():
                p += weight(s, 0.1) * v
            out.append(p)
        return out

    @property
    def warm(self) -> bool:
        """True once the model has learned its warm-up's labels, of both kinds."""
        return self.updates >= self.warmup and 0 < self.positives < self.updates

    @property
    def active(self) -> bool:
        """True when the model ranks: it is warm and won its trial (or has none)."""
        return self.warm and (self.model_won or self.trial_min <= 0)

    def status(self) -> dict[str, Any]:
        """What ranks and why, for ``/healthz``.

        >>> Ranker(["covis"]).status()
        {'labels': 0, 'warmup': 500, 'trial': {'lists': 0.2, 'clicks': 0, 'needs': 100, 'model_share': None}, 'ranks_by': 'prior blend'}
        """
        share = self.model_share()
        return {"labels": self.updates, "warmup": self.warmup,
                "trial": {"lists": self.trial_share if self.trial_min > 0 else 0.0, "clicks": len(self.trials),
                          "needs": self.trial_min, "model_share": round(share, 4) if share is not None else None},
                "ranks_by": MODEL if self.active else PRIOR}

    def model_share(self) -> float | None:
        """The share of the trial's latest clicks that went to items the model placed."""
        return sum(self.trials) / len(self.trials) if self.trials else None

    def in_trial(self, draw: str) -> bool:
        """Whether a list is interleaved: a ``trial_share`` of the lists once the model
        is warm, drawn by ``draw`` (the triggering event's id: the same event, the same
        draw)."""
        return (self.trial_min > 0 and self.trial_share > 0 and self.warm
                and random.Random(draw).random() < self.trial_share)

    def add_trials(self, trials: Sequence[Trial]) -> None:
        """Count clicks on interleaved lists (True: on an item the model placed), this
        worker's or another's, and give the verdict.

        >>> r = Ranker(["covis"], trial_min=100)
        >>> r.add_trials([True] * 60 + [False] * 40); r.model_won   # 0.60: short of 0.5 + 3 standard errors
        False
        >>> r.add_trials([True] * 80 + [False] * 20); r.model_won   # 0.70 of 200
        True
        >>> r.add_trials([False] * 300); r.model_won                # 0.28 of the latest 500
        False
        """
        self.trials.extend(trials)
        n = len(self.trials)
        if n < max(1, self.trial_min):
            return
        lead = sum(self.trials) / n - 0.5
        if not self.model_won:
            self.model_won = lead >= max(self.trial_margin, 3 * math.sqrt(0.25 / n))
        elif lead < 0:
            self.model_won = False

    def probabilities(self, features: Sequence[Mapping[str, float]]) -> list[float]:
        """The model's click probability of each candidate: River's ``predict_proba_one``
        (scale each feature, weigh, add up) with each feature's scale and weight folded
        into one coefficient and offset first, once per call."""
        scaler, lr = self.model.steps["StandardScaler"], self.model.steps["LogisticRegression"]
        means, learned = scaler.means, lr._weights.to_dict()
        folded = {}  # feature -> (weight / sd, weight * mean / sd); a feature of no spread adds nothing
        for f, var in scaler.vars.items():
            if var > 0 and learned.get(f):
                c = learned[f] / var ** 0.5
                folded[f] = (c, c * means.get(f, 0.0))
        nothing, exp, out = (0.0, 0.0), math.exp, []
        for fs in features:
            z = lr.intercept
            for f, x in fs.items():
                c, offset = folded.get(f, nothing)
                z += c * x - offset
            z = -30.0 if z < -30.0 else 30.0 if z > 30.0 else z
            out.append(1.0 / (1.0 + exp(-z)))
        return out

    def score(self, features: Mapping[str, float], signals: Mapping[str, float]) -> float:
        return self.score_many([features], [signals])[0]

    def score_many(self, features: list[Mapping[str, float]], signals: list[Mapping[str, float]]) -> list[float]:
        """Scores of many candidates at once: the prior blend until the model is active,
        then its click probability (computed from the learned weights directly, the same
        numbers River's ``predict_proba_one`` gives, without its per-call overhead).

        >>> r = Ranker(["covis"], warmup=2, trial_min=0)  # no trial: the model ranks after its warm-up
        >>> for y in (True, False, True, False): r.learn({"covis": float(y), "n_sources": 1.0}, y)
        >>> f = {"covis": 1.0, "n_sources": 1.0}
        >>> round(r.score_many([f], [{"covis": 1.0}])[0], 9) == round(r.model.predict_proba_one(f)[True] + 1e-3 * math.tanh(0.7), 9)
        True
        """
        priors = self.prior_scores(signals)
        return self.blend(self.probabilities(features), priors) if self.active else priors

    @staticmethod
    def blend(probabilities: Sequence[float], priors: Sequence[float]) -> list[float]:
        """The model's scores as it ranks: its click probability, the prior blend
        breaking ties."""
        return [p + 1e-3 * math.tanh(prior) for p, prior in zip(probabilities, priors)]

    def learn(self, features: Mapping[str, float], clicked: bool) -> None:
        self.model.learn_one(dict(features), bool(clicked))
        self.updates += 1
        self.positives += bool(clicked)

    def snapshot(self, seen_labels: Mapping[str, Any] | None = None) -> bytes:
        """The learned state as JSON: the scaler's running statistics, the weights, the
        intercept and the optimizer's step count, and ``seen_labels`` (where its
        learning stands in the shared labels) when given. ``restore`` of it continues
        exactly where this ranker is (the same scores, the same next updates).

        >>> r = Ranker(["covis"])
        >>> r.learn({"covis": 1.0, "n_sources": 1.0}, True)
        >>> fresh = Ranker(["covis"]); fresh.restore(r.snapshot()); fresh.updates
        1
        """
        scaler, lr = self.model.steps["StandardScaler"], self.model.steps["LogisticRegression"]
        return orjson.dumps({
            "format": SNAPSHOT_FORMAT, "updates": self.updates, "positives": self.positives,
            "scaler": {"counts": dict(scaler.counts), "means": dict(scaler.means), "vars": dict(scaler.vars)},
            "weights": lr._weights.to_dict(), "intercept": lr.intercept,
            "steps": lr.optimizer.n_iterations,
            "trial": {"clicks": list(self.trials), "model_won": self.model_won},
            **({"seen_labels": dict(seen_labels)} if seen_labels is not None else {})})

    def restore(self, blob: bytes) -> None:
        """Take the state ``snapshot`` wrote; raises ``SnapshotError`` (and changes
        nothing) for anything else, including the pickles of releases before this format.

        >>> Ranker(["covis"]).restore(b"\\x80\\x04junk")
        Traceback (most recent call last):
        ...
        models.ranking.SnapshotError: not a ranker snapshot of format streamrec-ranker/1 (older releases wrote a pickle, which is never loaded): the ranker starts cold
        """
        state = parse_snapshot(blob)
        scaler, lr = self.model.steps["StandardScaler"], self.model.steps["LogisticRegression"]
        scaler.counts = collections.Counter(state["scaler"]["counts"])
        scaler.means = collections.defaultdict(float, state["scaler"]["means"])
        scaler.vars = collections.defaultdict(float, state["scaler"]["vars"])
        lr._weights = utils.VectorDict(state["weights"])
        lr.intercept = state["intercept"]
        lr.optimizer.n_iterations = state["steps"]
        self.updates, self.positives = state["updates"], state["positives"]
        self.seen_labels = state.get("seen_labels")
        trial = state.get("trial") or {"clicks": [], "model_won": False}  # older snapshots: none
        self.trials.clear()
        self.trials.extend(trial["clicks"])
        self.model_won = trial["model_won"]


def team_draft(first: Sequence[str], second: Sequence[str], n: int, rng: random.Random
               ) -> list[tuple[str, bool]]:
    """Up to ``n`` items merged from two orders by team-draft interleaving: each round a
    coin says which order places first, then each places its best item not yet placed.
    Returns (item, placed by ``second``) pairs in list order.

    >>> team_draft(["a", "b", "c"], ["c", "a", "d"], 4, random.Random(1))
    [('c', True), ('a', False), ('b', False), ('d', True)]
    """
    out: list[tuple[str, bool]] = []
    placed: set[str] = set()
    left = {False: iter(first), True: iter(second)}

    def place(by_second: bool) -> bool:
        for item in left[by_second]:
            if item not in placed:
                placed.add(item)
                out.append((item, by_second))
                return True
        return False

    while len(out) < n:
        turn = rng.random() < 0.5
        went = place(turn)
        if len(out) < n:
            went = place(not turn) or went
        if not went:
            break
    return out


def _trials_ok(clicks: Any) -> bool:
    return isinstance(clicks, list) and all(isinstance(c, bool) for c in clicks)


def _finite_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _named_numbers(d: Any) -> bool:
    """Whether ``d`` maps names (text) to finite numbers, as every part of the model does."""
    return isinstance(d, dict) and all(isinstance(k, str) and _finite_number(v) for k, v in d.items())


def parse_snapshot(blob: bytes) -> dict[str, Any]:
    """The state in a ranker snapshot, checked number by number; ``SnapshotError`` when
    ``blob`` is not one (``streamrec check-store`` uses the same check)."""
    try:
        state = orjson.loads(blob)
    except orjson.JSONDecodeError:
        state = None
    if not isinstance(state, dict) or state.get("format") != SNAPSHOT_FORMAT:
        raise SnapshotError(f"not a ranker snapshot of format {SNAPSHOT_FORMAT} (older releases wrote a "
                            "pickle, which is never loaded): the ranker starts cold")

    scaler = state.get("scaler")
    if not (isinstance(scaler, dict) and all(_named_numbers(scaler.get(p)) for p in ("counts", "means", "vars"))
            and _named_numbers(state.get("weights")) and _finite_number(state.get("intercept"))
            and all(type(state.get(c)) is int and state[c] >= 0 for c in ("updates", "positives", "steps"))):
        raise SnapshotError("ranker snapshot damaged: a field is missing or not a number")
    seen = state.get("seen_labels")
    if seen is not None and not (
            isinstance(seen, dict) and isinstance(seen.get("origin"), str) and type(seen.get("sent")) is int
            and isinstance(seen.get("positions"), dict)
            and all(k.isdigit() and type(v) is int and v >= 0 for k, v in seen["positions"].items())):
        raise SnapshotError("ranker snapshot damaged: seen_labels is not {origin, sent, positions}")
    trial = state.get("trial")
    if trial is not None and not (isinstance(trial, dict) and isinstance(trial.get("model_won"), bool)
                                  and _trials_ok(trial.get("clicks"))):
        raise SnapshotError("ranker snapshot damaged: trial is not {clicks: [true|false, ...], model_won}")
    return state


def labels_json(origin: str, labels: list[tuple[Mapping[str, float], bool]], seq: int = 0,
                trials: Sequence[Trial] = ()) -> bytes:
    """The ``ranker-labels`` message of one worker's labels (``origin``: that worker
    process's random id, so that it skips its own; ``seq``: the message's number among
    that process's, so that a ranker restored from its snapshot skips the ones in it)
    and its clicks on interleaved lists (``Ranker.add_trials``).

    >>> parse_labels(labels_json("w1", [({"covis": 0.5}, True)], seq=3, trials=[True, False]))
    ('w1', 3, [({'covis': 0.5}, True)], [True, False])
    """
    return orjson.dumps({"from": origin, "seq": seq, "labels": [[f, bool(y)] for f, y in labels],
                         "trials": list(trials)})


def parse_labels(blob: bytes) -> tuple[str, int, list[tuple[dict[str, float], bool]], list[Trial]]:
    """(origin, seq, labels, trial clicks) of a ``ranker-labels`` message, every number
    checked; ValueError for anything else (nothing of a bad message is learned)."""
    try:
        msg = orjson.loads(blob)
    except orjson.JSONDecodeError:
        raise ValueError("not JSON") from None
    if (not isinstance(msg, dict) or not isinstance(msg.get("from"), str) or not isinstance(msg.get("labels"), list)
            or type(msg.get("seq", 0)) is not int):
        raise ValueError("not a labels message: needs from (text), seq (a whole number) and labels (a list)")
    out = []
    for row in msg["labels"]:
        if not (isinstance(row, list) and len(row) == 2 and isinstance(row[1], bool) and _named_numbers(row[0])):
            raise ValueError("a label is not [features (names to numbers), clicked (true/false)]")
        out.append(({k: float(v) for k, v in row[0].items()}, row[1]))
    trials = msg.get("trials", [])  # older releases sent none
    if not _trials_ok(trials):
        raise ValueError("trials is not a list of true (the model placed the item clicked) or false")
    return msg["from"], msg.get("seq", 0), out, trials
