"""The on-disk cache of noun embeddings: keys, weight identities, hits and rebuilds."""

from __future__ import annotations

import os

import numpy as np

from mlcd.text import cached_embed_nouns, embed_nouns, noun_cache_dir
from mlcd.text.cache import encoder_identity, noun_cache_key, weights_identity


class _Enc:
    spec = "builtin:fake"
    weights_source = "random (seed=3)"

    def __init__(self):
        self.calls = 0

    def embed_texts(self, texts):
        self.calls += 1
        return np.stack([np.frombuffer(t.encode().ljust(8, b"_")[:8], dtype=np.uint8) for t in texts]) + 1.0


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MLCD_CACHE_DIR", str(tmp_path))
    assert noun_cache_dir() == tmp_path / "noun-embeddings"
    monkeypatch.delenv("MLCD_CACHE_DIR")
    assert noun_cache_dir().parts[-3:] == (".cache", "mlcd", "noun-embeddings")


def test_weights_identity(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc")
    a = weights_identity(f)
    assert a["path"] == str(f.resolve()) and a["size"] == 3
    os.utime(f, ns=(1, 1))
    assert weights_identity(f) != a  # modification time is part of it
    assert weights_identity("random", seed=0) == weights_identity("random (seed=0)")
    assert weights_identity("random", seed=0) != weights_identity("random", seed=1)
    assert weights_identity("random") is None and weights_identity("random (seed=None)") is None
    assert weights_identity(tmp_path / "missing") is None
    d = weights_identity(tmp_path)
    (tmp_path / "extra").write_bytes(b"x")
    assert weights_identity(tmp_path) != d  # a folder: every file in it
    assert encoder_identity(object()) is None
    assert encoder_identity(_Enc())["spec"] == "builtin:fake"


def test_key_covers_nouns_templates_and_encoder():
    ident = {"custom": "x"}
    k = noun_cache_key(ident, ["a", "b"])[0]
    assert k == noun_cache_key(ident, ["a", "b"])[0]
    assert k != noun_cache_key(ident, ["a", "c"])[0]
    assert k != noun_cache_key(ident, ["a", "b"], ["a {}."])[0]
    assert k != noun_cache_key({"custom": "y"}, ["a", "b"])[0]


def test_hit_miss_and_damaged_entry(tmp_path):
    enc = _Enc()
    nouns = ["cat", "dog", "sea otter"]
    ref = embed_nouns(_Enc(), nouns)
    a = cached_embed_nouns(enc, nouns, cache_dir=tmp_path)
    b = cached_embed_nouns(enc, nouns, cache_dir=tmp_path)
    assert enc.calls == 7 and a.dtype == np.float32
    np.testing.assert_array_equal(a, ref)
    np.testing.assert_array_equal(b, ref)
    # a lazily loaded encoder is not built on a hit
    built = []
    c = cached_embed_nouns(lambda: built.append(1) or enc, nouns, identity=encoder_identity(enc), cache_dir=tmp_path)
    assert not built
    np.testing.assert_array_equal(c, ref)
    npy = next(tmp_path.glob("*.npy"))
    npy.write_bytes(npy.read_bytes()[:-4])  # short file: ignored, rebuilt
    np.testing.assert_array_equal(cached_embed_nouns(enc, nouns, cache_dir=tmp_path), ref)
    assert enc.calls == 14
    cached_embed_nouns(enc, nouns, cache_dir=tmp_path)
    assert enc.calls == 14
