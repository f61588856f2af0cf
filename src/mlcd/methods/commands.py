"""What ``mlcd fit`` does, as a plain function returning a summary dict.

``mlcd fit EMB_STORE --method tac --k 10 [--nouns wordnet|FILE]
[--text-encoder SPEC --weights PATH | --noun-embeddings FILE.npy] --out DIR``
clusters the embeddings of a store with one of the registered methods
(:mod:`mlcd.methods.registry`) and writes to ``DIR``:

``assignments.npy``      int64 ``[N]``: each row's cluster (-1 for a row left out as non-finite)
``probabilities.npy``    float32 ``[N, K]``: ``predict_proba`` of each row (zeros for a left-out row)
``cluster_names.json``   TAC only: the nouns that name each cluster, with their scores and sizes
``scores.json``          when the store has class labels: NMI / ACC / ARI (:func:`mlcd.metrics.cluster_scores`)
``summary.json``         what was run (method, options, sizes, loss per epoch, the chosen head, time, checksums); written last

Everything about the input is checked before the (possibly long) fit, and
nothing is written before the fit has succeeded. Each file is written
atomically (:mod:`mlcd._io`) and ``summary.json``, which lists the others with
their SHA-256, comes last: a folder without ``summary.json`` holds no finished
result. Replacing a finished result (``overwrite=True``) first removes the old
``summary.json``, so a run killed half-way never leaves old and new files
looking like one result.
"""

from __future__ import annotations

import ast
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["run_fit", "parse_method_options", "FIT_FILES", "SUMMARY_FILE"]

SUMMARY_FILE = "summary.json"
#: every file ``run_fit`` may write (the summary last)
FIT_FILES = ("assignments.npy", "probabilities.npy", "cluster_names.json", "scores.json", SUMMARY_FILE)
_TAC_NAMES = ("tac", "tac-notrain")
_INSTALL_WORDNET = "`sudo apt-get install wordnet-base` (Debian/Ubuntu) or `make setup`"


def parse_method_options(items: Sequence[str] | None) -> dict:
    """``["epochs=5", "lr=1e-3", "hidden_dim=None"]`` -> ``{"epochs": 5, "lr": 0.001, "hidden_dim": None}``.

    For the command line's repeatable ``--set KEY=VALUE``. Values are read as
    Python literals (numbers, True/False/None, tuples, quoted strings) and
    otherwise kept as strings; ``-`` in keys becomes ``_``.
    """
    out: dict[str, Any] = {}
    for item in items or ():
        if "=" not in item:
            raise ValueError(f"method option {item!r} is not KEY=VALUE (e.g. --set epochs=10)")
        key, raw = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if not key.isidentifier():
            raise ValueError(f"method option name {key!r} (from {item!r}) is not a valid name")
        raw = raw.strip()
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            low = raw.lower()
            value = {"true": True, "false": False, "none": None, "null": None}.get(low, raw)
        out[key] = value
    return out


# --------------------------------------------------------------------------- #
# input
# --------------------------------------------------------------------------- #
def _load_input(emb_store: Any) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """``(X float32 [N, d], labels int64 [N] or None, info)`` from a store, a store folder, a .npy file or an array."""
    from mlcd.store import EmbeddingStore

    if isinstance(emb_store, np.ndarray):
        X = emb_store
        return _as_2d(X, "the input array"), None, {"embeddings": "<array>", "encoder": None}
    if isinstance(emb_store, EmbeddingStore):
        st = emb_store
    else:
        path = Path(emb_store)
        if path.is_file() and path.suffix == ".npy":
            X = np.load(path, mmap_mode="r", allow_pickle=False)
            return _as_2d(np.asarray(X), str(path)), None, {"embeddings": str(path), "encoder": None}
        if not path.exists():
            raise FileNotFoundError(
                f"embedding store {path} does not exist: give a folder written by `mlcd embed` (or a .npy array)"
            )
        from mlcd.cluster.store_io import open_embedding_store

        st = open_embedding_store(path)
    if not st.complete:
        raise ValueError(
            f"the embedding store {st.path} is incomplete (its writer did not finish): finish it first "
            f"(rerun `mlcd embed` with the same arguments to resume)"
        )
    X = st.as_array(np.float32)
    labels = st.labels
    if labels is not None and not (np.asarray(labels) >= 0).any():
        labels = None
    return _as_2d(X, str(st.path)), labels, {"embeddings": str(st.path), "encoder": st.encoder,
                                              "classes": st.classes}


def _as_2d(X: np.ndarray, what: str) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{what} must hold a 2-D [N, d] array of embeddings, got shape {X.shape}")
    if not np.issubdtype(X.dtype, np.floating):
        raise ValueError(f"{what} holds {X.dtype} values; embeddings must be floats")
    return np.ascontiguousarray(X, dtype=np.float32)


def _load_noun_embeddings(noun_embeddings: Any) -> tuple[np.ndarray, str]:
    if isinstance(noun_embeddings, (str, os.PathLike)):
        p = Path(noun_embeddings)
        if not p.is_file():
            raise FileNotFoundError(f"--noun-embeddings {p} does not exist (give an [M, d] float .npy file)")
        try:
            arr = np.load(p, allow_pickle=False)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"--noun-embeddings {p} is not a readable .npy array: {e}") from None
        src = str(p)
    else:
        arr, src = np.asarray(noun_embeddings), "<array>"
    if arr.ndim != 2 or arr.shape[0] < 1 or not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"noun embeddings ({src}) must be a float [M, d] array, got {arr.dtype} {arr.shape}")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr).all(axis=1)).sum())
        raise ValueError(f"noun embeddings ({src}) hold NaN or inf in {bad} rows")
    return np.ascontiguousarray(arr, dtype=np.float32), src


def _count_lines(path: Path) -> int:
    from mlcd.methods.tac import read_nouns

    return len(read_nouns(path))


def _tac_options(key: str, n_dim: int, nouns: Any, text_encoder: Any, text_weights: Any, noun_embeddings: Any,
                 info: dict) -> tuple[dict, dict]:
    """Check TAC's text inputs before the fit; return (constructor options, summary fields)."""
    opts: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    nouns_is_wordnet = isinstance(nouns, str) and nouns.strip().lower() == "wordnet"
    if not nouns_is_wordnet and isinstance(nouns, (str, os.PathLike)) and not Path(nouns).is_file():
        raise FileNotFoundError(
            f"--nouns {nouns}: no such file; give 'wordnet' or a UTF-8 text file with one noun per line"
        )
    if noun_embeddings is not None:
        if text_encoder is not None:
            raise ValueError("give either --text-encoder or --noun-embeddings, not both")
        emb, src = _load_noun_embeddings(noun_embeddings)
        if emb.shape[1] != n_dim:
            raise ValueError(
                f"noun embeddings ({src}) have width {emb.shape[1]} but the image embeddings have {n_dim}: "
                f"the nouns must be embedded by the text tower of the model that embedded the images"
            )
        if not nouns_is_wordnet:
            n_names = _count_lines(Path(nouns)) if isinstance(nouns, (str, os.PathLike)) else len(list(nouns))
            if n_names != emb.shape[0]:
                raise ValueError(
                    f"--nouns gives {n_names} nouns but the noun embeddings ({src}) have {emb.shape[0]} rows; "
                    f"they must match line for row"
                )
        opts["noun_embeddings"] = emb
        meta["noun_embeddings"] = {"source": src, "shape": list(emb.shape)}
    elif text_encoder is None:
        hint = ""
        enc = info.get("encoder")
        spec = enc.get("spec") if isinstance(enc, dict) else enc if isinstance(enc, str) else None
        if spec:
            hint = f" (the images were embedded with {spec!r})"
        raise ValueError(
            f"--method {key} needs text embeddings of the nouns in the image space{hint}: pass "
            f"--text-encoder SPEC (the text tower of the model that embedded the images, e.g. "
            f"open_clip:ViT-B-32) with --weights PATH for local weights, or --noun-embeddings FILE.npy "
            f"(an [M, d] array; add --nouns FILE, one noun per line, for their names)"
        )
    else:
        opts["text_encoder"] = text_encoder
        opts["text_encoder_weights"] = text_weights
        meta["text_encoder"] = str(text_encoder)
        meta["text_weights"] = None if text_weights is None else str(text_weights)
        if nouns_is_wordnet:
            from mlcd.text.wordnet import WORDNET_ENV, WordNetNotFoundError, default_wordnet_dir

            if default_wordnet_dir() is None:
                raise WordNetNotFoundError(
                    f"--nouns wordnet: the WordNet noun database (data.noun) is not installed (looked in "
                    f"${WORDNET_ENV} and /usr/share/wordnet). Install it with {_INSTALL_WORDNET}, set "
                    f"${WORDNET_ENV} to a folder holding WordNet 3.0's data.noun, or pass --nouns FILE "
                    f"(one noun per line)"
                )
    opts["nouns"] = nouns if nouns_is_wordnet or not isinstance(nouns, os.PathLike) else str(nouns)
    meta["nouns"] = "wordnet" if nouns_is_wordnet else (str(nouns) if isinstance(nouns, (str, os.PathLike))
                                                        else f"<{len(list(nouns))} strings>")
    return opts, meta


# --------------------------------------------------------------------------- #
# output
# --------------------------------------------------------------------------- #
def _heads_summary(est) -> dict:
    """Multi-head methods (SCAN, SPICE, TEMI, TAC): which head predicts, and what chose it."""
    out = {"n_heads": int(np.asarray(est.head_losses_).size), "selected": int(est.best_head_),
           "last_epoch_loss": _jsonable([float(v) for v in np.asarray(est.head_losses_)])}
    if getattr(est, "head_inertia_", None) is not None:
        out["joint_space_inertia"] = _jsonable([float(v) for v in np.asarray(est.head_inertia_)])
        out["selected_by"] = est.head_selection
    return out


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (bool, type(None), str)):
        return v
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, np.ndarray):
        return f"<array {v.dtype} {list(v.shape)}>"
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    return repr(v)


def _size_stats(sizes: np.ndarray) -> dict:
    return {"min": int(sizes.min()), "max": int(sizes.max()), "mean": float(sizes.mean()),
            "empty": int((sizes == 0).sum())}


def _cluster_names(est, sizes: np.ndarray) -> dict:
    names = getattr(est, "cluster_names_", None) or []
    scores = getattr(est, "cluster_name_scores_", None)
    clusters = []
    for c, row in enumerate(names):
        sc = [] if scores is None else [_jsonable(float(s)) for s in np.asarray(scores)[c][: len(row)]]
        clusters.append({"cluster": c, "size": int(sizes[c]) if c < sizes.size else 0, "names": list(row),
                         "scores": sc})
    return {
        "clusters": clusters,
        "selected_nouns": list(getattr(est, "selected_nouns_", []) or []),
        "how": "each cluster's nouns that set it apart from its most similar cluster, most characteristic first "
               "(see mlcd.methods.tac.TAC._name_clusters); an empty cluster has no scores",
    }


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a folder")
    if out.is_dir():
        present = [f for f in FIT_FILES if (out / f).exists()]
        if present and not overwrite:
            raise FileExistsError(
                f"{out} already holds a result ({', '.join(present)}); pass overwrite=True (--overwrite) "
                f"to replace it, or choose another folder"
            )


def _clear_previous(out: Path) -> None:
    """Remove a previous result, the summary first (so a partial state is never taken for a finished one)."""
    from mlcd._io import fsync_dir

    for name in (SUMMARY_FILE, *[f for f in FIT_FILES if f != SUMMARY_FILE]):
        p = out / name
        if p.exists():
            p.unlink()
            if name == SUMMARY_FILE:
                fsync_dir(out)


# --------------------------------------------------------------------------- #
# the command
# --------------------------------------------------------------------------- #
def run_fit(
    emb_store: Any,
    method: str,
    k: int,
    out: str | os.PathLike,
    *,
    nouns: Any = "wordnet",
    text_encoder: Any = None,
    text_weights: Any = None,
    noun_embeddings: Any = None,
    drop_nonfinite: bool = False,
    seed: int = 0,
    device: str = "auto",
    overwrite: bool = False,
    verbose: bool = True,
    **method_options: Any,
) -> dict:
    """``mlcd fit EMB_STORE --method NAME --k K --out DIR``: cluster a store's embeddings with one method.

    Args:
        emb_store: an ``EmbeddingStore``, its folder (complete), a ``.npy`` file or an ``[N, d]`` array.
        method: a registered name (:func:`mlcd.methods.registry.available_methods`): ``tac``,
            ``tac-notrain``, ``scan``, ``dec``, ``kmeans``, ...
        k: number of clusters (at most the number of rows).
        out: output folder (created); see the module docstring for its files.
        nouns: TAC only: ``"wordnet"`` (read offline from ``/usr/share/wordnet``), a text file with one
            noun per line, or a list of strings. With ``noun_embeddings`` it names their rows.
        text_encoder: TAC only: encoder spec whose text tower embeds the nouns (``open_clip:ViT-B-32``).
        text_weights: weights file for ``text_encoder`` (``--weights``).
        noun_embeddings: TAC only: precomputed ``[M, d]`` noun embeddings (array or ``.npy`` path),
            instead of ``text_encoder``.
        drop_nonfinite: leave rows with NaN / inf out (assignment -1, probabilities 0) instead of refusing.
        seed, device: as for every method.
        overwrite: replace a result already in ``out``.
        verbose: progress bars (passed to the method as ``verbose``).
        **method_options: constructor options of the method (``epochs=10``, ``n_heads=5``, ...);
            see :func:`parse_method_options` for ``--set KEY=VALUE``.

    Returns:
        The summary dict that is also written to ``summary.json``.

    Raises:
        ValueError (bad K, NaN rows, unknown method or option, TAC without text embeddings, ...),
        FileNotFoundError (missing store / noun file; ``WordNetNotFoundError`` with the install
        command), FileExistsError (a result in ``out`` without ``overwrite``). All before writing.
    """
    from mlcd._io import atomic_save_npy, atomic_write_json
    from mlcd.metrics import cluster_scores

    from .registry import _canonical, get_method, make_method, method_presets

    t0 = time.perf_counter()
    key = _canonical(method)
    cls = get_method(key)  # raises with the reason when not available here
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"--k must be a positive integer, got {k!r}")
    out = Path(out)
    _prepare_out(out, overwrite)

    X, labels, info = _load_input(emb_store)
    n_total, dim = X.shape
    finite = np.isfinite(X).all(axis=1)
    n_bad = int((~finite).sum())
    if n_bad and not drop_nonfinite:
        rows = np.flatnonzero(~finite)
        shown = ", ".join(map(str, rows[:10])) + (", ..." if rows.size > 10 else "")
        raise ValueError(
            f"{n_bad} of {n_total} rows of {info['embeddings']} hold NaN or inf (rows {shown}); pass "
            f"drop_nonfinite=True (--drop-nonfinite) to leave them out (they get assignment -1), or "
            f"re-embed those images"
        )
    Xf = X[finite] if n_bad else X
    n = Xf.shape[0]
    if k > n:
        raise ValueError(
            f"--k {k} is larger than the number of rows to cluster ({n}"
            f"{f', after leaving out {n_bad} non-finite rows' if n_bad else ''}); ask for at most {n} clusters"
        )

    # method options, checked before the fit
    options = dict(method_options)
    text_meta: dict = {}
    if key in _TAC_NAMES:
        tac_opts, text_meta = _tac_options(key, dim, nouns, text_encoder, text_weights, noun_embeddings, info)
        options.update(tac_opts)
    else:
        given = [flag for flag, v in (("--text-encoder", text_encoder), ("--weights", text_weights),
                                      ("--noun-embeddings", noun_embeddings)) if v is not None]
        if not (isinstance(nouns, str) and nouns.strip().lower() == "wordnet"):
            given.append("--nouns")
        if given:
            raise ValueError(f"{', '.join(given)} only apply to --method tac / tac-notrain, not {key!r}")
    valid = set(cls._get_param_names()) if hasattr(cls, "_get_param_names") else set()
    for name, value in (("seed", seed), ("device", device), ("verbose", bool(verbose))):
        if name in valid:
            options.setdefault(name, value)
    est = make_method(key, int(k), **options)

    # fit (nothing written yet)
    t_fit = time.perf_counter()
    est.fit(Xf)
    fit_s = time.perf_counter() - t_fit
    assign_f = np.asarray(est.labels_, dtype=np.int64)
    proba_f = np.asarray(est.predict_proba(Xf), dtype=np.float32)
    if n_bad:
        assignments = np.full(n_total, -1, dtype=np.int64)
        assignments[finite] = assign_f
        probabilities = np.zeros((n_total, proba_f.shape[1]), dtype=np.float32)
        probabilities[finite] = proba_f
    else:
        assignments, probabilities = assign_f, proba_f
    sizes = np.bincount(assign_f[assign_f >= 0], minlength=int(k))

    scores = None
    if labels is not None:
        use = finite & (labels >= 0)
        if use.any():
            scores = {**cluster_scores(labels[use], assignments[use]), "n_scored": int(use.sum()),
                      "n_classes": int(np.unique(labels[use]).size)}

    # write: every file atomically, the summary last
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        _clear_previous(out)
    files = {}
    sha, _ = atomic_save_npy(out / "assignments.npy", assignments)
    files["assignments.npy"] = sha
    sha, _ = atomic_save_npy(out / "probabilities.npy", probabilities)
    files["probabilities.npy"] = sha
    if key in _TAC_NAMES and getattr(est, "cluster_names_", None) is not None:
        files["cluster_names.json"] = atomic_write_json(out / "cluster_names.json", _cluster_names(est, sizes))
    if scores is not None:
        files["scores.json"] = atomic_write_json(out / "scores.json", scores)

    params = {p: v for p, v in est.get_params(deep=False).items() if p != "noun_embeddings"}
    summary = {
        "out": str(out),
        "embeddings": info["embeddings"],
        "method": key,
        "class": f"{type(est).__module__}.{type(est).__qualname__}",
        "presets": method_presets(key),
        "params": _jsonable(params),
        **({"text": _jsonable(text_meta)} if text_meta else {}),
        "n": int(n_total),
        "dim": int(dim),
        "k": int(k),
        "n_nonfinite_dropped": n_bad,
        "cluster_sizes": _size_stats(sizes),
        "scores": _jsonable(scores),
        "history": _jsonable(list(getattr(est, "history_", []) or [])),
        **({"heads": _heads_summary(est)} if getattr(est, "head_losses_", None) is not None else {}),
        "cluster_names": ([{"cluster": c, "names": row[:3]} for c, row in enumerate(est.cluster_names_)]
                          if key in _TAC_NAMES and getattr(est, "cluster_names_", None) is not None else None),
        "seed": int(seed),
        "device": getattr(est, "device_", str(device)),
        "fit_time_s": round(fit_s, 3),
        "time_s": round(time.perf_counter() - t0, 3),
        "files": files,
    }
    atomic_write_json(out / SUMMARY_FILE, summary)
    return summary
