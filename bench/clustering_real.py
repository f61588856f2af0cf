"""Every clustering method on frozen features of real images (issue 5, section 5).

An image encoder (``--encoder`` + ``--weights``; default ``builtin:convnet-32``
with ``--weights auto``: the trained encoder with the best kNN top-1 in the
newest ``bench/results/mlcd_cifar_cpu-*.json``, used even when it does not beat
its random init, which the JSON then says) embeds three labelled sets:

* CIFAR-10 test   (10,000 images, 10 classes)   ``shared/data/cifar10-jpeg.tar.gz`` subset test
* MNIST test      (10,000 images, 10 classes)   ``shared/data/mnist-test``
* Tiny-ImageNet val (10,000 images, 200 classes) ``shared/data/tinyimagenet200-val-jpeg.tar.gz``

Embeddings are cached under ``--cache`` (default ``/tmp/real/clustering_real``),
never in the repository. Then every method of
:func:`mlcd.methods.registry.available_methods` except ``tac`` / ``tac-notrain``
(TAC needs a joint image-text encoder such as CLIP, and no such weights exist
offline here), plus ``kmeans``, runs with its default options, K = number of
classes, seed 0, on CPU; it is fitted and scored on the same features
(``predict`` of the fitted features, :func:`mlcd.metrics.cluster_scores`: NMI,
ACC with Hungarian matching, ARI). Time = ``fit`` + ``predict`` wall seconds,
after a warm-up that pays one-off imports outside the timings (as
``bench/clustering_toy.py``). A method that runs past ``--timeout`` seconds
(default 300) is stopped (SIGALRM) and recorded as timed out.

Usage (one process, one thread; the machine is shared)::

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE \\
        .venv/bin/python bench/clustering_real.py
    .venv/bin/python bench/clustering_real.py --datasets cifar10 --methods scan,kmeans
    .venv/bin/python bench/clustering_real.py --weights random --tag random-init

Prints a table per data set and writes JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import signal
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
DATA = ROOT.parent / "shared" / "data"
DATASETS = {
    "cifar10": (str(DATA / "cifar10-jpeg.tar.gz"), {"subset": "test"}),
    "mnist": (str(DATA / "mnist-test"), {}),
    "tinyimagenet": (str(DATA / "tinyimagenet200-val-jpeg.tar.gz"), {}),
}
METRICS = ("acc", "nmi", "ari")
TEXT_METHODS = ("tac", "tac-notrain")
TEXT_REASON = ("TAC needs a joint image-text encoder (e.g. CLIP) for the WordNet noun embeddings; no such "
               "weights exist offline on this machine")

from clustering_toy import load_average, parse_sets, warm_up  # noqa: E402


class MethodTimeout(BaseException):  # not an Exception: a method's own "except Exception" must not swallow it
    pass


def _alarm(signum, frame):
    raise MethodTimeout()


def best_trained_encoder() -> tuple[str, dict]:
    """(weights path, note) of the best-kNN trained encoder of the newest mlcd_cifar_cpu result."""
    files = sorted((ROOT / "bench" / "results").glob("mlcd_cifar_cpu-*.json"), key=lambda p: p.stat().st_mtime)
    for f in reversed(files):
        d = json.loads(f.read_text())
        ev, tr = d.get("evaluation", {}), d.get("train", {})
        trained = [(ev[n]["knn_top1"], n) for n in tr if n in ev and "encoder_weights" in tr[n]]
        if not trained:
            continue
        knn, name = max(trained)
        base = ev.get("random_init", {}).get("knn_top1")
        note = {"from": str(f), "run": name, "knn_top1": knn, "random_init_knn_top1": base,
                "beats_random_init": bool(base is not None and knn > base)}
        if base is not None and knn <= base:
            note["note"] = "no trained encoder beat the random init by kNN; the best trained one is used anyway"
        return tr[name]["encoder_weights"], note
    raise SystemExit("--weights auto: no bench/results/mlcd_cifar_cpu-*.json with a trained encoder; "
                     "pass --weights PATH or --weights random")


def embedded(name: str, encoder, weights: str, cache: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    from mlcd.data import open_images
    from mlcd.embed import embed_images
    from mlcd.encoders import load

    key = weights
    if os.path.isfile(weights):
        st = os.stat(weights)
        key = f"{os.path.abspath(weights)}:{st.st_size}:{st.st_mtime_ns}"
    slug = hashlib.sha1(f"{encoder}|{key}".encode()).hexdigest()[:12]
    folder = cache / slug / name
    path, opts = DATASETS[name]
    src = open_images(path, **opts)
    t = time.perf_counter()
    model = load(encoder, weights=weights, device="cpu", seed=0)
    store = embed_images(src, model, folder, device="cpu", dtype="float32", progress=False)
    info = {"images": len(src), "classes": len(src.classes or []), "store": str(folder),
            "embed_s": round(time.perf_counter() - t, 2), "dim": int(store.as_array().shape[1])}
    return store.as_array().astype(np.float32), np.asarray(store.labels), info


def run_method(name: str, k: int, x: np.ndarray, y: np.ndarray, options: dict, timeout: int) -> dict:
    from mlcd.methods.registry import make_method
    from mlcd.metrics import cluster_scores

    est = make_method(name, k, seed=0, device="cpu", **options)
    load_before = load_average()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(int(timeout))
    t = time.perf_counter()
    try:
        est.fit(x)
        fit_s = time.perf_counter() - t
        pred = est.predict(x)
        total = time.perf_counter() - t
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    scores = cluster_scores(y, pred)
    out = {**{m: float(scores[m]) for m in METRICS}, "time_s": round(total, 2), "fit_s": round(fit_s, 2),
           "clusters_used": int(len(np.unique(pred))), "load_before": load_before, "load_after": load_average()}
    if hasattr(est, "timings_"):
        out["stages_s"] = {key: round(v, 3) for key, v in est.timings_.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--encoder", default="builtin:convnet-32")
    ap.add_argument("--weights", default="auto", help="a weights file, 'random', or 'auto' (see above)")
    ap.add_argument("--datasets", default=",".join(DATASETS), help=f"comma list of {list(DATASETS)}")
    ap.add_argument("--methods", default="all", help="comma list (default: every available method but TAC)")
    ap.add_argument("--set", action="append", default=[], metavar="METHOD:KEY=VALUE")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per method run before it is stopped")
    ap.add_argument("--cache", default="/tmp/real/clustering_real")
    ap.add_argument("--tag", default="")
    ap.add_argument("--no-save", action="store_true")
    a = ap.parse_args()

    import torch

    from mlcd.methods.registry import _canonical, available_methods, unavailable_methods

    weights, weights_note = a.weights, {}
    if a.weights == "auto":
        weights, weights_note = best_trained_encoder()
    avail = available_methods()
    if a.methods == "all":
        names = [m for m in avail if m not in TEXT_METHODS]
        if "kmeans" not in names:
            names.append("kmeans")
    else:
        names = [_canonical(m) for m in a.methods.split(",") if m.strip()]
    skipped = {m: TEXT_REASON for m in TEXT_METHODS if m in avail and m not in names}
    skipped.update(unavailable_methods())
    sets = {_canonical(k): v for k, v in parse_sets(a.set).items()}
    datasets = [d.strip() for d in a.datasets.split(",") if d.strip()]
    started = time.perf_counter()
    warm_up()
    print(f"clustering_real: encoder {a.encoder} weights {weights}; methods {names}; torch threads "
          f"{torch.get_num_threads()}, cpus {os.cpu_count()}; load {load_average()}", flush=True)
    for m, why in skipped.items():
        print(f"note: skipping {m}: {why}")

    out = {
        "benchmark": "clustering_real",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "encoder": a.encoder, "weights": weights, "weights_choice": weights_note,
        "protocol": "fit and score on the same features (predict of the fitted rows); K = number of classes; "
                    "seed 0; default options; cpu",
        "timeout_s": a.timeout,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                    "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")},
        "load_before": load_average(),
        "skipped": skipped,
        "datasets": {},
    }
    res_dir = ROOT / "bench" / "results"
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = res_dir / f"clustering_real{('-' + a.tag) if a.tag else ''}-{stamp}.json"

    def save() -> None:
        out["total_s"] = round(time.perf_counter() - started, 2)
        out["load_after"] = load_average()
        if not a.no_save:
            res_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(out, indent=1) + "\n")

    for ds in datasets:
        x, y, info = embedded(ds, a.encoder, weights, Path(a.cache))
        k = int(len(np.unique(y)))
        print(f"\n{ds}: {x.shape}, K={k}, embedded in {info['embed_s']:.1f} s", flush=True)
        results = {}
        out["datasets"][ds] = {"info": info, "k": k, "results": results}
        for name in names:
            try:
                r = run_method(name, k, x, y, sets.get(name, {}), a.timeout)
                print(f"  {name:<12} acc {r['acc']:.4f} nmi {r['nmi']:.4f} ari {r['ari']:.4f} "
                      f"time {r['time_s']:.1f} s  load {r['load_before'][:1]}->{r['load_after'][:1]}", flush=True)
            except MethodTimeout:
                r = {"error": f"timed out after {a.timeout} s (stopped)", "timed_out": True}
                print(f"  {name:<12} TIMED OUT after {a.timeout} s", flush=True)
            except Exception as e:  # noqa: BLE001 - one failing method must not stop the table
                r = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
                print(f"  {name:<12} FAILED {r['error']}", flush=True)
            results[name] = r
            save()

    for ds, d in out["datasets"].items():
        head = f"{'method':<13}{'ACC':>9}{'NMI':>9}{'ARI':>9}{'time (s)':>11}"
        print(f"\n{ds} ({d['info']['images']} images, K={d['k']}, embed {d['info']['embed_s']:.1f} s)\n"
              + head + "\n" + "-" * len(head))
        for name, r in d["results"].items():
            if "error" in r:
                print(f"{name:<13}  {r['error']}")
            else:
                print(f"{name:<13}{r['acc']:>9.4f}{r['nmi']:>9.4f}{r['ari']:>9.4f}{r['time_s']:>11.1f}")
    save()
    if not a.no_save:
        print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
