"""Bad input gets a clear error, before anything is written."""

import numpy as np
import pytest
from _train_testutil import SOURCE, tiny_options

from mlcd.store import LabelStore
from mlcd.train import LabelAlignmentError, TrainConfig, TrainConfigError, TrainError, train


@pytest.mark.parametrize("options,match", [
    (dict(loss="arcface"), "unknown loss"),
    (dict(sample_ratio=0.0), r"sample_ratio.*\(0, 1\]"),
    (dict(sample_ratio=1.5), r"sample_ratio.*\(0, 1\]"),
    (dict(labels_per_image=0), "labels_per_image"),
    (dict(batch_size=0), "batch_size"),
    (dict(lr=-1.0), "lr"),
    (dict(margin_type="angular"), "margin_type"),
    (dict(projection="conv"), "projection"),
    (dict(amp="fp8"), "amp"),
    (dict(eval_fraction=1.0), "eval_fraction"),
    (dict(crop_scale=(0.5, 0.2)), "crop_scale"),
    (dict(epochs=0), "epochs"),
    (dict(hue_jitter=0.7), r"hue_jitter.*\[0, 0.5\]"),
    (dict(hue_jitter=-0.1), "hue_jitter"),
    (dict(grayscale_prob=1.5), "grayscale_prob"),
])
def test_bad_options(options, match):
    with pytest.raises(TrainConfigError, match=match):
        TrainConfig(**options)


def test_unknown_option():
    with pytest.raises(TypeError):
        TrainConfig(learning_rate=1.0)
    with pytest.raises(TrainConfigError, match="unknown trainer option"):
        TrainConfig().replace(learning_rate=1.0)


def test_labels_and_run_errors(shapes_labels, tmp_path):
    labels = shapes_labels["labels"]
    out = tmp_path / "run"
    with pytest.raises(TrainConfigError, match="holds only 4 labels"):
        train(SOURCE, labels, out, labels_per_image=5, **tiny_options(steps=1))
    with pytest.raises(TrainConfigError, match="softmax.*single-label"):
        train(SOURCE, labels, out, loss="softmax", labels_per_image=4, **tiny_options(steps=1))
    with pytest.raises(TrainConfigError, match="larger than the 256 training images"):
        train(SOURCE, labels, out, **tiny_options(steps=1, batch_size=512))
    with pytest.raises(TrainConfigError, match="needs a CUDA device"):
        train(SOURCE, labels, out, **tiny_options(steps=1, amp="bf16"))
    with pytest.raises(TrainConfigError, match="resume and overwrite"):
        train(SOURCE, labels, out, resume=True, overwrite=True, **tiny_options(steps=1))
    assert not out.exists()  # nothing written by any of the above
    with pytest.raises(TrainConfigError, match="ground-truth labels"):
        # an array source without labels cannot hold out labelled images for kNN
        from mlcd.data import open_images

        src = open_images(SOURCE)
        arr = tmp_path / "x.npy"
        np.save(arr, src.images)
        train(str(arr), labels, out, **tiny_options(steps=1, eval_fraction=0.1))


def test_misaligned_labels(shapes_labels, tmp_path):
    labels = shapes_labels["labels"]
    # a source with more images than the labels
    with pytest.raises(LabelAlignmentError, match="256 rows but the source .* has 300"):
        train("builtin:shapes?n=300&size=16", labels, tmp_path / "a", **tiny_options(steps=1))
    # fewer images than labels
    with pytest.raises(TrainError, match="has only 200 images"):
        train("builtin:shapes?n=200&size=16", labels, tmp_path / "b", **tiny_options(steps=1))
    # same length, other ids
    other = LabelStore.create(tmp_path / "other", k=16, l=2)
    other.append(np.zeros((256, 2), np.int64), np.zeros((256, 2), np.float32), ids=[f"img{i}" for i in range(256)])
    other.finalize()
    other.close()
    with pytest.raises(LabelAlignmentError, match="row 0 is 'img0' in the labels but '00000' in the source"):
        train(SOURCE, tmp_path / "other", tmp_path / "c", **tiny_options(steps=1))
    # an existing run is not overwritten silently
    out = tmp_path / "d"
    train(SOURCE, labels, out, **tiny_options(steps=1))
    with pytest.raises(TrainError, match="already holds a training run"):
        train(SOURCE, labels, out, **tiny_options(steps=1))
    with pytest.raises(FileNotFoundError):
        train(SOURCE, tmp_path / "missing", tmp_path / "e", **tiny_options(steps=1))
