"""Seeding k-means: random, k-means++ and two-level, plus a small in-memory Lloyd.

All randomness comes from a NumPy ``Generator`` (host side), so the same seed
picks the same points whatever the device; distances are computed in torch
on the compute device.
"""

from __future__ import annotations

import math
import threading
from typing import Callable

import numpy as np
import torch

from ._common import _faiss_available, l2_normalize

__all__ = [
    "kmeans_plusplus",
    "random_init",
    "two_level_init",
    "lloyd_in_memory",
    "update_centers",
    "allocate",
    "CenterStats",
    "COARSE_MAX_POINTS_PER_CENTER",
]


def _sqdist(a: torch.Tensor, a2: torch.Tensor, b: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances [len(a), len(b)], clamped at 0."""
    return (a2.unsqueeze(1) + b2.unsqueeze(0) - 2.0 * (a @ b.t())).clamp_min_(0.0)


def random_init(x: torch.Tensor, k: int, rng: np.random.Generator) -> torch.Tensor:
    """``k`` distinct rows of ``x`` chosen uniformly at random."""
    idx = rng.choice(x.shape[0], size=k, replace=False)
    return x[torch.from_numpy(np.sort(idx)).to(x.device)].clone()


def kmeans_plusplus(x: torch.Tensor, k: int, rng: np.random.Generator, n_local_trials: int | None = None) -> torch.Tensor:
    """Greedy k-means++ (Arthur & Vassilvitskii 2007, with local trials as in scikit-learn).

    Each new center is the best of ``n_local_trials`` (default ``2 + ln k``)
    candidates drawn with probability proportional to the squared distance
    to the nearest center chosen so far. Cost: ``k * n_local_trials`` passes
    of ``len(x) * d``, sequential in ``k``.
    """
    n, d = x.shape
    if n_local_trials is None:
        n_local_trials = 2 + int(math.log(k))
    x2 = (x * x).sum(dim=1)
    chosen = np.empty(k, dtype=np.int64)
    first = int(rng.integers(n))
    chosen[0] = first
    closest = _sqdist(x[first : first + 1], x2[first : first + 1], x, x2)[0]
    for c in range(1, k):
        cum = torch.cumsum(closest.double(), dim=0)
        pot = float(cum[-1])
        if pot > 0:
            r = torch.from_numpy(rng.random(n_local_trials) * pot).to(x.device)
            cand = torch.searchsorted(cum, r).clamp_(max=n - 1)
        else:  # every point sits on a chosen center: no distance to sample from
            cand = torch.from_numpy(rng.integers(n, size=n_local_trials)).to(x.device)
        dc = _sqdist(x[cand], x2[cand], x, x2)
        torch.minimum(dc, closest.unsqueeze(0), out=dc)
        best = int(torch.argmin(dc.double().sum(dim=1)))
        closest = dc[best]
        chosen[c] = int(cand[best])
    return x[torch.from_numpy(chosen).to(x.device)].clone()


def update_centers(
    sums: torch.Tensor,
    counts: torch.Tensor,
    sse: torch.Tensor,
    old: torch.Tensor,
    *,
    spherical: bool,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, int]:
    """The k-means update with empty-cluster repair; returns ``(centers, n_repairs)``.

    ``sums`` is overwritten (it becomes the float64 means).

    ``sums`` [K, d], ``counts`` [K] and ``sse`` [K] (per-cluster sum of squared
    distances) are float64 totals of the assignment step. A center with
    points moves to their mean (normalised in spherical mode). An empty
    cluster is repaired by *splitting the largest cluster*: the largest
    cluster ``j`` (by point count, among those with spread) gets two centers,
    ``mean_j +/- delta * u`` with ``u`` a random unit vector and ``delta`` a
    tenth of the cluster's RMS radius, so the next assignment divides its
    points between them by a hyperplane through its mean. Counts and spread
    of the split cluster are halved, so several empty clusters split several
    clusters. A cluster whose points all coincide cannot be split; when no
    cluster can, the remaining empty centers stay where they were.
    """
    k, d = old.shape
    nz = counts > 0
    new = sums.div_(counts.clamp_min(1.0).unsqueeze(1))  # in place: ``sums`` is spent
    if not bool(nz.all()):
        new[~nz] = old[~nz].double()
    empty = torch.nonzero(~nz).flatten().cpu().tolist()
    n_rep = 0
    if empty:
        cnt = counts.double().cpu().numpy().copy()
        ss = sse.double().cpu().numpy().copy()
        for e in empty:
            cand = np.flatnonzero((cnt >= 2) & (ss > 0))
            if cand.size == 0:
                break
            j = int(cand[np.argmax(cnt[cand])])
            radius = math.sqrt(ss[j] / cnt[j])
            u = rng.standard_normal(d)
            u /= max(float(np.linalg.norm(u)), 1e-300)
            delta = torch.from_numpy(0.1 * radius * u).to(device=new.device, dtype=torch.float64)
            cj = new[j].clone()
            new[e] = cj + delta
            new[j] = cj - delta
            cnt[j] /= 2.0
            cnt[e] = cnt[j]
            ss[j] /= 2.0
            ss[e] = ss[j]
            n_rep += 1
    if spherical:
        new = l2_normalize(new)
    return new.float(), n_rep


_WORKSPACE = threading.local()


def _workspace(rows: int, cols: int) -> np.ndarray:
    """A float64 C-contiguous [rows, cols] scratch array, reused between calls (per thread).

    Reuse matters: a fresh array of tens of MB costs page faults on every
    call, and the two-level seeding calls :meth:`CenterStats.add` thousands
    of times on small groups.
    """
    buf = getattr(_WORKSPACE, "buf", None)
    if buf is None or buf.size < rows * cols:
        buf = _WORKSPACE.buf = np.empty(max(rows * cols, 1), dtype=np.float64)
    return buf[: rows * cols].reshape(rows, cols)


class CenterStats:
    """Float64 per-center totals of one assignment pass, and the objective they give.

    ``sums`` [K, d] (the sum of each center's rows), ``counts`` [K] and
    ``sq_norms`` [K] (the sum of ``|x|^2`` over each center's rows), all
    float64 on the compute device. The per-center sum of squared distances
    to the center ``c`` the rows were assigned to follows from them without
    a second look at the rows (:meth:`sse`)::

        sum_i |x_i - c|^2 = sum_i |x_i|^2 - 2 c . sum_i x_i + n |c|^2

    evaluated in float64. The float32 rows and centers are exact in float64
    and the row norms and sums are float64, so this is accurate to about
    1e-13 of ``sum |x|^2``: better than a float32 distance per row, and far
    cheaper (one row-norm pass, instead of gathering ``centers[labels]`` and
    taking differences: 3 ms against 42 ms per 20k x 512 rows). Values below
    ``1e-12 * (sum |x|^2 + n |c|^2)`` are rounding and are set to exactly
    zero, so a cluster whose rows all coincide has no spread (and is not
    split by the empty-cluster repair).

    On the CPU the totals come from a sparse product (a 0/1 CSR matrix times
    the running totals stacked on the rows in float64, see :meth:`_add_cpu`):
    each center's rows are added one by one in row order, exactly as
    ``index_add_`` adds them, so the result does not depend on the batch
    size. It runs on one thread, converts the rows into a reused float64
    buffer (a fresh ``x.double()`` per batch cost more than the sums, in page
    faults) and makes no small multi-threaded torch calls, which on a busy
    machine wait for descheduled threads. Measured on a shared 2-core box:
    about 55 ms per 20k x 512 rows (one thread, CPU time) against 60 ms for
    ``x.double()`` + ``index_add_``, and 150 ms against 350 ms wall time per
    32k rows with two threads at load 4. On other devices the totals are
    ``index_add_``.
    """

    _CHUNK_FLOATS = 1 << 23  # float64 values per CPU chunk (a reused 64 MB buffer)

    def __init__(self, k: int, d: int, device: torch.device):
        self.k, self.d = int(k), int(d)
        self.sums = torch.zeros(k, d, dtype=torch.float64, device=device)
        self.counts = torch.zeros(k, dtype=torch.float64, device=device)
        self.sq_norms = torch.zeros(k, dtype=torch.float64, device=device)

    def add(self, x: torch.Tensor, lab: torch.Tensor) -> None:
        """Add the float32 rows ``x`` [b, d] assigned to centers ``lab`` [b] (int64)."""
        if x.shape[0] == 0:
            return
        if x.device.type == "cpu":
            self._add_cpu(x.numpy(), lab.numpy())
            return
        xd = x.double()
        self.sums.index_add_(0, lab, xd)
        self.counts += torch.bincount(lab, minlength=self.k)
        self.sq_norms.index_add_(0, lab, (xd * xd).sum(dim=1))

    def _add_cpu(self, x: np.ndarray, lab: np.ndarray) -> None:
        import scipy.sparse as sp

        k, d = self.k, self.d
        step = max(1024, self._CHUNK_FLOATS // (d + 1))
        sums, counts, sq_norms = self.sums.numpy(), self.counts.numpy(), self.sq_norms.numpy()
        for s in range(0, x.shape[0], step):
            lc = lab[s : s + step]
            b = lc.shape[0]
            counts += np.bincount(lc, minlength=k)
            if b < k:  # fewer rows than centers: work on the centers present only
                present, row = np.unique(lc, return_inverse=True)
                p = present.shape[0]
            else:
                present, row, p = slice(None), lc, k
            # One float64 operand [p + b, d + 1]: the p running totals (sums | sum of
            # |x|^2) on top, the b rows (x | |x|^2) below. Center j's CSR row holds
            # column j (its running total) first, then its rows in row order, all
            # with weight 1, so the product is total + x_1 + x_2 + ... added one by
            # one in row order: the same float64 rounding as accumulating row by
            # row (index_add_), whatever the batch boundaries.
            buf = _workspace(p + b, d + 1)
            buf[:p, :d] = sums[present]
            buf[:p, d] = sq_norms[present]
            xd = buf[p:, :d]
            np.copyto(xd, x[s : s + b])  # float32 -> float64, exact
            buf[p:, d] = np.einsum("ij,ij->i", xd, xd)
            rows = np.concatenate([np.arange(p), row])
            cols = np.arange(p + b)
            m = sp.csr_matrix((np.ones(p + b), (rows, cols)), shape=(p, p + b))
            out = m @ buf
            sums[present] = out[:, :d]
            sq_norms[present] = out[:, d]

    def all_reduce(self) -> None:
        from ._common import all_reduce_

        all_reduce_(self.sums, self.counts, self.sq_norms)

    def sse(self, centers: torch.Tensor) -> torch.Tensor:
        """Float64 [K]: each center's sum of squared distances of its rows to ``centers``."""
        c = centers.double()
        return self._sse((c * self.sums).sum(dim=1), (c * c).sum(dim=1))

    def reduce_sse(self, centers: torch.Tensor) -> torch.Tensor:
        """:meth:`sse` over all ranks, all-reducing ``counts``, ``sq_norms`` and K cross terms only.

        For a pass that needs no update (the final assignment): ``c . sum x``
        is linear in the sums, so each rank's share can be added up instead
        of the [K, d] sums. At world size 1 it equals :meth:`sse`.
        """
        from ._common import all_reduce_

        c = centers.double()
        cross = (c * self.sums).sum(dim=1)
        all_reduce_(self.counts, self.sq_norms, cross)
        return self._sse(cross, (c * c).sum(dim=1))

    def _sse(self, cross: torch.Tensor, c2: torch.Tensor) -> torch.Tensor:
        sse = self.sq_norms - 2.0 * cross + self.counts * c2
        noise = 1e-12 * (self.sq_norms + self.counts * c2)  # rounding of the expansion
        return sse.masked_fill(sse <= noise, 0.0)


def sq_dist_to(x: torch.Tensor, centers: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
    """``||x_i - centers[lab_i]||^2`` per row, as float64 for accumulation (computed in float32).

    The difference is taken directly, not as ``|x|^2 + |c|^2 - 2 x.c``, so it
    has no cancellation error when the data sit far from the origin.
    """
    diff = centers.index_select(0, lab)  # a fresh gathered copy, reused in place
    diff.sub_(x).mul_(diff)
    return diff.sum(dim=1).double()  # float32 row sums (pairwise), float64 from here on


def lloyd_in_memory(
    x: torch.Tensor,
    centers: torch.Tensor,
    n_iter: int,
    *,
    make_scorer: Callable[[torch.Tensor], object],
    spherical: bool,
    rng: np.random.Generator,
    batch_size: int = 1 << 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A few Lloyd iterations on rows held in memory; returns ``(centers, labels)``.

    Used by the two-level seeding. The totals are the float64
    :class:`CenterStats` of the main loop (on the CPU they are also the
    fastest way to get the sums). ``labels`` are the assignment to the
    returned centers.
    """
    k, d = centers.shape

    def assign(c: torch.Tensor) -> tuple[torch.Tensor, CenterStats]:
        scorer = make_scorer(c)
        stats = CenterStats(k, d, x.device)
        parts = []
        for s in range(0, x.shape[0], batch_size):
            xb = x[s : s + batch_size]
            lab = scorer.top1(xb).to(x.device)
            stats.add(xb, lab)
            parts.append(lab)
        return torch.cat(parts), stats

    labels, stats = assign(centers)
    for _ in range(n_iter):
        new, _ = update_centers(stats.sums, stats.counts, stats.sse(centers), centers, spherical=spherical, rng=rng)
        if torch.equal(new, centers):
            break
        centers = new
        labels, stats = assign(centers)
    return centers, labels


def allocate(k: int, sizes: np.ndarray) -> np.ndarray:
    """Split ``k`` centers over groups in proportion to ``sizes`` (largest remainder).

    When ``k <= sizes.sum()`` no group gets more centers than it has points.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    total = int(sizes.sum())
    q = k * sizes
    base = q // total
    frac = q % total
    rest = k - int(base.sum())
    if rest:
        order = np.lexsort((np.arange(len(sizes)), -frac))  # largest remainder, then lowest index
        base[order[:rest]] += 1
    return base


#: The first level of :func:`two_level_init` trains on at most this many rows per
#: coarse center (a seeded random subsample of the seeding sample), the value
#: faiss' ``contrib.clustering.two_level_clustering`` passes as its first
#: level's ``max_points_per_centroid`` (faiss' general default is 256; it
#: chose the larger value for this level). Why: the coarse centers only route
#: the rows to groups, so the first level needs far fewer rows than the second;
#: every row above the cap would cost ``n_iter`` more row passes against
#: ``sqrt(K)`` centers. Every row of the sample is still assigned to the coarse
#: centers and the second level works on all of them.
COARSE_MAX_POINTS_PER_CENTER = 2000


def _top1(x: torch.Tensor, centers: torch.Tensor, make_scorer: Callable[[torch.Tensor], object], batch_size: int = 1 << 16) -> torch.Tensor:
    """Nearest-center labels [len(x)] (int64, on ``x.device``), in batches."""
    scorer = make_scorer(centers)
    parts = [scorer.top1(x[s : s + batch_size]).to(x.device) for s in range(0, x.shape[0], batch_size)]
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64, device=x.device)


def two_level_init(
    x: torch.Tensor,
    k: int,
    rng: np.random.Generator,
    *,
    make_scorer: Callable[[torch.Tensor], object],
    spherical: bool,
    n_iter: int = 10,
    max_points_per_coarse: int | None = None,
) -> torch.Tensor:
    """Two-level seeding for large ``k`` (in the spirit of faiss' ``two_level_clustering``).

    1. k-means++ and ``n_iter`` Lloyd iterations into ``k1 = round(sqrt(k))``
       coarse groups, trained on at most ``max_points_per_coarse * k1`` rows
       (default :data:`COARSE_MAX_POINTS_PER_CENTER` = 2000 per coarse center,
       as in faiss' ``two_level_clustering``): a random subsample drawn from
       ``rng`` when ``x`` has more rows, all of ``x`` otherwise (no draw);
       then every row of ``x`` is assigned to its nearest coarse center;
    2. each group gets a number of centers proportional to its size
       (:func:`allocate`), seeded with random members and refined with
       ``n_iter`` Lloyd iterations on the group's points alone. On the CPU
       (when faiss is installed and ``n_iter > 0``) each group is one
       ``faiss.Kmeans`` run on all its rows (no subsampling), seeded by a
       per-group seed drawn from ``rng``; elsewhere it is
       :func:`random_init` + :func:`lloyd_in_memory`. Why: the second level
       is ``sqrt(k)`` small k-means runs, and faiss' C++ loop does each
       without a Python round trip per iteration. A group given one center
       gets the mean of its rows.

    Cost is about ``n_iter`` passes of ``min(len(x), 2000 sqrt(k)) * sqrt(k) * d``
    (first level), one pass of ``len(x) * sqrt(k) * d`` (the coarse assignment)
    and ``n_iter`` passes of ``len(x) * sqrt(k) * d`` (second level), instead of
    the ``k^2``-like cost of k-means++ with a sample growing with ``k``.
    """
    n = x.shape[0]
    k1 = max(1, min(int(round(math.sqrt(k))), n))
    cap = COARSE_MAX_POINTS_PER_CENTER if max_points_per_coarse is None else int(max_points_per_coarse)
    n1 = min(n, max(cap, 1) * k1)
    if n1 < n:
        sub = torch.from_numpy(np.sort(rng.choice(n, size=n1, replace=False))).to(x.device)
        x1 = x[sub]
    else:
        x1 = x
    coarse = kmeans_plusplus(x1, k1, rng)
    coarse, labels = lloyd_in_memory(x1, coarse, n_iter, make_scorer=make_scorer, spherical=spherical, rng=rng)
    if n1 < n:
        del x1
        labels = _top1(x, coarse, make_scorer)
    labels_np = labels.cpu().numpy()
    sizes = np.bincount(labels_np, minlength=k1)
    alloc = allocate(k, sizes)
    order = np.argsort(labels_np, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    use_faiss = x.device.type == "cpu" and n_iter > 0 and _faiss_available()
    # one faiss seed per coarse group, drawn up front (so they do not depend on the groups' sizes)
    group_seeds = rng.integers(0, 2**31 - 1, size=k1) if use_faiss else None
    parts = []
    for g in range(k1):
        kg = int(alloc[g])
        if kg == 0:
            continue
        members = torch.from_numpy(order[bounds[g] : bounds[g + 1]]).to(x.device)
        xg = x[members]
        if kg == 1:
            cg = xg.double().mean(dim=0, keepdim=True)
            cg = (l2_normalize(cg) if spherical else cg).float()
        elif use_faiss:
            cg = _faiss_group_kmeans(xg, kg, n_iter, int(group_seeds[g]), spherical)
        else:
            cg = random_init(xg, kg, rng)
            cg, _ = lloyd_in_memory(xg, cg, n_iter, make_scorer=make_scorer, spherical=spherical, rng=rng)
        parts.append(cg)
    return torch.cat(parts, dim=0)


def _faiss_group_kmeans(xg: torch.Tensor, kg: int, n_iter: int, seed: int, spherical: bool) -> torch.Tensor:
    """``faiss.Kmeans`` of one second-level group (CPU rows) into ``kg`` centers, on all its rows.

    Random-member seeding and ``n_iter`` Lloyd iterations in faiss' C++ loop
    (float32 sums, faiss' own empty-cluster split), seeded by ``seed``.
    ``min_points_per_centroid=1`` keeps faiss quiet for small groups (it
    only warns; the allocation never gives a group more centers than rows),
    and ``max_points_per_centroid=ceil(rows / kg)`` stops it from
    subsampling, so every row of the group is used.
    """
    import faiss

    xn = np.ascontiguousarray(xg.numpy(), dtype=np.float32)
    n, d = xn.shape
    km = faiss.Kmeans(
        d, kg, niter=int(n_iter), seed=int(seed), spherical=bool(spherical), verbose=False,
        min_points_per_centroid=1, max_points_per_centroid=-(-n // kg),
    )
    km.train(xn)
    return torch.from_numpy(np.array(km.centroids, dtype=np.float32, copy=True))
