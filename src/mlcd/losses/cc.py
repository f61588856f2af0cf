"""Contrastive Clustering (CC): instance-level and cluster-level contrastive losses.

Li et al., "Contrastive Clustering", AAAI 2021. Matches
``modules/contrastive_loss.py`` (``InstanceLoss``, ``ClusterLoss``) of
github.com/Yunfan-Li/Contrastive-Clustering @ 61daba8, except where noted:

* the batch size and the number of clusters are read from the inputs, so a
  smaller last batch works (the official ``InstanceLoss`` builds its mask for
  a fixed batch size and breaks there);
* an empty cluster (a column summing to 0) gives a finite balance term
  (``0 log 0 = 0``) where the official code returns NaN.

Both losses are pure functions of tensors; the device and dtype follow the inputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["cc_instance_loss", "cc_cluster_loss", "negative_entropy_balance"]


def paired_nt_xent(sim: torch.Tensor, n: int) -> torch.Tensor:
    """NT-Xent over ``2n`` rows whose positives are ``r <-> r + n``.

    ``sim`` is the ``2n x 2n`` similarity matrix already divided by the
    temperature (or a stack ``[..., 2n, 2n]`` of them). Row ``r``'s logits are
    every entry but ``sim[r, r]``; the target is its partner ``(r + n) mod 2n``.
    Returns ``sum_r CE_r / (2n)`` (shape ``[...]``), which is
    ``nn.CrossEntropyLoss(reduction="sum") / N`` on ``cat([positive, negatives])``
    as the CC and TAC code build it.
    """
    m = 2 * n
    idx = torch.arange(m, device=sim.device)
    partner = (idx + n) % m
    logits = sim.masked_fill(torch.eye(m, dtype=torch.bool, device=sim.device), float("-inf"))
    ce = torch.logsumexp(logits, dim=-1) - sim[..., idx, partner]
    return ce.sum(dim=-1) / m


def negative_entropy_balance(c: torch.Tensor) -> torch.Tensor:
    """``log K + sum_k p_k log p_k`` with ``p = colsum(c) / sum(c)`` (0 when balanced).

    This is CC's ``ne_i`` and PICA's ``loss_ne``; ``0 log 0`` is taken as 0.
    """
    p = c.sum(dim=0).reshape(-1)
    p = p / p.sum()
    tiny = torch.finfo(p.dtype).tiny
    return math.log(p.shape[0]) + (p * p.clamp_min(tiny).log()).sum()


def _check_pair(a: torch.Tensor, b: torch.Tensor, names: str) -> None:
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(
            f"{names} must be two 2-D tensors of the same shape [B, K]; "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def cc_instance_loss(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    r"""Instance-level NT-Xent of CC (its ``InstanceLoss``).

    With ``z = cat(z_a, z_b)`` (``2B x d``, used as given: CC's network
    L2-normalises the projections before the loss, the loss itself does not),
    ``s = z z^T / temperature`` and row ``r``'s positive its other view::

        L = 1/(2B) sum_r [ log sum_{j != r} exp(s_rj) - s_{r, r+-B} ]

    Args:
        z_a, z_b: ``[B, d]`` projections of the two views (unit rows in CC).
        temperature: 0.5 in CC's config.

    Returns:
        0-d tensor.
    """
    _check_pair(z_a, z_b, "z_a and z_b")
    z = torch.cat((z_a, z_b), dim=0)
    sim = z @ z.t() / temperature
    return paired_nt_xent(sim, z_a.shape[0])


def cc_cluster_loss(p_a: torch.Tensor, p_b: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    r"""Cluster-level contrastive loss of CC (its ``ClusterLoss``).

    The ``K`` columns of ``p_a`` and of ``p_b`` (length-``B`` vectors) are the
    ``2K`` cluster representations; ``s = cos(c_r, c_j) / temperature`` and row
    ``r``'s positive is the same cluster in the other view. A balance term
    ``ne(p) = log K + sum_k p_k log p_k`` (``p = colsum / sum``) is added per view::

        L = 1/(2K) sum_r CE_r + ne(p_a) + ne(p_b)

    Args:
        p_a, p_b: ``[B, K]`` softmax assignments of the two views.
        temperature: 1.0 in CC's config.

    Returns:
        0-d tensor.
    """
    _check_pair(p_a, p_b, "p_a and p_b")
    ne = negative_entropy_balance(p_a) + negative_entropy_balance(p_b)
    k = p_a.shape[1]
    c = torch.cat((p_a.t(), p_b.t()), dim=0)
    c = F.normalize(c, dim=1, eps=1e-8)  # nn.CosineSimilarity(eps=1e-8) of the official code
    sim = c @ c.t() / temperature
    return paired_nt_xent(sim, k) + ne
