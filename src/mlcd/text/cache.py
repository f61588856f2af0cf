"""On-disk cache of prompt-averaged noun embeddings (:func:`mlcd.text.embed_nouns`).

Embedding WordNet's ~119,000 nouns with seven prompt templates through a CLIP
text tower is the slow part of TAC for a real user (833,000 prompts), and the
result depends only on the text encoder and its weights, the nouns and the
templates. :func:`cached_embed_nouns` keeps it in

    ``$MLCD_CACHE_DIR/noun-embeddings/``  (when ``MLCD_CACHE_DIR`` is set), else
    ``~/.cache/mlcd/noun-embeddings/``

as ``<key>.npy`` (``float32 [M, d]``, unit rows) and ``<key>.json`` (what the
key was made of, the array's shape and SHA-256), both written atomically
(:mod:`mlcd._io`), the ``.json`` last. The key hashes

* the encoder spec (canonical, e.g. ``open_clip:ViT-B-32``),
* the identity of its weights: a weights file's absolute path, size and
  modification time (a folder: those of every file in it); random weights
  only when seeded (``"random (seed=0)"``, what :func:`mlcd.encoders.load`
  gives), together with the torch version, since the initialisation comes
  from torch's generator. Unseeded random weights are never cached;
* the noun list and the prompt templates (SHA-256 of each);
* the embedding recipe: float32, each template's embedding L2-normalised, the
  mean L2-normalised (:data:`RECIPE`).

The device is not part of the key: embeddings computed on a GPU (under
autocast) and on the CPU differ only by rounding, and either serves.

A cached entry is used only when its ``.json`` names the same key material and
the ``.npy`` has the recorded size, SHA-256, shape ``[M, d]``, dtype float32
and finite values; anything else (a missing, short, corrupt or foreign file)
is ignored and the embeddings are computed and written again.

Encoders other than :class:`mlcd.encoders.Encoder` are cached only when they
say who they are: a string attribute ``cache_key`` that changes whenever their
output would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .prompts import TAC_TEMPLATES, embed_nouns

__all__ = [
    "CACHE_ENV",
    "RECIPE",
    "noun_cache_dir",
    "encoder_identity",
    "weights_identity",
    "noun_cache_key",
    "cached_embed_nouns",
]

log = logging.getLogger(__name__)

#: Environment variable naming mlcd's cache root (``noun-embeddings/`` is made inside it).
CACHE_ENV = "MLCD_CACHE_DIR"

#: How the cached arrays are made (part of the key): change it when :func:`embed_nouns` changes.
RECIPE = "float32; per-template L2-normalised, mean over templates, L2-normalised; v1"

_RANDOM = re.compile(r"^random \(seed=(-?\d+)\)$")


def noun_cache_dir() -> Path:
    """``$MLCD_CACHE_DIR/noun-embeddings`` when the variable is set, else ``~/.cache/mlcd/noun-embeddings``."""
    root = os.environ.get(CACHE_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "mlcd"
    return base / "noun-embeddings"


def _sha256_text(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, ensure_ascii=False).encode("utf-8")).hexdigest()


def _stat(path: Path) -> dict:
    st = path.stat()
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def weights_identity(source: Any, *, seed: int | None = None) -> dict | None:
    """Who the weights are, or None when that cannot be told (then nothing is cached).

    ``source`` is ``"random (seed=N)"`` (an encoder's ``weights_source``), ``"random"``
    with ``seed``, or a path to a weights file or folder.
    """
    if source is None:
        return None
    s = os.fspath(source) if isinstance(source, os.PathLike) else str(source)
    if s.strip().lower() == "random":
        s = f"random (seed={seed})" if seed is not None else "random (seed=None)"
    m = _RANDOM.match(s.strip())
    if m:
        import torch

        return {"random_seed": int(m.group(1)), "torch": torch.__version__}
    if s.startswith("random"):
        return None  # unseeded random weights: different every time
    path = Path(s).expanduser()
    try:
        path = path.resolve()
        if path.is_file():
            return {"path": str(path), **_stat(path)}
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            listing = [[str(p.relative_to(path)), *_stat(p).values()] for p in files]
            return {"path": str(path), "files": _sha256_text(listing)}
    except OSError:
        return None
    return None


def encoder_identity(encoder: Any) -> dict | None:
    """The encoder part of the cache key for a loaded encoder, or None (not cacheable).

    An :class:`mlcd.encoders.Encoder` is known by ``spec`` and ``weights_source``;
    another object by its string attribute ``cache_key``.
    """
    key = getattr(encoder, "cache_key", None)
    if isinstance(key, str) and key:
        return {"custom": key}
    spec, source = getattr(encoder, "spec", None), getattr(encoder, "weights_source", None)
    if not isinstance(spec, str) or not spec or not source:
        return None
    w = weights_identity(source)
    return None if w is None else {"spec": spec, "weights": w}


def noun_cache_key(identity: dict, nouns: Sequence[str], templates: Sequence[str] = TAC_TEMPLATES) -> tuple[str, dict]:
    """``(hex key, key material)`` for an encoder identity, a noun list and templates."""
    material = {
        "encoder": identity,
        "nouns": {"count": len(nouns), "sha256": _sha256_text([str(n) for n in nouns])},
        "templates": _sha256_text([str(t) for t in templates]),
        "recipe": RECIPE,
    }
    return _sha256_text(material)[:40], material


def _read(folder: Path, key: str, material: dict, n_rows: int) -> np.ndarray | None:
    from mlcd._io import sha256_file

    meta_path, npy_path = folder / f"{key}.json", folder / f"{key}.npy"
    if not meta_path.is_file() or not npy_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or meta.get("key") != material:
            raise ValueError("key material differs")
        if npy_path.stat().st_size != int(meta["bytes"]) or sha256_file(npy_path) != meta["sha256"]:
            raise ValueError("size or checksum differs")
        arr = np.load(npy_path, allow_pickle=False)
        if arr.dtype != np.float32 or arr.ndim != 2 or arr.shape[0] != n_rows or list(arr.shape) != meta["shape"]:
            raise ValueError(f"unexpected array {arr.dtype} {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError("non-finite values")
        return arr
    except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:
        log.warning("ignoring the noun-embedding cache entry %s (%s); computing it again", npy_path, exc)
        return None


def _write(folder: Path, key: str, material: dict, arr: np.ndarray) -> None:
    from mlcd._io import atomic_save_npy, atomic_write_json

    try:
        folder.mkdir(parents=True, exist_ok=True)
        sha, nbytes = atomic_save_npy(folder / f"{key}.npy", arr)
        atomic_write_json(folder / f"{key}.json",
                          {"key": material, "shape": list(arr.shape), "dtype": "float32", "bytes": int(nbytes),
                           "sha256": sha})
    except OSError as exc:  # a read-only or full disk: the embeddings are still returned
        log.warning("could not write the noun-embedding cache in %s: %s", folder, exc)


def cached_embed_nouns(
    encoder: Any,
    nouns: Sequence[str],
    templates: Sequence[str] = TAC_TEMPLATES,
    *,
    identity: dict | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> np.ndarray:
    """:func:`embed_nouns` through the on-disk cache (see the module docstring).

    ``encoder`` is the encoder object, or a zero-argument callable returning it
    (called only on a cache miss, so a hit need not load the model); then
    ``identity`` (see :func:`encoder_identity`) must be given. ``identity=None``
    with an encoder object uses :func:`encoder_identity`; when that is None too
    the embeddings are computed and not cached. ``cache_dir`` defaults to
    :func:`noun_cache_dir`.
    """
    nouns = [str(n) for n in nouns]
    templates = list(templates)
    lazy = callable(encoder) and not hasattr(encoder, "embed_texts")
    if identity is None and not lazy:
        identity = encoder_identity(encoder)
    if identity is None:
        return embed_nouns(encoder() if lazy else encoder, nouns, templates, progress=progress)
    folder = Path(cache_dir).expanduser() if cache_dir is not None else noun_cache_dir()
    key, material = noun_cache_key(identity, nouns, templates)
    hit = _read(folder, key, material, len(nouns))
    if hit is not None:
        return hit
    arr = np.ascontiguousarray(embed_nouns(encoder() if lazy else encoder, nouns, templates, progress=progress),
                               dtype=np.float32)
    _write(folder, key, material, arr)
    return arr
