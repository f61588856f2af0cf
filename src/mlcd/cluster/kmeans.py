"""``mlcd.KMeans``: Lloyd's k-means on the CPU (faiss), on GPUs (torch) and across processes.

One engine, three kinds of input (NumPy array, torch tensor, a store streamed
in batches), two assignment backends (:mod:`._scoring`), and
``torch.distributed`` when a process group is initialised: each rank passes
its own shard of the rows, the centers are replicated, and the per-center
float64 sums, counts and sums of squared norms (:class:`._init.CenterStats`)
are all-reduced every iteration.

Checkpoints (``checkpoint_dir``) hold the centers, the iteration count, the
repair RNG state and the objective history after every iteration, written
atomically (``centers`` file first, the JSON state that names it last), so
``fit(X, resume=True)`` after a kill continues from the last complete
iteration and ends with the same centers as a run that was never stopped.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._common import (
    DataSource,
    all_reduce_,
    as_source,
    broadcast_,
    broadcast_object,
    check_centers,
    check_dist_device,
    default_batch_size,
    dist_info,
    fmt_float,
    global_row_counts,
    l2_normalize,
    progress_bar,
    resolve_backend,
    resolve_device,
    resolve_precision,
    to_float_tensor,
)
from ._init import (
    CenterStats,
    sq_dist_to,
    kmeans_plusplus,
    random_init,
    two_level_init,
    update_centers,
)
from ._scoring import make_scorer

__all__ = ["KMeans", "KPP_MAX_CLUSTERS"]

#: ``init="auto"`` uses k-means++ up to this many clusters and two-level above.
KPP_MAX_CLUSTERS = 1024

_CKPT_STATE = "kmeans-state.json"
_CKPT_FORMAT = "mlcd.kmeans-checkpoint/1"
_INITS = ("auto", "k-means++", "random", "two-level")


class KMeans:
    """K-means clustering (Lloyd's algorithm) at MLCD scale.

    Parameters
    ----------
    n_clusters:
        K, the number of centers.
    spherical:
        L2-normalise the inputs and keep the centers on the unit sphere
        (cosine k-means). The objective is then ``sum ||x/|x| - c||^2``
        ``= sum (2 - 2 cos)``.
    n_iter:
        Lloyd iterations (assignment + update). The run stops earlier only if
        an iteration leaves every center exactly where it was.
    init:
        ``"k-means++"``, ``"random"`` (K distinct rows), ``"two-level"``
        (k-means into about sqrt(K) coarse groups, trained on a seeded random
        subsample of at most 2000 rows per coarse group as in faiss'
        ``two_level_clustering``; then every sampled row goes to its nearest
        coarse group and each group is split into a number of centers
        proportional to its size, by k-means on all its rows: on the CPU one
        ``faiss.Kmeans`` run per group, seeded from ``seed``, elsewhere
        mlcd's own Lloyd loop), an array of initial
        centers ``[K, dim]``, or ``"auto"`` (default): k-means++ for
        ``K <= 1024`` and two-level above. Why: k-means++ picks the centers
        one after another, each choice a pass over the seeding sample, and
        the sample must grow with K (20 rows per center), so its cost grows
        like K^2: about 2e11 operations at K=1024, d=512 (seconds), but
        3e18 at K=100,000 and 3e20 at K=1,000,000 (with ``2 + ln K`` local
        trials per pick), which no machine does in reasonable time. Two-level costs a few passes of
        ``sample x sqrt(K) x d`` instead, and its result is refined by the
        Lloyd iterations anyway. Below 1024 centers k-means++ is cheap and
        seeds a little better. The choice depends only on K, so it is the
        same on every device.
        Seeding runs on a random subsample of the rows (``init_sample_size``).
    seed:
        Seeds every random choice (the subsample, the seeding, the repairs).
        The same seed on the same device type gives the same centers, with
        any number of processes.
    device:
        ``"auto"`` (the device of a torch input, else CUDA when present,
        else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    backend:
        ``"auto"`` (faiss on CPU, torch elsewhere), ``"faiss"`` or
        ``"torch"`` (any device; on CPU it gives the same answer as faiss).
        Why faiss on the CPU: its flat search is the faster of the two
        there. Measured on a 2-core AMD EPYC, one thread, CPU time (the
        machine was shared, so wall times were not usable): 29-32 GFLOP/s
        for faiss against 22-28 for the tiled torch search (20k rows;
        d=512, K=1000 and d=256, K=10,000), and a whole Lloyd iteration of
        20k x 512 rows to K=1000 in 0.77 s against 0.93 s. The torch search
        also runs many small multi-threaded operations per tile, which lose
        most on a busy machine. Both backends share everything but the
        search (the float64 totals, the update, the repairs).
    precision:
        Matrix products of the torch backend: ``"auto"`` (tf32 on CUDA, fp32
        on CPU), ``"fp32"``, ``"tf32"`` or ``"bf16"``. Comparisons, sums and
        the objective are always float32 / float64.
    batch_size:
        Rows per input batch (default: about 16 M floats on CPU, 64 M on GPU).
    checkpoint_dir:
        Folder for a checkpoint after every iteration (created if needed);
        ``fit(X, resume=True)`` continues from it.
    drop_nonfinite:
        Leave rows with NaN or inf out of the clustering (their label is -1)
        instead of raising ``ValueError``.
    init_sample_size:
        Rows used for seeding; default ``min(N, max(10000, 32 K))`` for
        two-level (capped at ``max(4 K, 2^30 / dim)`` rows) and
        ``min(N, max(10000, 20 K))`` otherwise. Two-level's first (coarse)
        level trains on at most ``2000 * round(sqrt(K))`` of these rows
        (``mlcd.cluster._init.COARSE_MAX_POINTS_PER_CENTER``); its second
        level uses all of them.
    init_iter:
        Lloyd iterations inside each level of the two-level seeding.
    verbose:
        Progress bar with the objective per iteration (rank 0 only).

    Attributes
    ----------
    cluster_centers_ : float32 ndarray [K, dim] (unit rows when spherical)
    labels_ : int64 ndarray [N] -- the nearest center of each row (of this
        rank's shard when distributed; -1 for rows dropped as non-finite)
    inertia_ : float -- sum of squared distances of the rows to their
        nearest center (all ranks), with the final centers
    n_iter_ : int -- iterations run
    n_empty_repairs_ : int -- empty clusters repaired, over all iterations
    cluster_sizes_ : int64 ndarray [K] -- rows per center (all ranks)
    objective_history_ : list[float] -- the objective at each iteration's
        assignment step (before its update)
    n_nonfinite_ : int -- rows dropped as non-finite (all ranks)
    resumed_from_ : int | None -- the checkpointed iteration a resumed run started from
    fit_time_, init_time_ : float -- seconds for the whole fit and for the seeding
    timings_ : dict -- seconds for "seeding" (scan + init), "iterations",
        "final_assignment" (labels_ and inertia_) and "total"
    init_, backend_, device_ : what was actually used
    """

    def __init__(
        self,
        n_clusters: int,
        *,
        spherical: bool = False,
        n_iter: int = 20,
        init: str | np.ndarray | torch.Tensor = "auto",
        seed: int = 0,
        device: str = "auto",
        backend: str = "auto",
        precision: str = "auto",
        batch_size: int | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        drop_nonfinite: bool = False,
        init_sample_size: int | None = None,
        init_iter: int = 10,
        verbose: bool = True,
    ):
        self.n_clusters = n_clusters
        self.spherical = spherical
        self.n_iter = n_iter
        self.init = init
        self.seed = seed
        self.device = device
        self.backend = backend
        self.precision = precision
        self.batch_size = batch_size
        self.checkpoint_dir = checkpoint_dir
        self.drop_nonfinite = drop_nonfinite
        self.init_sample_size = init_sample_size
        self.init_iter = init_iter
        self.verbose = verbose

    # ------------------------------------------------------------------ #
    # parameters
    # ------------------------------------------------------------------ #
    def _check_params(self) -> int:
        k = self.n_clusters
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"n_clusters must be a positive integer, not {k!r}")
        if isinstance(self.n_iter, bool) or not isinstance(self.n_iter, (int, np.integer)) or self.n_iter < 0:
            raise ValueError(f"n_iter must be a non-negative integer, not {self.n_iter!r}")
        if isinstance(self.init, str) and self.init not in _INITS:
            raise ValueError(f"init must be one of {_INITS} or an array of centers, not {self.init!r}")
        if self.batch_size is not None and (not isinstance(self.batch_size, (int, np.integer)) or self.batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer or None, not {self.batch_size!r}")
        return int(k)

    def _init_name(self, k: int) -> str:
        if not isinstance(self.init, str):
            return "array"
        if self.init == "auto":
            return "k-means++" if k <= KPP_MAX_CLUSTERS else "two-level"
        return self.init

    def _sample_size(self, init: str, k: int, n: int, dim: int) -> int:
        if init == "array":
            return 0
        if self.init_sample_size is not None:
            s = int(self.init_sample_size)
            if s < k:
                raise ValueError(f"init_sample_size={s} is smaller than n_clusters={k}")
            return min(n, s)
        if init == "two-level":
            return min(n, max(10_000, 32 * k), max(4 * k, (1 << 30) // max(dim, 1)))
        return min(n, max(10_000, 20 * k))

    # ------------------------------------------------------------------ #
    # fit
    # ------------------------------------------------------------------ #
    def fit(self, X: Any, y: Any = None, *, resume: bool = False) -> "KMeans":
        """Cluster ``X`` (ndarray, tensor or store with ``iter_batches``); returns ``self``.

        With ``resume=True`` and a checkpoint in ``checkpoint_dir`` from a run
        with the same K, data size, dimension, spherical flag, seed and init,
        the run continues after the last checkpointed iteration (a larger
        ``n_iter`` extends a finished run). Without a checkpoint it starts
        afresh. With ``resume=False`` an existing checkpoint is overwritten.
        """
        t_start = time.perf_counter()
        k = self._check_params()
        src = as_source(X)
        device = resolve_device(self.device, src)
        backend = resolve_backend(self.backend, device)
        check_dist_device(device)
        precision = resolve_precision(self.precision, device, auto_cuda="tf32")
        rank, world = dist_info()
        n_global, offset = global_row_counts(src.n, device)
        if k > n_global:
            raise ValueError(
                f"n_clusters={k} is larger than the number of rows of {src.name} ({n_global}); "
                f"ask for at most {n_global} clusters"
            )
        init_name = self._init_name(k)
        init_array = None
        if init_name == "array":
            init_array = check_centers(self.init, "init")
            if tuple(init_array.shape) != (k, src.dim):
                raise ValueError(f"init has shape {tuple(init_array.shape)}, expected ({k}, {src.dim})")
        batch_size = int(self.batch_size or default_batch_size(src.dim, device))
        spherical = bool(self.spherical)
        seq_sample, seq_init, seq_repair = np.random.SeedSequence(self.seed).spawn(3)
        rng_repair = np.random.default_rng(seq_repair)

        def scorer_for(c: torch.Tensor):
            return make_scorer(c, backend=backend, spherical=spherical, precision=precision)

        fingerprint = {
            "n_clusters": k,
            "dim": src.dim,
            "n_samples": n_global,
            "spherical": spherical,
            "seed": int(self.seed),
            "init": init_name,
            "drop_nonfinite": bool(self.drop_nonfinite),
        }
        ckpt_dir = Path(self.checkpoint_dir) if self.checkpoint_dir is not None else None
        state = None
        if resume and ckpt_dir is not None:
            state = self._load_checkpoint(ckpt_dir, fingerprint, device)

        self.n_nonfinite_ = 0
        t_init = time.perf_counter()
        if state is None:
            s = self._sample_size(init_name, k, n_global, src.dim)
            rng_sample = np.random.default_rng(seq_sample)
            if s >= n_global:
                sample_idx = np.arange(n_global, dtype=np.int64)
            else:
                sample_idx = np.sort(rng_sample.choice(n_global, size=s, replace=False)).astype(np.int64)
            n_bad, sample = self._scan(src, batch_size, device, spherical, sample_idx, offset)
            self.n_nonfinite_ = n_bad
            if n_bad and not self.drop_nonfinite:
                raise ValueError(
                    f"{n_bad} of {n_global} rows of {src.name} contain NaN or inf; pass "
                    f"drop_nonfinite=True to leave them out (their label is -1), or clean the input"
                )
            if k > n_global - n_bad:
                raise ValueError(
                    f"n_clusters={k} is larger than the number of finite rows of {src.name} "
                    f"({n_global - n_bad} of {n_global}); ask for fewer clusters"
                )
            if init_array is None and sample.shape[0] < k:  # the sample lost too many rows
                _, sample = self._scan(src, batch_size, device, spherical, np.arange(n_global, dtype=np.int64), offset)
            centers = torch.empty(k, src.dim, dtype=torch.float32, device=device)
            if rank == 0:
                rng_init = np.random.default_rng(seq_init)
                if init_array is not None:
                    c = to_float_tensor(init_array if isinstance(init_array, np.ndarray) else init_array.detach(), device)
                    centers.copy_(l2_normalize(c) if spherical else c)
                elif init_name == "random":
                    centers.copy_(random_init(sample, k, rng_init))
                elif init_name == "k-means++":
                    centers.copy_(kmeans_plusplus(sample, k, rng_init))
                else:
                    centers.copy_(
                        two_level_init(
                            sample, k, rng_init, make_scorer=scorer_for, spherical=spherical, n_iter=self.init_iter
                        )
                    )
            del sample
            broadcast_(centers)
            it0, n_repairs, history, converged = 0, 0, [], False
            if ckpt_dir is not None:
                self._save_checkpoint(ckpt_dir, fingerprint, centers, 0, n_repairs, rng_repair, history, False)
        else:
            centers = state["centers"]
            it0 = int(state["iteration"])
            n_repairs = int(state["n_empty_repairs"])
            history = list(state["history"])
            converged = bool(state["converged"])
            self.n_nonfinite_ = int(state.get("n_nonfinite", 0))
            rng_repair.bit_generator.state = state["rng_state"]
        self.init_time_ = time.perf_counter() - t_init
        self.resumed_from_ = it0 if state is not None else None

        # ---- Lloyd iterations --------------------------------------------------
        n_iter_done = it0
        desc = f"k-means K={k} ({backend}, {device.type})"
        with progress_bar(total=int(self.n_iter), desc=desc, enabled=self.verbose, initial=min(it0, int(self.n_iter))) as bar:
            for it in range(it0, int(self.n_iter)):
                if converged:
                    break
                stats, _ = self._pass(src, centers, scorer_for(centers), batch_size, device, spherical)
                stats.all_reduce()
                sse, counts = stats.sse(centers), stats.counts
                obj = float(sse.sum())
                new, rep = update_centers(stats.sums, counts, sse, centers, spherical=spherical, rng=rng_repair)
                del stats
                n_repairs += rep
                history.append(obj)
                converged = rep == 0 and torch.equal(new, centers)
                centers = new
                n_iter_done = it + 1
                if ckpt_dir is not None:
                    self._save_checkpoint(
                        ckpt_dir, fingerprint, centers, n_iter_done, n_repairs, rng_repair, history, converged
                    )
                bar.set_postfix(objective=fmt_float(obj), empty=int((counts == 0).sum()), refresh=False)
                bar.update(1)
            if converged and bar.total != n_iter_done:
                bar.total = n_iter_done  # stopped early: every center stayed put
                bar.refresh()

        t_final = time.perf_counter()
        # ---- final assignment ----------------------------------------------------
        labels = np.full(src.n, -1, dtype=np.int64)
        stats, n_bad_local = self._pass(src, centers, scorer_for(centers), batch_size, device, spherical, labels_out=labels)
        sse, counts = stats.reduce_sse(centers), stats.counts  # no [K, d] all-reduce: no update follows
        del stats
        if state is not None:
            bad = torch.tensor([float(n_bad_local)], dtype=torch.float64, device=device)
            all_reduce_(bad)
            self.n_nonfinite_ = int(bad.item())
        self.cluster_centers_ = centers.cpu().numpy()
        self.labels_ = labels
        self.inertia_ = float(sse.sum())
        self.cluster_sizes_ = counts.cpu().numpy().round().astype(np.int64)
        self.n_iter_ = n_iter_done
        self.n_empty_repairs_ = n_repairs
        self.objective_history_ = history
        self.init_ = init_name
        self.backend_ = backend
        self.device_ = str(device)
        self.precision_ = precision if backend == "torch" else "fp32"
        self.n_features_in_ = src.dim
        t_end = time.perf_counter()
        self.fit_time_ = t_end - t_start
        self.timings_ = {
            "seeding": self.init_time_,
            "iterations": t_final - t_init - self.init_time_,
            "final_assignment": t_end - t_final,
            "total": self.fit_time_,
        }
        if self.verbose and rank == 0:
            import sys

            n_empty = int((self.cluster_sizes_ == 0).sum())
            print(
                f"k-means: K={k}, {n_iter_done} iterations, inertia {fmt_float(self.inertia_)}, "
                f"{n_repairs} empty-cluster repairs, {n_empty} empty at the end, "
                f"{self.fit_time_:.1f} s",
                file=sys.stderr,
            )
        return self

    # ------------------------------------------------------------------ #
    def _scan(
        self,
        src: DataSource,
        batch_size: int,
        device: torch.device,
        spherical: bool,
        sample_idx: np.ndarray,
        offset: int,
    ) -> tuple[int, torch.Tensor]:
        """One pass: count non-finite rows (all ranks) and gather the seeding sample.

        ``sample_idx`` are sorted global row numbers; rows are numbered
        across ranks in rank order, so the sample is the same set of rows
        whatever the number of processes. Non-finite sampled rows are left
        out. Returns ``(n_nonfinite_global, sample [S', dim] on device)``.
        """
        rank, world = dist_info()
        pos_parts: list[np.ndarray] = []
        row_parts: list[torch.Tensor] = []
        n_bad = 0
        bar = progress_bar(total=src.n, desc="k-means: scan", enabled=self.verbose and src.kind == "stream", unit="row", leave=False)
        with bar:
            for start, x, keep in src.prepared(batch_size, device, normalize=spherical, drop_nonfinite=True):
                nb = x.shape[0] if keep is None else int(keep.shape[0])
                g0 = offset + start
                lo, hi = np.searchsorted(sample_idx, [g0, g0 + nb])
                local = sample_idx[lo:hi] - g0
                positions = np.arange(lo, hi)
                if keep is not None:
                    keep_np = keep.numpy()
                    n_bad += int((~keep_np).sum())
                    ok = keep_np[local]
                    where_in_x = np.cumsum(keep_np) - 1
                    local, positions = where_in_x[local[ok]], positions[ok]
                if local.size:
                    pos_parts.append(positions)
                    row_parts.append(x[torch.from_numpy(local).to(device)])
                bar.update(nb)
        dim = src.dim
        positions = np.concatenate(pos_parts) if pos_parts else np.zeros(0, dtype=np.int64)
        rows = torch.cat(row_parts) if row_parts else torch.zeros(0, dim, device=device)
        if world == 1:
            return n_bad, rows
        s = len(sample_idx)
        buf = torch.zeros(s, dim, dtype=torch.float32, device=device)
        valid = torch.zeros(s + 1, dtype=torch.float64, device=device)  # last slot: non-finite count
        if positions.size:
            p = torch.from_numpy(positions).to(device)
            buf[p] = rows
            valid[p] = 1.0
        valid[s] = float(n_bad)
        del rows
        all_reduce_(buf, valid)
        return int(valid[s].item()), buf[valid[:s] > 0]

    def _pass(
        self,
        src: DataSource,
        centers: torch.Tensor,
        scorer,
        batch_size: int,
        device: torch.device,
        spherical: bool,
        labels_out: np.ndarray | None = None,
    ) -> tuple[CenterStats, int]:
        """Assign every row; return this rank's float64 :class:`CenterStats` and its non-finite count."""
        k, d = centers.shape
        stats = CenterStats(k, d, device)
        n_bad = 0
        many = src.n > batch_size
        bar = progress_bar(total=src.n, desc="  assign", enabled=self.verbose and many, unit="row", leave=False)
        with bar:
            for start, x, keep in src.prepared(batch_size, device, normalize=spherical, drop_nonfinite=self.drop_nonfinite):
                lab = scorer.top1(x).to(device)
                stats.add(x, lab)
                nb = x.shape[0] if keep is None else int(keep.shape[0])
                if labels_out is not None:
                    lab_np = lab.cpu().numpy()
                    if keep is None:
                        labels_out[start : start + nb] = lab_np
                    else:
                        seg = labels_out[start : start + nb]
                        seg[keep.numpy()] = lab_np
                        n_bad += int((~keep).sum())
                bar.update(nb)
        return stats, n_bad

    # ------------------------------------------------------------------ #
    # checkpoints
    # ------------------------------------------------------------------ #
    def _save_checkpoint(
        self,
        folder: Path,
        fingerprint: dict,
        centers: torch.Tensor,
        iteration: int,
        n_repairs: int,
        rng: np.random.Generator,
        history: list[float],
        converged: bool,
    ) -> None:
        rank, _ = dist_info()
        if rank != 0:
            return
        _write_checkpoint(
            folder,
            {
                "format": _CKPT_FORMAT,
                "fingerprint": fingerprint,
                "iteration": iteration,
                "n_empty_repairs": n_repairs,
                "rng_state": _jsonable_rng_state(rng),
                "history": history,
                "converged": converged,
                "n_nonfinite": int(getattr(self, "n_nonfinite_", 0)),
            },
            centers.cpu().numpy(),
        )

    def _load_checkpoint(self, folder: Path, fingerprint: dict, device: torch.device) -> dict | None:
        rank, world = dist_info()
        meta = None
        centers_np = None
        if rank == 0:
            meta, centers_np = _read_checkpoint(folder)
            if meta is not None:
                old = meta.get("fingerprint", {})
                diff = {key: (old.get(key), val) for key, val in fingerprint.items() if old.get(key) != val}
                if diff:
                    meta = {"error": (
                        f"the checkpoint in {folder} belongs to a different run "
                        + ", ".join(f"{key}: {a!r} there, {b!r} now" for key, (a, b) in diff.items())
                        + "; use another checkpoint_dir, or resume=False to start afresh"
                    )}
        meta = broadcast_object(meta)
        if meta is None:
            return None
        if "error" in meta:
            raise ValueError(meta["error"])
        k, d = fingerprint["n_clusters"], fingerprint["dim"]
        centers = torch.empty(k, d, dtype=torch.float32, device=device)
        if rank == 0:
            centers.copy_(torch.from_numpy(centers_np))
        broadcast_(centers)
        meta["centers"] = centers
        return meta

    # ------------------------------------------------------------------ #
    # prediction
    # ------------------------------------------------------------------ #
    def _check_fitted(self) -> None:
        if not hasattr(self, "cluster_centers_"):
            raise RuntimeError("this KMeans is not fitted yet: call fit(X) first (or KMeans.load(folder))")

    def _predict_setup(self, X: Any):
        self._check_fitted()
        src = as_source(X)
        if src.dim != self.cluster_centers_.shape[1]:
            raise ValueError(
                f"{src.name} has {src.dim} features per row, but the centers have "
                f"{self.cluster_centers_.shape[1]}"
            )
        device = resolve_device(self.device, src)
        backend = resolve_backend(self.backend, device)
        precision = resolve_precision(self.precision, device, auto_cuda="tf32")
        centers = torch.from_numpy(np.ascontiguousarray(self.cluster_centers_, dtype=np.float32)).to(device)
        if self.spherical:
            centers = l2_normalize(centers)
        batch_size = int(self.batch_size or default_batch_size(src.dim, device))
        return src, device, backend, precision, centers, batch_size

    def predict(self, X: Any) -> np.ndarray:
        """Index of the nearest center of each row (int64; -1 for dropped non-finite rows)."""
        src, device, backend, precision, centers, bs = self._predict_setup(X)
        scorer = make_scorer(centers, backend=backend, spherical=bool(self.spherical), precision=precision)
        out = np.full(src.n, -1, dtype=np.int64)
        for start, x, keep in src.prepared(bs, device, normalize=bool(self.spherical), drop_nonfinite=self.drop_nonfinite):
            lab = scorer.top1(x).cpu().numpy()
            if keep is None:
                out[start : start + lab.shape[0]] = lab
            else:
                out[start : start + keep.shape[0]][keep.numpy()] = lab
        return out

    def fit_predict(self, X: Any, y: Any = None, *, resume: bool = False) -> np.ndarray:
        return self.fit(X, resume=resume).labels_

    def transform(self, X: Any) -> np.ndarray:
        """Float32 [N, K]: cosine similarities to the centers (spherical) or Euclidean distances.

        This materialises N x K; for large K use :func:`mlcd.assign_topk`.
        Rows dropped as non-finite are NaN.
        """
        src, device, backend, precision, centers, bs = self._predict_setup(X)
        k = centers.shape[0]
        out = np.full((src.n, k), np.nan, dtype=np.float32)
        c2 = (centers.double() ** 2).sum(1)
        for start, x, keep in src.prepared(bs, device, normalize=bool(self.spherical), drop_nonfinite=self.drop_nonfinite):
            if self.spherical:
                r = x @ centers.t()
            else:
                xd = x.double()
                r = ((xd * xd).sum(1, keepdim=True) + c2 - 2.0 * (xd @ centers.double().t())).clamp_min(0).sqrt()
            r = r.float().cpu().numpy()
            if keep is None:
                out[start : start + r.shape[0]] = r
            else:
                out[start : start + keep.shape[0]][keep.numpy()] = r
        return out

    def score(self, X: Any, y: Any = None) -> float:
        """Minus the k-means objective of ``X`` with the fitted centers (as scikit-learn)."""
        src, device, backend, precision, centers, bs = self._predict_setup(X)
        scorer = make_scorer(centers, backend=backend, spherical=bool(self.spherical), precision=precision)
        total = 0.0
        for _, x, _ in src.prepared(bs, device, normalize=bool(self.spherical), drop_nonfinite=self.drop_nonfinite):
            lab = scorer.top1(x).to(device)
            total += float(sq_dist_to(x, centers, lab).sum())
        return -total

    # ------------------------------------------------------------------ #
    # saving
    # ------------------------------------------------------------------ #
    def save(self, folder: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the centers folder (``centers.npy`` + ``centers.json``); see :func:`save_centers`."""
        from .centers import save_centers

        self._check_fitted()
        return save_centers(
            folder,
            self.cluster_centers_,
            spherical=bool(self.spherical),
            inertia=self.inertia_,
            n_iter=self.n_iter_,
            n_empty_repairs=self.n_empty_repairs_,
            sizes=self.cluster_sizes_,
            extra={
                "init": self.init_,
                "seed": int(self.seed),
                "backend": self.backend_,
                "device": self.device_,
                "n_nonfinite": int(self.n_nonfinite_),
                "objective_history": [float(v) for v in self.objective_history_],
            },
            overwrite=overwrite,
        )

    @classmethod
    def load(cls, folder: str | os.PathLike, **params: Any) -> "KMeans":
        """A fitted ``KMeans`` from a centers folder, ready for ``predict`` / ``transform``."""
        from .centers import load_centers

        centers, meta = load_centers(folder)
        params.setdefault("spherical", bool(meta["spherical"]))
        km = cls(int(meta["k"]), **params)
        km.cluster_centers_ = centers
        km.inertia_ = meta.get("inertia")
        km.n_iter_ = meta.get("iterations")
        km.n_empty_repairs_ = meta.get("repairs")
        sizes = meta.get("sizes")
        km.cluster_sizes_ = np.asarray(sizes, dtype=np.int64) if sizes is not None else None
        km.n_features_in_ = centers.shape[1]
        return km

    def __repr__(self) -> str:
        return f"KMeans(n_clusters={self.n_clusters}, spherical={self.spherical}, n_iter={self.n_iter}, init={self.init if isinstance(self.init, str) else 'array'!r})"


# --------------------------------------------------------------------------- #
# checkpoint files
# --------------------------------------------------------------------------- #
def _jsonable_rng_state(rng: np.random.Generator) -> dict:
    return json.loads(json.dumps(rng.bit_generator.state))


def _write_checkpoint(folder: Path, meta: dict, centers: np.ndarray) -> None:
    from mlcd._io import atomic_save_npy, atomic_write_json

    folder.mkdir(parents=True, exist_ok=True)
    name = f"kmeans-centers-{meta['iteration']:06d}.npy"
    sha, _ = atomic_save_npy(folder / name, centers)
    meta = dict(meta, centers_file=name, centers_sha256=sha)
    atomic_write_json(folder / _CKPT_STATE, meta)  # the commit point
    for p in folder.glob("kmeans-centers-*.npy"):
        if p.name != name:
            try:
                p.unlink()
            except OSError:
                pass


def _read_checkpoint(folder: Path) -> tuple[dict | None, np.ndarray | None]:
    from mlcd._io import sha256_file

    state_path = folder / _CKPT_STATE
    if not state_path.is_file():
        return None, None
    try:
        meta = json.loads(state_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the k-means checkpoint {state_path}: {e}") from None
    if meta.get("format") != _CKPT_FORMAT:
        raise ValueError(f"{state_path} is not a k-means checkpoint of this version (format {meta.get('format')!r})")
    cpath = folder / meta["centers_file"]
    if not cpath.is_file() or sha256_file(cpath) != meta["centers_sha256"]:
        raise ValueError(
            f"the k-means checkpoint in {folder} is damaged ({cpath.name} is missing or does not match "
            f"its checksum); delete the folder or pass resume=False"
        )
    centers = np.load(cpath, allow_pickle=False)
    return meta, np.ascontiguousarray(centers, dtype=np.float32)
