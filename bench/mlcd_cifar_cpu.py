"""MLCD vs single-label (UNICOM-style softmax) vs MLC on CIFAR-10, scaled down for one CPU thread.

The issue asks for H100 runs; this is a small, honest CPU version of the same
comparison, on a 2-core shared machine with no GPU:

1. round-1 encoder ``builtin:convnet-32``, ``weights="random"`` (seed 0); embed a
   seeded subset of the CIFAR-10 train split (``--n-train``, default 20,000 of
   50,000: a 5,000-image trial embedded at ~255 img/s and trained at ~95 img/s on
   one thread of this shared machine, so 50,000 would leave under one epoch per
   10-minute run and cost ~3.5 min per embedding of the bank) with
   :func:`mlcd.embed.embed_images`;
2. spherical k-means (:func:`mlcd.cluster.run_cluster`) into ``--k`` clusters
   (default 200 = N/100) and top-8 labels (:func:`mlcd.cluster.run_label`), once,
   shared by every run;
3. training runs with :func:`mlcd.train.run_train` from the same random init
   (same seed), same epochs / batch 256 / lr / sample_ratio 0.1:
   ``softmax`` with 1 label per image, ``mlcd`` with 8, ``mlc`` with 8
   (``--runs``; ``--set KEY=VALUE`` adds a TrainConfig option to every run, for
   a variant);
4. the random-init encoder and every trained encoder embed the bank (the train
   subset) and the 10,000 test images, scored with
   :func:`mlcd.pipeline.evaluate_embeddings`: kNN top-1 (k=20, T=0.07), linear
   probe top-1, spherical k-means cluster NMI / ACC / ARI with K = 10.

Every stage's wall time, the load average before and after, the machine, torch
threads and version are recorded. The decoded CIFAR-10 arrays, the stores and
the runs live under ``--work`` (default ``/tmp/real/mlcd_cifar_cpu``), never in
the repository; a rerun of the same command reuses whatever stage is complete
(stores resume, training resumes). Prints a table and writes
``bench/results/mlcd_cifar_cpu[-TAG]-<timestamp>.json``.

Usage (one thread, idle threads passive; the machine is shared)::

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE \\
        .venv/bin/python bench/mlcd_cifar_cpu.py --n-train 20000 --k 200 --epochs 3
    # a variant: 10k subset, more epochs, no hue jitter / grayscale
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE \\
        .venv/bin/python bench/mlcd_cifar_cpu.py --n-train 10000 --k 100 --epochs 6 \\
        --set hue_jitter=0.0 --set grayscale_prob=0.0 --tag variant
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
DATA = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
ENCODER = "builtin:convnet-32"
RUNS = {"softmax": ("softmax", 1), "mlcd": ("mlcd", 8), "mlc": ("mlc", 8)}


def load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except Exception:  # noqa: BLE001
        return ""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def decoded(work: Path, subset: str) -> Path:
    """CIFAR-10 ``subset`` decoded once from the shared tar into a uint8 npz under ``work``."""
    from mlcd.data import open_images

    path = work / f"cifar10-{subset}.npz"
    if path.is_file():
        return path
    src = open_images(str(DATA), subset=subset)
    n = len(src)
    images = np.zeros((n, 32, 32, 3), np.uint8)
    labels = np.zeros(n, np.int64)
    for i, rec in enumerate(src):
        images[i] = np.asarray(rec.image.convert("RGB"))
        labels[i] = rec.label
    tmp = work / f".cifar10-{subset}.tmp.npz"
    np.savez(tmp, images=images, labels=labels, classes=np.array(src.classes))
    tmp.rename(path)
    return path


def train_subset(work: Path, full: Path, n: int, seed: int) -> Path:
    if n <= 0:
        return full
    path = work / f"cifar10-train-sub{n}-seed{seed}.npz"
    if path.is_file():
        return path
    z = np.load(full)
    if n > len(z["labels"]):
        raise SystemExit(f"--n-train {n}: the train split has only {len(z['labels'])} images")
    idx = np.sort(np.random.default_rng(seed).choice(len(z["labels"]), n, replace=False))
    tmp = work / f".sub{n}.tmp.npz"
    np.savez(tmp, images=z["images"][idx], labels=z["labels"][idx], classes=z["classes"], indices=idx)
    tmp.rename(path)
    return path


class Timer:
    def __init__(self, stages: dict, name: str):
        self.stages, self.name = stages, name

    def __enter__(self):
        self.t = time.perf_counter()
        self.load = load_average()
        return self

    def __exit__(self, *exc):
        self.stages[self.name] = {"s": round(time.perf_counter() - self.t, 2), "load_before": self.load,
                                  "load_after": load_average()}
        print(f"  [{self.name}] {self.stages[self.name]['s']:.1f} s, load {self.load[:1]} -> "
              f"{self.stages[self.name]['load_after'][:1]}", flush=True)


def evaluate(tag: str, weights: str, bank_src, test_src, work: Path, stages: dict, seed: int) -> dict:
    from mlcd.embed import embed_images
    from mlcd.encoders import load
    from mlcd.pipeline import evaluate_embeddings

    model = load(ENCODER, weights=weights, device="cpu", seed=seed)
    with Timer(stages, f"{tag}: embed bank ({len(bank_src)})"):
        bank = embed_images(bank_src, model, work / "eval" / tag / "bank", device="cpu", dtype="float32",
                            progress=False)
    with Timer(stages, f"{tag}: embed test ({len(test_src)})"):
        test = embed_images(test_src, model, work / "eval" / tag / "test", device="cpu", dtype="float32",
                            progress=False)
    with Timer(stages, f"{tag}: evaluate"):
        scores = evaluate_embeddings(bank.as_array(), bank.labels, test.as_array(), test.labels, seed=seed)
    print(f"  {tag}: " + ", ".join(f"{k}={v:.4f}" for k, v in scores.items()), flush=True)
    return scores


def parse_value(text: str):
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if "," in text:
        return tuple(float(v) for v in text.split(","))
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-train", type=int, default=20000, help="seeded train subset size (0 = all 50,000)")
    ap.add_argument("--k", type=int, default=200, help="k-means clusters (about N/100)")
    ap.add_argument("--topk", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--sample-ratio", type=float, default=0.1)
    ap.add_argument("--runs", default="softmax,mlcd,mlc", help=f"comma list of {list(RUNS)}")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra TrainConfig option for every run (repeatable), e.g. hue_jitter=0.0")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/tmp/real/mlcd_cifar_cpu")
    ap.add_argument("--tag", default="")
    ap.add_argument("--no-save", action="store_true")
    a = ap.parse_args()

    import torch

    from mlcd.cluster import run_cluster, run_label
    from mlcd.data import open_images
    from mlcd.train import run_train

    extra = {}
    for item in a.set:
        key, _, value = item.partition("=")
        extra[key.strip()] = parse_value(value.strip())
    runs = [r.strip() for r in a.runs.split(",") if r.strip()]
    bad = [r for r in runs if r not in RUNS]
    if bad:
        raise SystemExit(f"--runs: unknown {bad}; choose from {list(RUNS)}")

    sub = f"n{a.n_train or 50000}-k{a.k}-e{a.epochs}" + (f"-{a.tag}" if a.tag else "")
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    run_dir = work / sub
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    out = {
        "benchmark": "mlcd_cifar_cpu",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "gpu": torch.cuda.is_available(),
                    "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                    "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
                    "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")},
        "uptime_before": uptime(),
        "config": {"encoder": ENCODER, "weights": "random", "seed": a.seed, "n_train": a.n_train or 50000,
                   "n_test": 10000, "k": a.k, "topk": a.topk, "epochs": a.epochs, "batch_size": a.batch_size,
                   "lr": a.lr, "sample_ratio": a.sample_ratio, "extra_train_options": extra,
                   "eval": "bank = train subset embeddings, queries = test split; kNN k=20 T=0.07; "
                           "linear probe; spherical k-means K=10 on test features",
                   "work": str(run_dir)},
        "stages_s": {},
        "train": {},
        "evaluation": {},
    }
    stages = out["stages_s"]
    print(f"mlcd_cifar_cpu: {out['machine']['cpu']}, {os.cpu_count()} cpus, torch {torch.__version__} "
          f"threads {torch.get_num_threads()}; {out['uptime_before']}", flush=True)

    res_dir = ROOT / "bench" / "results"
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = res_dir / f"mlcd_cifar_cpu{('-' + a.tag) if a.tag else ''}-{stamp}.json"

    def save() -> None:
        out["total_s"] = round(time.perf_counter() - started, 2)
        if not a.no_save:
            res_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(out, indent=1, default=str) + "\n")

    with Timer(stages, "decode CIFAR-10 to npz (cached)"):
        full = decoded(work, "train")
        test_npz = decoded(work, "test")
        train_npz = train_subset(work, full, a.n_train, a.seed)
    bank_src = open_images(str(train_npz))
    test_src = open_images(str(test_npz))
    print(f"train {len(bank_src)} images ({train_npz.name}), test {len(test_src)}", flush=True)

    # round 1: random-init encoder, its embeddings are the clustering input and the baseline
    out["evaluation"]["random_init"] = evaluate("random_init", "random", bank_src, test_src, work / sub, stages,
                                                a.seed)
    save()
    from mlcd.store import EmbeddingStore

    emb = EmbeddingStore.open(run_dir / "eval" / "random_init" / "bank")
    centers, labels = run_dir / "centers", run_dir / "labels"
    with Timer(stages, f"spherical k-means K={a.k}"):
        if not (centers / "centers.json").is_file():
            out["cluster"] = run_cluster(emb, a.k, centers, spherical=True, seed=a.seed, device="cpu", verbose=False)
    with Timer(stages, f"top-{a.topk} labels"):
        if not (labels / "manifest.json").is_file():
            out["label"] = run_label(emb, centers, a.topk, labels, device="cpu", verbose=False)
    save()

    for name in runs:
        loss, l = RUNS[name]
        print(f"train {name}: loss={loss} labels_per_image={l} epochs={a.epochs}", flush=True)
        try:
            with Timer(stages, f"{name}: train"):
                summary = run_train(
                    str(train_npz), str(labels), str(run_dir / f"train-{name}"), resume=True, verbose=False,
                    encoder=ENCODER, weights="random", loss=loss, labels_per_image=l, sample_ratio=a.sample_ratio,
                    epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed, device="cpu",
                    checkpoint_every=0, **extra)
            out["train"][name] = {k: v for k, v in summary.items()}
            print(f"  {name}: {summary.get('steps')} steps, {summary.get('images_per_s')} img/s, loss "
                  f"{summary.get('first_epoch_loss'):.3f} -> {summary.get('final_loss'):.3f}", flush=True)
            out["evaluation"][name] = evaluate(name, summary["encoder_weights"], bank_src, test_src, work / sub,
                                               stages, a.seed)
        except Exception as e:  # noqa: BLE001 - one failing run must not lose the others
            out["train"][name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            print(f"  {name}: FAILED {type(e).__name__}: {e}", flush=True)
        save()

    out["uptime_after"] = uptime()
    cols = ("knn_top1", "linear_probe_top1", "cluster_nmi", "cluster_acc", "cluster_ari")
    head = f"{'encoder':<14}" + "".join(f"{c:>19}" for c in cols) + f"{'train s':>10}{'img/s':>8}"
    print("\n" + head + "\n" + "-" * len(head))
    for tag, sc in out["evaluation"].items():
        tr = out["train"].get(tag, {})
        print(f"{tag:<14}" + "".join(f"{sc.get(c, float('nan')):>19.4f}" for c in cols)
              + f"{tr.get('train_seconds', float('nan')):>10.1f}{tr.get('images_per_s', float('nan')):>8.1f}")
    print(f"\nload: {out['uptime_before']}\n   -> {out['uptime_after']}")
    save()
    if not a.no_save:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
