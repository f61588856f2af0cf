"""The ``mlcd`` command line.

Each subcommand is a thin wrapper over a Python function of the package, so
everything the command line does can also be done from Python. Heavy imports
(torch, faiss) happen inside the commands so that ``mlcd --help`` stays quick.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mlcd import __version__

app = typer.Typer(
    name="mlcd",
    help="Learning from unlabeled images through clustering: embed, cluster, label, train, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"mlcd {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """mlcd: multi-label cluster discrimination and image clustering."""


def _fail(message: str) -> None:
    """Print a user-facing error (no traceback) and exit with status 2."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors the package raises for bad input; they are shown as one clear line."""
    from mlcd.store import StoreError
    from mlcd.train import TrainError

    return (ValueError, TypeError, FileNotFoundError, FileExistsError, NotADirectoryError,
            PermissionError, StoreError, TrainError)



@app.command()
def embed(
    source: Annotated[str, typer.Argument(help="Image folder, .tar/.tar.gz archive, .npz/.npy array, MNIST IDX folder, or builtin:NAME.")],
    encoder: Annotated[str, typer.Option("--encoder", "-e", help="Encoder spec: builtin:NAME, timm:NAME, torchvision:NAME, open_clip:ARCH or hf:DIR.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder of the embedding store to write.")],
    weights: Annotated[Optional[str], typer.Option("--weights", "-w", help="Local weights file/folder, or 'random' for random initialisation.")] = None,
    subset: Annotated[Optional[str], typer.Option("--subset", help="Only images under this sub-folder of the source (e.g. 'train' or 'test').")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per forward pass.")] = 256,
    workers: Annotated[Optional[int], typer.Option("--workers", "-j", min=0, help="Threads decoding and preprocessing images (default: 0 for a CPU encoder on <=4 cores, else up to 8).")] = None,
    device: Annotated[str, typer.Option("--device", help="'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'.")] = "auto",
    shard_size: Annotated[int, typer.Option("--shard-size", min=1, help="Rows per shard file; a resumed run restarts at a shard border.")] = 10_000,
    dtype: Annotated[str, typer.Option("--dtype", help="Storage dtype: float16 or float32.")] = "float16",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing store written with other arguments.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Embed every image of SOURCE with an encoder into an embedding store.

    A killed run, started again with the same arguments, continues from the
    last complete shard.
    """
    from mlcd.data import open_images
    from mlcd.embed import embed_images
    from mlcd.encoders import load

    try:
        options = {"subset": subset} if subset else {}
        image_source = open_images(source, **options)
        model = load(encoder, weights=weights, device=device)
        store = embed_images(
            image_source,
            model,
            out,
            batch_size=batch_size,
            workers=workers,
            shard_size=shard_size,
            dtype=dtype,
            overwrite=overwrite,
            progress=not quiet,
        )
    except _user_errors() as err:
        _fail(str(err))
    summary = store.summary
    if quiet:  # with progress on, embed_images has already printed this line
        typer.echo(str(summary))
    for item in summary.skipped_items[:20]:
        typer.echo(f"skipped {item.get('id')}: {item.get('reason')}")
    if summary.skipped > 20:
        typer.echo(f"... {summary.skipped - 20} more skipped images are listed in {out / 'skipped.json'}")
    typer.echo(f"embedding store: {out}")


@app.command()
def cluster(
    emb_store: Annotated[Path, typer.Argument(help="Embedding store folder written by `mlcd embed`.")],
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="Number of clusters.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the centers (centers.npy + centers.json).")],
    spherical: Annotated[bool, typer.Option("--spherical", help="Cosine k-means: L2-normalise points and centers.")] = False,
    init: Annotated[str, typer.Option("--init", help="'auto', 'k-means++', 'random' or 'two-level' (auto: k-means++ up to K=1024, else two-level).")] = "auto",
    n_iter: Annotated[int, typer.Option("--n-iter", min=1, help="Lloyd iterations.")] = 20,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the initialisation and repairs.")] = 0,
    device: Annotated[str, typer.Option("--device", help="'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'.")] = "auto",
    backend: Annotated[str, typer.Option("--backend", help="'auto', 'faiss' (CPU) or 'torch'.")] = "auto",
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Rows per tile (default: by memory).")] = None,
    drop_nonfinite: Annotated[bool, typer.Option("--drop-nonfinite", help="Ignore rows with NaN or inf instead of refusing them.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace centers already in --out.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Cluster an embedding store with k-means; a killed run continues from its checkpoint."""
    from mlcd.cluster import run_cluster

    try:
        summary = run_cluster(
            emb_store, k, out, spherical=spherical, init=init, n_iter=n_iter, seed=seed, device=device,
            backend=backend, batch_size=batch_size, drop_nonfinite=drop_nonfinite, overwrite=overwrite,
            verbose=not quiet,
        )
    except _user_errors() as err:
        _fail(str(err))
    _print_summary(summary)
    typer.echo(f"centers: {out}")


@app.command()
def label(
    emb_store: Annotated[Path, typer.Argument(help="Embedding store folder written by `mlcd embed`.")],
    centers: Annotated[Path, typer.Option("--centers", "-c", help="Centers folder written by `mlcd cluster`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder of the label store to write.")],
    topk: Annotated[int, typer.Option("--topk", "-l", min=1, help="Labels per image: the l nearest centers.")] = 8,
    spherical: Annotated[Optional[bool], typer.Option("--spherical/--euclidean", help="Similarity (default: as the centers were made).")] = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature", min=0.0, help="Also store soft weights: softmax of the top-l scores at this temperature.")] = None,
    threshold: Annotated[Optional[float], typer.Option("--threshold", help="Keep only centers scoring above this similarity (at most --topk).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Rows per tile (default: by memory).")] = None,
    device: Annotated[str, typer.Option("--device", help="'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'.")] = "auto",
    drop_nonfinite: Annotated[bool, typer.Option("--drop-nonfinite", help="Label rows with NaN or inf as -1 instead of refusing them.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a label store already in --out.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Give every image its --topk nearest centers as labels (a label store)."""
    from mlcd.cluster import run_label

    try:
        summary = run_label(
            emb_store, centers, topk, out, spherical=spherical, temperature=temperature, threshold=threshold,
            batch_size=batch_size, device=device, drop_nonfinite=drop_nonfinite, overwrite=overwrite,
            verbose=not quiet,
        )
    except _user_errors() as err:
        _fail(str(err))
    _print_summary(summary)
    typer.echo(f"label store: {out}")


def _print_summary(summary: dict) -> None:
    for key, value in summary.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items())
        elif isinstance(value, float):
            value = f"{value:.6g}"
        elif isinstance(value, (list, tuple)) and len(value) > 12:
            value = f"[{len(value)} values]"
        typer.echo(f"{key}: {value}")


@app.command()
def train(
    source: Annotated[str, typer.Argument(help="The images the labels belong to (any source `mlcd embed` reads).")],
    labels: Annotated[Path, typer.Option("--labels", help="Label store written by `mlcd label` for the same images.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: checkpoints, metrics.jsonl, encoder.pt, summary.json.")],
    encoder: Annotated[str, typer.Option("--encoder", "-e", help="Backbone spec to train (builtin:resnet18-32, builtin:vit-tiny-32, timm:NAME, ...).")] = "builtin:resnet18-32",
    weights: Annotated[str, typer.Option("--weights", "-w", help="'random' (from scratch) or a local weights file.")] = "random",
    subset: Annotated[Optional[str], typer.Option("--subset", help="Only images under this sub-folder of the source.")] = None,
    labels_per_image: Annotated[Optional[int], typer.Option("--labels-per-image", "-l", min=1, help="l: use the first l labels of each image (1 = single-label cluster discrimination; default: all).")] = None,
    loss: Annotated[str, typer.Option("--loss", help="'mlcd' (MLCD eq. 5), 'mlc' (eq. 4) or 'softmax' (margin softmax, top-1 label).")] = "mlcd",
    sample_ratio: Annotated[float, typer.Option("--sample-ratio", "-r", help="Fraction of negative centers sampled per step, in (0, 1].")] = 0.1,
    scale: Annotated[float, typer.Option("--scale", help="Logit scale s.")] = 32.0,
    margin: Annotated[float, typer.Option("--margin", help="Margin m on positives.")] = 0.3,
    margin_type: Annotated[str, typer.Option("--margin-type", help="'arc' (cos(θ+m)) or 'cos' (cos θ − m).")] = "arc",
    projection: Annotated[str, typer.Option("--projection", help="'linear', 'mlp' or 'none' on top of the backbone.")] = "linear",
    embed_dim: Annotated[Optional[int], typer.Option("--embed-dim", min=1, help="Dimension of the class centers (default: the backbone's).")] = None,
    init_centers: Annotated[str, typer.Option("--init-centers", help="'random', 'kmeans', 'auto' or a centers folder / .npy file.")] = "random",
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Training epochs.")] = 10,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Optimizer steps (wins over --epochs).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Global batch size.")] = 256,
    lr: Annotated[float, typer.Option("--lr", help="AdamW learning rate (warm-up, then cosine decay to 0).")] = 1e-3,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay.")] = 0.05,
    warmup_epochs: Annotated[float, typer.Option("--warmup-epochs", help="Linear warm-up length in epochs.")] = 1.0,
    grad_clip: Annotated[float, typer.Option("--grad-clip", help="Max gradient norm (0 = off).")] = 5.0,
    amp: Annotated[str, typer.Option("--amp", help="'auto' (bf16 on CUDA), 'bf16', 'fp16' or 'off'.")] = "auto",
    image_size: Annotated[Optional[int], typer.Option("--image-size", min=8, help="Training resolution (default: the encoder's).")] = None,
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="Random resized crop, flip, colour jitter, grayscale.")] = True,
    hue_jitter: Annotated[float, typer.Option("--hue-jitter", help="Largest hue rotation in turns, 0 to 0.5 (0 when colour matters).")] = 0.1,
    grayscale_prob: Annotated[float, typer.Option("--grayscale-prob", help="Probability of a grey image (0 when colour matters).")] = 0.2,
    eval_source: Annotated[Optional[str], typer.Option("--eval-source", help="Labelled images for the periodic kNN evaluation.")] = None,
    eval_subset: Annotated[Optional[str], typer.Option("--eval-subset", help="Sub-folder of --eval-source (e.g. 'test').")] = None,
    eval_every: Annotated[int, typer.Option("--eval-every", min=0, help="kNN evaluation every N epochs (0 = at the end only).")] = 0,
    eval_fraction: Annotated[float, typer.Option("--eval-fraction", help="Without --eval-source: hold out this fraction of a labelled source.")] = 0.0,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", min=0, help="Checkpoint every N steps (0 = at the end).")] = 1000,
    compile_model: Annotated[bool, typer.Option("--compile", help="torch.compile the backbone.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed for initialisation, data order, augmentation and sampling.")] = 0,
    device: Annotated[str, typer.Option("--device", help="'auto' (CUDA when present), 'cpu' or 'cuda'.")] = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a run already in --out.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Train an encoder to classify images into their cluster labels (MLCD and its family).

    Multi-GPU: start it with `torchrun --nproc-per-node N -m mlcd.cli train ...`.
    """
    from mlcd.data import open_images
    from mlcd.train import run_train

    try:
        image_source = open_images(source, **({"subset": subset} if subset else {}))
        evaluation = None
        if eval_source is not None:
            evaluation = open_images(eval_source, **({"subset": eval_subset} if eval_subset else {}))
        summary = run_train(
            image_source, labels, out, eval_source=evaluation, resume=resume, overwrite=overwrite,
            verbose=not quiet, encoder=encoder, weights=weights, labels_per_image=labels_per_image, loss=loss,
            sample_ratio=sample_ratio, scale=scale, margin=margin, margin_type=margin_type,
            projection=projection, embed_dim=embed_dim, init_centers=init_centers, epochs=epochs, steps=steps,
            batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs,
            grad_clip=grad_clip or None, amp=amp, image_size=image_size, augment=augment,
            hue_jitter=hue_jitter, grayscale_prob=grayscale_prob, eval_every=eval_every,
            eval_fraction=eval_fraction, checkpoint_every=checkpoint_every,
            compile=compile_model, seed=seed, device=device,
        )
    except _user_errors() as err:
        _fail(str(err))
    _print_summary(summary)
    typer.echo(f"run: {out}  (encoder weights: {out / 'encoder.pt'})")


@app.command()
def pipeline(
    source: Annotated[str, typer.Argument(help="The images to learn from (any source `mlcd embed` reads).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for every stage's output and results.json.")],
    encoder: Annotated[str, typer.Option("--encoder", "-e", help="Round 1's encoder spec; the same architecture is trained.")] = "builtin:resnet18-32",
    weights: Annotated[str, typer.Option("--weights", "-w", help="Round 1's weights: a local file, or 'random'.")] = "random",
    subset: Annotated[Optional[str], typer.Option("--subset", help="Only images under this sub-folder of SOURCE (e.g. 'train').")] = None,
    eval_source: Annotated[Optional[str], typer.Option("--eval-source", help="Labelled images to evaluate on (kNN, linear probe, clusters, mAP).")] = None,
    eval_subset: Annotated[Optional[str], typer.Option("--eval-subset", help="Sub-folder of --eval-source (e.g. 'test').")] = None,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Rounds of embed -> cluster -> label -> train.")] = 1,
    k: Annotated[int, typer.Option("--k", "-k", min=2, help="Number of clusters (classes to discriminate).")] = 100,
    topk: Annotated[int, typer.Option("--topk", "-l", min=1, help="Labels per image (1 = single-label).")] = 8,
    loss: Annotated[str, typer.Option("--loss", help="'mlcd', 'mlc' or 'softmax'.")] = "mlcd",
    sample_ratio: Annotated[float, typer.Option("--sample-ratio", "-r", help="Fraction of negative centers sampled per step.")] = 0.1,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Training epochs per round.")] = 10,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Training batch size.")] = 256,
    lr: Annotated[float, typer.Option("--lr", help="AdamW learning rate.")] = 1e-3,
    linear_probe: Annotated[bool, typer.Option("--linear-probe/--no-linear-probe", help="Include the linear probe in the evaluation.")] = True,
    seed: Annotated[int, typer.Option("--seed", help="Seed for every stage.")] = 0,
    device: Annotated[str, typer.Option("--device", help="'auto' (CUDA when present), 'cpu' or 'cuda'.")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Embed, cluster, label and train for --rounds rounds, then evaluate; resumable stage by stage."""
    from mlcd.data import open_images
    from mlcd.pipeline import run_pipeline

    try:
        images = open_images(source, **({"subset": subset} if subset else {}))
        evaluation = None
        if eval_source is not None:
            evaluation = open_images(eval_source, **({"subset": eval_subset} if eval_subset else {}))
        results = run_pipeline(
            images, out, encoder=encoder, weights=weights, eval_source=evaluation, rounds=rounds, k=k, topk=topk,
            loss=loss, sample_ratio=sample_ratio, epochs=epochs, batch_size=batch_size, train_options={"lr": lr},
            linear_probe=linear_probe, seed=seed, device=device, progress=not quiet,
        )
    except _user_errors() as err:
        _fail(str(err))
    _print_evaluation(results["evaluation"])
    typer.echo(f"results: {(out / 'results.json').resolve()}")


def _print_evaluation(evaluation: dict[str, dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    if not evaluation:
        return
    names = sorted({name for scores in evaluation.values() for name in scores})
    table = Table(title="Evaluation")
    table.add_column("encoder")
    for name in names:
        table.add_column(name, justify="right")
    for tag, scores in evaluation.items():
        table.add_row(tag, *(f"{scores[n]:.3f}" if n in scores else "-" for n in names))
    Console().print(table)


@app.command()
def fit(
    emb_store: Annotated[Path, typer.Argument(help="Embedding store folder (or an [N, d] .npy file) of frozen features.")],
    method: Annotated[str, typer.Option("--method", "-m", help="tac, tac-notrain, scan, cc, pica, spice, dec, idec, lsdc, temi, swav, deepcluster or kmeans.")],
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="Number of clusters.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for assignments, probabilities, cluster names and scores.")],
    nouns: Annotated[str, typer.Option("--nouns", help="TAC: 'wordnet' (offline, /usr/share/wordnet) or a text file with one noun per line.")] = "wordnet",
    text_encoder: Annotated[Optional[str], typer.Option("--text-encoder", help="TAC: encoder spec whose text tower embeds the nouns (e.g. open_clip:ViT-B-32).")] = None,
    weights: Annotated[Optional[str], typer.Option("--weights", "-w", help="TAC: local weights of --text-encoder.")] = None,
    noun_embeddings: Annotated[Optional[Path], typer.Option("--noun-embeddings", help="TAC: precomputed [M, d] noun embeddings (.npy) instead of --text-encoder.")] = None,
    options: Annotated[Optional[list[str]], typer.Option("--set", help="A method option KEY=VALUE (repeatable), e.g. --set epochs=10.")] = None,
    drop_nonfinite: Annotated[bool, typer.Option("--drop-nonfinite", help="Leave rows with NaN or inf out instead of refusing them.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed.")] = 0,
    device: Annotated[str, typer.Option("--device", help="'auto' (CUDA when present), 'cpu' or 'cuda'.")] = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace results already in --out.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Split frozen features into K clusters with one of the image-clustering methods."""
    from mlcd.methods.commands import parse_method_options, run_fit

    try:
        summary = run_fit(
            emb_store, method, k, out, nouns=nouns, text_encoder=text_encoder, text_weights=weights,
            noun_embeddings=noun_embeddings, drop_nonfinite=drop_nonfinite, seed=seed, device=device,
            overwrite=overwrite, verbose=not quiet, **parse_method_options(options),
        )
    except _user_errors() as err:
        _fail(str(err))
    _print_summary(summary)
    typer.echo(f"results: {out}")


@app.command()
def info(
    store: Annotated[Path, typer.Argument(help="An embedding or label store folder.")],
) -> None:
    """Describe a store: rows, dimension, encoder, source, labels, shards."""
    from mlcd.store import open_store

    try:
        opened = open_store(store)
    except _user_errors() as err:
        _fail(str(err))
    for key, value in opened.describe().items():
        typer.echo(f"{key}: {value}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the demo's results.")] = Path("mlcd-demo"),
    n_images: Annotated[int, typer.Option("--n-images", min=100, help="Number of builtin:shapes training scenes.")] = 3000,
    n_eval: Annotated[int, typer.Option("--n-eval", min=20, help="Number of evaluation scenes (another seed).")] = 1000,
    image_size: Annotated[int, typer.Option("--image-size", min=16, help="Scene size in pixels.")] = 32,
    k: Annotated[int, typer.Option("--k", "-k", min=2, help="Number of k-means centers (classes to discriminate).")] = 300,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Training epochs of each run.")] = 10,
    seed: Annotated[int, typer.Option("--seed", help="Seed for data, encoder, clustering and training.")] = 0,
    device: Annotated[str, typer.Option("--device", help="'auto', 'cpu' or 'cuda'.")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """MLCD on built-in scenes: embed, cluster, train with l=1 and l=8, and compare before and after."""
    from mlcd.demo import run_demo

    try:
        run_demo(out, n_images=n_images, n_eval=n_eval, image_size=image_size, k=k, epochs=epochs, seed=seed,
                 device=device, progress=not quiet)
    except _user_errors() as err:
        _fail(str(err))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
