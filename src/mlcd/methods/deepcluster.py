"""DeepCluster (Caron et al., ECCV 2018) as a head on frozen features.

Each epoch: embed all samples with the current trunk, L2-normalise, run k-means
(pseudo-labels), repair empty clusters, re-initialise the classifier, and train
trunk + classifier one pass with cross-entropy on the pseudo-labels, sampling
samples uniformly over pseudo-classes (DeepCluster's remedy for unbalanced
clusters).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._base import BaseClusterMethod, kmeans_fit, l2_normalize, perturb, restart_seeds

__all__ = ["DeepClusterHead", "repair_empty_clusters"]


def repair_empty_clusters(
    emb: np.ndarray, labels: np.ndarray, centers: np.ndarray, rng: np.random.Generator, eps: float = 1e-4
) -> tuple[np.ndarray, np.ndarray, int]:
    """DeepCluster's empty-cluster fix, applied after the final assignment.

    Each empty cluster takes a copy of a non-empty cluster's centre (drawn
    with probability proportional to cluster size) with a small symmetric
    perturbation, and that cluster's samples are split between the two centres.
    Returns ``(labels, centers, n_repaired)``.
    """
    k = centers.shape[0]
    labels = labels.copy()
    centers = centers.copy()
    repaired = 0
    for c in range(k):
        counts = np.bincount(labels, minlength=k)
        if counts[c] > 0:
            continue
        donors = np.flatnonzero(counts > 1)
        if donors.size == 0:
            break
        p = counts[donors] / counts[donors].sum()
        j = int(rng.choice(donors, p=p))
        delta = eps * rng.standard_normal(centers.shape[1]).astype(centers.dtype)
        centers[c] = centers[j] + delta
        centers[j] = centers[j] - delta
        rows = np.flatnonzero(labels == j)
        d_c = ((emb[rows] - centers[c]) ** 2).sum(1)
        d_j = ((emb[rows] - centers[j]) ** 2).sum(1)
        move = d_c < d_j
        if move.all() or not move.any():  # degenerate split: halve the cluster at random
            move = np.zeros(rows.size, dtype=bool)
            move[rng.permutation(rows.size)[: rows.size // 2]] = True
        labels[rows[move]] = c
        repaired += 1
    return labels, centers, repaired


class DeepClusterHead(BaseClusterMethod):
    """DeepCluster on frozen features: a trainable MLP trunk and a classifier.

    Stand-in for image augmentation: feature noise and dropout on the inputs
    during training (``noise``, ``dropout``). The k-means runs on the trunk's
    L2-normalised outputs with ``mlcd.cluster.KMeans`` (faiss), which repairs
    empty clusters during its iterations; any cluster still empty after the
    final assignment is repaired by splitting a large one
    (:func:`repair_empty_clusters`).

    The result is the k-means partition of the final epoch's embedding:
    ``labels_`` and ``predict`` use the nearest final centre (cosine);
    ``predict_proba`` is ``softmax(cos(h(x), centres) / temperature)``.

    Parameters
    ----------
    n_clusters: K (DeepCluster over-clusters for representation learning; for a
        clustering result use the number of groups wanted).
    hidden_dim: trunk width (the embedding that is clustered).
    epochs: k-means + training rounds.
    batch_size, lr, weight_decay: SGD with momentum 0.9, as DeepCluster.
    noise, dropout: feature-space augmentation.
    kmeans_iter: Lloyd iterations per epoch.
    temperature: of ``predict_proba``.
    """

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        hidden_dim: int = 256,
        epochs: int = 20,
        batch_size: int = 256,
        lr: float = 0.05,
        weight_decay: float = 1e-5,
        noise: float = 0.1,
        dropout: float = 0.1,
        kmeans_iter: int = 20,
        temperature: float = 0.05,
        seed: int = 0,
        device: str = "auto",
        verbose: bool = False,
    ):
        self.n_clusters = n_clusters
        self.hidden_dim = hidden_dim
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.noise = noise
        self.dropout = dropout
        self.kmeans_iter = kmeans_iter
        self.temperature = temperature
        self.seed = seed
        self.device = device
        self.verbose = verbose

    def _embed(self, trunk: nn.Module, xt: torch.Tensor) -> np.ndarray:
        trunk.eval()
        with torch.no_grad():
            h = self._batched(lambda b: l2_normalize(trunk(b)), xt)
        trunk.train()
        return h.cpu().numpy()

    def _cluster(self, emb: np.ndarray, rng: np.random.Generator, round_: int):
        # independent seed per round: ``seed + round_`` would give seed s's round 1 seed s+1's round 0
        round_seed = restart_seeds(self.seed, round_ + 1)[round_]
        centers, labels, _ = kmeans_fit(emb, self.n_clusters, seed=round_seed, n_iter=self.kmeans_iter)
        labels, centers, rep = repair_empty_clusters(emb, labels, centers, rng)
        self.n_empty_repairs_ += rep
        return centers, labels

    def _fit(self, X: np.ndarray, device: torch.device):
        k = int(self.n_clusters)
        d = X.shape[1]
        xt = self._to_tensor(X, device)
        n = xt.shape[0]
        g = self._generator()
        rng = np.random.default_rng(self.seed)
        hd = int(self.hidden_dim)
        trunk = nn.Sequential(nn.Linear(d, hd), nn.ReLU(), nn.Linear(hd, hd)).to(device)
        self.n_empty_repairs_ = 0
        self.pseudo_label_changes_ = []
        prev = None
        for epoch in self._progress(range(self.epochs), "DeepCluster"):
            emb = self._embed(trunk, xt)
            _, labels = self._cluster(emb, rng, epoch)
            if prev is not None:
                from sklearn.metrics import normalized_mutual_info_score

                self.pseudo_label_changes_.append(float(normalized_mutual_info_score(prev, labels)))
            prev = labels
            clf = nn.Linear(hd, k).to(device)  # re-initialised every epoch
            opt = torch.optim.SGD(
                [*trunk.parameters(), *clf.parameters()], lr=self.lr, momentum=0.9, weight_decay=self.weight_decay
            )
            # uniform sampling over pseudo-classes: weight 1/|cluster| per sample
            counts = np.bincount(labels, minlength=k).astype(np.float64)
            w = torch.from_numpy(1.0 / counts[labels])
            order = torch.multinomial(w, n, replacement=True, generator=g)
            y = torch.from_numpy(labels).to(device)
            tot = 0.0
            bs = max(2, min(int(self.batch_size), n))
            for s in range(0, n, bs):
                idx = order[s : s + bs]
                xb = perturb(xt[idx], self.noise, self.dropout, g)
                loss = F.cross_entropy(clf(F.relu(trunk(xb))), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                tot += float(loss.detach()) * idx.numel()
            self.history_.append(tot / n)
        emb = self._embed(trunk, xt)
        centers, labels = self._cluster(emb, rng, int(self.epochs))
        trunk.eval()
        self._trunk = trunk.cpu()
        self.cluster_centers_ = l2_normalize(centers).astype(np.float32)
        return labels

    @torch.no_grad()
    def _predict_proba(self, X: np.ndarray, device: torch.device) -> np.ndarray:
        h = self._batched(lambda b: l2_normalize(self._trunk(b)), torch.from_numpy(X))
        sim = h @ torch.from_numpy(self.cluster_centers_).T
        return torch.softmax(sim / self.temperature, dim=1).numpy().astype(np.float32)
