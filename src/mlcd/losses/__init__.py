"""Losses: one file per family, pure functions of tensors (thin ``nn.Module`` wrappers where useful)."""

from mlcd.losses.margin_softmax import MarginSoftmaxLoss, apply_margin, margin_logits, margin_softmax_loss
from mlcd.losses.mlcd import MLCDLoss, MLCLoss, labels_to_mask, mlc_loss, mlcd_loss
from mlcd.losses.cc import cc_cluster_loss, cc_instance_loss
from mlcd.losses.dec import dec_kl_loss, dec_soft_assign, dec_target_distribution
from mlcd.losses.pica import pica_loss
from mlcd.losses.scan import confidence_ce_loss, scan_loss
from mlcd.losses.swav import sinkhorn, swav_loss
from mlcd.losses.tac import (
    TACObjective,
    balance_entropy,
    tac_confidence_loss,
    tac_distill_loss,
    tac_objective,
    tac_objective_heads,
    tac_retrieve_text,
    tac_select_nouns,
)
from mlcd.losses.temi import (
    temi_loss,
    temi_multihead_loss,
    temi_pair_weight,
    temi_teacher_temperature,
    temi_update_prior,
)
