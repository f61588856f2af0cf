"""The trainer's options: :class:`TrainConfig`, a dataclass of plain values.

Everything that decides *what* is trained (and so must not change when a run is
resumed) is listed in :data:`RESUME_FIXED`; the rest (device, progress, how
often to log, evaluate or checkpoint) may change between a run and its resume.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any

__all__ = ["TrainConfig", "TrainConfigError", "LOSSES", "PROJECTIONS", "AMP_MODES", "RESUME_FREE"]

LOSSES = ("mlcd", "mlc", "softmax")
PROJECTIONS = ("linear", "mlp", "none")
AMP_MODES = ("auto", "bf16", "fp16", "off")
MARGIN_TYPES = ("arc", "cos")

#: Options that may differ between a run and its ``resume`` (they do not change the weights).
RESUME_FREE = frozenset({
    "device", "num_workers", "progress", "log_every", "checkpoint_every", "eval_every",
    "eval_at_start", "knn_k", "knn_temperature", "knn_bank_max", "data_on_device", "keep_checkpoints",
})


class TrainConfigError(ValueError):
    """An option of the trainer has a value it cannot use."""


@dataclass
class TrainConfig:
    """Options of :class:`mlcd.train.Trainer` (and of ``mlcd train``).

    Model:
        encoder: backbone spec from the encoder registry (``builtin:resnet18-32``,
            ``builtin:vit-tiny-32``, ``timm:vit_tiny_patch16_224?img_size=32``, ...).
        weights: ``"random"`` (from scratch, seeded by ``seed``), a weights file, or
            None (local pretrained weights; see :func:`mlcd.encoders.load`).
        projection: ``"linear"`` (Linear + BatchNorm1d), ``"mlp"`` (Linear-BN-ReLU-Linear-BN)
            or ``"none"`` (the backbone features themselves) on top of the backbone.
        embed_dim: size of the embedding the class centers live in; None = backbone dim.
        mlp_hidden: hidden width of the ``"mlp"`` projection; None = backbone dim.
        init_centers: ``"random"``; ``"kmeans"`` (the centers folder recorded in the
            label store, which must exist and have ``embed_dim`` columns); ``"auto"``
            (k-means centers when found with the right size, else random); or a path to
            a centers folder / ``.npy`` file ``[k, embed_dim]``.

    Labels and loss:
        labels_per_image: ``l``, the first ``l`` labels of each row of the label store
            (None = all of them; 1 = single-label cluster discrimination).
        loss: ``"mlcd"`` (eq. 5 of the MLCD paper), ``"mlc"`` (eq. 4) or ``"softmax"``
            (margin softmax, UNICOM; uses the top-1 label only).
        sample_ratio: ``r`` in (0, 1], the fraction of negative centers sampled per step.
        scale, margin, margin_type: ``s``, ``m`` and ``"arc"`` (cos(θ+m)) / ``"cos"`` (cos θ − m).

    Optimisation (AdamW, linear warm-up then cosine decay to 0, set every step):
        epochs, steps: length of the run; ``steps`` (optimizer steps) wins when given.
        batch_size: global batch (split evenly across processes); the last partial
            batch of an epoch is dropped.
        lr, weight_decay: AdamW; no weight decay on biases and normalisation weights.
        warmup_epochs / warmup_steps: warm-up length (``warmup_steps`` wins when given).
        grad_clip: max global gradient norm (None or 0 = no clipping).
        amp: ``"auto"`` (bf16 autocast on CUDA, fp32 on CPU), ``"bf16"``, ``"fp16"``
            (with a gradient scaler; CUDA only) or ``"off"``.

    Data:
        image_size: training resolution; None = the encoder's.
        augment: random resized crop + flip + colour jitter + grayscale (True) or
            resize only (False). Done in batches on tensors, on the training device.
        hue_jitter: largest hue rotation of the colour jitter, in turns (0 to 0.5);
            grayscale_prob: probability of turning an image grey. Set both to 0 when
            colour is part of what the clusters mean (e.g. ``builtin:shapes``).
        crop_scale: area range of the random resized crop; None picks by image size:
            (0.35, 1) up to 16 px, (0.2, 1) up to 64 px, (0.08, 1) above.
        cache_size: side of the square uint8 cache that file / tar sources are decoded
            into (shorter side resized, then center crop); None = ``image_size``.
        data_on_device: keep the uint8 image tensor on the GPU (True / False / "auto":
            when it takes under a quarter of the free GPU memory).
        num_workers: threads that decode file / tar sources into the cache (None = auto).
            The in-memory training path needs no loader workers.

    Run:
        seed, device (``"auto"``, ``"cpu"``, ``"cuda"``), compile (``torch.compile`` the
        backbone), sync_bn (SyncBatchNorm under DDP), channels_last (None = on CUDA).
        checkpoint_every (steps; 0 = only at the end), keep_checkpoints, log_every
        (steps), progress.

    Evaluation (kNN top-1 on backbone features, :func:`mlcd.metrics.knn_accuracy`):
        eval_every: every N epochs (0 = only at the end, when an eval split exists).
        eval_fraction: hold out this fraction of the (ground-truth labelled) training
            source as kNN queries, when no ``eval_source`` is given.
        eval_at_start: also evaluate before the first step.
        knn_k, knn_temperature, knn_bank_max (cap on the bank of training images).
    """

    # model
    encoder: str = "builtin:resnet18-32"
    weights: str | None = "random"
    projection: str = "linear"
    embed_dim: int | None = None
    mlp_hidden: int | None = None
    init_centers: str = "random"
    # labels / loss
    labels_per_image: int | None = None
    loss: str = "mlcd"
    sample_ratio: float = 0.1
    scale: float = 32.0
    margin: float = 0.3
    margin_type: str = "arc"
    # optimisation
    epochs: int = 10
    steps: int | None = None
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    warmup_steps: int | None = None
    grad_clip: float | None = 5.0
    amp: str = "auto"
    # data
    image_size: int | None = None
    augment: bool = True
    hue_jitter: float = 0.1
    grayscale_prob: float = 0.2
    crop_scale: tuple[float, float] | None = None
    cache_size: int | None = None
    data_on_device: Any = "auto"
    num_workers: int | None = None
    # run
    seed: int = 0
    device: str = "auto"
    compile: bool = False
    sync_bn: bool = False
    channels_last: bool | None = None
    checkpoint_every: int = 1000
    keep_checkpoints: int = 1
    log_every: int = 50
    progress: bool = True
    # evaluation
    eval_every: int = 0
    eval_fraction: float = 0.0
    eval_at_start: bool = False
    knn_k: int = 20
    knn_temperature: float = 0.07
    knn_bank_max: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> "TrainConfig":
        """Check every option; raise :class:`TrainConfigError` naming the first bad one."""

        def bad(name: str, value, want: str):
            raise TrainConfigError(f"{name}={value!r}: {want}")

        def integer(name: str, lo: int, *, none_ok: bool = False):
            v = getattr(self, name)
            if v is None and none_ok:
                return
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                bad(name, v, f"must be an integer >= {lo}" + (" (or None)" if none_ok else ""))

        def number(name: str, lo: float | None = None, *, open_lo: bool = False, none_ok: bool = False):
            v = getattr(self, name)
            if v is None and none_ok:
                return
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                bad(name, v, "must be a finite number" + (" (or None)" if none_ok else ""))
            if lo is not None and (v < lo or (open_lo and v == lo)):
                bad(name, v, f"must be {'>' if open_lo else '>='} {lo}")
            setattr(self, name, float(v))

        if not isinstance(self.encoder, str) or ":" not in self.encoder:
            bad("encoder", self.encoder, "must be an encoder spec such as 'builtin:resnet18-32' or 'timm:<name>'")
        if self.weights is not None and not isinstance(self.weights, (str, os.PathLike)):
            bad("weights", self.weights, "must be 'random', a path, or None")
        if self.weights is not None:
            self.weights = os.fspath(self.weights)
        if self.projection not in PROJECTIONS:
            bad("projection", self.projection, f"must be one of {', '.join(PROJECTIONS)}")
        integer("embed_dim", 1, none_ok=True)
        integer("mlp_hidden", 1, none_ok=True)
        if not isinstance(self.init_centers, (str, os.PathLike)):
            bad("init_centers", self.init_centers, "must be 'random', 'kmeans', 'auto' or a path to centers")
        self.init_centers = os.fspath(self.init_centers)
        integer("labels_per_image", 1, none_ok=True)
        if self.loss not in LOSSES:
            bad("loss", self.loss, f"unknown loss; choose one of {', '.join(LOSSES)}")
        number("sample_ratio")
        if not 0.0 < self.sample_ratio <= 1.0:
            bad("sample_ratio", self.sample_ratio, "must be in (0, 1] (the fraction of negative centers sampled)")
        number("scale", 0.0, open_lo=True)
        number("margin", 0.0)
        if self.margin_type not in MARGIN_TYPES:
            bad("margin_type", self.margin_type, f"must be one of {', '.join(MARGIN_TYPES)}")
        if self.margin_type == "arc" and self.margin >= math.pi / 2:
            bad("margin", self.margin, "an additive angular margin must be below pi/2")
        integer("epochs", 1)
        integer("steps", 1, none_ok=True)
        integer("batch_size", 1)
        number("lr", 0.0, open_lo=True)
        number("weight_decay", 0.0)
        number("warmup_epochs", 0.0)
        integer("warmup_steps", 0, none_ok=True)
        if self.grad_clip == 0:
            self.grad_clip = None
        number("grad_clip", 0.0, open_lo=True, none_ok=True)
        if self.amp not in AMP_MODES:
            bad("amp", self.amp, f"must be one of {', '.join(AMP_MODES)}")
        number("hue_jitter", 0.0)
        if self.hue_jitter > 0.5:
            bad("hue_jitter", self.hue_jitter, "must be in [0, 0.5] (a fraction of a full hue turn)")
        number("grayscale_prob", 0.0)
        if self.grayscale_prob > 1.0:
            bad("grayscale_prob", self.grayscale_prob, "must be a probability in [0, 1]")
        integer("image_size", 4, none_ok=True)
        integer("cache_size", 4, none_ok=True)
        if self.crop_scale is not None:
            cs = tuple(self.crop_scale)
            if (len(cs) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in cs)
                    or not 0 < cs[0] <= cs[1] <= 1):
                bad("crop_scale", self.crop_scale, "must be two numbers 0 < lo <= hi <= 1")
            self.crop_scale = (float(cs[0]), float(cs[1]))
        if self.data_on_device not in ("auto", True, False):
            bad("data_on_device", self.data_on_device, "must be 'auto', True or False")
        integer("num_workers", 0, none_ok=True)
        integer("seed", 0)
        if not isinstance(self.device, str):
            self.device = str(self.device)
        integer("checkpoint_every", 0)
        integer("keep_checkpoints", 1)
        integer("log_every", 1)
        integer("eval_every", 0)
        number("eval_fraction", 0.0)
        if self.eval_fraction >= 1.0:
            bad("eval_fraction", self.eval_fraction, "must be in [0, 1)")
        integer("knn_k", 1)
        number("knn_temperature", 0.0, open_lo=True)
        integer("knn_bank_max", 1, none_ok=True)
        for name in ("augment", "compile", "sync_bn", "progress", "eval_at_start"):
            if not isinstance(getattr(self, name), bool):
                bad(name, getattr(self, name), "must be True or False")
        if self.channels_last is not None and not isinstance(self.channels_last, bool):
            bad("channels_last", self.channels_last, "must be True, False or None")
        return self

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["crop_scale"] is not None:
            d["crop_scale"] = list(d["crop_scale"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise TrainConfigError(f"unknown trainer option(s): {', '.join(unknown)}")
        d = dict(d)
        if d.get("crop_scale") is not None:
            d["crop_scale"] = tuple(d["crop_scale"])
        return cls(**d)

    def replace(self, **changes) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TrainConfigError(f"unknown trainer option(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]

