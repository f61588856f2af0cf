"""The training loop: backbone + projection + class centers, trained on cluster labels.

See :mod:`mlcd.train` for the overview, :class:`TrainConfig` for the options.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mlcd._io import atomic_write_json, atomic_writer

from . import checkpoint as ckpt
from . import head as head_mod
from ._runtime import (
    SEED_AUGMENT,
    SEED_BANK,
    SEED_GLOBAL,
    SEED_HOLDOUT,
    SEED_INIT,
    SEED_ORDER,
    capture_rng,
    mix_seed,
    restore_rng,
    setup_runtime,
)
from .augment import BatchAugment, resize_normalize
from .config import RESUME_FREE, TrainConfig, TrainConfigError
from .data import ImageData, align_labels, load_image_data, open_source
from .model import EmbeddingModel, build_projection, param_groups
from .schedule import WarmupCosine

__all__ = ["Trainer", "train", "run_train", "TrainError", "RUN_FILES"]

RUN_CONFIG = "config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
ENCODER_WEIGHTS = "encoder.pt"
ENCODER_INFO = "encoder.json"
RUN_FILES = (RUN_CONFIG, METRICS, SUMMARY, ENCODER_WEIGHTS, ENCODER_INFO, ckpt.POINTER)


class TrainError(RuntimeError):
    """The run cannot go on (diverged, an output folder in the way, an incompatible resume)."""


def _open_labels(labels):
    from mlcd.store import LabelStore

    if isinstance(labels, LabelStore):
        return labels
    if isinstance(labels, (str, os.PathLike)):
        return LabelStore.open(labels)
    raise TypeError(f"labels must be a LabelStore or the path of one, not {type(labels).__name__}")


def _sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


class _Meter:
    """Sums of the loss (kept on the device between logs, so steps never wait for the GPU)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset_interval()
        self.reset_epoch()

    def reset_interval(self):
        self.sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.count = 0

    def reset_epoch(self):
        self.epoch_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.epoch_count = 0

    def add(self, loss: torch.Tensor):
        v = loss.detach().to(torch.float64)
        self.sum += v
        self.epoch_sum += v
        self.count += 1
        self.epoch_count += 1

    def state_dict(self) -> dict:
        return {"sum": float(self.sum), "count": self.count, "epoch_sum": float(self.epoch_sum),
                "epoch_count": self.epoch_count}

    def load_state_dict(self, d: dict):
        self.sum = torch.tensor(d["sum"], dtype=torch.float64, device=self.device)
        self.count = int(d["count"])
        self.epoch_sum = torch.tensor(d["epoch_sum"], dtype=torch.float64, device=self.device)
        self.epoch_count = int(d["epoch_count"])


class Trainer:
    """Train an encoder on a source's images and a label store's cluster labels.

    Args:
        source: an ``ImageSource`` or a spec for :func:`mlcd.data.open_images`.
        labels: a ``LabelStore`` (or its folder) with one row per readable image of
            ``source``, in source order (checked by ids).
        out: the run folder (config, checkpoints, ``metrics.jsonl``, ``encoder.pt``, summary).
        config: a :class:`TrainConfig`; keyword ``options`` override its fields.
        eval_source: a labelled source whose images are the kNN queries (the bank is the
            training images with their ground-truth labels).
        resume: continue the run in ``out`` from its last checkpoint.
        overwrite: delete a previous run's files in ``out`` first.

    ``fit()`` runs and returns the summary dict (also written to ``summary.json``).
    """

    def __init__(self, source, labels, out, config: TrainConfig | None = None, *, eval_source=None,
                 resume: bool = False, overwrite: bool = False, **options):
        if config is None:
            config = TrainConfig(**options)
        elif options:
            config = config.replace(**options)
        else:
            config = config.replace()
        self.cfg = config.validate()
        if resume and overwrite:
            raise TrainConfigError("resume and overwrite exclude each other: resume continues the run in the "
                                   "output folder, overwrite deletes it")
        self.source_arg = source
        self.labels_arg = labels
        self.eval_source_arg = eval_source
        self.out = Path(out)
        self.resume = bool(resume)
        self.overwrite = bool(overwrite)
        self.history: list[dict] = []

    # ================================================================== setup
    def _log(self, msg: str) -> None:
        if self.cfg.progress and self.rt.is_main:
            from tqdm.auto import tqdm

            tqdm.write(msg)

    def _check_out(self) -> tuple[str, Any]:
        """What to do with ``out``: ("fresh" | "overwrite" | "resume", previous run record) or ("error", message).

        Nothing is deleted here: an overwrite happens once every option has been checked.
        """
        out = self.out
        if out.exists() and not out.is_dir():
            return "error", f"output folder {out} exists and is not a folder"
        present = [name for name in RUN_FILES if (out / name).exists()] + (
            [ckpt.CHECKPOINT_DIR] if (out / ckpt.CHECKPOINT_DIR).exists() else [])
        if not present:
            return "fresh", None
        if self.overwrite:
            return "overwrite", None
        if not self.resume:
            return "error", (f"{out} already holds a training run ({', '.join(present)}); pass resume=True "
                             "(--resume) to continue it, overwrite=True (--overwrite) to start again, or choose "
                             "another folder")
        if not (out / RUN_CONFIG).is_file():
            return "error", f"cannot resume in {out}: {RUN_CONFIG} is missing; use overwrite to start again"
        try:
            return "resume", json.loads((out / RUN_CONFIG).read_text(encoding="utf-8"))
        except ValueError as exc:
            return "error", f"{out / RUN_CONFIG} is not valid JSON ({exc}); use overwrite to start again"

    def _clear_out(self) -> None:
        """Delete a previous run's files (only ours) from ``out``."""
        for name in RUN_FILES:
            with contextlib.suppress(FileNotFoundError):
                (self.out / name).unlink()
        shutil.rmtree(self.out / ckpt.CHECKPOINT_DIR, ignore_errors=True)

    def _setup(self) -> None:
        cfg = self.cfg
        rt = self.rt
        dev = rt.device
        if dev.type != "cuda" and cfg.amp in ("bf16", "fp16"):
            raise TrainConfigError(f"amp={cfg.amp!r} needs a CUDA device; training on {dev} runs in float32 "
                                   "(use amp='auto' or 'off')")
        self.amp_dtype = None
        if dev.type == "cuda" and cfg.amp in ("auto", "bf16"):
            self.amp_dtype = torch.bfloat16
        elif dev.type == "cuda" and cfg.amp == "fp16":
            self.amp_dtype = torch.float16

        # ---- labels (cheap checks first) ----
        store = _open_labels(self.labels_arg)
        self.label_store = store
        l_store = store.l
        l = cfg.labels_per_image
        if cfg.loss == "softmax":
            if l not in (None, 1):
                raise TrainConfigError(
                    f"loss='softmax' is single-label (margin softmax over the top-1 center); labels_per_image={l} "
                    "asks for more. Use labels_per_image=1, or loss='mlcd' / 'mlc' for several labels per image")
            l = 1
        if l is None:
            l = l_store
        if l > l_store:
            raise TrainConfigError(f"labels_per_image={l} but the label store {store.path} holds only "
                                   f"{l_store} labels per image")
        self.l = int(l)
        self.k = int(store.k)
        if not store.complete:
            raise TrainError(f"the label store {store.path} is incomplete; finish it (mlcd label ...) first")

        src = open_source(self.source_arg)
        self.source = src
        n_labels = len(store)
        if n_labels > len(src):
            raise TrainError(
                f"the label store {store.path} has {n_labels} rows but the source {src.spec} has only "
                f"{len(src)} images: the labels were made from other images")
        try:
            label_ids = store.ids
        except Exception:  # noqa: BLE001 - reported by align_labels
            label_ids = None
        if label_ids is not None and len(label_ids) == 0 and n_labels:
            label_ids = None
        if label_ids is not None and len(src) == n_labels:
            # array sources skip nothing: the ids can be compared before any decoding
            align_labels(label_ids, src.ids(), labels_path=str(store.path), spec=src.spec, n_labels=n_labels)

        # ---- output folder ----
        decision = self._check_out() if rt.is_main else None
        action, previous = rt.broadcast_object(decision)
        if action == "error":
            raise TrainError(previous)
        if action != "resume":
            previous = None

        # ---- encoder (gives the image size) ----
        from mlcd.encoders import load as load_encoder

        enc = load_encoder(cfg.encoder, weights=cfg.weights, device="cpu", seed=cfg.seed)
        self.encoder_info = {"spec": enc.spec, "dim": enc.dim, "image_size": enc.image_size,
                             "mean": list(enc.mean), "std": list(enc.std), "weights_source": enc.weights_source}
        image_size = cfg.image_size or enc.image_size
        self.image_size = int(image_size)
        cache_size = cfg.cache_size or self.image_size

        # ---- images ----
        data = load_image_data(src, cache_size=cache_size, num_workers=cfg.num_workers,
                               progress=cfg.progress and rt.is_main, what="training images")
        align_labels(label_ids, data.ids, labels_path=str(store.path), spec=src.spec, n_labels=n_labels)
        self.data = data
        labels = np.asarray(store.labels[:, : self.l]).astype(np.int64)
        valid = (labels >= 0).any(axis=1)
        rows = np.flatnonzero(valid)
        self.dropped_unlabelled = int((~valid).sum())

        # ---- evaluation split ----
        self.eval_query: ImageData | None = None
        self.eval_query_rows: np.ndarray | None = None
        self.eval_query_labels: np.ndarray | None = None
        if self.eval_source_arg is not None:
            if data.gt_labels is None or not (data.gt_labels >= 0).any():
                raise TrainConfigError(
                    f"kNN evaluation needs ground-truth labels on the training source {src.spec} (the bank); it has "
                    "none. Drop eval_source, or train on a labelled source")
            q = load_image_data(self.eval_source_arg, cache_size=cache_size, num_workers=cfg.num_workers,
                                progress=cfg.progress and rt.is_main, what="evaluation images")
            if q.gt_labels is None or not (q.gt_labels >= 0).any():
                raise TrainConfigError(f"eval_source {q.spec} has no labels; kNN evaluation needs labelled queries")
            keep = np.flatnonzero(q.gt_labels >= 0)
            self.eval_query = q
            self.eval_query_rows = keep
            self.eval_query_labels = q.gt_labels[keep]
        elif cfg.eval_fraction > 0:
            if data.gt_labels is None or not (data.gt_labels >= 0).any():
                raise TrainConfigError(
                    f"eval_fraction={cfg.eval_fraction} holds out labelled images for kNN, but {src.spec} has no "
                    "ground-truth labels; give eval_source (a labelled source) or set eval_fraction=0")
            n_hold = max(1, int(round(cfg.eval_fraction * len(rows))))
            g = np.random.default_rng(mix_seed(cfg.seed, SEED_HOLDOUT))
            hold = np.sort(g.choice(len(rows), size=n_hold, replace=False))
            mask = np.zeros(len(rows), dtype=bool)
            mask[hold] = True
            held = rows[mask]
            rows = rows[~mask]
            held = held[data.gt_labels[held] >= 0]
            self.eval_query = data
            self.eval_query_rows = held
            self.eval_query_labels = data.gt_labels[held]
        self.train_rows = rows  # positions into data.images used for training
        self.train_labels = labels[rows]
        self.has_eval = self.eval_query is not None
        if self.has_eval:
            bank = rows[data.gt_labels[rows] >= 0]
            if cfg.knn_bank_max is not None and len(bank) > cfg.knn_bank_max:
                g = np.random.default_rng(mix_seed(cfg.seed, SEED_BANK))
                bank = np.sort(g.choice(bank, size=cfg.knn_bank_max, replace=False))
            self.bank_rows = bank
            self.bank_labels = data.gt_labels[bank]

        # ---- batches and schedule ----
        W = rt.world_size
        if cfg.batch_size % W:
            raise TrainConfigError(f"batch_size={cfg.batch_size} is the global batch and must be divisible by the "
                                   f"{W} processes")
        self.local_batch = cfg.batch_size // W
        n_train = len(rows)
        self.steps_per_epoch = n_train // cfg.batch_size
        if self.steps_per_epoch < 1:
            raise TrainConfigError(f"batch_size={cfg.batch_size} is larger than the {n_train} training images; "
                                   "lower batch_size")
        self.total_steps = cfg.steps if cfg.steps is not None else cfg.epochs * self.steps_per_epoch
        self.total_epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        warm = cfg.warmup_steps if cfg.warmup_steps is not None else int(round(cfg.warmup_epochs * self.steps_per_epoch))
        self.schedule = WarmupCosine(cfg.lr, self.total_steps, warm)

        # ---- model ----
        emb_dim = cfg.embed_dim or enc.dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix_seed(cfg.seed, SEED_INIT))
            projection = build_projection(cfg.projection, enc.dim, emb_dim, cfg.mlp_hidden)
        self.embed_dim = int(emb_dim)
        model = EmbeddingModel(enc.model, projection).to(dev)
        model.train()
        self.channels_last = cfg.channels_last if cfg.channels_last is not None else dev.type == "cuda"
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        init_c, self.centers_init = self._initial_centers(store, emb_dim)
        self.head = head_mod.build_head(self.k, self.embed_dim, sample_ratio=cfg.sample_ratio,
                                        init_centers=init_c, seed=cfg.seed, distributed=rt.distributed).to(dev)
        self.head.train()
        fwd: nn.Module = model
        if rt.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            if cfg.sync_bn:
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
                self.model = model
            fwd = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)
        if cfg.compile:
            fwd = torch.compile(fwd)
        self.forward = fwd
        self.optimizer = torch.optim.AdamW(param_groups([self.model, self.head], cfg.weight_decay), lr=cfg.lr,
                                           betas=(0.9, 0.999), fused=dev.type == "cuda")
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.augment = BatchAugment(self.image_size, enc.mean, enc.std, crop_scale=cfg.crop_scale,
                                    hue=cfg.hue_jitter, gray_p=cfg.grayscale_prob, enabled=cfg.augment)

        # ---- images / labels on the device ----
        self.images = self._place_images(data.images)
        self.eval_images = None
        if self.has_eval:
            self.eval_images = (self.images if self.eval_query is data
                                else self._place_images(self.eval_query.images, record=False))
        self.labels_t = torch.from_numpy(self.train_labels).to(dev)
        self.rows_t = torch.from_numpy(self.train_rows.astype(np.int64)).to(self.images.device)

        # ---- run description (compared on resume) ----
        self.run_record = {
            "format": "mlcd.train_run/1",
            "config": cfg.to_dict(),
            "source": {"spec": src.spec, "images": len(data), "ids_sha256": hashlib.sha256(
                ("\0".join(data.ids) + "\0").encode()).hexdigest()},
            "labels": {"path": str(Path(store.path).resolve()), "k": self.k, "l": self.l,
                       "labels_sha256": _sha256(self.train_labels)},
            "eval_source": getattr(self.eval_query, "spec", None) if self.eval_source_arg is not None else None,
            "world_size": W,
            "encoder": self.encoder_info,
            "embed_dim": self.embed_dim,
            "train_images": int(n_train),
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "augment": self.augment.describe(),
            "centers_init": self.centers_init,
        }
        self.start_step = 0
        self.resumed_from = None
        if previous is not None:
            self._check_compatible(previous)
        if rt.is_main:
            if action == "overwrite":
                self._clear_out()
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.out / RUN_CONFIG, self.run_record)
        rt.barrier()

    def _initial_centers(self, store, emb_dim: int) -> tuple[torch.Tensor | None, str]:
        how = self.cfg.init_centers
        if how == "random":
            return None, "random"
        from mlcd.cluster import load_centers

        if how in ("kmeans", "auto"):
            where = (store.metadata or {}).get("centers")
            if not where:
                if how == "kmeans":
                    raise TrainConfigError(f"init_centers='kmeans' but the label store {store.path} does not record "
                                           "its centers folder; give the folder as init_centers=PATH")
                return None, "random (the label store names no centers folder)"
            path = Path(where)
            if not path.is_absolute() and not path.exists():
                path = Path(store.path) / where
        else:
            path = Path(how)
        try:
            if path.suffix == ".npy" and path.is_file():
                c = np.load(path, allow_pickle=False).astype(np.float32)
            else:
                c, _ = load_centers(path)
        except (FileNotFoundError, ValueError) as exc:
            if how == "auto":
                return None, f"random (k-means centers unreadable: {exc})"
            raise TrainConfigError(f"init_centers: cannot read centers from {path}: {exc}") from exc
        if c.ndim != 2 or c.shape != (self.k, emb_dim):
            msg = (f"the centers in {path} have shape {tuple(c.shape)}, but the head needs ({self.k}, {emb_dim}) "
                   f"(k of the label store, embed_dim)")
            if how == "auto":
                return None, f"random ({msg})"
            raise TrainConfigError(f"init_centers: {msg}; use init_centers='random' or set embed_dim to match")
        return torch.from_numpy(c), f"k-means centers from {path}"

    def _place_images(self, arr: np.ndarray, record: bool = True) -> torch.Tensor:
        place = self.__dict__.get("data_place")
        t = self._place(arr)
        if not record:
            self.data_place = place
        return t

    def _place(self, arr: np.ndarray) -> torch.Tensor:
        dev = self.rt.device
        arr = np.ascontiguousarray(arr)
        if not arr.flags.writeable:  # a read-only (memory-mapped) array: torch wants its own copy
            arr = arr.copy()
        t = torch.from_numpy(arr)
        on_dev = self.cfg.data_on_device
        if dev.type == "cuda":
            if on_dev == "auto":
                free, _ = torch.cuda.mem_get_info(dev)
                on_dev = t.numel() < 0.25 * free
            if on_dev:
                self.data_place = "device"
                return t.to(dev)
            self.data_place = "pinned host memory"
            return t.pin_memory()
        self.data_place = "host memory"
        return t

    def _check_compatible(self, previous: dict) -> None:
        old, new = previous.get("config", {}), self.run_record["config"]
        diff = sorted(k for k in set(old) | set(new) if k not in RESUME_FREE and old.get(k) != new.get(k))
        if diff:
            parts = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:8])
            raise TrainError(f"cannot resume the run in {self.out} with other options ({parts}); use the same "
                             "options, or overwrite to start again")
        for key, what in (("source", "source images"), ("labels", "labels")):
            o, n = previous.get(key) or {}, self.run_record[key]
            fields = ("spec", "images", "ids_sha256") if key == "source" else ("k", "l", "labels_sha256")
            if any(o.get(f) != n.get(f) for f in fields):
                raise TrainError(f"cannot resume the run in {self.out}: the {what} differ from the ones it was "
                                 "started with")
        if previous.get("world_size") != self.run_record["world_size"]:
            raise TrainError(f"the run in {self.out} was started with {previous.get('world_size')} processes; "
                             f"resume it with the same number (not {self.run_record['world_size']})")

    # ================================================================== pieces of a step
    def _epoch_order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(mix_seed(self.cfg.seed, SEED_ORDER, epoch))
        return torch.randperm(len(self.train_rows), generator=g).to(self.rows_t.device)

    def _batch(self, step: int, order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rt = self.rt
        i = step % self.steps_per_epoch
        start = i * self.cfg.batch_size + rt.rank * self.local_batch
        pos = order[start:start + self.local_batch]  # positions among the training rows
        imgs = self.images[self.rows_t[pos]]
        dev = rt.device
        if imgs.device != dev:
            imgs = imgs.to(dev, non_blocking=True)
        seed = mix_seed(self.cfg.seed, SEED_AUGMENT, step, rt.rank)
        g = torch.Generator(device=dev).manual_seed(seed)
        x = self.augment(imgs, g)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = self.labels_t[pos.to(self.labels_t.device)]
        return x, y

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def _clip(self) -> torch.Tensor | None:
        max_norm = self.cfg.grad_clip
        if max_norm is None:
            return None
        rep = [p.grad for p in self.model.parameters() if p.grad is not None]
        shard = [p.grad for p in self.head.parameters() if p.grad is not None]
        dev = self.rt.device

        def sq(gs):
            if not gs:
                return torch.zeros((), device=dev, dtype=torch.float32)
            norms = torch._foreach_norm(gs)  # one fused kernel per device and dtype
            return torch.stack([n.float() for n in norms]).pow(2).sum()

        s_shard = sq(shard)
        if self.rt.distributed:  # centers are sharded across processes: their norm is a sum over ranks
            self.rt.all_reduce_sum(s_shard)
        total = (sq(rep) + s_shard).sqrt()
        coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
        grads = rep + shard
        if grads:
            torch._foreach_mul_(grads, coef.to(grads[0].dtype))
        return total

    def _train_step(self, step: int, order: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        lr = self.schedule(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # torch's global generators (dropout, drop-path, a head that samples with them) follow the step too
        torch.manual_seed(mix_seed(cfg.seed, SEED_GLOBAL, step, self.rt.rank))
        x, y = self._batch(step, order)
        with self._autocast():
            emb = self.forward(x)
        loss = head_mod.head_loss(self.head, emb.float(), y, loss=cfg.loss, scale=cfg.scale, margin=cfg.margin,
                                  margin_type=cfg.margin_type)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            self._clip()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self._clip()
            self.optimizer.step()
        return loss

    # ================================================================== evaluation
    @torch.no_grad()
    def _features(self, images: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        dev = self.rt.device
        model = self.model
        was = model.training
        model.eval()
        bs = max(256, self.local_batch)
        src = images
        idx_all = torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(src.device)
        out = []
        try:
            for s in range(0, len(rows), bs):
                b = src[idx_all[s:s + bs]].to(dev, non_blocking=True)
                x = resize_normalize(b, self.image_size, self.augment.mean, self.augment.std)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with self._autocast():
                    f = model.features(x)
                out.append(f.float())
        finally:
            model.train(was)
        return torch.cat(out) if out else torch.zeros(0, self.encoder_info["dim"], device=dev)

    def evaluate(self) -> dict | None:
        """kNN top-1 of the backbone features: queries = the eval split, bank = training images."""
        if not self.has_eval:
            return None
        from mlcd.metrics import knn_accuracy

        result = None
        if self.rt.is_main:
            t0 = time.perf_counter()
            bank = self._features(self.images, self.bank_rows)
            query = self._features(self.eval_images, self.eval_query_rows)
            k = min(self.cfg.knn_k, len(self.bank_rows))
            acc = knn_accuracy(bank, self.bank_labels, query, self.eval_query_labels, k=k,
                               temperature=self.cfg.knn_temperature, device=self.rt.device)
            result = {"knn_top1": float(acc), "knn_k": k, "knn_bank": int(len(self.bank_rows)),
                      "knn_queries": int(len(self.eval_query_rows)),
                      "eval_seconds": round(time.perf_counter() - t0, 3)}
        return self.rt.broadcast_object(result)

    # ================================================================== checkpoints
    def _state(self, step: int, meter: _Meter) -> dict:
        cfg = self.cfg
        return {
            "format": ckpt.CHECKPOINT_FORMAT,
            "step": int(step),
            "epoch": int(step // self.steps_per_epoch),
            "rank": self.rt.rank,
            "world_size": self.rt.world_size,
            "model": self.model.state_dict(),
            "centers": self.head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {**self.schedule.state_dict(), "next_step": int(step)},
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": {**capture_rng(), "head": head_mod.head_rng_state(self.head),
                    "data": {"seed": cfg.seed, "epoch": int(step // self.steps_per_epoch),
                             "order": "randperm(seed, epoch); augmentation seeded by (seed, step, rank)"}},
            "meters": meter.state_dict(),
            "history": list(self.history),
            "config": cfg.to_dict(),
        }

    def _save_checkpoint(self, step: int, meter: _Meter) -> None:
        rt = self.rt
        ckpt.save_rank_checkpoint(self.out, step, rt.rank, self._state(step, meter))
        rt.barrier()
        if rt.is_main:
            ckpt.write_pointer(self.out, step, step // self.steps_per_epoch, rt.world_size)
            keep = set(ckpt.list_steps(self.out)[-self.cfg.keep_checkpoints:]) | {step}
            ckpt.prune_checkpoints(self.out, keep)
        rt.barrier()

    def _load_checkpoint(self, meter: _Meter) -> int:
        pointer = ckpt.read_pointer(self.out)
        if pointer is None:
            return 0
        if pointer["world_size"] != self.rt.world_size:
            raise TrainError(f"the checkpoint in {self.out} was written by {pointer['world_size']} processes; "
                             f"resume with the same number (not {self.rt.world_size})")
        state = ckpt.load_rank_checkpoint(self.out, pointer, self.rt.rank)
        self.model.load_state_dict(state["model"])
        self.head.load_state_dict(state["centers"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        restore_rng(state["rng"])
        head_mod.set_head_rng_state(self.head, state["rng"].get("head"))
        meter.load_state_dict(state["meters"])
        self.history = list(state.get("history") or [])
        return int(state["step"])

    # ================================================================== metrics file
    def _truncate_metrics(self, step: int) -> None:
        """Keep the metrics lines up to ``step`` (none when no checkpoint exists); the resumed run writes the rest."""
        path = self.out / METRICS
        if not path.is_file():
            return
        keep = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            if isinstance(rec, dict) and step > 0 and rec.get("step", 0) <= step:
                keep.append(line)
        with atomic_writer(path, "w") as f:
            f.write("".join(x + "\n" for x in keep))

    def _write_metrics(self, rec: dict) -> None:
        if not self.rt.is_main:
            return
        with open(self.out / METRICS, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, allow_nan=False) + "\n")
            f.flush()

    def _reduced_mean(self, s: torch.Tensor, count: int) -> float:
        t = torch.stack([s.to(torch.float64), torch.tensor(float(count), dtype=torch.float64, device=s.device)])
        self.rt.all_reduce_sum(t)
        return float(t[0] / t[1]) if t[1] > 0 else float("nan")

    # ================================================================== outputs
    def save_encoder(self, step: int) -> Path:
        """``encoder.pt``: the backbone's state dict (tensors only) for ``mlcd.encoders.load(spec, weights=...)``."""
        path = self.out / ENCODER_WEIGHTS
        sd = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in self.model.backbone.state_dict().items()}
        with atomic_writer(path) as f:
            torch.save(sd, f)
        atomic_write_json(self.out / ENCODER_INFO, {
            "spec": self.encoder_info["spec"], "weights": ENCODER_WEIGHTS, "dim": self.encoder_info["dim"],
            "image_size": self.encoder_info["image_size"], "trained_image_size": self.image_size,
            "step": int(step), "started_from": self.encoder_info["weights_source"],
            "load": f"mlcd.encoders.load({self.encoder_info['spec']!r}, weights={str(path)!r})",
        })
        return path

    # ================================================================== the loop
    def fit(self) -> dict:
        t_start = time.perf_counter()
        self.rt = setup_runtime(self.cfg.device)
        try:
            return self._fit(t_start)
        finally:
            self.rt.close()

    def _fit(self, t_start: float) -> dict:
        cfg = self.cfg
        rt = self.rt
        self._setup()
        meter = _Meter(rt.device)
        if self.resume:
            self.start_step = self._load_checkpoint(meter)
            self.resumed_from = self.start_step if (self.out / ckpt.POINTER).is_file() else None
            if rt.is_main:
                self._truncate_metrics(self.start_step)
            if self.start_step >= self.total_steps and (self.out / SUMMARY).is_file():
                summary = json.loads((self.out / SUMMARY).read_text(encoding="utf-8"))
                summary["already_complete"] = True
                return summary
        step = self.start_step
        if step == 0 and cfg.eval_at_start and self.has_eval:
            ev = self.evaluate()
            rec = {"event": "eval", "step": 0, "epoch": 0, **ev}
            self.history.append(rec)
            self._write_metrics(rec)

        bar = None
        if cfg.progress and rt.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total_steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
        order_epoch, order = -1, None
        t_loop = time.perf_counter()
        t_log, steps_since_log = t_loop, 0
        t_epoch = time.perf_counter()
        steps_in_epoch = 0
        last_loss = None
        paused = 0.0  # seconds spent evaluating and checkpointing (left out of images/s)
        try:
            while step < self.total_steps:
                epoch = step // self.steps_per_epoch
                if epoch != order_epoch:
                    order, order_epoch = self._epoch_order(epoch), epoch
                loss = self._train_step(step, order)
                meter.add(loss)
                step += 1
                steps_since_log += 1
                steps_in_epoch += 1
                if bar is not None:
                    bar.update(1)
                epoch_end = step % self.steps_per_epoch == 0 or step == self.total_steps
                if step % cfg.log_every == 0 or epoch_end:
                    if rt.device.type == "cuda":
                        torch.cuda.synchronize(rt.device)
                    now = time.perf_counter()
                    mean = self._reduced_mean(meter.sum, meter.count)
                    if not math.isfinite(mean):
                        raise TrainError(f"the loss became {mean} at step {step}; lower lr (now {cfg.lr}), keep "
                                         "grad_clip on, or use amp='off'")
                    ips = steps_since_log * cfg.batch_size / max(now - t_log, 1e-9)
                    rec = {"event": "step", "step": step, "epoch": step / self.steps_per_epoch, "loss": mean,
                           "lr": self.schedule(step - 1), "images_per_s": round(ips, 1)}
                    self._write_metrics(rec)
                    last_loss = mean
                    if bar is not None:
                        bar.set_postfix(loss=f"{mean:.4f}", img_s=f"{ips:.0f}", epoch=epoch + 1)
                    meter.reset_interval()
                    t_log, steps_since_log = now, 0
                if epoch_end:
                    now = time.perf_counter()
                    emean = self._reduced_mean(meter.epoch_sum, meter.epoch_count)
                    rec = {"event": "epoch", "step": step, "epoch": math.ceil(step / self.steps_per_epoch),
                           "loss": emean, "lr": self.schedule(step - 1),
                           "images_per_s": round(steps_in_epoch * cfg.batch_size / max(now - t_epoch, 1e-9), 1)}
                    ep = rec["epoch"]
                    due = cfg.eval_every > 0 and ep % cfg.eval_every == 0
                    if self.has_eval and (due or step == self.total_steps):
                        rec.update(self.evaluate())
                        self._log(f"epoch {ep}: loss {emean:.4f}, kNN top-1 {rec['knn_top1']:.4f}")
                    self.history.append(rec)
                    self._write_metrics(rec)
                    meter.reset_epoch()
                    t_epoch, steps_in_epoch = time.perf_counter(), 0
                    paused += t_epoch - now
                    t_log += t_epoch - now
                if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == self.total_steps:
                    t0 = time.perf_counter()
                    self._save_checkpoint(step, meter)
                    dt = time.perf_counter() - t0
                    paused += dt
                    t_log += dt
                    t_epoch += dt
        finally:
            if bar is not None:
                bar.close()
        self.train_seconds = time.perf_counter() - t_loop - paused
        summary = self._summary(step, last_loss, time.perf_counter() - t_start)
        if rt.is_main:
            self.save_encoder(step)
            atomic_write_json(self.out / SUMMARY, summary)
        rt.barrier()
        return summary

    def _summary(self, step: int, last_loss: float | None, seconds: float) -> dict:
        epochs = [h for h in self.history if h.get("event") == "epoch"]
        knn = [h for h in self.history if "knn_top1" in h]
        trained_steps = step - self.start_step
        return {
            "out": str(self.out),
            "encoder": self.encoder_info["spec"],
            "encoder_weights": str(self.out / ENCODER_WEIGHTS),
            "source": self.source.spec,
            "labels": str(self.label_store.path),
            "k": self.k,
            "labels_per_image": self.l,
            "loss": self.cfg.loss,
            "sample_ratio": self.cfg.sample_ratio,
            "embed_dim": self.embed_dim,
            "centers_init": self.centers_init,
            "train_images": int(len(self.train_rows)),
            "dropped_unlabelled": self.dropped_unlabelled,
            "skipped_images": int(self.data.skipped),
            "image_size": self.image_size,
            "data": {"decoded": self.data.decoded, "bytes": self.data.nbytes, "place": self.data_place,
                     "load_seconds": round(self.data.seconds, 3)},
            "batch_size": self.cfg.batch_size,
            "steps": step,
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": step / self.steps_per_epoch,
            "first_epoch_loss": epochs[0]["loss"] if epochs else None,
            "final_loss": epochs[-1]["loss"] if epochs else last_loss,
            "knn_top1": knn[-1]["knn_top1"] if knn else None,
            "knn_history": [{"step": h["step"], "epoch": h["epoch"], "knn_top1": h["knn_top1"]} for h in knn],
            "resumed_from_step": self.resumed_from,
            "already_complete": False,
            "time_s": round(seconds, 3),
            "train_seconds": round(self.train_seconds, 3),
            "images_per_s": (round(trained_steps * self.cfg.batch_size / self.train_seconds, 1)
                             if self.train_seconds > 0 else None),
            "device": str(self.rt.device),
            "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "float32",
            "world_size": self.rt.world_size,
        }


def train(source, labels, out, config: TrainConfig | None = None, *, eval_source=None, resume: bool = False,
          overwrite: bool = False, **options) -> dict:
    """Train an encoder on ``labels`` (a LabelStore) for the images of ``source``; return the summary.

    ``config`` (a :class:`TrainConfig`) and/or keyword options (its field names).
    See :class:`Trainer` for the arguments and :mod:`mlcd.train` for the outputs.
    """
    return Trainer(source, labels, out, config, eval_source=eval_source, resume=resume, overwrite=overwrite,
                   **options).fit()


def run_train(source, labels, out, *, eval_source=None, resume: bool = False, overwrite: bool = False,
              verbose: bool = True, **options) -> dict:
    """What ``mlcd train SOURCE --labels LABEL_STORE --out RUN_DIR [options]`` does.

    Every option is a :class:`TrainConfig` field (``--labels-per-image`` ->
    ``labels_per_image``); ``verbose`` shows the progress bars. Returns the summary dict.
    """
    options.setdefault("progress", bool(verbose))
    with warnings.catch_warnings():
        if not verbose:
            warnings.simplefilter("ignore")
        return train(source, labels, out, eval_source=eval_source, resume=resume, overwrite=overwrite, **options)
