"""The ``mlcd`` command line: help, version, embed, info, demo and its errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

import mlcd
from mlcd.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"mlcd {mlcd.__version__}"


def test_console_script_runs_as_module():
    completed = subprocess.run(
        [sys.executable, "-m", "mlcd.cli", "--version"], capture_output=True, text=True, check=True
    )
    assert mlcd.__version__ in completed.stdout


@pytest.mark.parametrize("command", [name for name in ("embed", "info", "demo")])
def test_every_subcommand_has_help(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_all_registered_commands_have_help():
    import typer.main

    group = typer.main.get_command(app)
    names = sorted(group.commands)
    assert {"embed", "info", "demo"} <= set(names)
    for name in names:
        result = invoke(name, "--help")
        assert result.exit_code == 0, f"{name}: {result.output}"


def test_embed_then_info(tmp_path):
    out = tmp_path / "digits"
    result = invoke(
        "embed", "builtin:digits", "--encoder", "builtin:convnet?image_size=16",
        "--weights", "random", "--out", out, "--quiet", "--shard-size", "1000", "--device", "cpu",
    )
    assert result.exit_code == 0, result.output
    from mlcd.store import EmbeddingStore

    store = EmbeddingStore.open(out)
    assert len(store) == 1797
    assert store.labels is not None and set(np.unique(store.labels)) == set(range(10))
    shown = invoke("info", out)
    assert shown.exit_code == 0, shown.output
    assert "1797" in shown.output


def test_embed_missing_weights_names_the_option(tmp_path):
    result = invoke("embed", "builtin:digits", "--encoder", "builtin:convnet", "--out", tmp_path / "x", "--device", "cpu")
    assert result.exit_code == 2
    assert "--weights" in result.output
    assert not (tmp_path / "x").exists()


def test_embed_unsupported_source_is_a_clear_error(tmp_path):
    bogus = tmp_path / "images.xyz"
    bogus.write_text("not images")
    result = invoke("embed", bogus, "--encoder", "builtin:convnet", "--weights", "random", "--out", tmp_path / "x")
    assert result.exit_code == 2
    assert "images.xyz" in result.output


def test_info_on_missing_store(tmp_path):
    result = invoke("info", tmp_path / "nowhere")
    assert result.exit_code == 2
    assert "nowhere" in result.output


def test_demo_small(tmp_path):
    out = tmp_path / "demo"
    result = invoke("demo", "--out", out, "--n-images", "200", "--n-eval", "60", "--image-size", "16", "--k", "20",
                    "--epochs", "1", "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert list(results["evaluation"]) == ["random init", "l=1 softmax", "l=8 mlcd"]
    for scores in results["evaluation"].values():
        assert set(scores) == {"knn_top1", "knn_shape", "knn_colour", "multilabel_map", "cluster_nmi"}
        assert all(0.0 <= value <= 1.0 for value in scores.values())
    # the two runs trained on the same top-8 labels, one with the first label only
    for folder, l, loss in (("train-l1-softmax", 1, "softmax"), ("train-l8-mlcd", 8, "mlcd")):
        summary = json.loads((out / folder / "summary.json").read_text())
        assert (summary["labels_per_image"], summary["loss"], summary["k"]) == (l, loss, 20)
        assert (out / folder / "encoder.pt").is_file()
    assert results["evaluation"]["l=8 mlcd"] != results["evaluation"]["random init"]
    assert str((out / "results.json").resolve()) in result.output
    assert "l=8 mlcd" in result.output and "kNN" in result.output


def test_demo_refuses_too_few_scenes(tmp_path):
    result = invoke("demo", "--out", tmp_path / "d", "--n-images", "100", "--n-eval", "5", "--quiet")
    assert result.exit_code == 2
    assert "--n-eval" in result.output or "n_eval" in result.output


def test_embed_cluster_label_chain(tmp_path):
    emb, centers, labels = tmp_path / "emb", tmp_path / "centers", tmp_path / "labels"
    assert invoke("embed", "builtin:digits", "-e", "builtin:convnet?image_size=16", "-w", "random",
                  "-o", emb, "-q", "--device", "cpu").exit_code == 0
    result = invoke("cluster", emb, "--k", "10", "--spherical", "-o", centers, "-q", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "empty_cluster_repairs" in result.output
    result = invoke("label", emb, "--centers", centers, "--topk", "3", "-o", labels, "-q", "--device", "cpu")
    assert result.exit_code == 0, result.output
    from mlcd.store import LabelStore

    store = LabelStore.open(labels)
    assert store.labels.shape == (1797, 3)
    assert np.all(np.diff(store.scores, axis=1) <= 1e-6)  # best first
    # K larger than N is refused before anything is written.
    result = invoke("cluster", emb, "--k", "5000", "-o", tmp_path / "too-many", "-q", "--device", "cpu")
    assert result.exit_code == 2
    assert "5000" in result.output
    assert not (tmp_path / "too-many" / "centers.npy").exists()
