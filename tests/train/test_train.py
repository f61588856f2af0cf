"""End-to-end training on builtin:shapes with labels from mlcd.cluster, and its outputs."""

import json

import numpy as np
import pytest
import torch
from _train_testutil import ENCODER, SOURCE, tiny_options

from mlcd.train import TrainConfig, Trainer, run_train, train


@pytest.fixture(scope="module")
def mlcd_run(shapes_labels, tmp_path_factory):
    out = tmp_path_factory.mktemp("run-mlcd")
    summary = train(SOURCE, shapes_labels["labels"], out, **tiny_options(epochs=4, eval_fraction=0.2, eval_every=2,
                                                                         checkpoint_every=7))
    return out, summary


def test_loss_decreases_and_summary(mlcd_run):
    out, s = mlcd_run
    assert s["loss"] == "mlcd" and s["labels_per_image"] == 4 and s["k"] == 16
    assert s["steps_per_epoch"] == 205 // 32 and s["steps"] == 4 * s["steps_per_epoch"]
    assert s["train_images"] == 256 - round(0.2 * 256)
    assert s["data"]["decoded"] is False and s["data"]["place"] == "host memory"
    assert np.isfinite(s["first_epoch_loss"]) and np.isfinite(s["final_loss"])
    assert s["final_loss"] < 0.9 * s["first_epoch_loss"], (s["first_epoch_loss"], s["final_loss"])
    assert 0.0 <= s["knn_top1"] <= 1.0
    assert [h["epoch"] for h in s["knn_history"]] == [2, 4]
    assert s["device"] == "cpu" and s["amp"] == "float32" and s["world_size"] == 1
    assert json.loads((out / "summary.json").read_text()) == s


def test_metrics_jsonl(mlcd_run):
    out, s = mlcd_run
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if r["event"] == "step"]
    epochs = [r for r in recs if r["event"] == "epoch"]
    for r in recs:
        assert {"step", "epoch", "loss", "lr", "images_per_s"} <= set(r)
        assert np.isfinite(r["loss"]) and r["lr"] >= 0 and r["images_per_s"] > 0
    spe = s["steps_per_epoch"]
    assert [r["step"] for r in epochs] == [spe * e for e in (1, 2, 3, 4)]
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4]
    assert [("knn_top1" in r) for r in epochs] == [False, True, False, True]
    assert all(r["step"] % 2 == 0 or r["step"] % spe == 0 for r in steps)
    assert [r["step"] for r in recs] == sorted(r["step"] for r in recs)
    # warm-up (half an epoch) then cosine decay to ~0
    lrs = [r["lr"] for r in steps]
    peak = int(np.argmax(lrs))
    assert lrs[peak] == pytest.approx(3e-3, rel=0.05)
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:])) and lrs[-1] < 1e-4
    assert epochs[-1]["loss"] == s["final_loss"] and epochs[0]["loss"] == s["first_epoch_loss"]


def test_run_folder_and_checkpoint(mlcd_run):
    out, s = mlcd_run
    pointer = json.loads((out / "checkpoint.json").read_text())
    assert pointer["step"] == s["steps"] and pointer["world_size"] == 1
    files = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert files == [f"step-{s['steps']:08d}.rank0.pt"]  # older ones pruned (keep_checkpoints=1)
    state = torch.load(out / "checkpoints" / files[0], map_location="cpu", weights_only=True)
    assert {"model", "centers", "optimizer", "scheduler", "rng", "config", "step", "epoch"} <= set(state)
    assert state["centers"]["weight"].shape == (16, 32)
    assert {"torch", "numpy", "python", "head", "data"} <= set(state["rng"])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"]["loss"] == "mlcd" and cfg["labels"]["k"] == 16 and cfg["source"]["images"] == 256


def test_encoder_round_trip(mlcd_run):
    from mlcd.encoders import load

    out, _ = mlcd_run
    state = torch.load(out / "checkpoints" / f"step-{24:08d}.rank0.pt", map_location="cpu", weights_only=True)
    enc = load(ENCODER, weights=out / "encoder.pt", device="cpu")
    sd = enc.model.state_dict()
    backbone = {k[len("backbone."):]: v for k, v in state["model"].items() if k.startswith("backbone.")}
    assert set(sd) == set(backbone)
    assert all(torch.equal(sd[k], backbone[k]) for k in sd)
    random_enc = load(ENCODER, weights="random", device="cpu")
    assert not torch.equal(random_enc.model.state_dict()["proj.weight"], sd["proj.weight"])
    info = json.loads((out / "encoder.json").read_text())
    assert info["spec"] == enc.spec and info["weights"] == "encoder.pt"
    x = torch.rand(4, 3, 16, 16)
    assert enc.embed_images(x).shape == (4, 32)


@pytest.mark.parametrize("loss,l", [("mlc", 4), ("softmax", None), ("mlcd", 1)])
def test_each_loss_runs(shapes_labels, tmp_path, loss, l):
    s = train(SOURCE, shapes_labels["labels"], tmp_path / "run", loss=loss, labels_per_image=l,
              **tiny_options(steps=4))
    assert s["loss"] == loss and s["steps"] == 4
    assert s["labels_per_image"] == (1 if loss == "softmax" else l)
    assert np.isfinite(s["final_loss"]) and s["final_loss"] > 0


def test_run_train_options_and_projection(shapes_labels, tmp_path):
    opts = tiny_options(steps=3, sample_ratio=1.0)
    s = run_train(SOURCE, shapes_labels["labels"], tmp_path / "run", verbose=False, projection="mlp", embed_dim=24,
                  margin_type="cos", margin=0.2, scale=16.0, grad_clip=None, augment=False, **opts)
    assert s["embed_dim"] == 24 and s["steps"] == 3 and np.isfinite(s["final_loss"])


def test_init_centers_from_kmeans(shapes_labels, tmp_path):
    from mlcd.cluster import load_centers

    t = Trainer(SOURCE, shapes_labels["labels"], tmp_path / "a", init_centers="kmeans", **tiny_options(steps=1))
    s = t.fit()
    assert s["centers_init"].startswith("k-means centers from")
    # "auto" falls back to random when the sizes differ
    s = train(SOURCE, shapes_labels["labels"], tmp_path / "b", init_centers="auto", embed_dim=8,
              **tiny_options(steps=1))
    assert s["centers_init"].startswith("random")
    # the head starts from the (normalised) k-means centers
    from mlcd.train import head as head_mod

    c, _ = load_centers(shapes_labels["centers"])
    h = head_mod.build_head(16, 32, sample_ratio=0.5, init_centers=torch.from_numpy(c), seed=0)
    expect = torch.nn.functional.normalize(torch.from_numpy(c), dim=1)
    assert torch.allclose(h.weight, expect, atol=1e-6)


def test_config_round_trip():
    cfg = TrainConfig(loss="mlc", crop_scale=(0.3, 0.9), labels_per_image=2)
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert TrainConfig.from_dict(d) == cfg


def test_eval_source_as_queries(shapes_labels, tmp_path):
    s = train(SOURCE, shapes_labels["labels"], tmp_path / "run", eval_source="builtin:shapes?n=40&size=16&seed=1",
              **tiny_options(steps=2, eval_at_start=True))
    assert [h["step"] for h in s["knn_history"]] == [0, 2]
    assert s["train_images"] == 256  # nothing held out: the queries come from eval_source
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert recs[0]["event"] == "eval" and recs[0]["knn_queries"] == 40 and recs[0]["knn_bank"] == 256


def test_colour_augmentation_options_reach_the_augmentation(shapes_labels, tmp_path):
    opts = tiny_options(steps=1, sample_ratio=1.0)
    run_train(SOURCE, shapes_labels["labels"], tmp_path / "run", verbose=False, hue_jitter=0.0, grayscale_prob=0.0,
              **opts)
    augment = json.loads((tmp_path / "run" / "config.json").read_text())["augment"]
    assert augment["hue"] == 0.0 and augment["gray_p"] == 0.0
    run_train(SOURCE, shapes_labels["labels"], tmp_path / "run2", verbose=False, hue_jitter=0.25, grayscale_prob=0.5,
              **opts)
    augment = json.loads((tmp_path / "run2" / "config.json").read_text())["augment"]
    assert augment["hue"] == 0.25 and augment["gray_p"] == 0.5
