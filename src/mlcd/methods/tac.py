"""TAC: image clustering with external guidance from text (Li et al., ICML 2024).

TAC borrows WordNet nouns through a CLIP-style text encoder:

1. Nouns are embedded with seven prompt templates, averaged
   (:func:`mlcd.text.embed_nouns`).
2. Semantic centres: k-means on the image embeddings with ``k = round(N / 300)``
   centres (``3 K`` when that is fewer than the K clusters wanted); every noun is
   classified into its most probable centre and the ``gamma = 5`` most typical
   nouns of each centre are kept (:func:`mlcd.losses.tac.tac_select_nouns`).
3. Each image's text counterpart is a soft retrieval over the kept nouns,
   ``normalize(softmax(v N^T / tau) N)`` with ``tau = 0.005``
   (:func:`mlcd.losses.tac.tac_retrieve_text`).
4. ``train=False``: k-means on the concatenation of the separately normalised
   image embedding and text counterpart. ``train=True``: two cluster heads
   (image, text) trained by cross-modal mutual distillation over nearest
   neighbours plus confidence and balance terms
   (:func:`mlcd.losses.tac.tac_objective`); the image head predicts.
   ``n_heads > 1`` (our addition) trains several head pairs at once and keeps
   the one whose partition is most compact in the joint space.

The clusters are then *named*: ``cluster_names_`` lists, for each cluster, the
nouns its images retrieve much more than the other images do.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._base import (
    BaseClusterMethod,
    best_head,
    kmeans_fit,
    l2_normalize,
    mine_neighbors,
    minibatches,
    random_neighbor,
    restart_seeds,
)

__all__ = ["TAC", "TACHead", "LARGE_K_THRESHOLD", "semantic_center_count", "read_nouns"]

#: ``temperature="auto"`` uses 0.5 up to this many clusters and 5.0 above. The
#: original used 0.5 on its data sets of 10 to 47 classes and 5.0 on UCF-101 and
#: ImageNet-1k (101 and 1000 classes); the threshold sits between the two groups.
LARGE_K_THRESHOLD = 50

#: Weight of the centred similarity in the cluster-name score (see ``TAC._name_clusters``).
NAME_CENTRED_WEIGHT = 0.25

#: Softmax temperature of ``predict_proba`` for ``train=False`` (cosine to the
#: centres of the concatenated space, whose rows have norm sqrt(2)).
CONCAT_PROBA_TEMPERATURE = 0.05

#: Above this many rows the semantic k-means restarts run on a random subsample of
#: ``max(SEMANTIC_KMEANS_SAMPLE, 40 * k)`` rows (40 per centre: faiss's own minimum)
#: and every row is then assigned to the best restart's nearest centre. The centres
#: only serve the noun filtering, which re-averages the images of each centre itself.
#: At 50,000 x 512 (167 centres, 5 restarts) this takes the step from ~60 s to a few
#: seconds on 2 cores; up to this size nothing changes.
SEMANTIC_KMEANS_MAX_ROWS = 20_000
SEMANTIC_KMEANS_SAMPLE = 5_000


def semantic_center_count(n_samples: int, n_clusters: int) -> int:
    """TAC's number of semantic centres: ``round(N / 300)``, or ``3 K`` when that is below ``K``; at most N."""
    k = int(round(n_samples / 300))
    if k < n_clusters:
        k = 3 * n_clusters
    return int(max(1, min(k, n_samples)))


def read_nouns(nouns: Any) -> list[str]:
    """``"wordnet"`` (all WordNet noun lemmas), a list of strings, or a text file (one noun a line)."""
    if isinstance(nouns, str) and nouns.strip().lower() == "wordnet":
        from mlcd.text.wordnet import wordnet_nouns

        return wordnet_nouns()
    if isinstance(nouns, (str, os.PathLike)):
        path = Path(nouns)
        if not path.is_file():
            raise FileNotFoundError(
                f"nouns={str(nouns)!r} is neither 'wordnet' nor an existing file; give 'wordnet', "
                f"a list of strings, or a UTF-8 text file with one noun per line"
            )
        out, seen = [], set()
        for line in path.read_text(encoding="utf-8").splitlines():
            w = line.strip()
            if w and not w.startswith("#") and w not in seen:
                seen.add(w)
                out.append(w)
        if not out:
            raise ValueError(f"the noun file {path} holds no nouns (one noun per line, '#' comments)")
        return out
    if isinstance(nouns, (list, tuple, np.ndarray)):
        out = [str(w) for w in nouns]
        if not out:
            raise ValueError("nouns is an empty list")
        return out
    raise TypeError(f"nouns must be 'wordnet', a list of strings or a file path, got {type(nouns).__name__}")


class TACHead(nn.Module):
    """``n_heads`` TAC cluster heads: ``Linear(d, h) -> BatchNorm -> ReLU -> Linear(h, K) -> softmax`` each.

    Linear weights start from a normal distribution with std 0.02 truncated at
    two standard deviations (absolute +-2, as ``timm``'s ``trunc_normal_``), as
    in the original. The heads share nothing but the input: their first layers
    are one ``Linear(d, n_heads * h)`` (one matrix product for all heads; the
    BatchNorm statistics are per feature, so per head), their second layers a
    batched product. ``forward`` returns ``[n_heads, B, K]``.
    """

    def __init__(self, in_dim: int, n_clusters: int, hidden_dim: int, n_heads: int = 1):
        super().__init__()
        self.n_heads, self.hidden_dim = int(n_heads), int(hidden_dim)
        self.lin1 = nn.Linear(in_dim, self.n_heads * self.hidden_dim)
        self.bn = nn.BatchNorm1d(self.n_heads * self.hidden_dim)
        self.weight2 = nn.Parameter(torch.empty(self.n_heads, self.hidden_dim, n_clusters))
        self.bias2 = nn.Parameter(torch.empty(self.n_heads, n_clusters))
        nn.init.trunc_normal_(self.lin1.weight, std=0.02)
        nn.init.trunc_normal_(self.weight2, std=0.02)
        bound = 1.0 / self.hidden_dim**0.5  # nn.Linear's default bias range
        nn.init.uniform_(self.bias2, -bound, bound)

    def _second(self, h: torch.Tensor) -> torch.Tensor:
        h = torch.relu_(h).view(h.shape[0], self.n_heads, self.hidden_dim).transpose(0, 1)  # [H, B, h]
        return torch.softmax(torch.baddbmm(self.bias2[:, None, :], h, self.weight2), dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._second(self.bn(self.lin1(x)))

    def forward_pair(self, x: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(self(x[:b]), self(x[b:]))`` in training mode, with one matrix product per layer.

        The two groups (anchors, then their neighbours) get separate BatchNorm
        batch statistics and running-statistics updates, in that order, exactly
        as two calls would; only the linear layers run on all rows at once.
        """
        # split(), not slicing: its backward is one concatenation, where each slice's
        # backward would write a zero-filled full-size gradient and add them
        h_a, h_b = self.lin1(x).split((b, x.shape[0] - b))
        p_a, p_b = self._second(torch.cat((self.bn(h_a), self.bn(h_b)))).split((b, x.shape[0] - b), dim=1)
        return p_a, p_b

    def select(self, head: int) -> "TACHead":
        """A one-head copy of head ``head`` (weights and BatchNorm running statistics)."""
        if not 0 <= head < self.n_heads:
            raise IndexError(f"head {head} out of range for {self.n_heads} heads")
        one = TACHead(self.lin1.in_features, self.weight2.shape[2], self.hidden_dim, 1)
        rows = slice(head * self.hidden_dim, (head + 1) * self.hidden_dim)
        with torch.no_grad():
            one.lin1.weight.copy_(self.lin1.weight[rows])
            one.lin1.bias.copy_(self.lin1.bias[rows])
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(one.bn, name).copy_(getattr(self.bn, name)[rows])
            one.bn.num_batches_tracked.copy_(self.bn.num_batches_tracked)
            one.weight2.copy_(self.weight2[head : head + 1])
            one.bias2.copy_(self.bias2[head : head + 1])
        return one.to(self.lin1.weight.device).train(self.training)


@torch.no_grad()
def joint_inertia(z: torch.Tensor, labels: torch.Tensor, n_clusters: int) -> float:
    """Within-cluster sum of squares of the partition ``labels`` of the rows of ``z`` (float64):
    ``sum_i |z_i|^2 - sum_c |sum_{i in c} z_i|^2 / n_c``, the k-means objective at the clusters' means."""
    zd = z.double()
    sums = torch.zeros(n_clusters, z.shape[1], dtype=torch.float64, device=z.device).index_add_(0, labels, zd)
    counts = torch.bincount(labels, minlength=n_clusters).double().clamp_min(1)
    return float((zd * zd).sum() - ((sums * sums).sum(1) / counts).sum())


class _Adam:
    """Adam (no weight decay, no AMSGrad) with exactly the arithmetic of ``torch.optim.Adam``'s
    multi-tensor path, so training gives the same numbers.

    Why not ``torch.optim.Adam``: creating the first torch optimizer in a process
    imports ``torch._dynamo``, which costs 2-3 s on this 2-core machine -- a
    quarter of a whole TAC fit on the toy joint space.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params = [p for p in params if p.requires_grad]
        self.lr, (self.beta1, self.beta2), self.eps = float(lr), betas, float(eps)
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.t = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        idx = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not idx:
            return
        params = [self.params[i] for i in idx]
        grads = [self.params[i].grad for i in idx]
        m = [self.exp_avg[i] for i in idx]
        v = [self.exp_avg_sq[i] for i in idx]
        self.t += 1
        torch._foreach_lerp_(m, grads, 1 - self.beta1)
        torch._foreach_mul_(v, self.beta2)
        torch._foreach_addcmul_(v, grads, grads, 1 - self.beta2)
        bc1 = 1 - self.beta1**self.t
        bc2 = 1 - self.beta2**self.t
        step_size = [(self.lr / bc1) * -1] * len(params)
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, [bc2**0.5] * len(params))
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(params, m, denom, step_size)


class TAC(BaseClusterMethod):
    """Text-aided clustering (TAC) of frozen image features, with cluster names.

    Stand-in for image augmentation: none is needed; as in the original, the
    second view of a sample is one of its ``n_neighbors`` nearest neighbours,
    in image space for the image head and in text-counterpart space for the
    text head.

    Parameters
    ----------
    n_clusters: K.
    nouns: ``"wordnet"`` (every WordNet noun lemma, read offline from
        ``/usr/share/wordnet``), a list of strings, or a text file with one noun
        per line. With ``noun_embeddings`` it only names the rows (``"wordnet"``
        names them only when the row count equals WordNet's noun count).
    noun_embeddings: ``[M, d]`` precomputed noun embeddings in the image space;
        bypasses WordNet and the text encoder.
    text_encoder: an encoder spec for :func:`mlcd.encoders.load` (e.g.
        ``"open_clip:ViT-B-32"``, the text tower of the model that embedded the
        images) or an object with ``embed_texts(list[str])``.
    text_encoder_weights: weights path for the spec (``None``: the local cache).
    train: train the two cluster heads (True) or cluster the concatenated space
        with k-means (False).
    gamma: nouns kept per semantic centre (5). tau: retrieval temperature (0.005).
    n_semantic_centers: override ``round(N/300)`` (``None`` = TAC's rule).
    n_neighbors: neighbours per sample (50). epochs (20), batch_size (512), lr
        (Adam, 1e-3): head training.
    temperature: distillation temperature; ``"auto"`` = 0.5 for
        ``K <= LARGE_K_THRESHOLD`` (50), 5.0 above. alpha: balance weight (5).
    hidden_dim: head width (``None`` = the feature width, as TAC).
    n_heads: independent (image, text) head pairs trained side by side on the
        same batches, each from its own initialisation; one pair predicts (see
        ``head_selection``). ``1`` is the original recipe. More pairs guard
        against a poor local optimum: on the toy joint space single runs often
        merge a look-alike pair, and 4 pairs raised the mean ACC over 20 seeds
        from 0.933 to 0.958 (``docs/results.md``), at up to ``n_heads`` times
        the training cost (a whole toy fit: 1.5x; a training step on 512-wide
        features: about 3.6-3.9x for 4 pairs).
    head_selection: how the predicting pair is chosen when ``n_heads > 1``.
        ``"inertia"`` (default): the pair whose image head splits the training
        set into the most compact clusters of TAC's joint space (each image
        embedding beside its text counterpart, the space ``train=False``
        clusters), i.e. the lowest k-means objective of its partition.
        ``"objective"``: the lowest mean TAC objective over the last epoch, as
        SCAN selects its head. On the toy the first picked better heads
        (0.958 vs 0.949 mean ACC over 20 seeds; best possible 0.960).
    n_init: k-means restarts (semantic centres and ``train=False``).
    n_names: names kept per cluster in ``cluster_names_``.
    noun_cache: keep the noun embeddings a ``text_encoder`` computes in an on-disk
        cache and reuse them (``True``, the default; in ``$MLCD_CACHE_DIR/noun-embeddings``
        or ``~/.cache/mlcd/noun-embeddings``), a folder to keep them in instead,
        or ``False`` to always compute them. The key covers the encoder spec, its
        weights file (path, size, modification time), the nouns and the prompt
        templates; randomly initialised weights are cached only when seeded (a
        spec loads them with seed 0). Encoder objects other than
        :class:`mlcd.encoders.Encoder` are cached only when they carry a string
        ``cache_key``. A damaged entry is ignored and rebuilt. See :mod:`mlcd.text.cache`.
    seed, device: the same seed on the same device gives the same result;
        ``device="auto"`` uses CUDA when present.

    Attributes
    ----------
    labels_, history_ (TAC objective per epoch of the selected head pair; empty
    with ``train=False``), head_history_ (``[epochs, n_heads]``, every pair's
    objective per epoch), head_losses_ (``[n_heads]``, its last row),
    head_inertia_ (``[n_heads]``, each image head's training partition's
    within-cluster sum of squares in the joint space), best_head_ (the
    selected pair; the ``head_*`` attributes exist with ``train=True`` only),
    cluster_names_ (``list[list[str]]``, K lists of ``n_names`` nouns, most
    characteristic first; see :meth:`_name_clusters`), cluster_name_scores_
    (``[K, n_names]``, the margins; -inf for an empty cluster),
    selected_nouns_ (kept nouns), selected_noun_features_, noun_mask_ (``[M]``
    bool over the candidate nouns), n_semantic_centers_, semantic_labels_,
    temperature_, cluster_centers_ (``train=False``: centres of the concatenated space),
    timings_ (seconds per stage of the last ``fit``: ``nouns``, ``semantic_kmeans``,
    ``noun_filtering``, ``retrieval``, ``neighbors``, ``train_epochs``,
    ``concat_kmeans``, ``predict_train``, ``names``).
    """

    #: ``fit`` records ``timings_`` (read by ``bench/tac_speed.py``)
    _stage_timings = True

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        nouns: Any = "wordnet",
        noun_embeddings: Any = None,
        text_encoder: Any = None,
        text_encoder_weights: Any = None,
        train: bool = True,
        gamma: int = 5,
        tau: float = 0.005,
        n_semantic_centers: int | None = None,
        n_neighbors: int = 50,
        epochs: int = 20,
        batch_size: int = 512,
        lr: float = 1e-3,
        temperature: float | str = "auto",
        alpha: float = 5.0,
        hidden_dim: int | None = None,
        n_heads: int = 1,
        head_selection: str = "inertia",
        n_init: int = 5,
        n_names: int = 5,
        noun_cache: Any = True,
        seed: int = 0,
        device: str = "auto",
        verbose: bool = False,
    ):
        self.n_clusters = n_clusters
        self.nouns = nouns
        self.noun_embeddings = noun_embeddings
        self.text_encoder = text_encoder
        self.text_encoder_weights = text_encoder_weights
        self.train = train
        self.gamma = gamma
        self.tau = tau
        self.n_semantic_centers = n_semantic_centers
        self.n_neighbors = n_neighbors
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.temperature = temperature
        self.alpha = alpha
        self.hidden_dim = hidden_dim
        self.n_heads = n_heads
        self.head_selection = head_selection
        self.n_init = n_init
        self.n_names = n_names
        self.noun_cache = noun_cache
        self.seed = seed
        self.device = device
        self.verbose = verbose

    # ------------------------------------------------------------------ nouns
    def _noun_features(self, dim: int, device: torch.device) -> tuple[list[str], np.ndarray]:
        """Candidate noun names and unit-row embeddings ``[M, dim]``."""
        if self.noun_embeddings is not None:
            emb = np.asarray(self.noun_embeddings, dtype=np.float32)
            if emb.ndim != 2 or emb.shape[0] < 1:
                raise ValueError(f"noun_embeddings must be a 2-D array [M, d], got shape {emb.shape}")
            names = self._names_for(emb.shape[0])
        else:
            names = read_nouns(self.nouns)
            emb = self._embed_nouns(names, device)
        if emb.shape[1] != dim:
            raise ValueError(
                f"noun embeddings have width {emb.shape[1]} but the image features have {dim}: TAC needs "
                f"nouns embedded by the text tower of the model that embedded the images"
            )
        if not np.isfinite(emb).all():
            raise ValueError("noun embeddings contain NaN or inf")
        return names, l2_normalize(emb).astype(np.float32)

    def _names_for(self, m: int) -> list[str]:
        nouns = self.nouns
        if isinstance(nouns, str) and nouns.strip().lower() == "wordnet":
            if m > 100_000:
                try:
                    names = read_nouns("wordnet")
                    if len(names) == m:
                        return names
                except (OSError, ValueError):
                    pass
            return [f"noun {j}" for j in range(m)]
        names = read_nouns(nouns)
        if len(names) != m:
            raise ValueError(f"nouns has {len(names)} entries but noun_embeddings has {m} rows")
        return names

    def _embed_nouns(self, names: list[str], device: torch.device) -> np.ndarray:
        from mlcd.text.cache import cached_embed_nouns, encoder_identity, weights_identity
        from mlcd.text.prompts import embed_nouns

        enc = self.text_encoder
        if enc is None:
            raise ValueError(
                "TAC needs noun embeddings in the image space: pass text_encoder='open_clip:<arch>' "
                "(the model that embedded the images; text_encoder_weights=PATH for local weights) "
                "or noun_embeddings=<[M, d] array>"
            )
        cache = self.noun_cache
        if not (isinstance(cache, (bool, str, os.PathLike)) or cache is None):
            raise TypeError(f"noun_cache must be True, False or a folder, got {type(cache).__name__}")
        use_cache = cache is not None and cache is not False
        cache_dir = None if isinstance(cache, bool) or cache is None else cache
        progress = bool(self.verbose)
        identity = None
        if isinstance(enc, (str, os.PathLike)):
            from mlcd.encoders import load, parse_spec

            spec, weights = str(enc), self.text_encoder_weights
            if use_cache and weights is not None:  # known before loading: a hit skips the model
                w = weights_identity(weights, seed=0)  # load() seeds random weights with 0
                identity = None if w is None else {"spec": str(parse_spec(spec)), "weights": w}
            if identity is None:
                enc = load(spec, weights=weights, device=device)
            else:
                enc = lambda: load(spec, weights=weights, device=device)  # noqa: E731 - loaded on a miss only
        if not use_cache:
            return embed_nouns(enc, names, progress=progress)
        if identity is None:
            identity = encoder_identity(enc)
        return cached_embed_nouns(enc, names, identity=identity, cache_dir=cache_dir, progress=progress)

    # ------------------------------------------------------------------ fit
    def _work_size(self, X: np.ndarray) -> int:
        # the head pairs' matrix products grow with n_heads: 4 pairs on 10,000 x 64
        # features train ~20 % faster on two threads than on one
        nh = self.n_heads if isinstance(self.n_heads, (int, np.integer)) and self.train else 1
        return int(X.size) * max(1, int(nh))

    def _resolved_temperature(self, k: int) -> float:
        t = self.temperature
        if isinstance(t, str):
            if t != "auto":
                raise ValueError(f"temperature must be a positive number or 'auto', got {t!r}")
            return 0.5 if k <= LARGE_K_THRESHOLD else 5.0
        if not t > 0:
            raise ValueError(f"temperature must be positive, got {t!r}")
        return float(t)

    @contextmanager
    def _timed(self, stage: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.timings_[stage] = self.timings_.get(stage, 0.0) + time.perf_counter() - t

    def _semantic_kmeans(self, Xn: np.ndarray, ks: int) -> np.ndarray:
        """Semantic-centre labels: best of ``n_init`` spherical k-means runs (on a subsample for large N)."""
        n = Xn.shape[0]
        if n <= SEMANTIC_KMEANS_MAX_ROWS:
            return kmeans_fit(Xn, ks, seed=self.seed, spherical=True, n_init=self.n_init)[1]
        rng = np.random.default_rng(int(self.seed))
        m = min(n, max(SEMANTIC_KMEANS_SAMPLE, 40 * ks))
        sample = Xn[np.sort(rng.choice(n, size=m, replace=False))]
        from mlcd.cluster import KMeans

        best = None
        for r_seed in restart_seeds(self.seed, self.n_init):
            # random (Forgy) seeding, as the official faiss k-means: k-means++ seeding would
            # cost several times the Lloyd iterations here, and the restarts make up for it
            km = KMeans(ks, spherical=True, n_iter=20, init="random", seed=r_seed, device="cpu",
                        verbose=False).fit(sample)
            if best is None or km.inertia_ < best.inertia_:
                best = km
        c = torch.from_numpy(l2_normalize(best.cluster_centers_).astype(np.float32))
        xt = torch.from_numpy(Xn)
        return torch.cat([(xt[s : s + 16384] @ c.T).argmax(1) for s in range(0, n, 16384)]).numpy().astype(np.int64)

    def _retrieve(self, X: torch.Tensor) -> torch.Tensor:
        from mlcd.losses.tac import tac_retrieve_text

        return tac_retrieve_text(X, self._kept, self.tau)

    def _fit(self, X: np.ndarray, device: torch.device):
        from mlcd.losses.tac import tac_objective_heads, tac_select_nouns

        k = int(self.n_clusters)
        n, d = X.shape
        nh = self.n_heads
        if isinstance(nh, bool) or not isinstance(nh, (int, np.integer)) or nh < 1:
            raise ValueError(f"n_heads must be a positive integer (1 = the original recipe), got {nh!r}")
        if self.head_selection not in ("inertia", "objective"):
            raise ValueError(f"head_selection must be 'inertia' or 'objective', got {self.head_selection!r}")
        self.timings_ = {}
        self.temperature_ = self._resolved_temperature(k)
        with self._timed("nouns"):
            names, noun_emb = self._noun_features(d, device)
        Xn = l2_normalize(X).astype(np.float32)

        # semantic centres and noun filtering
        ks = int(self.n_semantic_centers) if self.n_semantic_centers else semantic_center_count(n, k)
        ks = max(1, min(ks, n))
        self.n_semantic_centers_ = ks
        with self._timed("semantic_kmeans"):
            sem_labels = self._semantic_kmeans(Xn, ks)
        self.semantic_labels_ = sem_labels
        xt = torch.from_numpy(Xn).to(device)
        with self._timed("noun_filtering"):
            mask = tac_select_nouns(
                xt, torch.from_numpy(sem_labels).to(device), torch.from_numpy(noun_emb).to(device), int(self.gamma),
                n_clusters=ks,
            )
        mask = mask.cpu().numpy().astype(bool)
        self.noun_mask_ = mask
        self.selected_nouns_ = [names[j] for j in np.flatnonzero(mask)]
        self.selected_noun_features_ = noun_emb[mask]
        self._kept = torch.from_numpy(self.selected_noun_features_).to(device)
        with self._timed("retrieval"):
            text = self._retrieve(xt).float()

        if not self.train:
            with self._timed("concat_kmeans"):
                Z = np.concatenate([Xn, text.cpu().numpy()], axis=1)
                centers, labels, _ = kmeans_fit(Z, k, seed=self.seed, n_init=self.n_init)
            self.cluster_centers_ = centers
            self._heads = None
        else:
            labels = self._train_heads(xt, text, device, tac_objective_heads)
        self._kept = self._kept.cpu()
        with self._timed("names"):
            self._name_clusters(xt, labels, names, noun_emb)
        return labels

    def _train_heads(self, xt: torch.Tensor, text: torch.Tensor, device: torch.device, objective) -> np.ndarray:
        k = int(self.n_clusters)
        n, d = xt.shape
        with self._timed("neighbors"):
            nbr_img = torch.from_numpy(mine_neighbors(xt.cpu().numpy(), self.n_neighbors, seed=self.seed))
            nbr_txt = torch.from_numpy(mine_neighbors(text.cpu().numpy(), self.n_neighbors, seed=self.seed))
        hd = int(self.hidden_dim) if self.hidden_dim else d
        nh = int(self.n_heads)
        head_img = TACHead(d, k, hd, nh).to(device)
        head_txt = TACHead(d, k, hd, nh).to(device)
        opt = _Adam([*head_img.parameters(), *head_txt.parameters()], lr=self.lr, betas=(0.9, 0.99))
        g = self._generator()
        per_epoch = []
        with self._timed("train_epochs"):
            for _ in self._progress(range(self.epochs), "TAC"):
                tot = torch.zeros(nh, dtype=torch.float64, device=device)
                seen = 0
                for idx in minibatches(n, self.batch_size, g, drop_last=True):
                    b = idx.numel()
                    # one index [anchors; neighbours] per modality, drawn as before (same random stream)
                    gi = torch.cat((idx, random_neighbor(nbr_img, idx, g))).to(device)
                    gt = torch.cat((idx, random_neighbor(nbr_txt, idx, g))).to(device)
                    # anchors and neighbours get separate BatchNorm statistics, as the original's two passes
                    p_img, p_img_nbr = head_img.forward_pair(xt.index_select(0, gi), b)
                    p_txt, p_txt_nbr = head_txt.forward_pair(text.index_select(0, gt), b)
                    # head pairs share no parameter: the sum trains each pair as if alone
                    losses = objective(p_txt, p_img, p_txt_nbr, p_img_nbr, self.temperature_, self.alpha)
                    opt.zero_grad()
                    losses.sum().backward()
                    opt.step()
                    tot += losses.detach() * b  # no host sync per step on a GPU
                    seen += b
                per_epoch.append((tot / max(seen, 1)).cpu().numpy())
        self.head_history_ = np.array(per_epoch, dtype=np.float64).reshape(len(per_epoch), nh)
        self.head_losses_ = self.head_history_[-1].copy() if per_epoch else np.zeros(nh)
        head_img.eval()
        with self._timed("predict_train"), torch.no_grad():
            assign = self._batched(lambda x: head_img(x).argmax(2).T, xt).T  # [H, N], every pair's image head
            z = torch.cat((xt, text), dim=1)
            self.head_inertia_ = np.array([joint_inertia(z, a, k) for a in assign], dtype=np.float64)
        self.best_head_ = best_head(self.head_inertia_ if self.head_selection == "inertia" else self.head_losses_)
        self.history_ = [float(e[self.best_head_]) for e in per_epoch]
        self._heads = head_img.select(self.best_head_).eval().cpu()
        with self._timed("predict_train"), torch.no_grad():  # exactly what predict() gives
            return self._batched(lambda x: self._heads(x)[0], xt.cpu()).argmax(1).numpy()

    # ------------------------------------------------------------------ names
    @torch.no_grad()
    def _name_clusters(self, xt: torch.Tensor, labels: np.ndarray, names: list[str], nouns: np.ndarray) -> None:
        """Name each cluster by the candidate nouns that set it apart from its closest cluster.

        ``s[c, j]`` is the mean cosine similarity between cluster ``c``'s images
        and noun ``j``; ``sib(c)`` is the other cluster whose mean image
        embedding is most similar to ``c``'s; ``z[c, j] = s[c, j] - mean_c' s[c', j]``
        is the similarity centred over clusters. Noun ``j`` scores

            (s[c, j] - s[sib(c), j]) + 0.25 * z[c, j]

        and only nouns with ``z[c, j] > 0`` (closer to ``c`` than to the average
        cluster) compete. The first term asks how much better the noun fits
        ``c`` than the cluster most easily confused with it: everything the two
        share -- the modality gap between images and text, generic nouns
        ("object", "animal"), the features common to look-alike classes --
        cancels. The centred term and the restriction keep nouns that merely
        repel the sibling out. On the toy joint space with the true clusters,
        a cluster's own noun comes first for 19 of 20 clusters (margins over
        *all* other clusters: 8; centred similarity alone: 2; raw similarity: 0)
        and 41 of the 60 own nouns are in the top 3. All candidate nouns take
        part, not only the kept ones. With one cluster the score is ``s``.
        """
        k = int(self.n_clusters)
        lab = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        xc = xt.cpu().double()
        sums = torch.zeros(k, xc.shape[1], dtype=torch.float64).index_add_(0, lab, xc)
        counts = torch.bincount(lab, minlength=k).double()
        means = (sums / counts.clamp_min(1)[:, None]).float()  # [K, d]
        n_names = max(1, min(int(self.n_names), nouns.shape[0]))
        best_v = torch.full((k, 0), -float("inf"))
        best_i = torch.zeros((k, 0), dtype=torch.long)
        if k > 1:
            mn = torch.nn.functional.normalize(means, dim=1)
            cs = mn @ mn.T
            cs.fill_diagonal_(-float("inf"))
            cs[:, counts == 0] = -float("inf")
            sib = cs.argmax(1)
        self.cluster_siblings_ = sib.numpy() if k > 1 else np.zeros(1, dtype=np.int64)
        for s0 in range(0, nouns.shape[0], 16384):
            sim = means @ torch.from_numpy(nouns[s0 : s0 + 16384]).T  # [K, m]
            if k > 1:
                centred = sim - sim.mean(0, keepdim=True)
                score = (sim - sim[sib]) + NAME_CENTRED_WEIGHT * centred
                score[centred <= 0] = -1e6 + score[centred <= 0]  # the cluster's own nouns first
            else:
                score = sim
            score[counts == 0] = -float("inf")
            v = torch.cat([best_v, score], dim=1)
            i = torch.cat([best_i, torch.arange(s0, s0 + sim.shape[1]).expand(k, -1)], dim=1)
            top = torch.topk(v, min(n_names, v.shape[1]), dim=1)
            best_v, best_i = top.values, torch.gather(i, 1, top.indices)
        self.cluster_names_ = [[names[j] for j in row] for row in best_i.tolist()]
        self.cluster_name_scores_ = best_v.numpy().astype(np.float64)

    # ------------------------------------------------------------------ predict
    @torch.no_grad()
    def _predict_proba(self, X: np.ndarray, device: torch.device) -> np.ndarray:
        xt = torch.from_numpy(l2_normalize(X).astype(np.float32))
        if self._heads is not None:
            return self._batched(lambda x: self._heads(x)[0], xt).numpy().astype(np.float32)
        z = torch.cat([xt, self._retrieve(xt).float()], dim=1)
        c = torch.from_numpy(self.cluster_centers_)
        d2 = (z * z).sum(1, keepdim=True) - 2 * z @ c.T + (c * c).sum(1)[None, :]
        return torch.softmax(-d2 / (2 * CONCAT_PROBA_TEMPERATURE), dim=1).numpy().astype(np.float32)
