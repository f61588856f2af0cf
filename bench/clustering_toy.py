"""Every clustering method on the toy joint image / noun space, beside the official TAC.

Data: ``shared/golden/toy_joint_space.npz`` (20 classes in 10 look-alike pairs,
d = 64, 3,000 nouns of which 3 belong to each class; see the README beside it).
Protocol of ``toy_joint_space_reference.json``: fit on ``train_features``
(10,000 rows), score ``predict(test_features)`` (4,000 rows) with NMI / ACC
(Hungarian) / ARI; K = 20; TAC and ``tac-notrain`` get the npz's
``noun_features`` as ``noun_embeddings``. Every registered method
(:mod:`mlcd.methods.registry`) with its default options, plus ``tac-notrain``,
``tac``, ``tac-4heads`` (TAC with ``n_heads=4``: four head pairs, the
lowest-objective one predicts) and ``kmeans``; 5 seeds; mean +- population std (ddof 0, as the
reference). Time = ``fit`` + ``predict`` wall seconds of one run, after a
warm-up that pays the one-off imports (``torch._dynamo`` through the first
torch optimizer) outside every timing.

The official numbers: (a) spherical k-means on the test features, (b) TAC
without training, (c) trained TAC; their time is the sum of the official
steps' wall times from the reference file (k-means; filter-nouns k-means +
selection + retrieval + concat k-means; the same + neighbour mining + 20
epochs), on a 2-core CPU like this one.

Usage::

    python bench/clustering_toy.py                         # every available method, 5 seeds
    python bench/clustering_toy.py --methods tac,kmeans,tac-notrain --seeds 5
    python bench/clustering_toy.py --methods scan --seeds 0,3 --set scan:epochs=10

The machine is shared: every run records the load average before and after.
Prints a table and writes JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

# Idle OpenMP threads must not spin on a shared 2-core machine (see bench/tac_speed.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
GOLDEN = ROOT.parent / "shared" / "golden"
TOY = GOLDEN / "toy_joint_space.npz"
REFERENCE = GOLDEN / "toy_joint_space_reference.json"
METRICS = ("acc", "nmi", "ari")
TEXT_METHODS = ("tac", "tac-notrain")
#: bench rows that are a registered method with other options: name -> (method, options)
VARIANTS = {"tac-4heads": ("tac", {"n_heads": 4})}
#: reference entries shown beside ours
OFFICIAL = {"kmeans": "kmeans_image_only", "tac-notrain": "tac_no_train", "tac": "tac_trained",
            "tac-4heads": "tac_trained"}
OFFICIAL_STEPS = {
    "kmeans_image_only": ["kmeans_image_only"],
    "tac_no_train": ["filter_nouns_kmeans", "filter_nouns_select", "retrieve_text", "concat_kmeans"],
    "tac_trained": ["filter_nouns_kmeans", "filter_nouns_select", "retrieve_text", "train_head_mine_neighbors",
                    "train_head_train_20_epochs"],
}


def load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def official_reference(ref: dict) -> dict:
    out = {}
    wall = ref.get("wall_time_s") or ref.get("scores", {}).get("wall_time_s", {})
    for ours, key in OFFICIAL.items():
        sc = ref["scores"][key]
        entry = {m: {"mean": sc[m]["mean"], "std": sc[m]["std"]} for m in METRICS}
        steps = OFFICIAL_STEPS[key]
        if all(s in wall for s in steps):
            per_seed = np.sum([wall[s]["per_seed"] for s in steps], axis=0)
            entry["time_s"] = {"mean": float(per_seed.mean()), "std": float(per_seed.std()),
                               "steps": steps}
        out[ours] = {"reference": key, **entry}
    return out


def parse_seeds(text: str) -> list[int]:
    if "," in text:
        return [int(s) for s in text.split(",") if s.strip()]
    n = int(text)
    return list(range(n))


def parse_sets(items: list[str]) -> dict[str, dict]:
    """``["scan:epochs=10", "tac:n_init=3"]`` -> ``{"scan": {"epochs": 10}, "tac": {"n_init": 3}}``."""
    from mlcd.methods.commands import parse_method_options

    out: dict[str, dict] = {}
    for item in items:
        if ":" not in item:
            raise SystemExit(f"--set {item!r}: expected METHOD:KEY=VALUE")
        name, kv = item.split(":", 1)
        out.setdefault(name.strip().lower(), {}).update(parse_method_options([kv]))
    return out


def warm_up() -> None:
    """Pay one-off import costs outside the timings (first torch optimizer -> torch._dynamo)."""
    import torch

    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    import faiss  # noqa: F401
    import sklearn.metrics  # noqa: F401


def run_method(name: str, seed: int, data, options: dict) -> dict:
    from mlcd.methods.registry import make_method
    from mlcd.metrics import cluster_scores

    name, preset = VARIANTS.get(name, (name, {}))
    opts = {**preset, **options}
    if name in TEXT_METHODS:
        opts.setdefault("noun_embeddings", data["noun_features"])
    k = int(data["train_labels"].max()) + 1
    est = make_method(name, k, seed=seed, device="cpu", **opts)
    load_before = load_average()
    t = time.perf_counter()
    est.fit(data["train_features"])
    fit_s = time.perf_counter() - t
    pred = est.predict(data["test_features"])
    total = time.perf_counter() - t
    scores = cluster_scores(data["test_labels"], pred)
    out = {"seed": seed, **{m: float(scores[m]) for m in METRICS}, "time_s": total, "fit_s": fit_s,
           "load_before": load_before, "load_after": load_average()}
    if hasattr(est, "timings_"):
        out["stages_s"] = {key: round(v, 3) for key, v in est.timings_.items()}
    return out


def summarize(runs: list[dict]) -> dict:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {}
    s = {}
    for m in (*METRICS, "time_s"):
        v = np.array([r[m] for r in ok], dtype=np.float64)
        s[m] = {"mean": float(v.mean()), "std": float(v.std()), "per_seed": [round(float(x), 4) for x in v]}
    return s


def fmt(entry: dict | None, m: str, digits: int = 3) -> str:
    if not entry or m not in entry:
        return "-"
    return f"{entry[m]['mean']:.{digits}f} ± {entry[m]['std']:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default="all",
                    help="comma-separated registry names (default: every available method)")
    ap.add_argument("--seeds", default="5", help="a count (5 -> seeds 0..4) or a comma list (0,3)")
    ap.add_argument("--set", action="append", default=[], metavar="METHOD:KEY=VALUE",
                    help="an option for one method, e.g. scan:epochs=10 (repeatable)")
    ap.add_argument("--data", default=str(TOY))
    ap.add_argument("--tag", default="")
    ap.add_argument("--no-save", action="store_true")
    a = ap.parse_args()

    import torch

    from mlcd.methods.registry import _canonical, available_methods, unavailable_methods

    seeds = parse_seeds(a.seeds)
    sets = {(k if k in VARIANTS else _canonical(k)): v for k, v in parse_sets(a.set).items()}
    avail = available_methods()
    if a.methods == "all":
        names = list(avail)
        names[names.index("tac") + 1 : names.index("tac") + 1] = [v for v in VARIANTS if VARIANTS[v][0] in avail]
    else:
        names = [m.strip() if m.strip() in VARIANTS else _canonical(m) for m in a.methods.split(",") if m.strip()]
        missing = [m for m in names if VARIANTS.get(m, (m,))[0] not in avail]
        if missing:
            raise SystemExit(f"not available here: {missing}; available: {avail}")
    for m, why in unavailable_methods().items():
        if a.methods == "all" or m in names:
            print(f"note: skipping {m}: {why}")

    data = dict(np.load(a.data))
    ref = json.loads(REFERENCE.read_text()) if REFERENCE.is_file() else None
    official = official_reference(ref) if ref else {}
    warm_up()
    print(f"toy joint space: train {data['train_features'].shape}, test {data['test_features'].shape}, "
          f"K={int(data['train_labels'].max()) + 1}; seeds {seeds}; torch threads {torch.get_num_threads()}, "
          f"cpus {os.cpu_count()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; load {load_average()}")

    results: dict[str, dict] = {}
    for name in names:
        runs = []
        for s in seeds:
            try:
                r = run_method(name, s, data, sets.get(name, {}))
                print(f"  {name:<12} seed {s}: acc {r['acc']:.4f} nmi {r['nmi']:.4f} ari {r['ari']:.4f} "
                      f"time {r['time_s']:.2f} s  load {r['load_before'][:1]}->{r['load_after'][:1]}", flush=True)
            except Exception as e:  # noqa: BLE001 - one failing method must not stop the table
                r = {"seed": s, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
                print(f"  {name:<12} seed {s}: FAILED {r['error']}", flush=True)
            runs.append(r)
        opts = {**VARIANTS.get(name, (name, {}))[1], **sets.get(name, {})}
        results[name] = {"options": {k: repr(v) for k, v in opts.items()}, "runs": runs,
                         "summary": summarize(runs)}

    # table
    head = f"{'method':<13}{'ACC':>17}{'NMI':>17}{'ARI':>17}{'time (s)':>17}"
    print("\n" + head + "\n" + "-" * len(head))
    for name in names:
        s = results[name]["summary"]
        if not s:
            print(f"{name:<13}  failed: {results[name]['runs'][0].get('error')}")
            continue
        print(f"{name:<13}{fmt(s, 'acc'):>17}{fmt(s, 'nmi'):>17}{fmt(s, 'ari'):>17}{fmt(s, 'time_s', 2):>17}")
        if name in official:
            o = official[name]
            print(f"{'  official':<13}{fmt(o, 'acc'):>17}{fmt(o, 'nmi'):>17}{fmt(o, 'ari'):>17}"
                  f"{fmt(o, 'time_s', 2):>17}")
    for name in ("tac", *VARIANTS):
        if name in results and results[name]["summary"] and name in official:
            ours, off = results[name]["summary"], official[name]
            print(f"\nTAC goal ({name}): mean ACC {ours['acc']['mean']:.4f} vs official {off['acc']['mean']:.4f} "
                  f"({'met' if ours['acc']['mean'] >= off['acc']['mean'] else 'NOT met'}); time "
                  f"{ours['time_s']['mean']:.2f} s vs official {off.get('time_s', {}).get('mean', float('nan')):.2f} s")

    out = {
        "benchmark": "clustering_toy",
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "data": a.data,
        "seeds": seeds,
        "protocol": "fit on train_features, score predict(test_features); K = 20; mean and population std",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")},
        "unavailable": unavailable_methods(),
        "official": official,
        "results": results,
    }
    if not a.no_save:
        res_dir = ROOT / "bench" / "results"
        res_dir.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = res_dir / f"clustering_toy{('-' + a.tag) if a.tag else ''}-{stamp}.json"
        path.write_text(json.dumps(out, indent=1) + "\n")
        print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
