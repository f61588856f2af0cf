"""Shared helpers of the methods: independent k-means restart seeds."""

from __future__ import annotations

import numpy as np

import mlcd.cluster
from mlcd.methods._base import kmeans_fit, restart_seeds


def test_restart_seeds_independent_and_reproducible():
    a, b = restart_seeds(0, 5), restart_seeds(1, 5)
    assert a == restart_seeds(0, 5)  # same seed, same restarts
    assert len(set(a)) == 5 and not set(a) & set(b)  # seeds 0 and 1 share no restart (seed + r would)
    assert restart_seeds(0, 3) == a[:3]
    assert all(0 <= s < 2**31 for s in a + b + restart_seeds(-7, 2) + restart_seeds(2**70, 2))


def test_kmeans_fit_restarts_differ_between_seeds(monkeypatch):
    seen: list[int] = []
    real = mlcd.cluster.KMeans

    class Recording(real):
        def fit(self, X, y=None, **kw):
            seen.append(self.seed)
            return super().fit(X, y, **kw)

    monkeypatch.setattr(mlcd.cluster, "KMeans", Recording)
    X = np.random.default_rng(0).standard_normal((200, 4)).astype(np.float32)
    runs = {}
    for seed in (0, 1, 2):
        seen.clear()
        c, lab, inertia = kmeans_fit(X, 3, seed=seed, n_init=3)
        runs[seed] = list(seen)
    assert len(set(runs[0] + runs[1] + runs[2])) == 9  # no restart shared between seeds 0, 1, 2
    seen.clear()
    c2, lab2, inertia2 = kmeans_fit(X, 3, seed=2, n_init=3)
    assert seen == runs[2]
    np.testing.assert_array_equal(lab, lab2)
    assert inertia == inertia2
