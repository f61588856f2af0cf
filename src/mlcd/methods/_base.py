"""Shared parts of the clustering methods: the estimator base class, input checks,
device and seed handling, nearest-neighbour mining (faiss), the mini-batch
training loop and multi-head cluster heads.

Every method works on *frozen* features ``X [N, d]`` (a NumPy array, a torch
tensor or an :class:`mlcd.store.EmbeddingStore`). Where the original method
draws a second augmented view of an image, the methods here use one of the
sample's nearest neighbours in feature space (as SCAN, TAC and TEMI do) and/or
feature-space noise and dropout (:func:`perturb`).
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

__all__ = [
    "BaseClusterMethod",
    "MultiHead",
    "as_feature_array",
    "check_n_clusters",
    "mine_neighbors",
    "perturb",
    "resolve_device",
    "restart_seeds",
    "seeded",
    "l2_normalize",
    "minibatches",
]


# --------------------------------------------------------------------------- #
# inputs
# --------------------------------------------------------------------------- #
def as_feature_array(X: Any) -> Any:
    """Turn an ``EmbeddingStore`` (anything with ``as_array()``) or a tensor into a NumPy array.

    Other inputs are returned unchanged for scikit-learn's validation.
    """
    if hasattr(X, "as_array") and callable(X.as_array):
        return np.asarray(X.as_array())
    if isinstance(X, torch.Tensor):
        return X.detach().cpu().numpy()
    return X


def _check_finite_rows(X: np.ndarray, what: str = "X") -> None:
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        shown = ", ".join(str(int(r)) for r in rows[:10]) + (", ..." if rows.size > 10 else "")
        raise ValueError(
            f"{what} contains NaN or inf in {rows.size} of {X.shape[0]} rows (rows {shown}); "
            f"drop or repair those rows (e.g. X[np.isfinite(X).all(axis=1)]) before clustering"
        )


def check_n_clusters(n_clusters: Any, n_samples: int) -> int:
    """Validate ``n_clusters`` against the number of rows; clear ``ValueError`` otherwise."""
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)) or n_clusters < 1:
        raise ValueError(f"n_clusters must be a positive integer, got {n_clusters!r}")
    if n_samples < 2:
        raise ValueError(f"n_samples={n_samples}: clustering needs at least 2 samples")
    if n_samples < n_clusters:
        raise ValueError(
            f"n_samples={n_samples} should be >= n_clusters={n_clusters}: there are fewer rows than "
            f"clusters; pass more rows or a smaller n_clusters"
        )
    return int(n_clusters)


def resolve_device(device: Any) -> torch.device:
    """``"auto"``: CUDA when available, else CPU; other names are checked."""
    if isinstance(device, torch.device):
        dev = device
    elif device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(f"device={device!r} is not a device name; use 'auto', 'cpu' or 'cuda[:N]'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} asks for CUDA, which is not available here; use 'auto' or 'cpu'")
    return dev


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device | None = None):
    """Run the block with torch's global generators seeded, restoring them afterwards.

    Module initialisation (``nn.Linear``) and dropout draw from the global
    generator, so seeding it inside a forked state makes ``fit`` reproducible
    without touching the caller's random state.
    """
    devices = [device.index or 0] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(int(seed) % (2**63))
        yield


#: Problems with at most this many input values (N * d) run on one CPU thread:
#: for small tensors, thread start-up and spinning cost more than they save, and
#: on a shared machine several threads per process slow everyone down.
SINGLE_THREAD_MAX_VALUES = 2_000_000


@contextlib.contextmanager
def limit_threads(n_threads: int | None):
    """Run the block with torch (intra-op) and faiss (OpenMP) limited to ``n_threads``; restore after."""
    if not n_threads:
        yield
        return
    import faiss

    t_old = torch.get_num_threads()
    f_old = faiss.omp_get_max_threads()
    torch.set_num_threads(int(n_threads))
    faiss.omp_set_num_threads(int(n_threads))
    try:
        yield
    finally:
        torch.set_num_threads(t_old)
        faiss.omp_set_num_threads(f_old)


def l2_normalize(x: torch.Tensor | np.ndarray, eps: float = 1e-12):
    if isinstance(x, np.ndarray):
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)
    return F.normalize(x, dim=-1, eps=eps)


# --------------------------------------------------------------------------- #
# nearest neighbours
# --------------------------------------------------------------------------- #
#: Above this many rows :func:`mine_neighbors` switches from exact search to an inverted-file search.
EXACT_KNN_MAX_ROWS = 20_000

#: Inverted-file search: about this many rows per list, and this many nearest lists probed per list.
IVF_LIST_SIZE = 256
IVF_NPROBE = 12


def mine_neighbors(
    X: np.ndarray,
    k: int,
    *,
    metric: str = "cosine",
    exact: bool | None = None,
    seed: int = 0,
    nprobe: int | None = None,
) -> np.ndarray:
    """The ``k`` nearest neighbours of every row among the other rows: ``int64 [N, k]``.

    ``metric="cosine"`` (rows L2-normalised, inner product) or ``"l2"``. ``k`` is
    clipped to ``N - 1``. ``exact=None`` uses exact (flat) search up to
    :data:`EXACT_KNN_MAX_ROWS` rows and an inverted-file search above;
    ``True`` / ``False`` force one or the other. Self matches are removed, even
    among exact duplicates. Neighbours come nearest first.

    The inverted-file search (:func:`_ivf_neighbors`) splits the rows into
    lists of about :data:`IVF_LIST_SIZE` by a coarse k-means, and scores the
    rows of each list against the rows of its ``nprobe`` (default
    :data:`IVF_NPROBE`) nearest lists with one matrix product, so it runs at
    BLAS speed: on 50,000 x 512 features (TAC's synthetic joint space,
    ``bench/tac_speed.py``) it finds 99% of the exact 50 nearest neighbours
    (all of the right class) in ~12 CPU-seconds, where exact search takes ~95
    and faiss's ``IndexIVFFlat`` (nprobe 16) took over 100 s of wall time on
    this 2-core machine.
    """
    import faiss

    X = np.ascontiguousarray(X, dtype=np.float32)
    n, d = X.shape
    k = int(min(k, n - 1))
    if k < 1:
        return np.zeros((n, 0), dtype=np.int64)
    if metric == "cosine":
        X = np.ascontiguousarray(l2_normalize(X), dtype=np.float32)
    elif metric != "l2":
        raise ValueError(f"metric must be 'cosine' or 'l2', got {metric!r}")
    if exact is None:
        exact = n <= EXACT_KNN_MAX_ROWS
    if not exact:
        return _ivf_neighbors(X, k, inner_product=metric == "cosine", seed=seed,
                              nprobe=IVF_NPROBE if nprobe is None else int(nprobe))
    index = faiss.IndexFlatIP(d) if metric == "cosine" else faiss.IndexFlatL2(d)
    index.add(X)
    _, idx = index.search(X, k + 1)
    idx = idx.astype(np.int64)
    # drop self: where the row's own index appears, remove it; otherwise drop the last column
    own = idx == np.arange(n)[:, None]
    has_own = own.any(axis=1)
    keep = ~own
    keep[~has_own, -1] = False
    return idx[keep].reshape(n, k)


def _ivf_neighbors(X: np.ndarray, k: int, *, inner_product: bool, seed: int, nprobe: int,
                   list_size: int = IVF_LIST_SIZE, max_block: int = 2048) -> np.ndarray:
    """Approximate kNN by an inverted file scored with matrix products (see :func:`mine_neighbors`).

    1. Coarse k-means (faiss, 10 iterations on ``40 * nlist`` sampled rows) into
       ``nlist = N / list_size`` lists; every row goes to its best list.
    2. For each list, its candidates are the rows of the ``nprobe`` lists whose
       centres score best against its centre (itself first), extended until
       there are at least ``k + 1``. One product ``X[list] @ X[candidates]^T``
       (``2 x.y - |y|^2`` for L2) and a top-k give every row's neighbours; the
       row itself is masked out.
    """
    import faiss

    n, d = X.shape
    nlist = int(max(1, min(n // max(k + 1, 1), round(n / list_size))))
    rng = np.random.default_rng(seed)
    sample = X[np.sort(rng.choice(n, size=min(n, nlist * 40), replace=False))]
    km = faiss.Kmeans(d, nlist, niter=10, seed=int(seed) % (2**31), spherical=inner_product,
                      max_points_per_centroid=40, verbose=False)
    km.train(np.ascontiguousarray(sample))
    C = torch.from_numpy(np.ascontiguousarray(km.centroids, dtype=np.float32))
    Xt = torch.from_numpy(X)
    sq = None if inner_product else (Xt * Xt).sum(1)
    csq = None if inner_product else (C * C).sum(1)

    def scores(a: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor | None) -> torch.Tensor:
        s = a @ b.T
        return s if b_sq is None else s.mul_(2).sub_(b_sq)

    lists = torch.cat([scores(Xt[s : s + 16384], C, csq).argmax(1) for s in range(0, n, 16384)])
    order = torch.argsort(lists, stable=True)
    counts = torch.bincount(lists, minlength=nlist)
    starts = (torch.cumsum(counts, 0) - counts).tolist()
    counts_l = counts.tolist()
    out = torch.empty((n, k), dtype=torch.long)
    with torch.no_grad():
        for c in range(nlist):
            if counts_l[c] == 0:
                continue
            near = torch.argsort(scores(C[c : c + 1], C, csq)[0], descending=True, stable=True).tolist()
            near.remove(c)
            probe, total = [c], counts_l[c]
            for p in near:
                if len(probe) >= nprobe and total >= k + 1:
                    break
                if counts_l[p]:
                    probe.append(p)
                    total += counts_l[p]
            cand = torch.cat([order[starts[p] : starts[p] + counts_l[p]] for p in probe])
            xc = Xt[cand]
            c_sq = None if sq is None else sq[cand]
            m = counts_l[c]  # the list's own rows are the first m candidates
            for s in range(0, m, max_block):
                e = min(m, s + max_block)
                sc = scores(xc[s:e], xc, c_sq)
                r = torch.arange(e - s)
                sc[r, r + s] = -float("inf")  # the row itself
                top = torch.topk(sc, k, dim=1).indices
                out[cand[s:e]] = cand[top]
    return out.numpy()


def perturb(x: torch.Tensor, noise: float = 0.0, dropout: float = 0.0, generator: torch.Generator | None = None):
    """Feature-space augmentation: Gaussian noise scaled to the row norm / sqrt(d), then dropout.

    The random numbers are drawn on the generator's own device (the estimators
    keep a CPU generator, so seeds give the same draws on any device) and then
    moved to ``x``'s device.
    """
    gen_device = generator.device if generator is not None else x.device
    if noise > 0:
        scale = x.norm(dim=1, keepdim=True) / math.sqrt(x.shape[1])
        draw = torch.randn(x.shape, generator=generator, device=gen_device, dtype=x.dtype)
        x = x + noise * scale * draw.to(x.device)
    if dropout > 0:
        keep = torch.rand(x.shape, generator=generator, device=gen_device).to(x.device) >= dropout
        x = x * keep / (1.0 - dropout)
    return x


def minibatches(n: int, batch_size: int, generator: torch.Generator, *, drop_last: bool = False) -> list[torch.Tensor]:
    """Shuffled index batches covering ``range(n)``; a last batch of a single row is merged or dropped."""
    perm = torch.randperm(n, generator=generator)
    bs = max(1, min(int(batch_size), n))
    batches = list(torch.split(perm, bs))
    if len(batches) > 1 and (drop_last or batches[-1].numel() < 2):
        if drop_last:
            batches = batches[:-1]
        else:
            batches[-2] = torch.cat([batches[-2], batches[-1]])
            batches = batches[:-1]
    return batches


def random_neighbor(neighbors: torch.Tensor, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One uniformly drawn neighbour (from ``neighbors[idx]``) for every index in ``idx``."""
    if neighbors.shape[1] == 0:
        return idx
    col = torch.randint(0, neighbors.shape[1], (idx.numel(),), generator=generator)
    return neighbors[idx, col]


# --------------------------------------------------------------------------- #
# heads
# --------------------------------------------------------------------------- #
class MultiHead(nn.Module):
    """An optional shared MLP trunk followed by ``n_heads`` linear cluster heads.

    ``forward(x)`` returns logits ``[n_heads, B, K]``. ``hidden_dim=0`` gives
    linear heads directly on the features.
    """

    def __init__(self, in_dim: int, n_clusters: int, n_heads: int = 1, hidden_dim: int = 0, *, batchnorm: bool = False):
        super().__init__()
        if hidden_dim and hidden_dim > 0:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim)]
            if batchnorm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.ReLU())
            self.trunk = nn.Sequential(*layers)
            feat = hidden_dim
        else:
            self.trunk = nn.Identity()
            feat = in_dim
        self.n_heads = n_heads
        self.weight = nn.Parameter(torch.empty(n_heads, feat, n_clusters))
        self.bias = nn.Parameter(torch.zeros(n_heads, n_clusters))
        bound = 1.0 / math.sqrt(feat)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def heads(self, h: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bf,hfk->hbk", h, self.weight) + self.bias[:, None, :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(self.trunk(x))


# --------------------------------------------------------------------------- #
# estimator base
# --------------------------------------------------------------------------- #
class BaseClusterMethod(ClusterMixin, BaseEstimator):
    """Scikit-learn style base: validation, seeding, device, fit / predict plumbing.

    Subclasses implement ``_fit(X, device)`` (``X`` a validated float32 NumPy
    array; set fitted attributes, return the training-set assignments or None)
    and ``_predict_proba(X, device)`` (float32 NumPy ``[n, K]``). The base sets
    ``labels_``, ``n_features_in_``, ``device_``, ``fit_time_`` and checks
    inputs: ``K > N``, NaN / inf rows, wrong widths, sparse and complex data
    all raise ``ValueError`` / ``TypeError`` with a message saying what to do.
    """

    # -- validation ------------------------------------------------------------
    def _validate(self, X: Any, *, reset: bool) -> np.ndarray:
        X = as_feature_array(X)
        X = validate_data(
            self, X, reset=reset, dtype=[np.float32, np.float64], ensure_all_finite=False, ensure_min_samples=1
        )
        _check_finite_rows(X)
        return np.ascontiguousarray(X, dtype=np.float32)

    def _check_params_common(self) -> None:
        for name in ("epochs", "batch_size"):
            if hasattr(self, name):
                v = getattr(self, name)
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < (0 if name == "epochs" else 1):
                    raise ValueError(f"{name} must be a {'non-negative' if name == 'epochs' else 'positive'} integer, got {v!r}")

    # -- public API ---------------------------------------------------------------
    def fit(self, X: Any, y: Any = None) -> "BaseClusterMethod":
        """Fit on ``X [N, d]`` (array, tensor or EmbeddingStore); ``y`` is ignored."""
        t0 = time.perf_counter()
        Xv = self._validate(X, reset=True)
        check_n_clusters(self.n_clusters, Xv.shape[0])
        self._check_params_common()
        device = resolve_device(self.device)
        self.device_ = str(device)
        self.history_ = []
        small = self._work_size(Xv) <= SINGLE_THREAD_MAX_VALUES and device.type == "cpu"
        with seeded(self.seed, device), limit_threads(1 if small else None):
            labels = self._fit(Xv, device)
        if labels is None:
            labels = self._predict_proba(Xv, device).argmax(axis=1)
        self.labels_ = np.asarray(labels, dtype=np.int64)
        self.fit_time_ = time.perf_counter() - t0
        return self

    def fit_predict(self, X: Any, y: Any = None, **kwargs) -> np.ndarray:
        """``fit(X).labels_``."""
        return self.fit(X, y).labels_

    def predict_proba(self, X: Any) -> np.ndarray:
        """Soft assignments ``float32 [n, K]`` (rows sum to 1) of new features."""
        check_is_fitted(self)
        Xv = self._validate(X, reset=False)
        with limit_threads(1 if Xv.size <= SINGLE_THREAD_MAX_VALUES else None):
            return self._predict_proba(Xv, torch.device(self.device_))

    def predict(self, X: Any) -> np.ndarray:
        """The most probable cluster ``int64 [n]`` of each row of new features."""
        return self.predict_proba(X).argmax(axis=1).astype(np.int64)

    # -- helpers for subclasses -----------------------------------------------------
    def _work_size(self, X: np.ndarray) -> int:
        """Size of the fit, compared with :data:`SINGLE_THREAD_MAX_VALUES`: ``N * d``; a method
        whose work grows with a parameter (TAC's ``n_heads``) scales it."""
        return int(X.size)

    def _prep(self, X: np.ndarray) -> np.ndarray:
        """Unit rows when the method has ``normalize=True`` (cosine geometry), else ``X`` as it is."""
        return l2_normalize(X).astype(np.float32) if getattr(self, "normalize", False) else X

    def _generator(self, offset: int = 0) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed((int(self.seed) + 1_000_003 * offset) % (2**63))
        return g

    def _to_tensor(self, X: np.ndarray, device: torch.device) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)).to(device)

    @torch.no_grad()
    def _batched(self, fn: Callable[[torch.Tensor], torch.Tensor], X: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
        return torch.cat([fn(X[i : i + batch_size]) for i in range(0, X.shape[0], batch_size)], dim=0)

    def _progress(self, iterable: Iterable, desc: str, total: int | None = None):
        if not getattr(self, "verbose", False):
            return iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, leave=False)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        return tags


def best_head(per_head_losses: Sequence[float] | np.ndarray) -> int:
    """Index of the head with the lowest loss (first one on ties)."""
    return int(np.argmin(np.asarray(per_head_losses, dtype=np.float64)))


def restart_seeds(seed: int, n: int) -> list[int]:
    """``n`` independent seeds (31-bit ints) for the restarts of a run seeded with ``seed``.

    Derived with :class:`numpy.random.SeedSequence`, so the restarts of two runs
    with different seeds share nothing (``seed + r`` would: seed 0's second
    restart would be seed 1's first), and the same seed gives the same list;
    a longer list starts with the shorter one.
    """
    state = np.random.SeedSequence(int(seed) % (2**63)).generate_state(max(1, int(n)), dtype=np.uint32)
    return [int(s) >> 1 for s in state]


def kmeans_fit(X: np.ndarray, k: int, *, seed: int, spherical: bool = False, n_iter: int = 20, n_init: int = 1):
    """Best-of-``n_init`` :class:`mlcd.cluster.KMeans` (faiss on CPU): returns (centers, labels, inertia).

    Restart ``r`` is seeded with ``restart_seeds(seed, n_init)[r]``: independent restarts,
    and different ``seed`` values give different restart sets.
    """
    from mlcd.cluster import KMeans

    best = None
    for r_seed in restart_seeds(seed, n_init):
        km = KMeans(k, spherical=spherical, n_iter=n_iter, seed=r_seed, device="cpu", verbose=False)
        km.fit(np.ascontiguousarray(X, dtype=np.float32))
        if best is None or km.inertia_ < best.inertia_:
            best = km
    return best.cluster_centers_.astype(np.float32), best.labels_.astype(np.int64), float(best.inertia_)
