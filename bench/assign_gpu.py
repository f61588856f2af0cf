"""GPU benchmark of the clustering engine: top-k assignment and one k-means iteration.

What it measures (the GPU rows of the clustering issue):

(a) ``mlcd.assign_topk``: the top-8 centers of N=2,000,000 rows of d=512 among
    K=1,000,000 centers (cosine scores, the default precision: bf16 products
    with float32 output, 2k candidates re-ranked in float32). Its rate is
    ``2 * N * K * d / time`` in TFLOP/s, shown beside
    - the card's bf16 matmul rate, measured in the same run (a loop of square
      bf16 ``torch.matmul`` products), and the assignment's share of it (the
      issue asks for at least 60 %);
    - a plain torch baseline: per tile of rows, one bf16 matmul against all K
      centers, then ``torch.topk``.
    Both are also checked against an exact float32 top-8 on a sample of rows
    (recall), and against each other (rows whose index lists differ).
(b) one full ``mlcd.KMeans`` iteration (assignment to the nearest of K
    centers + the float64 center update) for N=10,000,000 rows, K=100,000,
    d=256, with the default CUDA precision (tf32 products): the
    ``timings_["iterations"]`` of a 1-iteration fit started from K given
    rows (the fit's scan and final assignment pass are reported apart).

All data are made on the device, in chunks, from a seeded generator: rows
are noisy copies of random centers, so each row has real near neighbours.

Usage::

    python bench/assign_gpu.py                                  # full size, on CUDA
    python bench/assign_gpu.py --device cpu --scale tiny        # smoke test (< 1 min)
    python bench/assign_gpu.py --skip-kmeans                    # only part (a)

Prints a table and writes JSON under bench/results/ (device name, torch
version, date, sizes, times, rates).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SCALES = {
    # assign: N rows, K centers, d, top-k; kmeans: N, K, d; matmul: square size
    "full": dict(n=2_000_000, k=1_000_000, d=512, topk=8, km_n=10_000_000, km_k=100_000, km_d=256, mm=8192),
    "small": dict(n=200_000, k=100_000, d=512, topk=8, km_n=1_000_000, km_k=10_000, km_d=256, mm=8192),
    "tiny": dict(n=20_000, k=5_000, d=128, topk=8, km_n=50_000, km_k=500, km_d=64, mm=1024),
}


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} logical CPUs)"
    except OSError:
        pass
    return platform.processor() or "cpu"


def make_centers(k: int, d: int, device: torch.device, gen: torch.Generator, chunk: int = 1 << 18) -> torch.Tensor:
    """K random unit vectors, float32 [k, d], made in chunks on the device."""
    c = torch.empty(k, d, dtype=torch.float32, device=device)
    for s in range(0, k, chunk):
        e = min(s + chunk, k)
        c[s:e] = torch.randn(e - s, d, device=device, generator=gen)
    c /= c.norm(dim=1, keepdim=True)
    return c


def make_rows(n: int, means: torch.Tensor, noise: float, device: torch.device, gen: torch.Generator,
              chunk: int = 1 << 18) -> torch.Tensor:
    """N rows, float32 [n, d]: a random one of ``means`` plus Gaussian noise of norm about ``noise``."""
    k, d = means.shape
    x = torch.empty(n, d, dtype=torch.float32, device=device)
    scale = noise / d ** 0.5
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        pick = torch.randint(0, k, (e - s,), device=device, generator=gen)
        x[s:e] = means[pick] + scale * torch.randn(e - s, d, device=device, generator=gen)
    return x


def matmul_rate(device: torch.device, size: int, dtype: torch.dtype, seconds: float = 2.0) -> dict:
    """TFLOP/s of a loop of square ``size`` x ``size`` products in ``dtype``."""
    g = torch.Generator(device=device).manual_seed(123)
    a = torch.randn(size, size, device=device, generator=g).to(dtype)
    b = torch.randn(size, size, device=device, generator=g).to(dtype)
    for _ in range(3):  # warm-up (cuBLAS heuristics, clocks)
        torch.matmul(a, b)
    _, t1 = timed(lambda: torch.matmul(a, b), device)
    reps = max(3, min(1000, int(seconds / max(t1, 1e-6))))

    def loop():
        for _ in range(reps):
            torch.matmul(a, b)

    _, t = timed(loop, device)
    return {"size": size, "dtype": str(dtype).replace("torch.", ""), "reps": reps, "time_s": t,
            "tflops": 2 * size**3 * reps / t / 1e12}


def baseline_topk(x: torch.Tensor, c: torch.Tensor, k: int, dtype: torch.dtype, row_tile: int) -> torch.Tensor:
    """Plain torch: per tile of rows, one product with all centers in ``dtype``, then ``torch.topk``."""
    cm = c.to(dtype)
    out = torch.empty(x.shape[0], k, dtype=torch.int64, device=x.device)
    with torch.no_grad():
        for s in range(0, x.shape[0], row_tile):
            scores = x[s : s + row_tile].to(dtype) @ cm.t()
            out[s : s + row_tile] = torch.topk(scores, k, dim=1).indices
    return out


def exact_topk(x: torch.Tensor, c: torch.Tensor, k: int, center_chunk: int = 1 << 16) -> torch.Tensor:
    """Exact float32 top-k (no TF32), merging chunks of centers: the reference for the recall."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        best_v = best_i = None
        for s in range(0, c.shape[0], center_chunk):
            v, i = torch.topk(x @ c[s : s + center_chunk].t(), min(k, c.shape[0] - s), dim=1)
            i = i + s
            if best_v is not None:
                v, i = torch.cat([best_v, v], 1), torch.cat([best_i, i], 1)
                v, j = torch.topk(v, k, dim=1)
                i = i.gather(1, j)
            best_v, best_i = v, i
        return best_i
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def recall(found: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean share of each row's reference top-k that ``found`` also holds."""
    hit = (found.unsqueeze(2) == ref.unsqueeze(1)).any(dim=1)
    return float(hit.float().mean())


def mismatches(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Rows whose index lists differ: in order, and as sets."""
    differ = (a != b).any(dim=1)
    a_s, _ = a.sort(dim=1)
    b_s, _ = b.sort(dim=1)
    differ_set = (a_s != b_s).any(dim=1)
    return {"rows_order_differs": int(differ.sum()), "rows_set_differs": int(differ_set.sum()), "rows": int(a.shape[0])}


# --------------------------------------------------------------------------- #
# (a) top-k assignment
# --------------------------------------------------------------------------- #
def bench_assign(cfg: dict, device: torch.device, seed: int, mm: dict, check_rows: int) -> dict:
    from mlcd import assign_topk

    n, k, d, topk = cfg["n"], cfg["k"], cfg["d"], cfg["topk"]
    gen = torch.Generator(device=device).manual_seed(seed)
    centers = make_centers(k, d, device, gen)
    x = make_rows(n, centers, noise=1.0, device=device, gen=gen)
    x /= x.norm(dim=1, keepdim=True)
    on_gpu = device.type == "cuda"
    dtype = torch.bfloat16 if on_gpu else torch.float32  # the product dtype on each side
    flop = 2.0 * n * k * d
    kw = dict(spherical=True, progress=False, backend="torch")  # torch: the GPU code path, also on CPU

    warm = x[: min(n, 4096)]
    assign_topk(warm, centers, topk, **kw)  # warm-up: kernels, cuBLAS heuristics
    (idx, _), t_mlcd = timed(lambda: assign_topk(x, centers, topk, **kw), device)

    row_tile = max(1, min(n, (1 << 31) // (k * 2)))  # a [row_tile, K] bf16 score tile of about 2 GiB
    baseline_topk(warm, centers, topk, dtype, row_tile)
    base_idx, t_base = timed(lambda: baseline_topk(x, centers, topk, dtype, row_tile), device)

    m = min(check_rows, n)
    ref = exact_topk(x[:m], centers, topk)
    out = {
        "config": {"n": n, "k": k, "d": d, "topk": topk, "seed": seed, "spherical": True,
                   "mlcd_precision": "bf16 (float32 output, 2k candidates re-ranked in float32)" if on_gpu else "fp32",
                   "baseline": f"per {row_tile} rows: {str(dtype).replace('torch.', '')} matmul with all K, torch.topk"},
        "mlcd_assign_topk": {"time_s": t_mlcd, "tflops": flop / t_mlcd / 1e12,
                             "pct_of_matmul": 100 * flop / t_mlcd / 1e12 / mm["tflops"],
                             "recall_vs_exact_fp32": recall(idx[:m], ref)},
        "plain_torch_baseline": {"time_s": t_base, "tflops": flop / t_base / 1e12,
                                 "pct_of_matmul": 100 * flop / t_base / 1e12 / mm["tflops"],
                                 "recall_vs_exact_fp32": recall(base_idx[:m], ref)},
        "mlcd_vs_baseline_indices": mismatches(idx, base_idx),
        "recall_sample_rows": m,
        "speedup_vs_baseline": t_base / t_mlcd,
    }
    del x, centers, idx, base_idx, ref
    return out


# --------------------------------------------------------------------------- #
# (b) one k-means iteration
# --------------------------------------------------------------------------- #
def bench_kmeans(cfg: dict, device: torch.device, seed: int) -> dict:
    from mlcd import KMeans

    n, k, d = cfg["km_n"], cfg["km_k"], cfg["km_d"]
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    means = make_centers(2 * k, d, device, gen)
    x = make_rows(n, means, noise=0.5, device=device, gen=gen)
    del means
    pick = torch.randperm(n, device=device, generator=gen)[:k]
    init = x[pick].clone()
    backend = "torch"
    KMeans(min(k, 64), n_iter=1, init=init[:64].clone() if k >= 64 else init, backend=backend,
           verbose=False).fit(x[: min(n, 65536)])  # warm-up
    km, t = timed(lambda: KMeans(k, n_iter=1, init=init, backend=backend, verbose=False).fit(x), device)
    it = km.timings_["iterations"]
    return {
        "config": {"n": n, "k": k, "d": d, "seed": seed, "precision": km.precision_, "backend": km.backend_,
                   "init": "k random rows"},
        "iteration_s": it,
        "iteration_assignment_tflops": 2.0 * n * k * d / it / 1e12,
        "scan_s": km.timings_["seeding"],
        "final_assignment_s": km.timings_["final_assignment"],
        "fit_total_s": t,
        "inertia": km.inertia_,
        "empty_repairs": km.n_empty_repairs_,
    }


# --------------------------------------------------------------------------- #
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    ap.add_argument("--scale", choices=sorted(SCALES), default="full")
    ap.add_argument("--n", type=int, help="assignment rows (overrides the scale)")
    ap.add_argument("--k", type=int, help="assignment centers")
    ap.add_argument("--d", type=int, help="assignment dimension")
    ap.add_argument("--km-n", type=int, help="k-means rows")
    ap.add_argument("--km-k", type=int, help="k-means centers")
    ap.add_argument("--km-d", type=int, help="k-means dimension")
    ap.add_argument("--skip-assign", action="store_true")
    ap.add_argument("--skip-kmeans", action="store_true")
    ap.add_argument("--check-rows", type=int, default=4096, help="rows checked against an exact float32 top-k")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (cpu device)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available here; run with --device cpu --scale tiny for a smoke test", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = dict(SCALES[args.scale])
    for key in ("n", "k", "d", "km_n", "km_k", "km_d"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)

    now = _dt.datetime.now().astimezone()
    result = {
        "benchmark": "assign_gpu",
        "date": now.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "scale": args.scale,
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    mm_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    mm = matmul_rate(device, cfg["mm"], mm_dtype)
    result["matmul"] = mm
    print(f"{result['device_name']}  torch {torch.__version__}  {result['date']}")
    print(f"  {mm['dtype']} matmul {mm['size']}^2: {mm['tflops']:.3g} TFLOP/s")

    if not args.skip_assign:
        a = bench_assign(cfg, device, args.seed, mm, args.check_rows)
        result["assign"] = a
        c = a["config"]
        print(f"\n(a) top-{c['topk']} of N={c['n']:,} x d={c['d']} among K={c['k']:,} centers")
        print(f"  {'method':34s} {'time s':>9s} {'TFLOP/s':>9s} {'% matmul':>9s} {'recall@' + str(c['topk']):>10s}")
        for name, key in (("mlcd.assign_topk", "mlcd_assign_topk"), ("plain torch (matmul + topk)", "plain_torch_baseline")):
            r = a[key]
            print(f"  {name:34s} {r['time_s']:9.2f} {r['tflops']:9.3g} {r['pct_of_matmul']:8.1f}% {r['recall_vs_exact_fp32']:10.4f}")
        mmx = a["mlcd_vs_baseline_indices"]
        print(f"  rows whose top-{c['topk']} differ between the two: {mmx['rows_set_differs']} as sets, "
              f"{mmx['rows_order_differs']} in order (of {mmx['rows']:,}); recall on {a['recall_sample_rows']} rows")
    if not args.skip_kmeans:
        b = bench_kmeans(cfg, device, args.seed)
        result["kmeans_iteration"] = b
        c = b["config"]
        print(f"\n(b) one k-means iteration, N={c['n']:,}, K={c['k']:,}, d={c['d']} ({c['backend']}, {c['precision']})")
        print(f"  iteration (assignment + update): {b['iteration_s']:.2f} s "
              f"({b['iteration_assignment_tflops']:.3g} TFLOP/s for the assignment products)")
        print(f"  around it: scan {b['scan_s']:.2f} s, final assignment {b['final_assignment_s']:.2f} s, "
              f"fit {b['fit_total_s']:.2f} s")

    out = args.out
    if out is None:
        tag = f"{args.scale}-{device.type}"
        out = ROOT / "bench" / "results" / f"assign_gpu-{tag}-{now.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
