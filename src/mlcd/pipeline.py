"""``mlcd pipeline``: embed -> cluster -> label -> train, for R rounds, then evaluate.

MLCD's "iterative cluster assignment and classification": each round embeds
the images with the current encoder, clusters the embeddings, gives every
image its ``topk`` nearest centers as labels and trains a new encoder on them;
the next round starts from that encoder. Every stage is the library function
of its own command, writes into its own folder under ``out`` and is skipped
when its output is already complete, so a killed pipeline started again with
the same arguments continues where it stopped.

Layout of ``out``::

    round-1/embeddings  round-1/centers  round-1/labels  round-1/train
    round-2/...
    eval/<encoder tag>/{train,test}      embeddings used for evaluation
    results.json                         the evaluation of every encoder
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from mlcd._io import atomic_write_json

__all__ = ["run_pipeline", "evaluate_embeddings"]


def evaluate_embeddings(
    train_x: np.ndarray,
    train_y: np.ndarray | None,
    test_x: np.ndarray,
    test_y: np.ndarray | None,
    *,
    train_multilabel: np.ndarray | None = None,
    test_multilabel: np.ndarray | None = None,
    n_clusters: int | None = None,
    seed: int = 0,
    linear_probe: bool = True,
) -> dict[str, float]:
    """Score frozen features: kNN and linear-probe top-1, cluster scores, multi-label mAP.

    ``train_*`` is the bank / probe training split, ``test_*`` the queries. Cluster
    scores come from spherical k-means with as many clusters as classes on the
    test features. mAP (when multi-label ground truth is given) is that of a
    one-vs-rest logistic regression fitted on the train features.
    """
    from mlcd.cluster import KMeans
    from mlcd.metrics import cluster_scores, knn_accuracy, linear_probe_accuracy

    scores: dict[str, float] = {}
    if train_y is not None and test_y is not None:
        scores["knn_top1"] = float(knn_accuracy(train_x, train_y, test_x, test_y, k=20, temperature=0.07))
        if linear_probe:
            scores["linear_probe_top1"] = float(linear_probe_accuracy(train_x, train_y, test_x, test_y, seed=seed))
        k = n_clusters or int(len(np.unique(test_y)))
        if k <= len(test_x):
            assignment = KMeans(k, spherical=True, seed=seed, verbose=False).fit_predict(test_x)
            scores.update({f"cluster_{name}": value for name, value in cluster_scores(test_y, assignment).items()})
    if train_multilabel is not None and test_multilabel is not None:
        scores["multilabel_map"] = _multilabel_map(train_x, train_multilabel, test_x, test_multilabel)
    return scores


def _multilabel_map(train_x, train_m, test_x, test_m) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from mlcd.metrics import mean_average_precision

    scaler = StandardScaler().fit(train_x)
    a, b = scaler.transform(train_x), scaler.transform(test_x)
    scores = np.zeros(test_m.shape, dtype=np.float64)
    for c in range(train_m.shape[1]):
        y = train_m[:, c].astype(bool)
        if y.all() or not y.any():  # a constant class has nothing to learn
            scores[:, c] = float(y.mean())
            continue
        model = LogisticRegression(C=0.1, max_iter=300).fit(a, y)
        scores[:, c] = model.decision_function(b)
    return float(mean_average_precision(test_m.astype(bool), scores))


def run_pipeline(
    source: Any,
    out: str | Path,
    *,
    encoder: str = "builtin:resnet18-32",
    weights: str | None = "random",
    eval_source: Any = None,
    rounds: int = 1,
    k: int = 100,
    topk: int = 8,
    loss: str = "mlcd",
    sample_ratio: float = 0.1,
    epochs: int = 10,
    batch_size: int = 256,
    train_options: dict | None = None,
    embed_batch_size: int = 256,
    seed: int = 0,
    device: str = "auto",
    linear_probe: bool = True,
    progress: bool = True,
) -> dict:
    """Run ``rounds`` of embed -> cluster -> label -> train on ``source``, then evaluate.

    ``encoder``/``weights`` give round 1's encoder (a pretrained model for real
    use; ``"random"`` to start from scratch). The trained backbone of round r is
    round r+1's encoder. ``eval_source`` (labelled images, e.g. a test split) is
    embedded with the first and with every trained encoder and scored with
    :func:`evaluate_embeddings` against ``source``'s own labels, when both have
    labels. Returns (and writes to ``out/results.json``) the evaluations and the
    per-round summaries.
    """
    from mlcd.cluster import run_cluster, run_label
    from mlcd.data import open_images
    from mlcd.embed import embed_images
    from mlcd.encoders import load
    from mlcd.store import EmbeddingStore, LabelStore
    from mlcd.train import run_train

    if rounds < 1:
        raise ValueError(f"rounds={rounds}: give at least 1 round")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    source = open_images(source)
    eval_source = open_images(eval_source) if eval_source is not None else None
    started = time.perf_counter()

    def say(message: str) -> None:
        if progress:
            print(message, flush=True)

    def embedded(images, model, folder: Path) -> EmbeddingStore:
        return embed_images(images, model, folder, batch_size=embed_batch_size, dtype="float32",
                            progress=progress, device=device)

    evaluations: dict[str, dict] = {}

    def evaluate(tag: str, model, train_store: EmbeddingStore) -> None:
        if eval_source is None:
            return
        test_store = embedded(eval_source, model, out / "eval" / tag)
        evaluations[tag] = evaluate_embeddings(
            train_store.as_array(), _known(train_store.labels), test_store.as_array(), _known(test_store.labels),
            train_multilabel=train_store.multilabels, test_multilabel=test_store.multilabels,
            seed=seed, linear_probe=linear_probe,
        )
        say(f"evaluation of {tag}: " + ", ".join(f"{name}={value:.3f}" for name, value in evaluations[tag].items()))

    round_weights = weights
    rounds_done: list[dict] = []
    for r in range(1, rounds + 1):
        folder = out / f"round-{r}"
        say(f"round {r}/{rounds}: embed with {encoder} ({'round ' + str(r - 1) + ' weights' if r > 1 else weights})")
        model = load(encoder, weights=round_weights, device=device, seed=seed)
        emb = embedded(source, model, folder / "embeddings")
        if r == 1:
            evaluate("initial", model, emb)

        centers = folder / "centers"
        if not (centers / "centers.json").is_file():
            say(f"round {r}: k-means into {k} clusters")
            run_cluster(emb, k, centers, spherical=True, seed=seed + r - 1, device=device, verbose=progress)
        labels = folder / "labels"
        if not _complete(LabelStore, labels):
            say(f"round {r}: top-{topk} labels")
            run_label(emb, centers, topk, labels, device=device, verbose=progress)

        say(f"round {r}: train {encoder} with the {loss} loss on {topk} labels per image")
        summary = run_train(
            source, labels, folder / "train", resume=True, verbose=progress, encoder=encoder,
            weights=round_weights, labels_per_image=topk, loss=loss, sample_ratio=sample_ratio, epochs=epochs,
            batch_size=batch_size, seed=seed, device=device, **(train_options or {}),
        )
        rounds_done.append({"round": r, "weights": round_weights, "train": summary})
        round_weights = str(folder / "train" / "encoder.pt")

    say("embed with the trained encoder")
    model = load(encoder, weights=round_weights, device=device, seed=seed)
    final = embedded(source, model, out / f"round-{rounds + 1}" / "embeddings")
    evaluate("trained", model, final)

    results = {
        "source": source.spec,
        "eval_source": eval_source.spec if eval_source is not None else None,
        "encoder": encoder,
        "rounds": rounds,
        "k": k,
        "topk": topk,
        "loss": loss,
        "sample_ratio": sample_ratio,
        "epochs": epochs,
        "seed": seed,
        "evaluation": evaluations,
        "round_summaries": rounds_done,
        "final_weights": round_weights,
        "seconds": round(time.perf_counter() - started, 2),
    }
    atomic_write_json(out / "results.json", _jsonable(results))
    return results


def _known(labels: np.ndarray | None) -> np.ndarray | None:
    """Labels when every row has one (-1 marks an unknown label), else None."""
    if labels is None or (labels < 0).any():
        return None
    return labels


def _complete(store_class, folder: Path) -> bool:
    if not (folder / "manifest.json").is_file():
        return False
    try:
        return bool(store_class.open(folder).complete)
    except Exception:  # noqa: BLE001 - anything unreadable is redone by its stage
        return False


def _jsonable(value):
    return json.loads(json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
