"""``mlcd demo``: MLCD end to end on the built-in ``builtin:shapes`` scenes, in a few minutes on a CPU.

The stages are the library's own, called in order (what ``mlcd pipeline`` does,
with the clustering shared by the two training runs so they differ only in
their labels and loss):

1. generate scenes: a training set and a separately seeded evaluation set;
2. embed the training scenes with a randomly initialised ``builtin:convnet``;
3. spherical k-means into ``k`` centers and the top-8 centers of every image;
4. train the same network from the same random start twice: single-label
   cluster discrimination (l = 1, margin softmax) and MLCD (l = 8);
5. evaluate the random network and both trained ones on the evaluation set:
   kNN top-1 for the main object (and for its shape and its colour alone), the
   multi-label mAP over the 36 (shape, colour) pairs present in a scene, and
   the NMI of k-means clusters against the main object.

Colour is half of what a class means here, so the colour jitter keeps hues and
never turns images grey. Everything is written under ``out``; ``results.json``
holds every number printed.
"""

from __future__ import annotations

import time
from pathlib import Path

from mlcd._io import atomic_write_json

__all__ = ["run_demo", "DEMO_ENCODER"]

DEMO_ENCODER = "builtin:convnet"

#: (tag, loss, labels per image) of the two training runs
RUNS = (("l=1 softmax", "softmax", 1), ("l=8 mlcd", "mlcd", 8))
TOPK = 8


def run_demo(
    out: str | Path = "mlcd-demo",
    *,
    n_images: int = 3000,
    n_eval: int = 1000,
    image_size: int = 32,
    k: int = 300,
    epochs: int = 10,
    batch_size: int = 128,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> dict:
    """Run the demo and return its results (also written to ``out/results.json``).

    ``n_images`` training scenes are clustered into ``k`` centers (at most
    ``n_images // 2``) and each trained for ``epochs`` epochs; ``n_eval`` scenes of another seed are
    the kNN queries and the mAP test set.
    """
    from rich.console import Console

    from mlcd.cluster import run_cluster, run_label
    from mlcd.data import open_images
    from mlcd.embed import embed_images
    from mlcd.encoders import load
    from mlcd.train import run_train

    if n_images < 100:
        raise ValueError(f"n_images={n_images}: the demo needs at least 100 scenes")
    if n_eval < 20:
        raise ValueError(f"n_eval={n_eval}: the evaluation needs at least 20 scenes")
    k = max(2, min(int(k), n_images // 2))
    console = Console(quiet=not progress)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    encoder_spec = f"{DEMO_ENCODER}?image_size={image_size}"

    def embed(model, images, folder: str):
        return embed_images(images, model, out / folder, dtype="float32", progress=progress, overwrite=True)

    console.print(f"[bold]1/5[/] generating builtin:shapes: {n_images} training and {n_eval} evaluation "
                  f"scenes of {image_size}px")
    train_images = open_images("builtin:shapes", n=n_images, size=image_size, seed=seed)
    eval_images = open_images("builtin:shapes", n=n_eval, size=image_size, seed=seed + 1_000_003)

    console.print(f"[bold]2/5[/] embedding with {encoder_spec} (random weights)")
    t = time.perf_counter()
    initial = load(encoder_spec, weights="random", device=device, seed=seed)
    train_store = embed(initial, train_images, "embeddings")
    timings["embed"] = time.perf_counter() - t

    console.print(f"[bold]3/5[/] spherical k-means into {k} centers, top-{TOPK} centers per image")
    t = time.perf_counter()
    run_cluster(train_store, k, out / "centers", spherical=True, seed=seed, device=device, verbose=False)
    run_label(train_store, out / "centers", TOPK, out / "labels", device=device, verbose=False)
    timings["cluster_and_label"] = time.perf_counter() - t

    trained = {}
    for i, (tag, loss, labels_per_image) in enumerate(RUNS, 1):
        console.print(f"[bold]4/5[/] training run {i}/{len(RUNS)}: {tag} ({epochs} epochs)")
        t = time.perf_counter()
        folder = out / f"train-l{labels_per_image}-{loss}"
        summary = run_train(
            train_images, out / "labels", folder, overwrite=True, verbose=progress, encoder=encoder_spec,
            weights="random", labels_per_image=labels_per_image, loss=loss, sample_ratio=1.0, epochs=epochs,
            batch_size=batch_size, seed=seed, device=device, hue_jitter=0.0, grayscale_prob=0.0,
            crop_scale=(0.5, 1.0), checkpoint_every=0,
        )
        trained[tag] = (folder / "encoder.pt", summary)
        timings[f"train {tag}"] = time.perf_counter() - t

    console.print("[bold]5/5[/] evaluating the random and the trained encoders")
    t = time.perf_counter()
    evaluation = {"random init": _evaluate(initial, train_store, embed(initial, eval_images, "eval/random-init"),
                                           seed=seed)}
    for i, (tag, (weights, _)) in enumerate(trained.items()):
        model = load(encoder_spec, weights=str(weights), device=device)
        folder = f"eval/{tag.replace(' ', '-').replace('=', '')}"
        evaluation[tag] = _evaluate(model, embed(model, train_images, folder + "/train"),
                                    embed(model, eval_images, folder + "/test"), seed=seed)
    timings["evaluate"] = time.perf_counter() - t

    results = {
        "data": {"train": train_images.spec, "eval": eval_images.spec},
        "encoder": encoder_spec,
        "k": k,
        "topk": TOPK,
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
        "evaluation": evaluation,
        "training": {tag: {key: s.get(key) for key in ("first_epoch_loss", "final_loss", "steps", "images_per_s")}
                     for tag, (_, s) in trained.items()},
        "timings_s": {name: round(value, 2) for name, value in timings.items()},
        "seconds": round(time.perf_counter() - started, 2),
    }
    atomic_write_json(out / "results.json", results)
    _print_table(evaluation, n_eval=n_eval, seconds=results["seconds"])
    print(f"results: {(out / 'results.json').resolve()}")
    return results


COLUMNS = (
    ("knn_top1", "kNN main object"),
    ("knn_shape", "kNN shape"),
    ("knn_colour", "kNN colour"),
    ("multilabel_map", "mAP (36 pairs)"),
    ("cluster_nmi", "k-means NMI"),
)


def _evaluate(model, train_store, test_store, *, seed: int) -> dict[str, float]:
    """The demo's scores of one encoder: bank = training scenes, queries = evaluation scenes."""
    from mlcd.data import COLOUR_NAMES
    from mlcd.metrics import knn_accuracy
    from mlcd.pipeline import evaluate_embeddings

    a, b = train_store.as_array(), test_store.as_array()
    ya, yb = train_store.labels, test_store.labels
    scores = evaluate_embeddings(a, ya, b, yb, train_multilabel=train_store.multilabels,
                                 test_multilabel=test_store.multilabels, seed=seed, linear_probe=False)
    n_colours = len(COLOUR_NAMES)
    # shape-major classes: shape = label // 6, colour = label % 6
    scores["knn_shape"] = float(knn_accuracy(a, ya // n_colours, b, yb // n_colours, k=20, temperature=0.07))
    scores["knn_colour"] = float(knn_accuracy(a, ya % n_colours, b, yb % n_colours, k=20, temperature=0.07))
    return {name: round(float(scores[name]), 4) for name, _ in COLUMNS if name in scores}


def _print_table(evaluation: dict[str, dict[str, float]], *, n_eval: int, seconds: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"builtin:shapes, {n_eval} evaluation scenes (36 main-object classes; chance 0.028)",
                  caption=f"{seconds:.0f} s in all")
    table.add_column("encoder")
    for _, title in COLUMNS:
        table.add_column(title, justify="right")
    base = evaluation.get("random init", {})
    for tag, scores in evaluation.items():
        cells = []
        for name, _ in COLUMNS:
            value = scores.get(name)
            if value is None:
                cells.append("-")
                continue
            delta = "" if tag == "random init" or name not in base else f" ({value - base[name]:+.3f})"
            cells.append(f"{value:.3f}{delta}")
        table.add_row(tag, *cells)
    Console().print(table)

