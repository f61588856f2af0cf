"""TAC: text-aided image clustering (losses and the two text-construction steps).

Li et al., "Image Clustering with External Guidance" (TAC), ICML 2024. Matches
github.com/XLearning-SCU/2024-ICML-TAC @ 830e02c:

* :func:`balance_entropy`, :func:`tac_confidence_loss`, :func:`tac_distill_loss`
  -- ``loss_utils.entropy``, ``loss_utils.consistency_loss``, ``loss_utils.DistillLoss``;
* :func:`tac_objective` -- the loss lines of ``train_head.py`` (:func:`tac_objective_heads`:
  the same for several independent head pairs at once);
* :func:`tac_select_nouns` -- the noun filtering of ``filter_nouns.py`` (after its k-means);
* :func:`tac_retrieve_text` -- ``retrieve_text.py``.

The official scripts cast features to float16 on the GPU; here the retrieval runs
in the input dtype (float16/bfloat16 inputs are promoted to float32) and the noun
filtering in float64 by default, because its softmax over centres has no
temperature and the ranking rests on differences of ~1e-7 (see
``../shared/golden/README.md``). Cluster assignments ``p`` are softmax outputs
(TAC's ``ClusterHead`` ends with a softmax), not logits.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .cc import paired_nt_xent

__all__ = [
    "balance_entropy",
    "tac_confidence_loss",
    "tac_distill_loss",
    "tac_objective",
    "tac_objective_heads",
    "TACObjective",
    "tac_select_nouns",
    "tac_retrieve_text",
]


def balance_entropy(p: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    r"""Entropy of the batch-mean assignment (TAC's ``entropy``; to be *maximised*).

    ``q = clamp(mean_b p_b, min=eps)``, ``H = -sum_k q_k log q_k``. An empty
    cluster (``q_k = 0``) sits on the clamp, so its gradient is 0, as in the
    official code. The training loss uses ``-alpha * H``.

    Args:
        p: ``[B, K]`` softmax assignments.
        eps: clamp floor (1e-9 in TAC).

    Returns:
        0-d tensor.
    """
    if p.dim() != 2:
        raise ValueError(f"p must be a 2-D [B, K] tensor; got shape {tuple(p.shape)}")
    return _entropy(p, eps)


def tac_confidence_loss(p_a: torch.Tensor, p_b: torch.Tensor) -> torch.Tensor:
    r"""TAC's consistency (confidence) term between two assignment matrices.

    ``s_b = <p_a[b], p_b[b]>``; ``L = BCE(s, 1) = -mean_b max(log s_b, -100)``
    (``F.binary_cross_entropy``, whose log is clamped at -100, as in TAC's
    ``consistency_loss``). ``s`` is clamped to ``[0, 1]`` first so that a
    rounding excess over 1 does not raise. Symmetric in its arguments.

    Args:
        p_a, p_b: ``[B, K]`` softmax assignments (text and image heads in training).

    Returns:
        0-d tensor.
    """
    _check_pair(p_a, p_b)
    return _confidence(p_a, p_b)


def tac_distill_loss(p_a: torch.Tensor, p_b: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    r"""TAC's cross-modal distillation: cluster-level InfoNCE between two assignment matrices.

    The ``K`` columns of ``p_a`` and ``p_b`` (length-``B`` vectors) are stacked
    into ``2K`` vectors ``c``, L2-normalised, ``s = c c^T / temperature``; row
    ``r``'s positive is the same cluster in the other matrix, its negatives the
    other ``2K - 2`` entries (itself excluded)::

        L = 1/(2K) sum_r [ log sum_{j != r} exp(s_rj) - s_{r, r+-K} ]

    Same value for ``(p_a, p_b)`` and ``(p_b, p_a)``.

    Args:
        p_a, p_b: ``[B, K]`` softmax assignments.
        temperature: 0.5 in TAC for K <= 47, 5.0 for large K (UCF101, ImageNet).

    Returns:
        0-d tensor.
    """
    _check_pair(p_a, p_b)
    return _distill(p_a, p_b, temperature)


# The three terms on [..., B, K] stacks (one value per leading index); the public
# functions above check their 2-D inputs and call these, and tac_objective_heads
# calls them on [H, B, K] stacks.
def _entropy(p: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    q = torch.clamp(p.mean(dim=-2), min=eps)
    return -(q * q.log()).sum(dim=-1)


def _confidence(p_a: torch.Tensor, p_b: torch.Tensor) -> torch.Tensor:
    s = (p_a * p_b).sum(dim=-1).clamp(0.0, 1.0)
    return F.binary_cross_entropy(s, torch.ones_like(s), reduction="none").mean(dim=-1)


def _distill(p_a: torch.Tensor, p_b: torch.Tensor, temperature: float) -> torch.Tensor:
    c = F.normalize(torch.cat((p_a.transpose(-1, -2), p_b.transpose(-1, -2)), dim=-2), dim=-1)  # [..., 2K, B]
    sim = c @ c.transpose(-1, -2) / temperature
    return paired_nt_xent(sim, p_a.shape[-1])


def _objective_parts(p_text, p_image, p_text_nbr, p_image_nbr, temperature):
    """(distill, consistency, entropy) of the TAC objective, on 2-D or stacked inputs."""
    # built in this order so that the gradients add up in the order TAC(n_heads) has always used
    consistency = _confidence(p_text, p_image)
    entropy = _entropy(p_text) + _entropy(p_image)
    distill = _distill(p_image, p_text_nbr, temperature) + _distill(p_text, p_image_nbr, temperature)
    return distill, consistency, entropy


class TACObjective(NamedTuple):
    """The TAC objective and its parts (each a 0-d tensor)."""

    total: torch.Tensor
    distill: torch.Tensor
    consistency: torch.Tensor
    entropy: torch.Tensor


def tac_objective(
    p_text: torch.Tensor,
    p_image: torch.Tensor,
    p_text_nbr: torch.Tensor,
    p_image_nbr: torch.Tensor,
    temperature: float = 0.5,
    alpha: float = 5.0,
) -> TACObjective:
    r"""The full TAC cluster-head objective for one batch, as ``train_head.py`` forms it.

    ::

        distill     = D(p_image, p_text_nbr) + D(p_text, p_image_nbr)     (cross-modal)
        consistency = tac_confidence_loss(p_text, p_image)                (same anchor)
        entropy     = H(p_text) + H(p_image)                              (balance_entropy)
        total       = distill + consistency - alpha * entropy

    with ``D = tac_distill_loss(., ., temperature)``.

    Args:
        p_text: ``[B, K]`` text-head softmax of the anchors' text counterparts.
        p_image: ``[B, K]`` image-head softmax of the anchors.
        p_text_nbr: ``[B, K]`` text-head softmax of a text-space neighbour of each anchor.
        p_image_nbr: ``[B, K]`` image-head softmax of an image-space neighbour.
        temperature: distillation temperature (0.5; 5.0 for large K).
        alpha: weight of the balance entropy (5 in TAC).

    Returns:
        :class:`TACObjective` ``(total, distill, consistency, entropy)``.
    """
    for a, b in ((p_text, p_image), (p_text, p_text_nbr), (p_image, p_image_nbr)):
        _check_pair(a, b)
    distill, consistency, entropy = _objective_parts(p_text, p_image, p_text_nbr, p_image_nbr, temperature)
    total = distill + consistency - alpha * entropy
    return TACObjective(total, distill, consistency, entropy)


def tac_objective_heads(
    p_text: torch.Tensor,
    p_image: torch.Tensor,
    p_text_nbr: torch.Tensor,
    p_image_nbr: torch.Tensor,
    temperature: float = 0.5,
    alpha: float = 5.0,
) -> torch.Tensor:
    """:func:`tac_objective`'s ``total`` for ``H`` independent head pairs at once.

    The same arithmetic as ``H`` calls of :func:`tac_objective` (a test checks values
    and gradients), in a fixed number of batched operations; used by
    ``TAC(n_heads=H)``, where a per-pair loop of small operations cost more than
    the heads' matrix products.

    Args:
        p_text, p_image, p_text_nbr, p_image_nbr: ``[H, B, K]`` softmax assignments,
            as in :func:`tac_objective` for each of the ``H`` pairs.
        temperature, alpha: as in :func:`tac_objective`.

    Returns:
        ``[H]``: each pair's total objective.
    """
    shapes = {tuple(p.shape) for p in (p_text, p_image, p_text_nbr, p_image_nbr)}
    if p_image.dim() != 3 or len(shapes) != 1:
        raise ValueError(f"tac_objective_heads takes four [H, B, K] inputs of one shape; got {sorted(shapes)}")
    distill, consistency, entropy = _objective_parts(p_text, p_image, p_text_nbr, p_image_nbr, temperature)
    return distill + consistency - alpha * entropy


def tac_select_nouns(
    image_feats: torch.Tensor,
    cluster_assignments: torch.Tensor,
    noun_feats: torch.Tensor,
    gamma: int = 5,
    *,
    n_clusters: int | None = None,
    return_details: bool = False,
    compute_dtype: torch.dtype | None = torch.float64,
    chunk_size: int = 1 << 22,
):
    r"""TAC's noun filtering: keep the ``gamma`` nouns most typical of each semantic centre.

    ``centre_c = normalize(mean of the (L2-normalised) image_feats assigned to c)``;
    ``S = centres @ nouns^T`` (``k x M``, nouns L2-normalised);
    ``P = softmax(S, dim=0)`` -- over centres, no temperature; noun ``j`` goes to
    centre ``argmax_c P[c, j]`` with confidence ``max_c P[c, j]``; each centre keeps
    the ``gamma`` most confident of the nouns assigned to it (all of them when
    fewer). Ties keep the lower noun index (the official ``argsort`` is not stable).
    Centres with no image take no part in the softmax (the official code would
    produce NaN there).

    Args:
        image_feats: ``[N, d]`` image embeddings.
        cluster_assignments: ``[N]`` integer semantic-centre ids in ``[0, k)``.
        noun_feats: ``[M, d]`` noun (text) embeddings, all candidates.
        gamma: nouns kept per centre (5 in TAC).
        n_clusters: ``k``; default ``max(cluster_assignments) + 1``.
        return_details: also return each noun's centre and confidence.
        compute_dtype: precision of the computation (float64 by default; ``None``
            uses the promoted input dtype).
        chunk_size: bound on the ``k x chunk`` similarity block, in entries.

    Returns:
        ``[M]`` bool mask of kept nouns; with ``return_details``, the tuple
        ``(mask, noun_center [M] int64, noun_confidence [M])``.
    """
    if image_feats.dim() != 2 or noun_feats.dim() != 2 or image_feats.shape[1] != noun_feats.shape[1]:
        raise ValueError(
            "image_feats [N, d] and noun_feats [M, d] must be 2-D with the same width; "
            f"got {tuple(image_feats.shape)} and {tuple(noun_feats.shape)}"
        )
    labels = torch.as_tensor(cluster_assignments, device=image_feats.device).reshape(-1).long()
    if labels.shape[0] != image_feats.shape[0]:
        raise ValueError(
            f"cluster_assignments has {labels.shape[0]} entries for {image_feats.shape[0]} images"
        )
    if gamma < 1:
        raise ValueError(f"gamma must be >= 1; got {gamma}")
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError("cluster_assignments must be >= 0")
    k = int(labels.max()) + 1 if n_clusters is None else int(n_clusters)
    if labels.numel() and int(labels.max()) >= k:
        raise ValueError(f"cluster_assignments has ids >= n_clusters={k}")
    dtype = compute_dtype or _float_dtype(image_feats, noun_feats)
    device = image_feats.device

    with torch.no_grad():
        v = F.normalize(image_feats.detach().to(dtype), dim=1)
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros(k, v.shape[1], dtype=dtype, device=device).index_add_(0, labels, v)
        centres = F.normalize(sums / counts.clamp_min(1).unsqueeze(1).to(dtype), dim=1)
        empty = counts == 0
        nouns = noun_feats.detach().to(device=device, dtype=dtype)
        m = nouns.shape[0]
        conf = torch.empty(m, dtype=dtype, device=device)
        centre = torch.empty(m, dtype=torch.long, device=device)
        step = max(1, chunk_size // max(k, 1))
        for s in range(0, m, step):
            t = F.normalize(nouns[s : s + step], dim=1)
            sim = centres @ t.t()
            if bool(empty.any()):
                sim = sim.masked_fill(empty.unsqueeze(1), float("-inf"))
            conf[s : s + step], centre[s : s + step] = torch.softmax(sim, dim=0).max(dim=0)

        # rank nouns within their centre by confidence (descending), stable
        order = torch.argsort(conf, descending=True, stable=True)
        order = order[torch.argsort(centre[order], stable=True)]
        sorted_centre = centre[order]
        per_centre = torch.bincount(sorted_centre, minlength=k)
        starts = torch.cumsum(per_centre, 0) - per_centre
        rank = torch.arange(m, device=device) - starts[sorted_centre]
        mask = torch.zeros(m, dtype=torch.bool, device=device)
        mask[order[rank < gamma]] = True
    if return_details:
        return mask, centre, conf
    return mask


def tac_retrieve_text(
    image_feats: torch.Tensor,
    noun_feats: torch.Tensor,
    tau: float = 0.005,
    *,
    batch_size: int = 8192,
) -> torch.Tensor:
    r"""TAC's text counterpart of each image: a soft retrieval over the kept nouns.

    Rows of both inputs are L2-normalised; then
    ``t_i = normalize( softmax_j(<v_i, n_j> / tau) @ N )``.

    Args:
        image_feats: ``[N, d]`` image embeddings.
        noun_feats: ``[M, d]`` the kept nouns' embeddings (``all_nouns[tac_select_nouns(...)]``).
        tau: softmax temperature (0.005 in TAC). Small ``tau`` multiplies similarity
            errors by ``1/tau``: give float64 inputs for a tight reference match.
        batch_size: image rows per block (bounds memory at ``batch_size x M``).

    Returns:
        ``[N, d]`` unit rows, in the inputs' (promoted, at least float32) dtype.
    """
    if image_feats.dim() != 2 or noun_feats.dim() != 2 or image_feats.shape[1] != noun_feats.shape[1]:
        raise ValueError(
            "image_feats [N, d] and noun_feats [M, d] must be 2-D with the same width; "
            f"got {tuple(image_feats.shape)} and {tuple(noun_feats.shape)}"
        )
    if noun_feats.shape[0] == 0:
        raise ValueError("noun_feats is empty: no noun to retrieve from")
    if tau <= 0:
        raise ValueError(f"tau must be > 0; got {tau}")
    dtype = _float_dtype(image_feats, noun_feats)
    v = F.normalize(image_feats.to(dtype), dim=1)
    t = F.normalize(noun_feats.to(device=v.device, dtype=dtype), dim=1)
    out = [
        torch.softmax(v[s : s + batch_size] @ t.t() / tau, dim=1) @ t
        for s in range(0, v.shape[0], batch_size)
    ]
    if not out:
        return v.new_zeros((0, v.shape[1]))
    return F.normalize(torch.cat(out, dim=0), dim=1)


def _float_dtype(*ts: torch.Tensor) -> torch.dtype:
    dt = torch.promote_types(ts[0].dtype, ts[1].dtype) if len(ts) > 1 else ts[0].dtype
    if not dt.is_floating_point or torch.finfo(dt).bits < 32:
        return torch.float32
    return dt


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(
            "the two assignment matrices must be 2-D [B, K] tensors of the same shape; "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )
