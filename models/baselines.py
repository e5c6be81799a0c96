"""Reference recommenders scored side by side with the pipeline in a replay.

Both learn from the same positive interactions (clicks, cart adds, purchases) in the
same order and answer ``recommend(user_id, k)``:

- :class:`MostPopular`: the items with the most interactions so far;
- :class:`BiasedMFBaseline`: River's ``reco.BiasedMF`` fitted online on implicit
  feedback (each positive ``(user, item, 1)`` plus ``negatives`` sampled items at 0,
  with a fixed seed), ranking every known item by the model's score.

>>> pop = MostPopular()
>>> for item in "abcbcc":
...     pop.learn("u", item)
>>> pop.recommend("u", 2)
['c', 'b']
>>> mf = BiasedMFBaseline(seed=1)
>>> for _ in range(30):
...     for u, i in (("u1", "a"), ("u2", "a"), ("u2", "b")):
...         mf.learn(u, i)
>>> mf.recommend("u1", 1)
['a']
"""

from __future__ import annotations

import random

import numpy as np


class MostPopular:
    """Top items by interaction count (exact, updated incrementally)."""

    name = "popularity"

    def __init__(self, keep: int = 100) -> None:
        self.counts: dict[str, int] = {}
        self.keep = keep
        self._top: list[str] = []

    def learn(self, user_id: str, item_id: str, weight: float = 1.0) -> None:
        c = self.counts[item_id] = self.counts.get(item_id, 0) + 1
        top = self._top
        if item_id in top or len(top) < self.keep or c > self.counts[top[-1]]:
            if item_id not in top:
                top.append(item_id)
            top.sort(key=lambda i: (-self.counts[i], i))
            del top[self.keep:]

    def recommend(self, user_id: str, k: int) -> list[str]:
        return self._top[:k]


class BiasedMFBaseline:
    """River ``reco.BiasedMF`` on implicit feedback with sampled negatives.

    Scores are read from the model's own parameters (global mean, biases, latent
    vectors), mirrored into numpy arrays for the two rows each update touches, so
    ranking every item costs one matrix-vector product.
    """

    name = "biased_mf"

    def __init__(self, n_factors: int = 10, negatives: int = 1, seed: int = 42,
                 learning_rate: float = 0.05, l2: float = 0.01) -> None:
        from river import optim, reco

        self.n_factors = n_factors
        self.model = reco.BiasedMF(
            n_factors=n_factors, bias_optimizer=optim.SGD(learning_rate),
            latent_optimizer=optim.SGD(learning_rate), l2_bias=l2, l2_latent=l2,
            weight_initializer=optim.initializers.Zeros(),
            latent_initializer=optim.initializers.Normal(mu=0.0, sigma=0.1, seed=seed), seed=seed)
        self.negatives = negatives
        self.rng = random.Random(seed)
        self.items: list[str] = []
        self.index: dict[str, int] = {}
        self._bias = np.zeros(1024)
        # factors x items: scoring is n_factors elementwise multiply-adds over the items,
        # no BLAS call (whose threads fight the replay for the cores)
        self._lat = np.zeros((n_factors, 1024))

    def _row(self, item_id: str) -> int:
        i = self.index.get(item_id)
        if i is None:
            i = self.index[item_id] = len(self.items)
            self.items.append(item_id)
            if i >= len(self._bias):
                self._bias = np.concatenate([self._bias, np.zeros(len(self._bias))])
                self._lat = np.concatenate([self._lat, np.zeros_like(self._lat)], axis=1)
        return i

    def _sync(self, item_id: str) -> None:
        i = self._row(item_id)
        self._bias[i] = self.model.i_biases[item_id]
        lat = self.model.i_latents[item_id]
        self._lat[:, i] = [lat[f] for f in range(self.n_factors)]

    def learn(self, user_id: str, item_id: str, weight: float = 1.0) -> None:
        self._row(item_id)
        samples = [(item_id, 1.0)]
        for _ in range(self.negatives):
            if len(self.items) > 1:
                other = self.items[self.rng.randrange(len(self.items))]
                if other != item_id:
                    samples.append((other, 0.0))
        for item, y in samples:
            self.model.learn_one(user_id, item, y)
            self._sync(item)

    def recommend(self, user_id: str, k: int) -> list[str]:
        n = len(self.items)
        if not n:
            return []
        scores = self._bias[:n].copy()
        if user_id in self.model.u_latents:
            lat = self.model.u_latents[user_id]
            for f in range(self.n_factors):
                scores += lat[f] * self._lat[f, :n]
        k = min(k, n)
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.lexsort((top, -scores[top]))]
        return [self.items[i] for i in top]
