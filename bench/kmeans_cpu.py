"""CPU k-means benchmark: mlcd.KMeans against scikit-learn and faiss.

Part A  50,000 x 512 to K=1,000, 20 Lloyd iterations, one shared k-means++
        seeding: mlcd (faiss backend, and the torch backend on CPU) against
        scikit-learn ``KMeans(algorithm="lloyd")`` and bare ``faiss.Kmeans``,
        all started from the same centers. Time and inertia as ratios.
Part B  1,000,000 x 256 to K=10,000, two-level clustering with the same
        number of Lloyd iterations per level on both sides (``--n-iter``,
        default 25, faiss' own default): faiss
        ``contrib.clustering.two_level_clustering`` (its first level trains
        on at most 2000 rows per coarse center, its second level on every
        row of the group) against mlcd's two-level seeding given all rows
        (``init="two-level", init_sample_size=n, init_iter=n_iter``), whose
        first level is capped at 2000 rows per coarse center the same way.
        Optionally (``--full-iter M``) mlcd's default two-level (on its
        default sample) followed by M full Lloyd iterations on all rows.

Timing notes
- The seeding is timed apart and is not in the Lloyd times of part A.
- mlcd and scikit-learn end with an assignment pass to the final centers
  (labels and inertia); faiss does not. Part A therefore compares mlcd's
  *iterations only* with faiss and mlcd's *iterations + final pass* with
  scikit-learn; both numbers are in the JSON.
- Every inertia is the sum of squared distances of the rows to the nearest
  center, computed by one function for every method (exact float64
  rescoring of a faiss nearest-center search), outside the timings; in part B
  on all rows unless ``--inertia-rows`` picks a seeded subset (the same rows
  for every method). Each evaluation costs one n x K x d search.
- mlcd's seeding-only fit of part B still ends with its assignment pass
  (one n x K x d search); its time is reported apart
  (``time_with_final_assignment_s``) and not in ``time_s``.

Usage::

    python bench/kmeans_cpu.py            # full size (minutes on a 2-core machine)
    python bench/kmeans_cpu.py --quick    # a small variant, to check it runs
    python bench/kmeans_cpu.py --part a   # only part A
    python bench/kmeans_cpu.py --part b --n 50000 --k 500 --n-iter 10   # part B, small

Prints a table and writes JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def synthetic(n: int, d: int, n_modes: int, seed: int) -> np.ndarray:
    """A Gaussian mixture with unequal mode sizes and scales: clusterable, not trivial."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((n_modes, d)).astype(np.float32)
    weights = rng.dirichlet(np.full(n_modes, 2.0))
    lab = rng.choice(n_modes, size=n, p=weights)
    scale = rng.uniform(0.3, 0.8, size=n_modes).astype(np.float32)
    x = means[lab]
    x += rng.standard_normal((n, d), dtype=np.float32) * scale[lab, None]
    return x


def inertia(x: np.ndarray, centers: np.ndarray) -> float:
    """Exact sum of squared distances to the nearest center (faiss search, float64 rescoring)."""
    import faiss

    c = np.ascontiguousarray(centers, dtype=np.float32)
    index = faiss.IndexFlatL2(c.shape[1])
    index.add(c)
    total = 0.0
    for s in range(0, x.shape[0], 65536):
        xb = x[s : s + 65536]
        _, i = index.search(xb, 1)
        diff = xb.astype(np.float64) - c[i[:, 0]].astype(np.float64)
        total += float((diff * diff).sum())
    return total


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def machine_info(threads: int) -> dict:
    import faiss
    import sklearn
    import torch

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "sklearn": sklearn.__version__,
        "platform": platform.platform(),
        # other work on the machine distorts multi-threaded timings badly (threads
        # wait at every barrier for a descheduled sibling): check this is near 0
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def set_threads(n: int) -> None:
    import faiss
    import torch

    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)


def part_a(n: int, d: int, k: int, n_iter: int, seed: int, threads: int, with_torch: bool) -> dict:
    import faiss
    from sklearn.cluster import KMeans as SKKMeans
    from threadpoolctl import threadpool_limits

    from mlcd.cluster import KMeans

    x = synthetic(n, d, max(2 * k, 10), seed)
    seeding = KMeans(k, n_iter=0, init="k-means++", seed=seed, verbose=False)
    _, t_seed = timed(lambda: seeding.fit(x))
    init = seeding.cluster_centers_
    rows = {}

    km, t = timed(lambda: KMeans(k, n_iter=n_iter, init=init, backend="faiss", verbose=False).fit(x))
    rows["mlcd (faiss backend)"] = {
        "time_s": t,
        "time_iterations_s": km.timings_["iterations"],
        "time_final_assignment_s": km.timings_["final_assignment"],
        "iterations": km.n_iter_,
        "inertia": inertia(x, km.cluster_centers_),
        "inertia_reported": km.inertia_,
        "empty_repairs": km.n_empty_repairs_,
    }
    if with_torch:
        kt, t = timed(
            lambda: KMeans(k, n_iter=n_iter, init=init, backend="torch", device="cpu", verbose=False).fit(x)
        )
        rows["mlcd (torch backend, CPU)"] = {
            "time_s": t,
            "time_iterations_s": kt.timings_["iterations"],
            "time_final_assignment_s": kt.timings_["final_assignment"],
            "iterations": kt.n_iter_,
            "inertia": inertia(x, kt.cluster_centers_),
            "empty_repairs": kt.n_empty_repairs_,
        }

    with threadpool_limits(threads):
        sk, t = timed(lambda: SKKMeans(k, init=init, n_init=1, max_iter=n_iter, tol=0.0, algorithm="lloyd").fit(x))
    rows["scikit-learn KMeans (lloyd)"] = {
        "time_s": t,
        "iterations": int(sk.n_iter_),
        "inertia": inertia(x, sk.cluster_centers_),
        "inertia_reported": float(sk.inertia_),
    }

    fk = faiss.Kmeans(d, k, niter=n_iter, seed=seed, max_points_per_centroid=n, min_points_per_centroid=1)
    _, t = timed(lambda: fk.train(x, init_centroids=init))
    rows["faiss.Kmeans"] = {"time_s": t, "iterations": n_iter, "inertia": inertia(x, fk.centroids)}

    m = rows["mlcd (faiss backend)"]
    s = rows["scikit-learn KMeans (lloyd)"]
    f = rows["faiss.Kmeans"]
    ratios = {
        "time mlcd/sklearn (both with the final assignment)": m["time_s"] / s["time_s"],
        "inertia mlcd/sklearn": m["inertia"] / s["inertia"],
        "time mlcd/faiss (iterations only)": m["time_iterations_s"] / f["time_s"],
        "inertia mlcd/faiss": m["inertia"] / f["inertia"],
    }
    if with_torch:
        tt = rows["mlcd (torch backend, CPU)"]
        ratios["time mlcd-torch/sklearn"] = tt["time_s"] / s["time_s"]
        ratios["inertia mlcd-torch/mlcd-faiss"] = tt["inertia"] / m["inertia"]
    return {
        "config": {"n": n, "d": d, "k": k, "n_iter": n_iter, "seed": seed, "seeding": "mlcd k-means++"},
        "seeding_time_s": t_seed,
        "rows": rows,
        "ratios": ratios,
    }


@contextlib.contextmanager
def faiss_two_level_fixes(niter: int):
    """Two adjustments to ``faiss.Kmeans`` inside the block, for ``two_level_clustering``.

    1. Iterations: ``two_level_clustering`` gives its ``clustering_niter`` to
       the first level only; the second level is ``faiss.Kmeans(d, nc2,
       **args)`` with faiss' default of 25 iterations (and ``niter`` cannot
       go through ``args``: the first level already sets it). This sets the
       default, so both levels run ``niter`` iterations, as mlcd's do.
    2. Groups allotted no center: with ``rebalance=True`` (its default) a
       coarse group much smaller than average gets ``nc2 = 0`` centers, and
       faiss then fails in ``subsample_training_set``. Training 0 centers
       here gives an empty ``[0, d]`` array instead, which is what the
       allocation meant (the totals still add up to ``nc2``).
    Yields a dict counting the groups that got no center.
    """
    import faiss

    original = faiss.Kmeans
    info = {"groups_with_no_center": 0}

    class Kmeans(original):
        def __init__(self, d, k, **kwargs):
            kwargs.setdefault("niter", niter)
            super().__init__(d, k, **kwargs)

        def train(self, x, *args, **kwargs):
            if self.k == 0:
                info["groups_with_no_center"] += 1
                self.centroids = np.zeros((0, self.d), dtype=np.float32)
                self.iteration_stats = []
                return 0.0
            return super().train(x, *args, **kwargs)

    faiss.Kmeans = Kmeans
    try:
        yield info
    finally:
        faiss.Kmeans = original


def part_b(n: int, d: int, k: int, n_iter: int, full_iter: int, inertia_rows: int, seed: int) -> dict:
    from faiss.contrib.clustering import two_level_clustering

    from mlcd.cluster import KMeans

    x = synthetic(n, d, max(2 * k, 10), seed)
    k1 = int(round(np.sqrt(k)))
    # one inertia function, on one set of rows, for every method (outside the timings)
    if inertia_rows >= n:
        x_eval = x
    else:
        pick = np.sort(np.random.default_rng(seed + 1).choice(n, size=inertia_rows, replace=False))
        x_eval = np.ascontiguousarray(x[pick])
    rows = {}
    name_f = f"faiss two_level_clustering ({n_iter} it/level)"
    with faiss_two_level_fixes(n_iter) as info:
        (cf, _), t = timed(lambda: two_level_clustering(x, k1, k, clustering_niter=n_iter, seed=seed))
    assert cf.shape == (k, d), cf.shape
    rows[name_f] = {"time_s": t, "inertia": inertia(x_eval, cf), **info}

    km = KMeans(k, n_iter=0, init="two-level", init_sample_size=n, init_iter=n_iter, seed=seed, verbose=False)
    _, t = timed(lambda: km.fit(x))
    rows[f"mlcd two-level seeding ({n_iter} it/level, all rows)"] = {
        "time_s": km.timings_["seeding"],
        "time_with_final_assignment_s": t,
        "inertia": inertia(x_eval, km.cluster_centers_),
        "inertia_reported_all_rows": km.inertia_,
    }
    if full_iter > 0:
        km2 = KMeans(k, n_iter=full_iter, init="two-level", init_iter=n_iter, seed=seed, verbose=False)
        _, t = timed(lambda: km2.fit(x))
        rows[f"mlcd two-level (default sample, {n_iter} it/level) + {full_iter} full Lloyd it"] = {
            "time_s": km2.timings_["seeding"] + km2.timings_["iterations"],
            "time_with_final_assignment_s": t,
            "inertia": inertia(x_eval, km2.cluster_centers_),
            "inertia_reported_all_rows": km2.inertia_,
            "empty_repairs": km2.n_empty_repairs_,
        }
    base = rows[name_f]
    ratios = {f"{name} / faiss": {"time": r["time_s"] / base["time_s"], "inertia": r["inertia"] / base["inertia"]}
              for name, r in rows.items() if r is not base}
    return {
        "config": {
            "n": n, "d": d, "k": k, "k1": k1, "seed": seed, "iterations_per_level": n_iter,
            "full_lloyd_iterations": full_iter, "inertia_rows": int(x_eval.shape[0]),
        },
        "rows": rows,
        "ratios": ratios,
    }


def print_part(title: str, res: dict) -> None:
    print(f"\n{title}  {res['config']}")
    if "seeding_time_s" in res:
        print(f"  shared k-means++ seeding: {res['seeding_time_s']:.2f} s (not in the times below)")
    print(f"  {'method':58s} {'time s':>9s} {'iters':>6s} {'inertia':>16s}")
    for name, r in res["rows"].items():
        it = r.get("iterations", "")
        print(f"  {name:58s} {r['time_s']:9.2f} {it!s:>6s} {r['inertia']:16.6g}")
    print("  ratios:")
    for name, v in res["ratios"].items():
        if isinstance(v, dict):
            print(f"    {name}: time {v['time']:.3f}, inertia {v['inertia']:.5f}")
        else:
            print(f"    {name}: {v:.5f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, to check the script runs (seconds)")
    ap.add_argument("--part", choices=["a", "b", "both"], default="both")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for every library")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-torch", action="store_true", help="skip the torch-on-CPU row of part A")
    ap.add_argument("--n", type=int, default=None, help="rows (overrides the part's size)")
    ap.add_argument("--d", type=int, default=None, help="dimension")
    ap.add_argument("--k", type=int, default=None, help="clusters")
    ap.add_argument("--n-iter", type=int, default=None,
                    help="part A: Lloyd iterations; part B: iterations per level, the same for faiss and mlcd")
    ap.add_argument("--full-iter", type=int, default=None,
                    help="part B: also run mlcd's default two-level followed by this many full Lloyd "
                         "iterations (0: skip that row; each costs two passes of n x K x d)")
    ap.add_argument("--inertia-rows", type=int, default=None,
                    help="part B: evaluate every inertia on this many (seeded) rows (default: all rows)")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/kmeans_cpu[-quick]-DATE.json)")
    args = ap.parse_args(argv)

    set_threads(args.threads)
    if hasattr(os, "getloadavg") and os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1):
        print(f"warning: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs: other work "
              f"will distort the timings (see machine.load_average_at_start in the JSON)", file=sys.stderr)
    if args.quick:
        a_cfg = dict(n=10_000, d=128, k=100, n_iter=10)
        b_cfg = dict(n=100_000, d=64, k=1_000, n_iter=10, full_iter=1, inertia_rows=100_000)
    else:
        a_cfg = dict(n=50_000, d=512, k=1_000, n_iter=20)
        b_cfg = dict(n=1_000_000, d=256, k=10_000, n_iter=25, full_iter=0, inertia_rows=1_000_000)
    for cfg in (a_cfg, b_cfg):
        for key in ("n", "d", "k", "n_iter", "full_iter", "inertia_rows"):
            val = getattr(args, key)
            if val is not None and key in cfg:
                cfg[key] = val
    b_cfg["inertia_rows"] = min(b_cfg["inertia_rows"], b_cfg["n"])

    now = _dt.datetime.now().astimezone()
    result = {
        "benchmark": "kmeans_cpu",
        "quick": args.quick,
        "date": now.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(args.threads),
    }
    if args.part in ("a", "both"):
        result["part_a"] = part_a(**a_cfg, seed=args.seed, threads=args.threads, with_torch=not args.no_torch)
        print_part("Part A: Lloyd with a shared seeding", result["part_a"])
    if args.part in ("b", "both"):
        result["part_b"] = part_b(**b_cfg, seed=args.seed)
        print_part("Part B: large K, two-level", result["part_b"])

    out = args.out
    if out is None:
        tag = "-quick" if args.quick else ("" if args.part == "both" else f"-part{args.part}")
        out = ROOT / "bench" / "results" / f"kmeans_cpu{tag}-{now.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    from mlcd._io import atomic_write_json

    atomic_write_json(out, result)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
