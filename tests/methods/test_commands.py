"""``run_fit`` (what ``mlcd fit`` does): its files, its errors, and that nothing is half-written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlcd._io import sha256_file
from mlcd.methods.commands import FIT_FILES, SUMMARY_FILE, parse_method_options, run_fit
from mlcd.store import EmbeddingStore

K = 3
DIM = 8
FAST_TAC = dict(epochs=2, batch_size=32, n_neighbors=5, n_init=1)


def _blobs(n_per: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((K, DIM)) * 4
    y = np.repeat(np.arange(K), n_per)
    X = centers[y] + rng.standard_normal((y.size, DIM))
    p = rng.permutation(y.size)
    return X[p].astype(np.float32), y[p]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    X, y = _blobs()
    path = tmp_path_factory.mktemp("emb") / "store"
    st = EmbeddingStore.create(path, DIM, dtype="float32", encoder="fake:enc", classes=["a", "b", "c"])
    st.append(X, [f"img{i}" for i in range(len(X))], labels=y)
    st.finalize()
    return path


@pytest.fixture(scope="module")
def noun_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("nouns")
    rng = np.random.default_rng(5)
    emb = rng.standard_normal((30, DIM)).astype(np.float32)
    np.save(d / "nouns.npy", emb)
    (d / "nouns.txt").write_text("\n".join(f"noun{j}" for j in range(30)) + "\n")
    return d / "nouns.npy", d / "nouns.txt"


def _files(out):
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


def test_kmeans_writes_every_file_with_checksums(store, tmp_path):
    out = tmp_path / "res"
    s = run_fit(store, "kmeans", K, out, verbose=False)
    assert _files(out) == sorted(["assignments.npy", "probabilities.npy", "scores.json", SUMMARY_FILE])
    a = np.load(out / "assignments.npy")
    p = np.load(out / "probabilities.npy")
    assert a.shape == (120,) and a.dtype == np.int64 and p.shape == (120, K) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(p.argmax(1), a)
    scores = json.loads((out / "scores.json").read_text())
    assert scores["acc"] > 0.95 and scores["n_scored"] == 120 and scores["n_classes"] == K
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary == json.loads(json.dumps(s))
    assert summary["method"] == "kmeans" and summary["k"] == K and summary["n"] == 120
    for name, sha in summary["files"].items():
        assert sha256_file(out / name) == sha
    assert summary["cluster_sizes"]["min"] > 0


def test_tac_with_noun_file_and_embeddings_names_clusters(store, noun_files, tmp_path):
    npy, txt = noun_files
    out = tmp_path / "tac"
    s = run_fit(store, "tac", K, out, nouns=txt, noun_embeddings=npy, verbose=False, **FAST_TAC)
    assert "cluster_names.json" in _files(out)
    names = json.loads((out / "cluster_names.json").read_text())
    assert len(names["clusters"]) == K
    vocab = {f"noun{j}" for j in range(30)}
    for c in names["clusters"]:
        assert c["names"] and set(c["names"]) <= vocab
    assert set(names["selected_nouns"]) <= vocab
    assert s["text"]["noun_embeddings"]["shape"] == [30, DIM]
    assert s["params"]["epochs"] == 2 and len(s["history"]) == 2
    assert s["cluster_names"][0]["names"]
    assert s["heads"]["n_heads"] == 1 and s["heads"]["selected"] == 0


def test_tac_with_head_pairs_records_the_selection(store, noun_files, tmp_path):
    s = run_fit(store, "tac", K, tmp_path / "tac4", noun_embeddings=np.load(noun_files[0]), n_heads=3,
                verbose=False, **FAST_TAC)
    h = s["heads"]
    assert h["n_heads"] == 3 and len(h["last_epoch_loss"]) == 3 and len(h["joint_space_inertia"]) == 3
    assert h["selected_by"] == "inertia" and h["selected"] == int(np.argmin(h["joint_space_inertia"]))
    assert s["params"]["n_heads"] == 3
    assert s["history"][-1] == pytest.approx(h["last_epoch_loss"][h["selected"]])


def test_tac_notrain_with_an_array_of_noun_embeddings(store, noun_files, tmp_path):
    out = tmp_path / "nt"
    s = run_fit(store, "tac-notrain", K, out, noun_embeddings=np.load(noun_files[0]), n_init=1, verbose=False)
    assert s["presets"] == {"train": False} and s["params"]["train"] is False
    assert (out / "cluster_names.json").is_file()  # rows named "noun j" without a noun file
    assert s["scores"]["acc"] > 0.9


def test_k_larger_than_n_is_refused_before_writing(store, tmp_path):
    out = tmp_path / "big"
    with pytest.raises(ValueError, match=r"--k 500 is larger than the number of rows to cluster \(120"):
        run_fit(store, "kmeans", 500, out, verbose=False)
    assert not out.exists()


def test_nan_rows_are_counted_and_can_be_dropped(tmp_path):
    X, _ = _blobs()
    X[[3, 17, 50]] = np.nan
    X[60, 2] = np.inf
    np.save(tmp_path / "x.npy", X)
    out = tmp_path / "res"
    with pytest.raises(ValueError, match=r"4 of 120 rows .* hold NaN or inf \(rows 3, 17, 50, 60\).*--drop-nonfinite"):
        run_fit(tmp_path / "x.npy", "kmeans", K, out, verbose=False)
    assert not out.exists()
    s = run_fit(tmp_path / "x.npy", "kmeans", K, out, drop_nonfinite=True, verbose=False)
    a, p = np.load(out / "assignments.npy"), np.load(out / "probabilities.npy")
    assert s["n_nonfinite_dropped"] == 4 and s["scores"] is None and not (out / "scores.json").exists()
    assert (a[[3, 17, 50, 60]] == -1).all() and (a[np.isfinite(X).all(1)] >= 0).all()
    assert (p[[3, 17, 50, 60]] == 0).all()


def test_missing_wordnet_says_how_to_install_it(store, tmp_path, monkeypatch):
    import mlcd.text.wordnet as wn

    monkeypatch.setattr(wn, "default_wordnet_dir", lambda: None)
    loaded = []
    monkeypatch.setattr("mlcd.encoders.load", lambda *a, **k: loaded.append(a), raising=False)
    out = tmp_path / "res"
    with pytest.raises(FileNotFoundError, match=r"apt-get install wordnet-base.*make setup") as e:
        run_fit(store, "tac", K, out, nouns="wordnet", text_encoder="open_clip:ViT-B-32", verbose=False)
    assert isinstance(e.value, wn.WordNetNotFoundError)
    assert not loaded and not out.exists()  # checked before any encoder is loaded


def test_tac_without_text_embeddings_says_which_options(store, tmp_path):
    expected = r"--text-encoder SPEC.*--weights PATH.*--noun-embeddings FILE\.npy.*--nouns FILE"
    with pytest.raises(ValueError, match=expected):
        run_fit(store, "tac", K, tmp_path / "res", verbose=False)
    with pytest.raises(ValueError, match=r"fake:enc"):  # names the store's encoder
        run_fit(store, "tac", K, tmp_path / "res", verbose=False)


def test_bad_noun_inputs(store, noun_files, tmp_path):
    npy, txt = noun_files
    with pytest.raises(FileNotFoundError, match="--noun-embeddings"):
        run_fit(store, "tac", K, tmp_path / "r", noun_embeddings=tmp_path / "none.npy", verbose=False)
    with pytest.raises(FileNotFoundError, match="--nouns"):
        run_fit(store, "tac", K, tmp_path / "r", nouns=tmp_path / "none.txt", noun_embeddings=npy, verbose=False)
    short = tmp_path / "short.txt"
    short.write_text("a\nb\n")
    with pytest.raises(ValueError, match="--nouns gives 2 nouns but the noun embeddings .* have 30 rows"):
        run_fit(store, "tac", K, tmp_path / "r", nouns=short, noun_embeddings=npy, verbose=False)
    np.save(tmp_path / "wide.npy", np.ones((5, DIM + 1), np.float32))
    with pytest.raises(ValueError, match="width 9 but the image embeddings have 8"):
        run_fit(store, "tac", K, tmp_path / "r", noun_embeddings=tmp_path / "wide.npy", verbose=False)
    with pytest.raises(ValueError, match="only apply to --method tac"):
        run_fit(store, "kmeans", K, tmp_path / "r", noun_embeddings=npy, verbose=False)
    assert not (tmp_path / "r").exists()


def test_unknown_method_and_option(store, tmp_path):
    with pytest.raises(ValueError, match="unknown clustering method 'nope'; registered: tac, tac-notrain"):
        run_fit(store, "nope", K, tmp_path / "r", verbose=False)
    with pytest.raises(ValueError, match=r"has no option 'epochz'.*epochs"):
        run_fit(store, "dec", K, tmp_path / "r", epochz=3, verbose=False)
    with pytest.raises(ValueError, match="positive integer"):
        run_fit(store, "kmeans", 0, tmp_path / "r", verbose=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_fit(tmp_path / "missing", "kmeans", K, tmp_path / "r", verbose=False)
    assert not (tmp_path / "r").exists()


def test_existing_result_needs_overwrite_and_stale_files_go(store, noun_files, tmp_path):
    out = tmp_path / "res"
    run_fit(store, "tac-notrain", K, out, noun_embeddings=noun_files[0], n_init=1, verbose=False)
    assert (out / "cluster_names.json").exists()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite"):
        run_fit(store, "kmeans", K, out, verbose=False)
    s = run_fit(store, "kmeans", K, out, overwrite=True, verbose=False)
    assert s["method"] == "kmeans"
    assert not (out / "cluster_names.json").exists()  # from the TAC run: removed
    assert (out / "mine.txt").read_text() == "keep me"  # not ours: kept


def test_a_failing_fit_writes_nothing_and_keeps_the_old_result(store, tmp_path, monkeypatch):
    out = tmp_path / "res"
    run_fit(store, "kmeans", K, out, verbose=False)
    before = {f: (out / f).read_bytes() for f in _files(out)}
    from mlcd.methods.registry import KMeansClustering

    def boom(self, X, y=None):
        raise RuntimeError("killed mid-fit")

    monkeypatch.setattr(KMeansClustering, "fit", boom)
    with pytest.raises(RuntimeError, match="killed mid-fit"):
        run_fit(store, "kmeans", K, out, overwrite=True, verbose=False)
    assert {f: (out / f).read_bytes() for f in _files(out)} == before


def test_a_kill_while_writing_leaves_no_summary(store, tmp_path, monkeypatch):
    """Replacing a result removes the old summary first: a half-replaced folder has none."""
    out = tmp_path / "res"
    run_fit(store, "kmeans", K, out, verbose=False)
    import mlcd._io as io

    real = io.atomic_save_npy

    def dies_on_probabilities(path, array):
        if str(path).endswith("probabilities.npy"):
            raise KeyboardInterrupt
        return real(path, array)

    monkeypatch.setattr(io, "atomic_save_npy", dies_on_probabilities)
    with pytest.raises(KeyboardInterrupt):
        run_fit(store, "kmeans", K, out, overwrite=True, seed=1, verbose=False)
    assert not (out / SUMMARY_FILE).exists()
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())
    monkeypatch.setattr(io, "atomic_save_npy", real)
    run_fit(store, "kmeans", K, out, overwrite=True, verbose=False)  # a rerun finishes it
    assert set(json.loads((out / SUMMARY_FILE).read_text())["files"]) <= set(FIT_FILES)


def test_same_seed_same_files(store, tmp_path):
    a = run_fit(store, "dec", K, tmp_path / "a", seed=3, verbose=False, pretrain_epochs=2, epochs=2, n_init=1)
    b = run_fit(store, "dec", K, tmp_path / "b", seed=3, verbose=False, pretrain_epochs=2, epochs=2, n_init=1)
    assert a["files"]["assignments.npy"] == b["files"]["assignments.npy"]


def test_parse_method_options():
    assert parse_method_options(["epochs=5", "lr=1e-3", "hidden-dim=None", "train=false", "name=abc",
                                 "dims=(32, 16)"]) == {
        "epochs": 5, "lr": 1e-3, "hidden_dim": None, "train": False, "name": "abc", "dims": (32, 16)}
    assert parse_method_options(None) == {}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_method_options(["epochs"])
    with pytest.raises(ValueError, match="not a valid name"):
        parse_method_options(["1x=2"])


def test_cli_fit(store, tmp_path):
    from typer.testing import CliRunner

    from mlcd.cli import app

    import typer.main

    if "fit" not in typer.main.get_command(app).commands:
        pytest.skip("mlcd fit is not wired in cli.py yet")
    runner = CliRunner()
    out = tmp_path / "cli"
    r = runner.invoke(app, ["fit", str(store), "--method", "kmeans", "--k", "3", "--out", str(out), "--quiet",
                            "--set", "n_init=2"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / SUMMARY_FILE).read_text())["params"]["n_init"] == 2
    r = runner.invoke(app, ["fit", str(store), "--method", "kmeans", "--k", "500", "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and "larger than the number of rows" in r.output


def test_cli_fit_tac_with_head_pairs(store, noun_files, tmp_path):
    from typer.testing import CliRunner

    from mlcd.cli import app

    npy, txt = noun_files
    out = tmp_path / "cli-tac"
    r = CliRunner().invoke(app, ["fit", str(store), "--method", "tac", "--k", "3", "--out", str(out), "--quiet",
                                 "--nouns", str(txt), "--noun-embeddings", str(npy), "--set", "n_heads=2",
                                 "--set", "epochs=2", "--set", "batch_size=32", "--set", "n_neighbors=5"])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["params"]["n_heads"] == 2 and summary["heads"]["n_heads"] == 2
    r = CliRunner().invoke(app, ["fit", str(store), "--method", "tac", "--k", "3", "--out", str(tmp_path / "bad"),
                                 "--noun-embeddings", str(npy), "--set", "n_heads=0"])
    assert r.exit_code != 0 and "n_heads must be a positive integer" in r.output
